"""Statistics: is a subject's Treg change against baseline real?

Two sources of noise are weighed (see ``docs/report.md``):

* counting noise of the Treg gate, from the binomial counts (Treg events out of CD4 events): a Wilson score
  interval per timepoint, a Newcombe hybrid-score interval for the change in percentage points and a Katz log
  interval for the fold change;
* analytical plus within-subject biological noise, from the reference change value
  RCV = sqrt(2) * Z * sqrt(CVa^2 + CVi^2).

* gating noise: a data-driven gate is placed a little differently at every visit. ``sensitivity.csv`` measures how
  much Treg % moves per 0.1 decade of each fitted threshold; times the placement SD of a threshold (and the
  visit's drift of reference populations) it gives the gating SD of the Treg %, ``gate_sd_pp``
  (:func:`gate_sd_from_sensitivity`), which widens the Newcombe interval into ``delta_ci_*_total``
  (:func:`combined_difference_interval`).

A change is called significant when all agree: the relative change exceeds the RCV *and* the combined interval of
the difference (counting and gating noise) excludes zero.

The clinical side (platelets) follows the ITP International Working Group platelet thresholds (Rodeghiero 2009).

The tables are computed as plain columns (:mod:`cytopipe.columns`): a function given a table returns one, a function
given a pandas DataFrame returns a DataFrame (with the dtypes pandas gives the same computation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cytopipe import columns
from cytopipe.clinical import read_clinical, read_clinical_table
from cytopipe.errors import ConfigError, SampleSheetError
from cytopipe.numeric import to_numeric

# pandas is not imported: the functions compute on plain tables (cytopipe.columns) and give a DataFrame back only to
# a caller that gave one (pandas is then loaded already). Worker processes import this module for wilson_interval.
if TYPE_CHECKING:
    import pandas as pd
    from numpy.typing import ArrayLike

    Tabular = pd.DataFrame | columns.Table

__all__ = [
    "BASELINE_COLUMNS",
    "GATE_PLACEMENT_SD",
    "baseline_frame",
    "baseline_table",
    "clinical_correlation",
    "combined_difference_interval",
    "gate_sd_from_sensitivity",
    "fold_change_interval",
    "iwg_response",
    "newcombe_difference",
    "platelet_column",
    "read_clinical",
    "read_clinical_table",
    "reference_change_value",
    "subject_summary",
    "t_two_sided_p",
    "wilson_interval",
]

#: The leading columns of ``baseline.csv``, in order (a contract, see ``docs/ARCHITECTURE.md``).
BASELINE_COLUMNS: tuple[str, ...] = (
    "subject", "timepoint", "day", "treg_pct", "baseline_pct", "delta_pp", "fold_change",
    "delta_ci_low", "delta_ci_high", "fc_ci_low", "fc_ci_high", "rcv_pct", "significant", "low_events",
)
# Always present after the contract columns.
_EXTRA_COLUMNS: tuple[str, ...] = (
    "sample", "is_baseline", "baseline_sample", "treg_events", "cd4_events", "ci_low", "ci_high",
    "pct_change", "direction", "qc_flags", "gate_sd_pp", "delta_ci_low_total", "delta_ci_high_total",
    "change_verdict",
)

#: The words of a significant change (report, ``change_verdict``, ``treg_verdict``).
NOISE_WORDS = "change larger than the assay, counting and gating noise together"

#: Placement SD of one data-driven threshold between visits, in logicle decades (see
#: :func:`gate_sd_from_sensitivity`).
GATE_PLACEMENT_SD = 0.05
_TREG_REQUIRED: tuple[str, ...] = ("sample", "subject", "timepoint", "day", "cd4_events", "treg_events", "treg_pct")

#: IWG platelet response categories, best first.
IWG_CATEGORIES: tuple[str, ...] = ("complete response", "response", "no response")


def _scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


def wilson_interval(k: ArrayLike, n: ArrayLike, z: float = 1.96) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Wilson score interval of a binomial proportion ``k / n``.

    Parameters
    ----------
    k, n : int or array-like
        Successes (Treg events) and trials (CD4 events); broadcast together.
    z : float
        Standard normal quantile (1.96 for a two-sided 95% interval).

    Returns
    -------
    (low, high) : float or numpy.ndarray
        Interval bounds as proportions in [0, 1]; NaN where ``n == 0``.

    Notes
    -----
    Wilson (1927), without continuity correction (Newcombe 1998, method 3):
    ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. Unlike the Wald interval it stays inside
    [0, 1] and keeps its coverage for small k, which is the case for rare Treg gates.
    """
    if type(k) is int and type(n) is int and 0 <= k <= n and n > 0:
        return _wilson_counts(k, n, z)
    k_arr = np.asarray(k, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_arr / n_arr
        z2 = z * z
        denom = 1.0 + z2 / n_arr
        centre = (p + z2 / (2.0 * n_arr)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n_arr + z2 / (4.0 * n_arr * n_arr)) / denom
        # At k = 0 and k = n the bounds are exactly 0 and 1; rounding would leave them a hair inside.
        low = np.where(k_arr <= 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k_arr >= n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
        low = np.where(n_arr > 0, low, np.nan)
        high = np.where(n_arr > 0, high, np.nan)
    return _scalar_or_array(low), _scalar_or_array(high)


def _wilson_counts(k: int, n: int, z: float) -> tuple[float, float]:
    """:func:`wilson_interval` of one count ``0 <= k <= n``, ``n > 0``, in Python floats: the same IEEE double
    operations in the same order, clipped as ``numpy.clip`` clips (a 0-d numpy evaluation costs ~30 us a sample)."""
    kf, nf = float(k), float(n)
    p = kf / nf
    z2 = z * z
    denom = 1.0 + z2 / nf
    centre = (p + z2 / (2.0 * nf)) / denom
    half = z * math.sqrt(p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)) / denom
    low = 0.0 if kf <= 0 else _clip01(centre - half)
    high = 1.0 if kf >= nf else _clip01(centre + half)
    return low, high


def _clip01(x: float) -> float:
    """``numpy.clip(x, 0.0, 1.0)`` of one float (its maximum keeps ``x`` only when greater: ``-0.0`` becomes 0)."""
    x = x if x != x or x > 0.0 else 0.0
    return x if x != x or x < 1.0 else 1.0


def newcombe_difference(
    k1: ArrayLike, n1: ArrayLike, k2: ArrayLike, n2: ArrayLike, z: float = 1.96
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Newcombe hybrid score interval of the difference of two independent proportions ``k1/n1 - k2/n2``.

    Parameters
    ----------
    k1, n1 : int or array-like
        Counts of the first proportion (the later timepoint).
    k2, n2 : int or array-like
        Counts of the second proportion (the baseline).
    z : float
        Standard normal quantile.

    Returns
    -------
    (low, high) : float or numpy.ndarray
        Bounds of ``p1 - p2`` as proportions (multiply by 100 for percentage points); NaN when a total is 0.

    Notes
    -----
    Newcombe (1998) Stat Med 17:873, method 10. With Wilson limits ``(l1, u1)`` and ``(l2, u2)``:

    1. ``d = p1 - p2``;
    2. ``low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)``;
    3. ``high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)``.
    """
    k1a, n1a, k2a, n2a = (np.asarray(a, dtype=float) for a in (k1, n1, k2, n2))
    l1, u1 = wilson_interval(k1a, n1a, z)
    l2, u2 = wilson_interval(k2a, n2a, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        p1 = k1a / n1a
        p2 = k2a / n2a
        d = p1 - p2
        low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
        high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return _scalar_or_array(np.asarray(low)), _scalar_or_array(np.asarray(high))


def fold_change_interval(
    k1: ArrayLike, n1: ArrayLike, k2: ArrayLike, n2: ArrayLike, z: float = 1.96
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Katz log interval of the ratio of two independent proportions ``(k1/n1) / (k2/n2)``.

    Parameters
    ----------
    k1, n1 : int or array-like
        Counts of the numerator proportion (the later timepoint).
    k2, n2 : int or array-like
        Counts of the denominator proportion (the baseline).
    z : float
        Standard normal quantile.

    Returns
    -------
    (low, high) : float or numpy.ndarray
        Bounds of the fold change; NaN when a total is 0 or both counts are 0.

    Notes
    -----
    Katz et al. (1978) Biometrics 34:469: ``log(r) +- z * sqrt(1/k1 - 1/n1 + 1/k2 - 1/n2)``, the interval used for
    risk ratios (and by ``scipy.stats.contingency.relative_risk``). When either count is 0 the ratio or its log
    is undefined, so 0.5 is added to every cell of the 2x2 table (``k + 0.5`` of ``n + 1``), the usual Haldane
    correction. With the thousands of CD4 events of a cytometry tube the log scale is close to exact and keeps the
    interval asymmetric, as a ratio's interval should be.
    """
    k1a, n1a, k2a, n2a = (np.asarray(a, dtype=float) for a in (k1, n1, k2, n2))
    zero = (k1a == 0) | (k2a == 0)
    k1c = np.where(zero, k1a + 0.5, k1a)
    k2c = np.where(zero, k2a + 0.5, k2a)
    n1c = np.where(zero, n1a + 1.0, n1a)
    n2c = np.where(zero, n2a + 1.0, n2a)
    valid = (n1a > 0) & (n2a > 0) & ~((k1a == 0) & (k2a == 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log((k1c / n1c) / (k2c / n2c))
        se = np.sqrt(1.0 / k1c - 1.0 / n1c + 1.0 / k2c - 1.0 / n2c)
        low = np.where(valid, np.exp(log_ratio - z * se), np.nan)
        high = np.where(valid, np.exp(log_ratio + z * se), np.nan)
    return _scalar_or_array(low), _scalar_or_array(high)


def combined_difference_interval(
    k1: ArrayLike, n1: ArrayLike, k2: ArrayLike, n2: ArrayLike, gate_sd1: ArrayLike, gate_sd2: ArrayLike,
    z: float = 1.96,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Interval of ``k1/n1 - k2/n2`` that holds counting noise and the gating noise of both gated proportions.

    Parameters
    ----------
    k1, n1, k2, n2 : int or array-like
        Counts of the later timepoint and of the baseline, as for :func:`newcombe_difference`.
    gate_sd1, gate_sd2 : float or array-like
        Gating standard deviation of each proportion (same units: proportions, not percent); NaN counts as 0
        (fixed gates do not move with the data).
    z : float
        Standard normal quantile.

    Returns
    -------
    (low, high) : float or numpy.ndarray
        Bounds as proportions; with no gating noise exactly the Newcombe hybrid score interval.

    Notes
    -----
    The two visits are gated independently, so the gating errors add in variance to the counting error. Each
    side of the (asymmetric) Newcombe interval is widened separately:
    ``low = d - sqrt((d - low_N)^2 + z^2 (g1^2 + g2^2))`` and ``high = d + sqrt((high_N - d)^2 + z^2 (g1^2 +
    g2^2))``, the same square-and-add step that Newcombe's method applies to the two Wilson intervals.
    """
    k1a, n1a, k2a, n2a = (np.asarray(a, dtype=float) for a in (k1, n1, k2, n2))
    g1 = np.nan_to_num(np.asarray(gate_sd1, dtype=float), nan=0.0)
    g2 = np.nan_to_num(np.asarray(gate_sd2, dtype=float), nan=0.0)
    low_n, high_n = newcombe_difference(k1a, n1a, k2a, n2a, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = k1a / n1a - k2a / n2a
        gate = (z * z) * (g1 * g1 + g2 * g2)
        low = d - np.sqrt((d - np.asarray(low_n)) ** 2 + gate)
        high = d + np.sqrt((np.asarray(high_n) - d) ** 2 + gate)
    return _scalar_or_array(np.asarray(low)), _scalar_or_array(np.asarray(high))


def gate_sd_from_sensitivity(sensitivity: Tabular | None, placement_sd: float = GATE_PLACEMENT_SD,
                             drift: Mapping[str, float] | None = None) -> dict[str, float]:
    """Gating SD of each sample's Treg %, in percentage points, from its ``sensitivity.csv`` rows.

    Parameters
    ----------
    sensitivity : pandas.DataFrame or Table
        ``sensitivity.csv`` rows: ``sample, delta, treg_pct_minus, treg_pct_plus`` per fitted threshold.
    placement_sd : float
        SD of a threshold's placement between visits, logicle decades.
    drift : mapping of str to float, optional
        Per sample, the drift of its reference populations against the subject's baseline, in decades
        (``|log10(MFI / baseline MFI)|``, the largest over the fluorescence references); it adds to the
        placement SD of every threshold of that sample.

    Returns
    -------
    dict
        Sample -> gating SD of ``treg_pct`` (percentage points).

    Notes
    -----
    1. Slope of each threshold: ``(treg_pct_plus - treg_pct_minus) / (2 delta)``, pp per decade (a central
       difference over the +/- ``delta`` shifts ``sensitivity.csv`` already holds).
    2. Placement SD of the sample: ``sqrt(placement_sd^2 + drift^2)``: a gate anchored on reference populations
       follows a change of gain, but not exactly, and the more the data moved the less exactly.
    3. The thresholds are placed independently: ``gate_sd = sqrt(sum_j (slope_j * sd)^2)``.
    """
    if not (math.isfinite(placement_sd) and placement_sd >= 0):
        raise ConfigError(f"gate placement SD must be a non-negative number of decades, got {placement_sd!r}")
    out: dict[str, float] = {}
    table = columns.as_table(sensitivity) if sensitivity is not None else {}
    if columns.length(table) == 0:
        return out
    drift = drift or {}
    delta_all = table["delta"].astype(float)
    minus_all, plus_all = table["treg_pct_minus"].astype(float), table["treg_pct_plus"].astype(float)
    for sample, rows in _groups(_text(table["sample"])).items():
        delta = delta_all[rows]
        slope = (plus_all[rows] - minus_all[rows]) / (2.0 * delta)
        extra = float(drift.get(sample, 0.0) or 0.0)
        sd = math.sqrt(placement_sd ** 2 + extra ** 2)
        out[sample] = float(np.sqrt(np.nansum((slope * sd) ** 2)))
    return out


def reference_change_value(cva: float = 10.0, cvi: float = 10.0, z: float = 1.96) -> float:
    """Reference change value in percent: ``sqrt(2) * z * sqrt(cva^2 + cvi^2)``.

    Parameters
    ----------
    cva : float
        Analytical coefficient of variation of the assay, in percent.
    cvi : float
        Within-subject biological coefficient of variation, in percent.
    z : float
        Standard normal quantile: 1.96 two-sided 95%, 1.65 one-sided ("did Tregs rise?").

    Returns
    -------
    float
        The smallest relative change (percent) between two results of one subject that exceeds assay plus
        biological noise (Fraser & Harris 1989). 10, 10, 1.96 gives 39.2.

    Raises
    ------
    ConfigError
        When a CV is negative or z is not positive.
    """
    for name, value in (("cva", cva), ("cvi", cvi)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"--{name} must be a non-negative percentage, got {value!r}")
    if not (isinstance(z, int | float) and math.isfinite(z) and z > 0):
        raise ConfigError(f"--z must be a positive number, got {z!r}")
    return math.sqrt(2.0) * z * math.sqrt(cva * cva + cvi * cvi)


def iwg_response(platelets: float, baseline_platelets: float) -> str:
    """ITP International Working Group platelet response category of one count.

    Parameters
    ----------
    platelets : float
        Platelet count (x10^9/L) at the timepoint.
    baseline_platelets : float
        Platelet count at the subject's baseline.

    Returns
    -------
    str
        ``"complete response"`` (>= 100), ``"response"`` (>= 30 and at least twice baseline), ``"no response"``,
        or ``""`` when the count (or, below 100, the baseline) is missing.

    Notes
    -----
    Rodeghiero et al. (2009) Blood 113:2386. Only the platelet thresholds are applied, to a single count; the full
    criteria also need the absence of bleeding and confirmation on two occasions at least 7 days apart.
    """
    if platelets is None or not np.isfinite(platelets):
        return ""
    if platelets >= 100:
        return "complete response"
    if baseline_platelets is None or not np.isfinite(baseline_platelets):
        return ""
    if platelets >= 30 and platelets >= 2.0 * baseline_platelets:
        return "response"
    return "no response"


# ---------------------------------------------------------------------------------------------- clinical table


def platelet_column(columns: Sequence[str]) -> str | None:
    """Name of the platelet column among ``columns`` (``platelets``, ``plt``, ``platelet_count``...), or None."""
    for col in columns:
        name = str(col).lower()
        if name in ("plt", "platelets", "platelet") or re.match(r"^(platelet|plt[_ ])", name):
            return str(col)
    return None


def _join_key(clinical: columns.Table) -> str:
    """The column a clinical table is joined by: ``day`` when every row has one, else ``timepoint``."""
    return "day" if "day" in clinical and not any(map(columns.is_missing, clinical["day"].tolist())) else "timepoint"


# ---------------------------------------------------------------------------------------------- plain columns


def _texts(values: list[str]) -> np.ndarray:
    """A column of strings; without rows ``float64``, the dtype pandas gives an empty list."""
    return columns.objects(values) if values else np.empty(0)


def _text(values: np.ndarray) -> np.ndarray:
    """``Series.astype(str)``: every cell as its ``str`` (a missing one too: ``'nan'``, ``'None'``)."""
    return columns.objects([str(value) for value in values.tolist()])


def _floats(values: np.ndarray) -> np.ndarray:
    """``pandas.to_numeric(values, errors="coerce").astype(float)``."""
    return to_numeric(values).astype(float)


def _groups(keys: np.ndarray) -> dict[Any, list[int]]:
    """Row positions of each key, keys in order of first appearance (a groupby without sorting)."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys.tolist()):
        groups.setdefault(key, []).append(i)
    return groups


# ---------------------------------------------------------------------------------------------- baseline table


_TRUE_WORDS = frozenset(("true", "yes", "y", "1", "1.0"))


def _as_bool(values: np.ndarray) -> np.ndarray:
    """Sample-sheet booleans: True/true/yes/1 are True; anything else (also empty) is False."""
    if values.dtype == bool:
        return values
    return np.array([str(value).strip().lower() in _TRUE_WORDS for value in values.tolist()], dtype=bool)


def _baseline_rows(treg: columns.Table, source: str) -> dict[str, int | None]:
    """Position of each subject's baseline row: the flagged one, else (no ``baseline`` column) the earliest day."""
    rows = _groups(treg["subject"])
    chosen: dict[str, int | None] = {}
    if "baseline" in treg:
        flags = _as_bool(treg["baseline"]).tolist()
        for subject, positions in rows.items():
            flagged = [i for i in positions if flags[i]]
            if len(flagged) > 1:
                names = ", ".join(str(treg["sample"][i]) for i in flagged)
                raise SampleSheetError(f"{source}: subject {subject!r} has {len(flagged)} baseline samples ({names})")
            # A flagged baseline that is missing here failed upstream: never promote a later sample to baseline.
            chosen[str(subject)] = flagged[0] if flagged else None
        return chosen
    day = treg["day"].astype(float).tolist()
    for subject, positions in rows.items():
        known = [i for i in positions if day[i] == day[i]]  # the first of the earliest days; None without days
        chosen[str(subject)] = min(known, key=day.__getitem__) if known else None
    return chosen


def baseline_table(
    treg: Tabular,
    *,
    cva: float = 10.0,
    cvi: float = 10.0,
    z: float = 1.96,
    min_treg_events: int = 100,
    min_cd4_events: int = 2000,
    clinical: Tabular | None = None,
    source: str = "treg.csv",
) -> Tabular:
    """Compare every sample with its subject's baseline: the table written as ``baseline.csv``.

    Parameters
    ----------
    treg : pandas.DataFrame or Table
        One row per sample with ``sample, subject, timepoint, day, cd4_events, treg_events, treg_pct`` (the
        ``treg.csv`` contract); optional ``baseline`` (bool or true/false text), ``tcon_events``,
        ``lymphocyte_events`` (events in the lymphocyte gate), ``gate_sd_pp`` (gating SD of ``treg_pct``,
        percentage points), ``lymphocytes_per_ul`` (cells/uL) or
        ``lymphocytes`` (x10^9/L), ``cd4_per_ul``; the counts may also come from ``clinical``.
    cva, cvi : float
        Analytical and within-subject biological CV (percent) for the reference change value.
    z : float
        Standard normal quantile for every interval and the RCV.
    min_treg_events, min_cd4_events : int
        Rows below either count are flagged ``low_events`` (not dropped).
    clinical : pandas.DataFrame or Table, optional
        A table from :func:`read_clinical` (or :func:`read_clinical_table`), joined by subject and day (or
        timepoint). A platelet column adds
        ``baseline_platelets``, ``platelet_fold`` and ``iwg_response``.
    source : str
        Name of the table in error messages.

    Returns
    -------
    pandas.DataFrame or Table
        The type of ``treg`` (in a DataFrame the counts are nullable ``Int64`` when every one is known). Columns
        :data:`BASELINE_COLUMNS`, then ``sample, is_baseline, baseline_sample, treg_events, cd4_events,
        ci_low, ci_high, pct_change, direction, qc_flags, gate_sd_pp, delta_ci_low_total, delta_ci_high_total``,
        then optional ``treg_tcon_ratio``, ``tregs_per_ul``,
        the clinical columns and the platelet response columns. Sorted by subject and day. Every column is
        documented in ``docs/report.md``.

    Raises
    ------
    SampleSheetError
        When a required column is missing or a subject has more than one baseline sample.
    ConfigError
        When cva, cvi or z is invalid.

    Notes
    -----
    ``significant`` is True when ``|pct_change| > rcv_pct`` and the combined interval of ``delta_pp``
    (``delta_ci_low_total``, ``delta_ci_high_total``: counting noise and, when ``treg`` has a ``gate_sd_pp``
    column, the gating SD of both visits, see :func:`combined_difference_interval`) excludes 0;
    the baseline row itself is never significant. A subject whose flagged baseline sample is absent (it failed)
    keeps its rows with NaN comparisons and a ``qc_flags`` note.
    """
    rcv = reference_change_value(cva, cvi, z)
    given_frame = not isinstance(treg, dict)
    missing = [c for c in _TREG_REQUIRED if c not in (list(treg.columns) if given_frame else treg)]
    if missing:
        raise SampleSheetError(f"{source}: missing column(s) {', '.join(missing)}")
    t = columns.as_table(treg)
    for col in ("subject", "timepoint", "sample"):
        t[col] = _text(t[col])
    for col in ("day", "cd4_events", "treg_events", "treg_pct"):
        t[col] = _floats(t[col])
    rows = len(t["sample"])
    base_of = _baseline_rows(t, source)

    k, n, pct = t["treg_events"], t["cd4_events"], t["treg_pct"]
    base_idx = np.array([-1 if base_of[s] is None else base_of[s] for s in t["subject"].tolist()], dtype=int)
    has_base = base_idx >= 0
    kb = np.where(has_base, k[np.maximum(base_idx, 0)], np.nan)
    nb = np.where(has_base, n[np.maximum(base_idx, 0)], np.nan)
    pct_b = np.where(has_base, pct[np.maximum(base_idx, 0)], np.nan)
    is_base = base_idx == np.arange(rows)

    gate_sd = _floats(t["gate_sd_pp"]) if "gate_sd_pp" in t else np.full(rows, np.nan)
    gate_sd_b = np.where(has_base, gate_sd[np.maximum(base_idx, 0)], np.nan)

    ci_low, ci_high = wilson_interval(k, n, z)
    d_low, d_high = newcombe_difference(k, n, kb, nb, z)
    t_low, t_high = combined_difference_interval(k, n, kb, nb, gate_sd / 100.0, gate_sd_b / 100.0, z)
    f_low, f_high = fold_change_interval(k, n, kb, nb, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        fold = pct / pct_b
    delta = pct - pct_b
    pct_change = (fold - 1.0) * 100.0
    excludes_zero = (np.asarray(t_low) > 0) | (np.asarray(t_high) < 0)
    significant = (np.abs(pct_change) > rcv) & excludes_zero & ~is_base
    direction = np.where(significant & (delta > 0), "rise", np.where(significant & (delta < 0), "fall", "none"))
    # The comparison of the baseline with itself has no interval.
    d_low, d_high, t_low, t_high, f_low, f_high = (np.where(is_base, np.nan, a)
                                                   for a in (d_low, d_high, t_low, t_high, f_low, f_high))

    low_treg = ~(k >= min_treg_events)
    low_cd4 = ~(n >= min_cd4_events)
    acquisition = (["" if columns.is_missing(v) else str(v) for v in t["acquisition_qc"].tolist()]
                   if "acquisition_qc" in t else [""] * rows)
    flags: list[str] = []
    for i in range(rows):
        notes = [acquisition[i]] if acquisition[i] else []
        if low_treg[i]:
            notes.append(f"Treg gate {_count(k[i])} events < {min_treg_events}")
        if low_cd4[i]:
            notes.append(f"CD4 gate {_count(n[i])} events < {min_cd4_events}")
        if not has_base[i]:
            notes.append("no baseline sample")
        elif not is_base[i] and (kb[i] < min_treg_events or nb[i] < min_cd4_events):
            notes.append("baseline has low events")
        flags.append("; ".join(notes))

    samples = t["sample"].tolist()
    out: columns.Table = {
        "subject": t["subject"],
        "timepoint": t["timepoint"],
        "day": t["day"],
        "treg_pct": pct,
        "baseline_pct": pct_b,
        "delta_pp": delta,
        "fold_change": fold,
        "delta_ci_low": np.asarray(d_low) * 100.0,
        "delta_ci_high": np.asarray(d_high) * 100.0,
        "fc_ci_low": f_low,
        "fc_ci_high": f_high,
        "rcv_pct": np.full(rows, rcv),
        "significant": significant,
        "low_events": low_treg | low_cd4,
        "sample": t["sample"],
        "is_baseline": is_base,
        "baseline_sample": _texts([samples[b] if b >= 0 else "" for b in base_idx.tolist()]),
        # Counts as integers when every one is known (nullable Int64 in a DataFrame), else as floats with NaN.
        "treg_events": np.round(k).astype(np.int64) if np.isfinite(k).all() else k,
        "cd4_events": np.round(n).astype(np.int64) if np.isfinite(n).all() else n,
        "ci_low": np.asarray(ci_low) * 100.0,
        "ci_high": np.asarray(ci_high) * 100.0,
        "pct_change": pct_change,
        "direction": direction.astype(object),
        "qc_flags": _texts(flags),
        "gate_sd_pp": gate_sd,
        "delta_ci_low_total": np.asarray(t_low) * 100.0,
        "delta_ci_high_total": np.asarray(t_high) * 100.0,
        "change_verdict": _texts([_change_words(*a, rcv) for a in zip(
            *(np.asarray(c).tolist() for c in (is_base, significant, pct_change, delta, t_low, t_high, gate_sd,
                                               gate_sd_b)), strict=True)]),
    }
    joined: dict[str, str] = {}  # output column -> the clinical column whose cells it holds
    if clinical is not None:
        clin = columns.as_table(clinical)
        if columns.length(clin):
            out, joined = _join_clinical(out, clin)
    before = dict(out)
    _add_absolute(out, t)
    joined = {name: source for name, source in joined.items() if out[name] is before[name]}
    out = columns.sorted_by(out, ["subject", "day"])
    if not given_frame:
        return out
    frame = baseline_frame(out)
    if joined and not isinstance(clinical, dict):
        for name, source in joined.items():  # pandas' own types (nullable integers, text, flags) survive its join
            dtype = clinical[source].dtype
            if isinstance(dtype, np.dtype):
                continue
            if frame[name].dtype.kind in "iuf" and dtype.kind not in "iufb":  # text read as pandas' nullable numbers
                dtype = "Int64" if frame[name].dtype.kind in "iu" else "Float64"
            frame[name] = frame[name].astype(dtype)
    return frame


def baseline_frame(table: columns.Table) -> pd.DataFrame:
    """A :func:`baseline_table` table as the DataFrame it returns for DataFrames: the event counts as pandas'
    nullable integers when every one is known (``int64`` in the table)."""
    frame = columns.to_frame(table)
    for col in ("treg_events", "cd4_events"):
        if col in table and table[col].dtype == np.int64:
            frame[col] = frame[col].astype("Int64")
    return frame


def _change_words(is_base: bool, significant: bool, pct_change: float, delta: float, low: float, high: float,
                  gate_sd: float, gate_sd_base: float, rcv: float) -> str:
    """One timepoint's verdict in a clinician's words, with the gating uncertainty it includes."""
    if is_base or not math.isfinite(delta):
        return ""
    gating = math.hypot(*(g if math.isfinite(g) else 0.0 for g in (gate_sd, gate_sd_base)))
    noise = f"gating +/- {1.96 * gating:.1f} pp" if gating > 0 else "fixed gates"
    if significant:
        return f"{NOISE_WORDS} ({noise})"
    if not abs(pct_change) > rcv:
        return f"within the assay and biological variation (RCV {rcv:.0f}%; {noise})"
    return (f"beyond the assay variation but within counting and gating noise (interval {100 * low:+.1f} to "
            f"{100 * high:+.1f} pp; {noise})")


def _count(x: float) -> str:
    return "no" if not np.isfinite(x) else f"{int(x):,}"


def _add_absolute(out: columns.Table, t: columns.Table) -> None:
    """Treg:Tcon ratio and absolute Tregs/uL, when the inputs for them exist (in ``t`` or joined clinical)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if "tcon_events" in t:
            out["treg_tcon_ratio"] = out["treg_events"].astype(float) / _floats(t["tcon_events"])
        source = {c: (out[c] if c in out else t[c] if c in t else None) for c in
                  ("lymphocytes_per_ul", "lymphocytes", "lymphocyte_events", "cd4_per_ul")}
        lym_count = source["lymphocytes_per_ul"]
        if lym_count is None and source["lymphocytes"] is not None:
            # A blood count's unit, like platelets: x10^9/L = 1,000 cells/uL.
            lym_count = to_numeric(source["lymphocytes"]) * 1000.0
        if lym_count is not None and source["lymphocyte_events"] is not None:
            lym, lym_events = _floats(lym_count), _floats(source["lymphocyte_events"])
            out["tregs_per_ul"] = lym * out["treg_events"].astype(float) / lym_events
        elif source["cd4_per_ul"] is not None:
            out["tregs_per_ul"] = _floats(source["cd4_per_ul"]) * out["treg_pct"] / 100.0


def _join_clinical(out: columns.Table, clinical: columns.Table) -> tuple[columns.Table, dict[str, str]]:
    """``out`` with the clinical columns of each row's subject and day (or timepoint) to its right (a left join,
    many rows to one; names ``out`` has get ``_clinical``), and the platelet response columns; and the joined
    columns that hold the clinical cells as they were (output name -> clinical name)."""
    clin = dict(clinical)
    clin["subject"] = _text(clin["subject"])
    key = _join_key(clin)
    clin[key] = _text(clin[key]) if key == "timepoint" else clin[key].astype(float)
    values = [c for c in clin if c not in ("subject", "day", "timepoint")]
    renamed = {c: (f"{c}_clinical" if c in out else c) for c in values}
    row_of: dict[tuple[str, Any], int] = {}
    for i, pair in enumerate(zip(clin["subject"].tolist(), clin[key].tolist(), strict=True)):
        if pair in row_of:
            from pandas.errors import MergeError  # read_clinical refuses such a table: the run never comes here

            raise MergeError("Merge keys are not unique in right dataset; not a many-to-one merge")
        row_of[pair] = i
    at = np.array([row_of.get(pair, -1) for pair in zip(out["subject"].tolist(), out[key].tolist(), strict=True)],
                  dtype=np.intp)
    merged = dict(out)
    for c in values:
        merged[renamed[c]] = columns.take_or_missing(clin[c], at)
    joined = {renamed[c]: c for c in values}
    plt_col = platelet_column(list(renamed.values()))
    if plt_col is None:
        return merged, joined
    merged[plt_col] = to_numeric(merged[plt_col])
    platelets = merged[plt_col].astype(float)
    # Baseline platelets: the count at the baseline sample, else the latest one on or before the baseline day.
    clin_rows = _groups(clin["subject"])
    clin_day = clin[key].tolist()
    clin_plt = _floats(clin[next(c for c in values if renamed[c] == plt_col)]).tolist()
    is_base = merged["is_baseline"].tolist()
    base_plt: dict[str, float] = {}
    for subject, positions in _groups(merged["subject"]).items():
        at_base = [i for i in positions if is_base[i]]
        value = float(platelets[at_base[0]]) if at_base and np.isfinite(platelets[at_base[0]]) else np.nan
        if not np.isfinite(value) and key == "day" and at_base:
            day0 = float(merged["day"][at_base[0]])
            earlier = [j for j in clin_rows.get(subject, []) if clin_day[j] <= day0 and clin_plt[j] == clin_plt[j]]
            value = float(clin_plt[max(earlier, key=clin_day.__getitem__)]) if earlier else np.nan
        base_plt[str(subject)] = value
    merged["baseline_platelets"] = np.array([base_plt[s] for s in merged["subject"].tolist()], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        merged["platelet_fold"] = platelets / merged["baseline_platelets"]
    merged["iwg_response"] = _texts([
        "" if is_b else iwg_response(float(p), float(b))
        for p, b, is_b in zip(merged[plt_col].tolist(), merged["baseline_platelets"].tolist(), is_base, strict=True)
    ])
    for name in ("baseline_platelets", "platelet_fold", "iwg_response"):
        joined.pop(name, None)
    return merged, joined


# ---------------------------------------------------------------------------------------------- per subject


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` (a positive integer) degrees of freedom: ``P(|T| >= |t|)``.

    The closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4): with ``theta = atan(|t| /
    sqrt(df))``, ``P(|T| < |t|)`` is ``2 theta / pi`` plus a finite series in ``cos(theta)`` of ``df // 2`` terms.
    It is what ``scipy.stats`` computes for the correlation tests (``tests/test_stats.py`` checks it against scipy
    to 1e-12 absolute), without the 0.5-1.3 s import of ``scipy.stats`` in every report.
    """
    if df < 1 or df != int(df):
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    t = abs(float(t))
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 c2 + 2.4/(3.5) c2^2 + ...)), df - 3 over 2 terms after 1
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2.0 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    else:  # even: sin (1 + 1/2 c2 + 1.3/(2.4) c2^2 + ...), df / 2 terms
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return min(1.0, max(0.0, 1.0 - inside))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their mean rank (``scipy.stats.rankdata``'s default)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=float)
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson's r and its two-sided p-value (t test with n - 2 degrees of freedom, as ``scipy.stats.pearsonr``)."""
    dx, dy = x - x.mean(), y - y.mean()
    r = float(np.clip(np.dot(dx, dy) / math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy))), -1.0, 1.0))
    df = x.size - 2
    if abs(r) == 1.0:
        return r, 0.0
    return r, t_two_sided_p(r * math.sqrt(df / (1.0 - r * r)), df)


def clinical_correlation(table: Tabular, column: str | None = None) -> Tabular:
    """Per-subject correlation of Treg % with a clinical column (platelets by default).

    Parameters
    ----------
    table : pandas.DataFrame or Table
        A :func:`baseline_table` result with the clinical column joined.
    column : str, optional
        The clinical column; default the platelet column.

    Returns
    -------
    pandas.DataFrame or Table
        The type of ``table``: ``subject, variable, n, spearman_r, spearman_p, pearson_r, pearson_p``; NaN
        coefficients when fewer than 3 paired values or a constant series. Empty when the column is absent.

    Notes
    -----
    Spearman's rho is Pearson's r of the average ranks; both p-values are two-sided t tests with n - 2 degrees of
    freedom (:func:`t_two_sided_p`), the definitions of ``scipy.stats.spearmanr`` and ``pearsonr``.
    """
    t = columns.as_table(table)
    column = column or platelet_column(list(t))
    cols = ["subject", "variable", "n", "spearman_r", "spearman_p", "pearson_r", "pearson_p"]
    rows = []
    if column is not None and column in t:
        treg_pct, values = _floats(t["treg_pct"]), _floats(t[column])
        groups = _groups(t["subject"])
        for subject in sorted(s for s in groups if not columns.is_missing(s)):  # groupby leaves out a missing subject
            paired = [i for i in groups[subject] if treg_pct[i] == treg_pct[i] and values[i] == values[i]]
            x, y = treg_pct[paired], values[paired]
            sr = sp = pr = pp = np.nan
            if len(paired) >= 3 and len(set(x.tolist())) > 1 and len(set(y.tolist())) > 1:
                sr, sp = _pearson(_average_ranks(x), _average_ranks(y))
                pr, pp = _pearson(x, y)
            rows.append(dict(zip(cols, (subject, column, len(paired), float(sr), float(sp), float(pr), float(pp)),
                                 strict=True)))
    out = columns.from_rows(rows, cols)
    return out if isinstance(table, dict) else columns.to_frame(out)


def _fmt_pct(x: float) -> str:
    return f"{x:.2f}%" if np.isfinite(x) else "missing"


def _fmt_fold(x: float) -> str:
    return f"x{x:.1f}" if x >= 0.995 else f"x{x:.2f}"


def subject_summary(table: Tabular) -> Tabular:
    """One row per subject: the answer to "did Tregs change, and did platelets respond?".

    Parameters
    ----------
    table : pandas.DataFrame or Table
        A :func:`baseline_table` result.

    Returns
    -------
    pandas.DataFrame or Table
        The type of ``table``: ``subject, n_samples, baseline_pct, peak_timepoint, peak_day, peak_fold_change,
        peak_fc_ci_low, peak_fc_ci_high, significant, direction, treg_verdict, clinical_response, clinical_verdict``.
        The peak is the significant timepoint furthest from baseline on the log scale, or, with no significant
        change, the furthest of all. ``direction`` is rise, fall, mixed or none.
    """
    t = columns.as_table(table)
    plt_col = platelet_column(list(t))
    cells = {c: t[c].tolist() for c in ("subject", "is_baseline", "fold_change", "significant", "baseline_pct",
                                         "timepoint", "day", "fc_ci_low", "fc_ci_high", "direction", "qc_flags",
                                         plt_col, "iwg_response", "baseline_platelets") if c in t}
    groups: dict[Any, list[int]] = {}
    for i, subject in enumerate(cells["subject"]):
        if subject == subject:  # groupby leaves out a missing (NaN) subject
            groups.setdefault(subject, []).append(i)
    rows = []
    is_base, fold, significant = cells["is_baseline"], cells["fold_change"], cells["significant"]
    for subject in sorted(groups):
        grp = groups[subject]
        later = [i for i in grp if not is_base[i] and math.isfinite(float(fold[i])) and float(fold[i]) > 0]
        sig = [i for i in later if significant[i]]
        pool = sig if len(sig) else later
        row: dict[str, object] = {"subject": subject, "n_samples": len(grp)}
        row["baseline_pct"] = float(cells["baseline_pct"][grp[0]])
        if len(pool):
            peak = pool[int(np.argmax(np.abs(np.log(np.array([fold[i] for i in pool], dtype=float)))))]
            row.update(peak_timepoint=cells["timepoint"][peak], peak_day=cells["day"][peak],
                       peak_fold_change=fold[peak], peak_fc_ci_low=cells["fc_ci_low"][peak],
                       peak_fc_ci_high=cells["fc_ci_high"][peak])
        else:
            row.update(peak_timepoint="", peak_day=np.nan, peak_fold_change=np.nan,
                       peak_fc_ci_low=np.nan, peak_fc_ci_high=np.nan)
        dirs = {cells["direction"][i] for i in sig}
        direction = "mixed" if len(dirs) > 1 else (dirs.pop() if dirs else "none")
        row["significant"] = bool(len(sig))
        row["direction"] = direction
        if not any(is_base[i] for i in grp):
            verdict = "No baseline sample: change not assessed"
        elif all(is_base[i] for i in grp):
            verdict = "Baseline only: no later timepoint"
        elif not len(later):
            verdict = f"Change not assessable (baseline Treg % is {_fmt_pct(row['baseline_pct'])})"
        elif direction == "rise":
            verdict = f"Tregs rose significantly ({_fmt_fold(row['peak_fold_change'])} at {row['peak_timepoint']}): " \
                      f"{NOISE_WORDS}"
        elif direction == "fall":
            verdict = f"Tregs fell significantly ({_fmt_fold(row['peak_fold_change'])} at {row['peak_timepoint']}): " \
                      f"{NOISE_WORDS}"
        elif direction == "mixed":
            verdict = f"Tregs changed significantly in both directions (peak {_fmt_fold(row['peak_fold_change'])} " \
                      f"at {row['peak_timepoint']}): {NOISE_WORDS}"
        else:
            verdict = f"No significant change (largest {_fmt_fold(row['peak_fold_change'])} " \
                      f"at {row['peak_timepoint']}): not beyond the assay, counting and gating noise"
        drifted = [str(cells["timepoint"][i]) for i in grp if "reference drift" in str(cells["qc_flags"][i])]
        if drifted and len(later):
            verdict += f". Reference populations drifted at {', '.join(drifted)}: check the instrument settings " \
                       "of those visits"
        row["treg_verdict"] = verdict
        row["clinical_response"], row["clinical_verdict"] = _platelet_verdict(cells, grp, plt_col)
        rows.append(row)
    if isinstance(table, dict):
        return columns.from_rows(rows, list(rows[0]) if rows else [])
    if not rows:
        import pandas as pd  # loaded already: the caller gave a DataFrame

        return pd.DataFrame(rows)
    return columns.to_frame(columns.from_rows(rows, list(rows[0])))


def _platelet_verdict(table: dict[str, list[Any]], rows: list[int], plt_col: str | None) -> tuple[str, str]:
    """IWG response of one subject (its ``rows`` of a baseline table's column lists): the best category after
    baseline, at the highest count in it."""
    if plt_col is None or "iwg_response" not in table or all(columns.is_missing(table[plt_col][i]) for i in rows):
        return "", "Platelets: no clinical data"
    later = [i for i in rows if not table["is_baseline"][i] and table["iwg_response"][i] != ""]
    if not len(later):
        return "", "Platelets: no count after baseline"
    rank = {c: i for i, c in enumerate(IWG_CATEGORIES)}
    best_rank = min(rank[table["iwg_response"][i]] for i in later)
    best = [i for i in later if rank[table["iwg_response"][i]] == best_rank]
    counts = [float(table[plt_col][i]) for i in best]
    top = best[counts.index(max(v for v in counts if v == v))]  # the first of the highest counts
    category = IWG_CATEGORIES[best_rank]
    base = float(table["baseline_platelets"][top])
    value = float(table[plt_col][top])
    where = f"at {table['timepoint'][top]}"
    if np.isfinite(base) and base > 0:
        return category, (f"Platelets: {category} ({value:g} x10^9/L = {value / base:.1f}x baseline {base:g} x10^9/L, "
                          f"{where})")
    return category, f"Platelets: {category} ({value:g} x10^9/L {where})"

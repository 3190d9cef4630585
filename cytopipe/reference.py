"""Reference populations across visits: did the instrument, not the biology, move?

Every Treg tube also holds populations whose staining should not change with treatment: CD4 on CD4 T cells, CD8 on
CD8 T cells, CD3 on T cells, and the scatter of lymphocytes. Their median fluorescence (MFI) is a built-in bead
check: when it moves between a subject's visits, the detector gains, the staining or the preparation moved, and a
Treg % measured with gates placed on that data deserves a second look.

1. :func:`reference_medians` (per sample, in the worker): the raw (uncompensated) detector median of each
   reference population, read from the gating result's masks.
2. :func:`reference_drift` (per study): each median against the subject's baseline sample, flagged when it moved
   by more than a limit (default 20 %); the rows go to ``gate_drift.csv``.
3. :func:`drift_flags` and :func:`drift_decades`: per sample, the readable flag for ``treg.csv``'s
   ``acquisition_qc`` and the largest fluorescence drift in decades, which widens the gating SD in
   :func:`cytopipe.stats.gate_sd_from_sensitivity`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import columns
from .columns import Table
from .errors import MarkerError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DRIFT_LIMIT_PCT", "DRIFT_COLUMNS", "reference_medians", "reference_drift", "drift_flags",
           "drift_decades"]

#: A reference population whose median moved more than this (percent) against baseline is flagged.
DRIFT_LIMIT_PCT = 20.0
#: Columns of the reference rows of ``gate_drift.csv`` (the gate rows have the same ones, ``qc`` empty).
DRIFT_COLUMNS = ("subject", "sample", "timepoint", "day", "population", "parameter", "value", "baseline_value",
                 "drift", "drift_pct", "qc")
_SCATTER = ("FSC-A", "SSC-A")


def _ancestors(strategy: Any, name: str) -> list[str]:
    """``name`` and its parents up to the root, nearest first."""
    chain = [name]
    while (parent := strategy.population(chain[-1]).parent) is not None:
        chain.append(parent)
    return chain


def _median(sample: Any, marker: str, rows: np.ndarray, whole: Mapping[int, np.ndarray],
            finite: Collection[int] = ()) -> float | None:
    try:
        index = sample.find_channel(marker)
    except MarkerError:
        return None
    column = whole.get(index)  # the gating's contiguous copy of the column, when it made one
    if column is None:
        column = sample.events[:, index]
    # A gather by sorted event indices: cheaper than boolean indexing of a strided column (and than take(), which
    # would first copy int32 indices to intp).
    return _median_of(column[rows], nan_free=index in finite) if rows.size >= 50 else None


#: From this many values on, :func:`_median_of` selects the middle from a band around a sampled median.
_SELECT_MIN = 5_000
#: Values sorted to place the band: about 1,000 below 20,000 values (a 20,000-event sample's populations: 30 against
#: 85 us for 13,000 values), about 4,000 above, where the narrower band pays for the larger sort.
_SAMPLE_SMALL, _SAMPLE_LARGE = 1024, 4096


def _median_of(values: np.ndarray, nan_free: bool = False) -> float:
    """``float(np.median(values))`` bit for bit, for a 1-D array this function may reorder (``nan_free``: the
    caller knows it holds no NaN, which is then not looked for).

    Small arrays: one in-place partition (a third of ``np.median``'s cost: no copy, partition at two places).
    Large ones: the middle is selected from the few percent of values between two pivots read off a strided
    sample (:func:`_middle_by_band`), which is exact, and falls back to the full partition in the rare case the
    band misses the middle (and when the median is zero, whose sign the band could pick differently).
    """
    if not nan_free and values.dtype.kind == "f" and np.isnan(values).any():
        return math.nan
    if values.size >= _SELECT_MIN:
        middle = _middle_by_band(values)
        if middle is not None:
            return middle
    half = values.size // 2
    if values.size % 2:
        values.partition(half)
        return float(np.mean(values[half:half + 1]))
    values.partition([half - 1, half])
    return float(np.mean(values[half - 1:half + 1]))  # np.median's mean of the two middle values, in their dtype


def _middle_by_band(values: np.ndarray) -> float | None:
    """The median from the values between two pivots that bracket it, or None when they do not (no NaN here)."""
    n = values.size
    half = n // 2
    first = half if n % 2 else half - 1
    sample = np.sort(values[:: max(1, n // (_SAMPLE_SMALL if n < 20_000 else _SAMPLE_LARGE))])
    centre, spread = sample.size // 2, 2 * int(math.sqrt(sample.size)) + 4  # ~4 standard deviations of its rank
    lo, hi = sample[max(centre - spread, 0)], sample[min(centre + spread, sample.size - 1)]
    inside = values >= lo
    below = n - int(np.count_nonzero(inside))  # no NaN here (checked by _median_of)
    inside &= values <= hi
    band = np.compress(inside, values)  # values[inside], faster than boolean indexing
    if not below <= first or half - below >= band.size:
        return None
    band.partition([first - below, half - below] if first != half else first - below)
    value = float(np.mean(band[first - below:half - below + 1]))
    return None if value == 0 else value


def reference_medians(sample: Any, result: Any, strategy: Any, cd4: str | None,
                      finite: Collection[int] = ()) -> dict[str, float]:
    """Median raw detector value of each reference population of one gated sample.

    Parameters
    ----------
    sample : cytopipe.fcs.Sample
        The sample the masks belong to.
    result : cytopipe.gates.GatingResult
        Its gating result.
    strategy : GatingStrategy
        The (fitted) strategy; it names the populations.
    cd4 : str or None
        The CD4 T cell population (the Treg % denominator). ``None``: no reference populations.
    finite : collection of int, optional
        Channels known to hold no NaN (:attr:`cytopipe.qc.AcquisitionQC.finite`): their values are not searched for
        one again.

    Returns
    -------
    dict
        ``"<population>|<marker>" -> median``: ``CD4 T|CD4``, ``CD8 T|CD8`` (T cells outside the CD4 gate),
        ``T cells|CD3`` (the CD4 gate's parent) and ``lymphocytes|FSC-A`` / ``|SSC-A`` (the root population of
        the chain). Entries whose marker or population the sample lacks, or with fewer than 50 events, are left
        out.

    Notes
    -----
    Raw detector values, before compensation and transforms: a gain change shows as the same relative change, and
    the bright populations chosen here carry little spillover.
    """
    if cd4 is None or cd4 not in result.masks:
        return {}
    chain = _ancestors(strategy, cd4)
    masks = result.masks
    members = getattr(result, "members", None) or {}

    def rows(name: str) -> np.ndarray:
        found = members.get(name)
        return np.flatnonzero(masks[name]) if found is None else found

    wanted: list[tuple[str, str, np.ndarray]] = [("CD4 T", "CD4", rows(cd4))]
    if len(chain) > 1 and chain[1] in masks:
        t_cells = rows(chain[1])
        verdict = (getattr(result, "kept", None) or {}).get(cd4)
        if verdict is not None and chain[1] in members:  # the CD4 gate's own verdict on each T cell (its parent)
            not_cd4 = np.compress(~np.unpackbits(verdict, count=t_cells.size).view(bool), t_cells)
        else:
            not_cd4 = np.flatnonzero(masks[chain[1]] & ~masks[cd4])
        wanted += [("CD8 T", "CD8", not_cd4), ("T cells", "CD3", t_cells)]
    if len(chain) > 2 and chain[-1] in masks:
        wanted += [("lymphocytes", channel, rows(chain[-1])) for channel in _SCATTER]
    out = {}
    whole = getattr(result, "whole", None) or {}
    for population, marker, index in wanted:
        value = _median(sample, marker, index, whole, finite)
        if value is not None:
            out[f"{population}|{marker}"] = value
    return out


def reference_drift(rows: list[dict] | Table | pd.DataFrame, limit_pct: float = DRIFT_LIMIT_PCT
                    ) -> pd.DataFrame | Table:
    """Each reference median against the subject's baseline sample.

    Parameters
    ----------
    rows : list of dict, table or pandas.DataFrame
        One row per sample: ``sample, subject, timepoint, day, baseline`` (bool) and ``references`` (the dict of
        :func:`reference_medians`); a :mod:`cytopipe.columns` table of those columns, or a DataFrame.
    limit_pct : float
        Relative move (percent, either way) above which a row is flagged.

    Returns
    -------
    pandas.DataFrame or table
        A table for a table, else a DataFrame, of the columns :data:`DRIFT_COLUMNS`: ``population`` is the
        reference population (``CD4 T`` ...), ``parameter`` is ``median <marker>``, ``drift`` = value - baseline
        value (raw units), ``drift_pct`` relative, and ``qc`` a readable flag (``moved +27% against baseline (limit
        20%)``) or empty. A subject without a flagged baseline falls back to its earliest day; references the
        baseline lacks are left out.

    Raises
    ------
    ValueError
        When ``limit_pct`` is not a positive number.
    """
    if not (isinstance(limit_pct, int | float) and math.isfinite(limit_pct) and limit_pct > 0):
        raise ValueError(f"the reference drift limit must be a positive percentage, got {limit_pct!r}")
    if isinstance(rows, dict):
        records = columns.records(rows)
    elif columns.is_frame(rows):
        records = rows.to_dict("records")
    else:
        records = list(rows)
    cells: dict[str, list] = {name: [] for name in DRIFT_COLUMNS}
    subjects, samples, timepoints, days, populations, parameters, values, bases, drifts, pcts, qcs = cells.values()
    for visits in _by_subject(records) if records else ():
        flagged = [rec for rec in visits if bool(rec.get("baseline", False))]
        base = flagged[0] if flagged else visits[0]
        base_refs: Mapping[str, float] = base["references"] or {}
        for rec in visits:
            for key, value in (rec["references"] or {}).items():
                if key not in base_refs or not base_refs[key]:
                    continue
                population, marker = key.split("|", 1)
                ref = float(base_refs[key])
                pct = 100.0 * (value - ref) / abs(ref)
                subjects.append(rec["subject"])
                samples.append(rec["sample"])
                timepoints.append(rec["timepoint"])
                days.append(rec["day"])
                populations.append(population)
                parameters.append(f"median {marker}")
                values.append(value)
                bases.append(ref)
                drifts.append(value - ref)
                pcts.append(pct)
                qcs.append(f"moved {pct:+.0f}% against baseline (limit {limit_pct:g}%)" if abs(pct) > limit_pct
                           else "")
    # The columns pandas.DataFrame(rows) types; those computed here are floats (a float baseline in each).
    table = {name: np.array(values, dtype=np.float64) if name in ("baseline_value", "drift", "drift_pct") and values
             else columns.column(values) for name, values in cells.items()}
    return table if isinstance(rows, dict) else columns.to_frame(table)


def _by_subject(records: list[dict]) -> list[list[dict]]:
    """The rows of each subject in subject order, each subject's by day then sample, as a stable sort of the frame
    by subject, day and sample and its grouping by subject order them: missing days last, rows without a subject
    left out (pandas sorts the rows whose keys Python cannot order)."""
    keys = {name: columns.column([rec[name] for rec in records]) for name in ("subject", "day", "sample")}
    keys["_row"] = np.arange(len(records))
    try:
        order = columns.sorted_by(keys, ["subject", "day", "sample"])["_row"].tolist()
    except TypeError:
        import pandas as pd

        frame = pd.DataFrame(records).sort_values(["subject", "day", "sample"], kind="mergesort")
        return [group.to_dict("records") for _, group in frame.groupby("subject", sort=True)]
    groups: dict[Any, list[dict]] = {}
    for i in order:
        subject = records[i]["subject"]
        if not columns.is_missing(subject):
            groups.setdefault(subject, []).append(records[i])
    return list(groups.values())


def drift_flags(drift: Table | pd.DataFrame | None) -> dict[str, str]:
    """Per sample, the ``acquisition_qc`` text of its flagged reference populations (empty dict if none), from the
    rows of :func:`reference_drift` (a table or a DataFrame)."""
    flags: dict[str, str] = {}
    if drift is None or (columns.length(drift) if isinstance(drift, dict) else len(drift)) == 0:
        return flags
    table = columns.as_table(drift)
    rows = [i for i, qc in enumerate(table["qc"].tolist()) if str(qc) != ""]
    moved: dict[Any, list[int]] = {}
    for i, sample in zip(rows, table["sample"][rows].tolist(), strict=True):
        if not columns.is_missing(sample):
            moved.setdefault(sample, []).append(i)
    parameter, population, pct, qc = (table[name].tolist() for name in ("parameter", "population", "drift_pct", "qc"))
    for sample, group in moved.items():
        parts = [f"{parameter[i].removeprefix('median ')} on {population[i]} {pct[i]:+.0f}%" for i in group]
        limit = qc[group[0]].rsplit("limit ", 1)[-1].rstrip(")")
        flags[str(sample)] = f"reference drift against baseline > {limit}: " + ", ".join(parts)
    return flags


def drift_decades(drift: Table | pd.DataFrame | None) -> dict[str, float]:
    """Per sample, the largest ``|log10(value / baseline)|`` over its fluorescence reference populations (rows of
    :func:`reference_drift`, a table or a DataFrame)."""
    out: dict[str, float] = {}
    if drift is None or (columns.length(drift) if isinstance(drift, dict) else len(drift)) == 0:
        return out
    table = columns.as_table(drift)
    scatter = {f"median {c}" for c in _SCATTER}
    fluor = np.array([p not in scatter for p in table["parameter"].tolist()], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(table["value"][fluor], dtype=float) / np.asarray(table["baseline_value"][fluor],
                                                                             dtype=float)
        decades = np.abs(np.log10(ratio))
    for sample, value in zip(table["sample"][fluor].tolist(), decades.tolist(), strict=True):
        if math.isfinite(value):
            sample = str(sample)
            out[sample] = max(out.get(sample, 0.0), value)
    return out

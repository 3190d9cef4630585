"""Quality of the fitted gates: :func:`gate_drift` against the subject's baseline fit and :func:`sensitivity` of
the Treg % to each fitted threshold."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GateError
from ..gates import BooleanGate, Gate, GatingStrategy, RectangleGate
from .base import (
    DEFAULT_MAX_EVENTS,
    from_units,
    to_units,
)
from .fit import _evaluate, _subsample_columns, fit_strategy
from .threshold import ThresholdGate

if TYPE_CHECKING:
    import pandas as pd

    from ..columns import Table

_IDENTITY = {"sample", "subject", "timepoint", "day", "baseline", "population", "type", "scope", "fitted_on",
             "n_samples", "n_events"}


_DRIFT_COLUMNS = ("subject", "sample", "timepoint", "day", "population", "parameter", "value", "baseline_value",
                  "drift", "drift_pct")


def gate_drift(fitted_rows: Sequence[Mapping[str, Any]] | Table | pd.DataFrame) -> pd.DataFrame | Table:
    """Drift of every fitted gate parameter per timepoint against the subject's baseline fit.

    Parameters
    ----------
    fitted_rows : list of dict, table or pandas.DataFrame
        ``gates_fitted.csv`` rows: :func:`fit_strategy` rows with ``sample, subject, timepoint, day`` added (and
        optionally a bool ``baseline``; a subject with no row flagged falls back to its earliest day); as dicts, a
        :mod:`cytopipe.columns` table or a DataFrame.

    Returns
    -------
    pandas.DataFrame or table
        A table for a table, else a DataFrame (its columns typed as pandas types them). One row per subject x
        timepoint x population x numeric parameter: ``subject, sample, timepoint, day, population, parameter,
        value, baseline_value, drift`` (value - baseline value, same units: logicle decades for thresholds, raw for
        scatter) and ``drift_pct`` (drift relative to the baseline value, percent), by subject, day, sample,
        population (in the order of the rows) and parameter. Gates fitted once per subject (``subject``/
        ``baseline`` scope, rows without a day) are left out.

    Raises
    ------
    ValueError
        The rows lack ``subject``, ``day`` or ``population``.
    """
    from .. import columns

    if isinstance(fitted_rows, dict):
        return _drift_table(fitted_rows)
    table = columns.from_frame(fitted_rows) if columns.is_frame(fitted_rows) else columns.from_rows(fitted_rows)
    return columns.to_frame(_drift_table(table))


def _drift_table(table: Table) -> Table:
    """:func:`gate_drift` of a table, as a table (computed as the DataFrame version computed it: a melt of the
    numeric parameter columns, the baseline row's value of each subject, population and parameter, a merge)."""
    from .. import columns

    n = columns.length(table)
    if not n:
        return columns.from_rows([], _DRIFT_COLUMNS)
    missing = [c for c in ("subject", "day", "population") if c not in table]
    if missing:
        raise ValueError(f"gate_drift: fitted rows lack column(s) {', '.join(missing)}")
    # The rows with a day (numbers, or text that reads as one); the parameters are the numeric columns of all rows.
    days = [_day(value) for value in table["day"].tolist()]
    kept = [i for i, day in enumerate(days) if day == day]
    params = [name for name, values in table.items() if name not in _IDENTITY and values.dtype.kind in "biufc"]
    ids = {name: table[name][kept] if name in table else columns.column([""] * len(kept))
           for name in ("subject", "sample", "timepoint", "population")}
    day = np.array([days[i] for i in kept], dtype=np.float64)
    flags = table["baseline"][kept].tolist() if "baseline" in table else None
    # The long table (parameter by parameter, rows in order), without missing values.
    dtype = _common_dtype([table[name].dtype for name in params])
    long_rows: list[int] = []  # index into kept
    long_params: list[str] = []
    long_values: list[Any] = []
    for name in params:
        values = table[name][kept].tolist()
        for i, value in enumerate(values):
            if not columns.is_missing(value):
                long_rows.append(i)
                long_params.append(name)
                long_values.append(value)
    subjects = ids["subject"].tolist()
    populations = ids["population"].tolist()
    # Each subject's earliest day, and whether any of its rows is flagged baseline.
    earliest: dict[Any, float] = {}
    any_flag: dict[Any, bool] = {}
    for i in long_rows:
        subject = subjects[i]
        if columns.is_missing(subject):
            continue
        earliest[subject] = min(earliest.get(subject, day[i]), day[i])
        if flags is not None:
            any_flag[subject] = any_flag.get(subject, False) or bool(flags[i])
    base: dict[tuple, Any] = {}
    for i, name, value in zip(long_rows, long_params, long_values, strict=True):
        subject, population = subjects[i], populations[i]
        if columns.is_missing(subject) or columns.is_missing(population):
            continue
        flagged = flags is not None and bool(flags[i])
        if flagged or (day[i] == earliest[subject] and not any_flag.get(subject, False)):
            base.setdefault((subject, population, name), value)
    chosen = [k for k, (i, name) in enumerate(zip(long_rows, long_params, strict=True))
              if not columns.is_missing(subjects[i]) and not columns.is_missing(populations[i])
              and (subjects[i], populations[i], name) in base]
    rows = [long_rows[k] for k in chosen]
    value = np.array([long_values[k] for k in chosen], dtype=dtype)
    baseline_value = np.array([base[subjects[long_rows[k]], populations[long_rows[k]], long_params[k]]
                               for k in chosen], dtype=dtype)
    drift = value - baseline_value
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.abs(baseline_value)
        scale = np.where(scale > 0, scale, np.nan) if scale.dtype != object else \
            np.array([v if v > 0 else np.nan for v in scale.tolist()], dtype=np.float64)
        drift_pct = np.asarray(100.0 * drift / scale, dtype=np.float64)
    out = {"subject": ids["subject"][rows], "sample": ids["sample"][rows], "timepoint": ids["timepoint"][rows],
           "day": day[rows], "population": ids["population"][rows],
           "parameter": columns.column([long_params[k] for k in chosen]) if chosen else np.array([], dtype=object),
           "value": value, "baseline_value": baseline_value, "drift": drift, "drift_pct": drift_pct}
    position = {name: i for i, name in enumerate(dict.fromkeys(ids["population"].tolist()))}
    out["_order"] = np.array([position[p] for p in out["population"].tolist()], dtype=np.int64)
    out = columns.sorted_by(out, ["subject", "day", "sample", "_order", "parameter"])
    return columns.select(out, _DRIFT_COLUMNS)


def _day(value: Any) -> float:
    """A ``day`` cell as a number (as ``pandas.to_numeric(errors="coerce")`` reads it), NaN when it is none."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        from ..numeric import parse

        try:  # a day to_numeric reads as a number, as astype(float) then converts it
            return float(value) if parse(value) is not None else math.nan
        except ValueError:
            return math.nan
    return math.nan


def _common_dtype(dtypes: list[np.dtype]) -> type | np.dtype:
    """The dtype of the values of columns of these dtypes melted into one (integers and floats: float)."""
    if not dtypes:
        return np.float64  # pandas' melt of no column
    if len(set(dtypes)) == 1:
        return dtypes[0]
    if all(d.kind in "iuf" for d in dtypes):
        return np.float64
    return object


def sensitivity(
    strategy: GatingStrategy,
    sample: Any,
    treg: str | None = None,
    parent: str | None = None,
    *,
    delta: float = 0.1,
    spillover: Any = None,
    fitted: GatingStrategy | None = None,
    max_events: int | None = DEFAULT_MAX_EVENTS,
) -> list[dict[str, Any]]:
    """How much the Treg % moves when each data-driven threshold shifts by +/- ``delta``.

    Parameters
    ----------
    strategy : GatingStrategy
        The data-driven strategy: each threshold of its :class:`ThresholdGate` populations is examined, and the
        boundaries of gates that describe their own shifts (``TailGate``: the region moved along each axis;
        ``MixtureGate``: the ellipse's half-width along X).
    sample : cytopipe.fcs.Sample
        The sample.
    treg, parent : str, optional
        Treg population and denominator (default: the strategy's ``treg``/``parent``, else the population named
        ``Treg`` and its parent).
    delta : float
        Shift in friendly units of each dimension (logicle decades: default 0.1).
    spillover : Spillover, optional
        As for :meth:`GatingStrategy.apply`.
    fitted : GatingStrategy, optional
        The strategy already fitted for this sample (default: fitted here with :func:`fit_strategy`).
    max_events : int or None
        Larger samples are evaluated on every k-th event down to about this many (``None``: all events); the
        changes are then estimates, and ``treg_pct`` is that of the subsample. With the default (the fit's
        subsample size), the columns :func:`fit_strategy` computed for this sample object are reused.

    Returns
    -------
    list of dict
        One row per threshold: ``population, channel, bound`` (``min``/``max``), ``threshold`` (friendly units),
        ``delta``, ``treg_pct``, ``treg_pct_minus``, ``treg_pct_plus`` (threshold shifted down / up),
        ``max_change_pp`` (largest absolute change, percentage points) and ``n_events`` (events evaluated).

    Raises
    ------
    GateError
        No Treg population can be found.
    """
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    treg = treg or strategy.treg or next((p.name for p in strategy.populations if p.name.casefold() == "treg"), None)
    if treg is None:
        raise GateError(f"{strategy.name or 'gating strategy'}: no Treg population (name one with treg=)")
    parent = parent or strategy.parent or strategy.population(treg).parent
    if fitted is None:
        fitted, _ = fit_strategy(strategy, [sample], spillover=spillover, max_events=max_events or DEFAULT_MAX_EVENTS)
    # Only the populations the Treg % depends on are gated, on the columns the fit computed for this sample (the
    # same subsample, compensated and transformed once); each shifted threshold re-evaluates just its population
    # and the ones below it.
    needed = {treg, *([parent] if parent else [])}
    for pop in reversed(fitted.populations):
        if pop.name in needed:
            needed.update([pop.parent] if pop.parent else [])
            needed.update(pop.gate.operands if isinstance(pop.gate, BooleanGate) else ())
    pops = [p for p in fitted.populations if p.name in needed]
    columns, entry = _subsample_columns(fitted, {p.name: p.gate.dimensions for p in pops}, sample, spillover,
                                        max_events)
    n_events = entry.sample.n_events
    base_masks: dict[str, np.ndarray] = {}
    _evaluate(pops, columns, base_masks, entry)

    def treg_pct(masks: Mapping[str, np.ndarray]) -> float:
        n = n_events if parent is None else int(np.count_nonzero(masks[parent]))
        return 100.0 * int(np.count_nonzero(masks[treg])) / n if n else math.nan

    def below(name: str) -> set[str]:
        out = {name}
        for p in pops:
            if p.parent in out or (isinstance(p.gate, BooleanGate) and out & set(p.gate.operands)):
                out.add(p.name)
        return out

    base = treg_pct(base_masks)
    rows = []
    for pop in strategy.populations:
        if pop.name not in needed or not (isinstance(pop.gate, ThresholdGate) or hasattr(pop.gate, "shifts")):
            continue
        gate = fitted.population(pop.name).gate
        stale = below(pop.name)
        for channel, bound, friendly, *moved_gates in _shifts(pop.gate, gate, delta):
            moved = []
            for new in moved_gates:
                masks = {k: v for k, v in base_masks.items() if k not in stale}
                _evaluate([replace(p, gate=new) if p.name == pop.name else p for p in pops], columns, masks, entry,
                          keep=False)
                moved.append(treg_pct(masks))
            rows.append({"population": pop.name, "channel": channel, "bound": bound, "threshold": friendly,
                         "delta": delta, "treg_pct": base, "treg_pct_minus": moved[0], "treg_pct_plus": moved[1],
                         "max_change_pp": max(abs(moved[0] - base), abs(moved[1] - base)),
                         "n_events": n_events})
    return rows


def _shifts(auto: Any, gate: Gate, delta: float) -> list[tuple[str, str, float, Gate, Gate]]:
    """``(channel, bound, value, gate moved down, gate moved up)`` for each fitted boundary of a data-driven gate:
    each threshold of a :class:`ThresholdGate` moved by -/+ ``delta``; other gates describe their own
    (``shifts``)."""
    if not isinstance(auto, ThresholdGate):
        return auto.shifts(gate, delta)
    assert isinstance(gate, RectangleGate)
    out = []
    for i, (dim, t) in enumerate(zip(gate.dimensions, auto.thresholds, strict=True)):
        bound = "min" if t.side == "above" else "max"
        friendly = from_units((gate.min if bound == "min" else gate.max)[i], dim.transform)
        moved = []
        for sign in (-1.0, 1.0):
            shifted = list(gate.min if bound == "min" else gate.max)
            shifted[i] = to_units(friendly + sign * delta, dim.transform)
            moved.append(replace(gate, **{bound: tuple(shifted)}))
        out.append((str(dim.channel), bound, friendly, moved[0], moved[1]))
    return out

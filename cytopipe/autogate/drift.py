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

_IDENTITY = {"sample", "subject", "timepoint", "day", "baseline", "population", "type", "scope", "fitted_on",
             "n_samples", "n_events"}


def gate_drift(fitted_rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Drift of every fitted gate parameter per timepoint against the subject's baseline fit.

    Parameters
    ----------
    fitted_rows : list of dict or pandas.DataFrame
        ``gates_fitted.csv`` rows: :func:`fit_strategy` rows with ``sample, subject, timepoint, day`` added (and
        optionally a bool ``baseline``; a subject with no row flagged falls back to its earliest day).

    Returns
    -------
    pandas.DataFrame
        One row per subject x timepoint x population x numeric parameter: ``subject, sample, timepoint, day,
        population, parameter, value, baseline_value, drift`` (value - baseline value, same units: logicle decades
        for thresholds, raw for scatter) and ``drift_pct`` (drift relative to the baseline value, percent). Gates
        fitted once per subject (``subject``/``baseline`` scope, rows without a day) are left out.

    Raises
    ------
    ValueError
        The rows lack ``subject``, ``day`` or ``population``.
    """
    import pandas as pd

    table = pd.DataFrame(list(fitted_rows) if not isinstance(fitted_rows, pd.DataFrame) else fitted_rows)
    columns = ["subject", "sample", "timepoint", "day", "population", "parameter", "value", "baseline_value",
               "drift", "drift_pct"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    missing = [c for c in ("subject", "day", "population") if c not in table.columns]
    if missing:
        raise ValueError(f"gate_drift: fitted rows lack column(s) {', '.join(missing)}")
    table = table[pd.to_numeric(table["day"], errors="coerce").notna()].copy()
    table["day"] = table["day"].astype(float)
    for col in ("sample", "timepoint"):
        if col not in table.columns:
            table[col] = ""
    params = [c for c in table.columns if c not in _IDENTITY and pd.api.types.is_numeric_dtype(table[c])]
    ids = ["subject", "sample", "timepoint", "day", "population"]
    if "baseline" in table.columns:
        ids.append("baseline")
    long = table.melt(id_vars=ids, value_vars=params, var_name="parameter", value_name="value")
    long = long.dropna(subset=["value"])
    # A subject without a flagged baseline row falls back to its earliest day.
    earliest = long["day"] == long.groupby("subject")["day"].transform("min")
    if "baseline" in long.columns:
        flagged = long["baseline"].astype(bool)
        base = long[flagged | (earliest & ~flagged.groupby(long["subject"]).transform("any"))]
    else:
        base = long[earliest]
    base = base.groupby(["subject", "population", "parameter"], as_index=False)["value"].first()
    out = long.merge(base.rename(columns={"value": "baseline_value"}), on=["subject", "population", "parameter"])
    out["drift"] = out["value"] - out["baseline_value"]
    scale = out["baseline_value"].abs().where(out["baseline_value"].abs() > 0)
    out["drift_pct"] = 100.0 * out["drift"] / scale
    order = {n: i for i, n in enumerate(dict.fromkeys(table["population"]))}
    out["_order"] = out["population"].map(order)
    out = out.sort_values(["subject", "day", "sample", "_order", "parameter"], kind="mergesort")
    return out[columns].reset_index(drop=True)


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

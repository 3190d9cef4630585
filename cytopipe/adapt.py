"""Fitting a gate file's strategy to what one file is: pre-gated exports and optional populations.

* :func:`pregate` — the file was exported from one population (FlowJo "export CD4+ T cells"): that population
  takes every event, the gates above it are not applied, its descendants are gated as usual.
* :func:`resolve_optional` — a population marked ``optional: true`` whose gate needs a channel the file lacks
  (no FSC-H on an old instrument, so no singlet gate) passes all its parent's events, with a note for the
  sample's ``acquisition_qc``.

Both return a new :class:`~cytopipe.gates.GatingStrategy`; the gate file's strategy is never changed.
"""

from __future__ import annotations

import dataclasses
from difflib import get_close_matches
from typing import Any

from .errors import ConfigError, GateError, MarkerError
from .gates import AllEvents, BooleanGate, GatingStrategy, Population


def _label(strategy: GatingStrategy) -> str:
    return strategy.name or "gate file"


def find_population(strategy: GatingStrategy, name: str, option: str, where: str = "") -> str:
    """The population called ``name`` (case-insensitive when unambiguous).

    Raises
    ------
    ConfigError
        No such population; one line naming the option, the gate file and the closest name.
    """
    names = [p.name for p in strategy.populations]
    if name in names:
        return name
    folded = [n for n in names if n.casefold() == str(name).casefold()]
    if len(folded) == 1:
        return folded[0]
    close = get_close_matches(str(name), names, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{where or _label(strategy)}: {option} population '{name}' is not in the strategy{hint}; "
                      f"populations: {', '.join(names)}")


def pregate(strategy: GatingStrategy, population: str | None, option: str = "--pregated", where: str = ""
            ) -> GatingStrategy:
    """The strategy for a file whose every event is already in ``population``.

    Parameters
    ----------
    strategy
        The gate file's strategy.
    population
        The population the file was exported from; ``None`` or ``""`` returns ``strategy`` unchanged.
    option
        How the user named it (``--pregated`` or ``sheet column 'pregated'``), for messages.
    where
        The gate file's path, for messages (default: the strategy's name).

    Returns
    -------
    GatingStrategy
        ``population`` as the root with an :class:`~cytopipe.gates.AllEvents` gate, followed by its descendants
        unchanged; populations above it and in other branches are dropped.

    Raises
    ------
    ConfigError
        The population is unknown (with a suggestion).
    GateError
        A kept population depends on a dropped one (a boolean gate's operand), or the gate file's Treg population
        or its denominator lies above the pre-gated population.
    """
    if not population:
        return strategy
    top = find_population(strategy, population, option, where)
    kept = {top}
    for pop in strategy.populations:  # topological order: a parent is seen before its children
        if pop.parent in kept:
            kept.add(pop.name)
    where = f"{where or _label(strategy)}: {option} {top}"
    populations = []
    for pop in strategy.populations:
        if pop.name not in kept:
            continue
        if pop.name == top:
            populations.append(Population(top, AllEvents(name=pop.gate.name or top, reason=f"pre-gated {top}"),
                                          parent=None))
            continue
        if isinstance(pop.gate, BooleanGate):
            outside = [name for name in pop.gate.operands if name not in kept]
            if outside:
                raise GateError(f"{where}: population '{pop.name}' combines '{outside[0]}', which is not "
                                f"below the pre-gated population")
        populations.append(pop)
    for label, value in (("treg", strategy.treg), ("parent", strategy.parent)):
        if value is not None and value not in kept:
            raise GateError(f"{where}: the gate file's {label} population '{value}' is not below the pre-gated "
                            f"population")
    return dataclasses.replace(strategy, populations=tuple(populations))


def _lacks(sample: Any, channel: str) -> bool:
    """True when ``sample`` has no channel or marker ``channel`` (an ambiguous name is an error, not absence)."""
    try:
        sample.find_channel(channel)
    except MarkerError as err:
        if "ambiguous" in str(err):
            raise
        return True
    return False


def resolve_optional(strategy: GatingStrategy, sample: Any) -> tuple[GatingStrategy, list[str]]:
    """Replace each optional population whose channels the sample lacks by its parent's events.

    Parameters
    ----------
    strategy
        A strategy (fitted or not).
    sample : cytopipe.fcs.Sample
        The file (with any panel applied).

    Returns
    -------
    tuple
        ``(strategy, notes)``: ``notes`` has one line per skipped population, e.g. ``optional population
        'Singlets' not gated (no FSC-H): all events of 'Lymphocytes' kept``.
    """
    notes: list[str] = []
    populations = list(strategy.populations)
    for k, pop in enumerate(populations):
        if not pop.optional or isinstance(pop.gate, AllEvents):
            continue
        missing = [c for d in pop.gate.dimensions for c in d.channels if _lacks(sample, c)]
        if not missing:
            continue
        parent = f"'{pop.parent}'" if pop.parent is not None else "the file"
        note = (f"optional population '{pop.name}' not gated (no {', '.join(dict.fromkeys(missing))}): "
                f"all events of {parent} kept")
        notes.append(note)
        populations[k] = dataclasses.replace(pop, gate=AllEvents(name=pop.gate.name or pop.name, reason=note))
    if not notes:
        return strategy, notes
    return dataclasses.replace(strategy, populations=tuple(populations)), notes


#: flowCore's estimateLogicle: r is this quantile of the negative values.
NEGATIVE_QUANTILE = 0.05
#: Events of a file used to estimate the negative spread (every k-th over the acquisition).
WIDTH_EVENTS = 200_000


def _auto_width_dimensions(strategy: GatingStrategy) -> list[tuple[str, Any]]:
    """``(first population, dimension)`` of each distinct ``W: auto`` logicle dimension."""
    from .transforms import AutoWidthLogicle

    found: dict[tuple, tuple[str, Any]] = {}
    for pop in strategy.populations:
        for dim in pop.gate.dimensions:
            if isinstance(dim.transform, AutoWidthLogicle) and dim.ratio is None:
                found.setdefault(_width_key(dim), (pop.name, dim))
    return list(found.values())


def _width_key(dim: Any) -> tuple:
    return (dim.channel, dim.compensation, dim.transform)


def logicle_width(values: Any, T: float, M: float, A: float = 0.0, q: float = NEGATIVE_QUANTILE
                  ) -> tuple[float, float, int, str]:
    """The logicle width for data with this negative spread (flowCore's ``estimateLogicle`` rule).

    Parameters
    ----------
    values : numpy.ndarray
        The channel's (compensated, untransformed) values.
    T, M, A
        The logicle's top of scale, decades and extra negative decades.
    q
        Quantile of the negative values taken as the most negative value to show, ``r``.

    Returns
    -------
    (float, float, int, str)
        ``W``, ``r`` (NaN without negatives), the number of negative values, and how ``W`` was set:
        ``"fitted"``, ``"no negatives"`` (W = 0), ``"clamped"`` (into the logicle's valid range).

    Notes
    -----
    ``W = (M - log10(T / |r|)) / 2`` (Parks, Roederer & Moore 2006; flowCore ``estimateLogicle``): the linear
    region is just wide enough to show the negative spread down to ``r``. ``W`` is then kept in
    ``[max(0, -A), (M - A) / 2]``, the range where the logicle is defined.
    """
    import numpy as np

    x = np.asarray(values, dtype=float)
    negative = x[np.isfinite(x) & (x < 0)]
    lo, hi = max(0.0, -A), (M - A) / 2
    if negative.size == 0:
        return lo, float("nan"), 0, "no negatives"
    r = float(np.quantile(negative, q))
    w = (M - float(np.log10(T / abs(r)))) / 2
    if w < lo or w > hi:
        return float(min(max(w, lo), hi)), r, int(negative.size), "clamped"
    return w, r, int(negative.size), "fitted"


def fit_widths(strategy: GatingStrategy, samples: list[Any], spillovers: list[Any] | None = None
               ) -> tuple[dict[tuple, Any], list[dict[str, Any]]]:
    """Fit every ``W: auto`` logicle of the strategy on the samples' events (pooled).

    Parameters
    ----------
    strategy
        The strategy (its dimensions with :class:`~cytopipe.transforms.AutoWidthLogicle` are fitted).
    samples
        The samples, with any panel applied.
    spillovers
        One spillover (or ``None``) per sample, as the gates use it.

    Returns
    -------
    tuple
        ``({dimension key: fitted Logicle}, rows)``; one ``gates_fitted.csv`` row per channel
        (``population``, ``type`` = ``logicle W: auto``, ``<channel> W``, ``<channel> r``, ``<channel> T``,
        ``<channel> negatives``, ``<channel> W method``). Empty when nothing asks for ``W: auto``.
    """
    import numpy as np

    from .gates import RectangleGate
    from .transforms import Logicle

    autos = _auto_width_dimensions(strategy)
    if not autos or not samples:
        return {}, []
    spillovers = spillovers if spillovers is not None else [None] * len(samples)
    tops = {_width_key(dim): _top(strategy, dim, samples[0]) for _, dim in autos}
    probe_dims = tuple(dataclasses.replace(dim, transform=None) for _, dim in autos)
    probe = RectangleGate("probe", probe_dims, min=(-np.inf,) * len(autos), max=(None,) * len(autos))
    probing = dataclasses.replace(strategy, populations=(Population("probe", probe),), treg=None, parent=None)
    columns: list[list[Any]] = [[] for _ in autos]
    for sample, spill in zip(samples, spillovers, strict=True):
        if sample.n_events > WIDTH_EVENTS:
            sample = dataclasses.replace(sample, events=sample.events[:: -(-sample.n_events // WIDTH_EVENTS)])
        values = probing.apply(sample, spill).values(probe)
        for k in range(len(autos)):
            columns[k].append(values[:, k])
    widths: dict[tuple, Any] = {}
    rows: list[dict[str, Any]] = []
    for (population, dim), parts in zip(autos, columns, strict=True):
        t = dim.transform
        top = tops[_width_key(dim)]
        w, r, n, how = logicle_width(np.concatenate(parts), top, t.M, t.A)
        widths[_width_key(dim)] = Logicle(T=t.T, W=w, M=t.M, A=t.A, name=t.name, bound_min=t.bound_min,
                                          bound_max=t.bound_max)
        label = str(dim.channel)
        rows.append({"population": population, "type": "logicle W: auto", "scope": "sample",
                     "n_samples": len(samples), f"{label} W": w, f"{label} r": r, f"{label} T": top,
                     f"{label} negatives": n, f"{label} W method": how})
    return widths, rows


def _top(strategy: GatingStrategy, dim: Any, sample: Any) -> float:
    """The top of scale the logicle will have: the file's, for data-driven gates that follow ``$PnR``."""
    for pop in strategy.populations:
        if dim in pop.gate.dimensions and getattr(pop.gate, "auto_top", False):
            from .autogate.base import channel_top

            top = channel_top(sample, str(dim.channel))
            return float(top) if top is not None else float(dim.transform.T)
    return float(dim.transform.T)


def apply_widths(strategy: GatingStrategy | None, widths: dict[tuple, Any]) -> GatingStrategy | None:
    """The strategy with each fitted ``W: auto`` logicle in place (unchanged without widths)."""
    if strategy is None or not widths:
        return strategy

    def fitted(dim: Any) -> Any:
        new = widths.get(_width_key(dim))
        return dim if new is None else dataclasses.replace(dim, transform=new)

    populations = []
    for pop in strategy.populations:
        dims = tuple(fitted(d) for d in pop.gate.dimensions)
        if dims != pop.gate.dimensions:
            pop = dataclasses.replace(pop, gate=dataclasses.replace(pop.gate, dimensions=dims))
        populations.append(pop)
    return dataclasses.replace(strategy, populations=tuple(populations))


def fallback_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per data-driven cut that found no density valley (a single mode: ``negative+k*sd`` or
    ``positive-k*sd``) and per gate fitted without any of its control tubes (``control`` = ``none``), from the
    ``gates_fitted.csv`` rows of one sample, for its ``acquisition_qc``.

    A fraction from such a cut is a guess from one population's spread, not a split between two: worth a look.
    """
    notes = []
    for row in rows:
        if row.get("control") == "none":  # a tail gate none of whose control tubes is in the sheet
            notes.append(f"population '{row.get('population', '')}': no control tube in the sheet, "
                         "tail boundary without a control cut")
        for key, value in row.items():
            if str(key).endswith(" method") and isinstance(value, str) and "k*sd" in value:
                channel = str(key)[: -len(" method")]
                notes.append(f"population '{row.get('population', '')}': no {channel} valley, cut by {value}")
    return notes

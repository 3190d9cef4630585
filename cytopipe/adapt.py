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

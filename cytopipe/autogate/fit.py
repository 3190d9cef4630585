"""The fitting driver: :func:`fit_strategy` fits every data-driven gate of a strategy top-down, each on its fitted
parent's events pooled over the samples of its scope, on cached transformed columns of a subsample."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import GateError, MarkerError
from ..gates import BooleanGate, Dimension, EllipsoidGate, Gate, GatingStrategy, Population, RectangleGate
from .base import (
    DEFAULT_MAX_EVENTS,
    MIN_EVENTS,
    SCOPES,
    AutoGate,
    missing_control,
    resolve_dimension,
)


def needs_fitting(strategy: GatingStrategy) -> bool:
    """True when any population of ``strategy`` has a data-driven gate that is not fitted yet."""
    return any(isinstance(p.gate, AutoGate) for p in strategy.populations)


def client_scopes(strategy: GatingStrategy) -> set[str]:
    """The scopes other than ``sample`` used by the strategy's unfitted data-driven gates (fitted per subject)."""
    return {p.gate.scope for p in strategy.populations if isinstance(p.gate, AutoGate)} - {"sample"}


def _sample_name(sample: Any, i: int) -> str:
    path = str(getattr(sample, "path", "") or "")
    return path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] if path else f"sample {i + 1}"


def _subsample_sample(sample: Any, n: int) -> Any:
    """The sample with about ``n`` events: every k-th event over the whole acquisition (systematic sampling keeps
    the time course represented and needs no random index). Its ``events`` are a view of the sample's."""
    if sample.n_events <= n:
        return sample
    step = -(-sample.n_events // n)
    # A strided view, not a copy: only the columns the gates read are gathered, by the compensation itself.
    return replace(sample, events=sample.events[::step])


def _by_detector(dim: Dimension, sample: Any) -> Dimension:
    """``dim`` with its channel(s) renamed to the ``$PnN`` they resolve to in ``sample``."""
    names = tuple(sample.channels[sample.find_channel(c)] for c in dim.channels)
    return replace(dim, channel=names if isinstance(dim.channel, tuple) else names[0])


def _check_markers(pop: Population, sample: Any) -> None:
    """Raise MarkerError naming the marker *and* the population that needs it."""
    where = getattr(sample, "path", "") or "<in-memory sample>"
    for dim in pop.gate.dimensions:
        for channel in dim.channels:
            try:
                sample.find_channel(channel)
            except MarkerError as err:
                detail = str(err).removeprefix(f"{where}: ")
                raise MarkerError(f"{where}: population '{pop.name}' needs marker '{channel}': {detail}") from None


def _fast_mask(gate: Gate, columns: Sequence[np.ndarray], inf_top: bool) -> np.ndarray:
    """``gate.mask`` on one contiguous 1-D column per dimension, with the engine's semantics.

    A rectangle is one comparison per bounded side (``lo <= x < hi``; an open top still drops ``+inf`` when the
    column holds any, and NaN fails every comparison), a 2-D ellipse its quadratic form written out in the
    columns' precision; other gates are masked by the gate itself.
    """
    if isinstance(gate, RectangleGate):
        out: np.ndarray | None = None
        for column, lo, hi in zip(columns, gate.min, gate.max, strict=True):
            tests = [] if lo is None else [column >= lo]
            if hi is not None:
                tests.append(column < hi)
            elif inf_top:
                tests.append(column < np.inf)
            for test in tests:
                out = test if out is None else np.logical_and(out, test, out=out)
        assert out is not None  # every dimension of a rectangle has a bound
        return out
    if isinstance(gate, EllipsoidGate) and len(columns) == 2:
        x, y = columns
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        (a, b), (c, d) = gate.precision.astype(dtype)
        dx = x.astype(dtype, copy=True)
        dx -= dtype(gate.mean[0])
        dy = y.astype(dtype, copy=True)
        dy -= dtype(gate.mean[1])
        quad = dx * dx
        quad *= a
        dx *= dy
        dx *= b + c
        quad += dx
        dy *= dy
        dy *= d
        quad += dy
        return quad <= dtype(gate.distance_square)
    return gate.mask(np.column_stack(columns))


#: Masks kept per subsample (fit and sensitivity of one sample share them); the oldest go first.
_MAX_MASKS = 32


def _evaluate(pops: Sequence[Population], columns: Mapping[str, tuple[np.ndarray, ...]], masks: dict[str, np.ndarray],
              entry: _Subsample | None = None, *, keep: bool = True) -> None:
    """Add the masks of fixed populations not yet in ``masks``, from precomputed columns, with the semantics of
    :meth:`GatingStrategy.apply`: each gate sees only its parent's events; boolean gates combine their operands'
    masks.

    With ``entry``, a mask already computed on the same columns for the same gates (the population's gate, its
    parent's, and so on up; compared by identity) is reused, and new ones are kept there: :func:`sensitivity`
    finds the masks :func:`fit_strategy` computed for the same sample. ``keep=False`` only reuses (masks of
    passing gates, such as shifted thresholds, would push the lasting ones out).
    """
    keys: dict[str, tuple] = {}
    chains: dict[str, tuple[Gate, ...]] = {}  # the gates a mask depends on
    for pop in pops:
        gate = pop.gate
        operands = gate.operands if isinstance(gate, BooleanGate) else ()
        key = keys[pop.name] = (id(gate), tuple(map(id, columns.get(pop.name, ()))),
                                keys.get(pop.parent) if pop.parent is not None else None,
                                tuple(keys.get(name) for name in operands))
        chains[pop.name] = (gate, *chains.get(pop.parent, ()), *(g for name in operands for g in chains.get(name, ())))
        if pop.name in masks:
            continue
        if entry is not None and key in entry.masks:
            masks[pop.name] = entry.masks[key][1]
            continue
        parent = masks[pop.parent] if pop.parent is not None else None
        if isinstance(gate, BooleanGate):
            mask = gate.mask(np.column_stack([masks[name] for name in operands]))
        elif not gate.dimensions:  # AllEvents (pre-gated top, optional population the file cannot gate)
            n = parent.size if parent is not None else entry.sample.n_events if entry is not None else \
                next(iter(columns.values()))[0].size
            mask = np.ones(n, dtype=bool)
        else:
            # A fixed gate decides each event on its own values, so masking every row and keeping the parent's
            # equals masking the parent's rows only, without gathering them first.
            cols = columns[pop.name]
            mask = _fast_mask(gate, cols, entry is None or any(id(c) in entry.inf_top for c in cols))
        if parent is not None:
            mask &= parent
        masks[pop.name] = mask
        if entry is not None and keep:
            # Every gate the mask depends on is kept with it, so no id in the key can be reused while it is cached.
            entry.masks[key] = (chains[pop.name], mask)
            while len(entry.masks) > _MAX_MASKS:
                entry.masks.pop(next(iter(entry.masks)))


@dataclass(eq=False)
class _Subsample:
    """Every k-th event of one sample, the transformed columns computed on them so far (contiguous, one per
    dimension) and the masks evaluated on them (:func:`_evaluate`)."""

    sample: Any
    spillover: Any
    matrices: dict[str, Any]
    max_events: int | None
    columns: dict[Dimension, np.ndarray]
    #: ids of the columns holding +inf (an open rectangle top must then test ``x < inf``)
    inf_top: set[int] = field(default_factory=set)
    masks: dict[tuple, tuple[tuple[Gate, ...], np.ndarray]] = field(default_factory=dict)


#: Sample -> its fitting subsamples (one per spillover, named matrices and size). The entry lives as long as the
#: sample: fitting a sample's gates and then its sensitivity rows compensate and transform the subsample once.
_SUBSAMPLES: weakref.WeakKeyDictionary[Any, list[_Subsample]] = weakref.WeakKeyDictionary()


def _subsample_columns(strategy: GatingStrategy, dims: Mapping[str, tuple[Dimension, ...]], sample: Any,
                       spillover: Any, max_events: int | None) -> tuple[dict[str, tuple[np.ndarray, ...]],
                                                                         _Subsample]:
    """Each population's values (its dimensions, transformed) on every k-th event of ``sample``.

    Columns are computed by :meth:`GatingStrategy.apply` on an open "probe" gate, so compensation, channel lookup
    and transforms are exactly those of the final gating, and cached for the lifetime of ``sample`` (keyed by the
    spillover and named-matrix objects, the subsample size and the dimension).

    Returns
    -------
    (dict of str to tuple of numpy.ndarray, _Subsample)
        Population name -> one contiguous ``(n,)`` column per dimension (populations without dimensions are left
        out), and the cache entry (``entry.sample.n_events`` is ``n``).
    """
    try:
        entries = _SUBSAMPLES.setdefault(sample, [])
    except TypeError:  # a sample type that cannot be weakly referenced: no caching
        entries = []
    matrices = strategy.matrices
    entry = next((e for e in entries if e.spillover is spillover and e.max_events == max_events
                  and e.matrices.keys() == matrices.keys() and all(e.matrices[k] is v for k, v in matrices.items())),
                 None)
    if entry is None:
        small = sample if max_events is None else _subsample_sample(sample, max_events)
        # A new object over the same events when no subsampling was needed: an entry holding the very sample it is
        # keyed by would keep it alive for ever.
        entry = _Subsample(replace(small) if small is sample else small, spillover, dict(matrices), max_events, {})
        entries.append(entry)
    missing = [d for d in dict.fromkeys(d for ds in dims.values() for d in ds) if d not in entry.columns]
    if missing:
        # One open probe gate over every missing dimension: one evaluation, one mask, whatever the hierarchy.
        probe = RectangleGate("probe", tuple(missing), min=(-np.inf,) * len(missing), max=(None,) * len(missing))
        result = replace(strategy, populations=(Population("probe", probe),), treg=None, parent=None).apply(
            entry.sample, spillover)
        for dim in missing:
            # One dimension at a time: each column is copied once, contiguous.
            column = entry.columns[dim] = result.values(replace(probe, dimensions=(dim,), min=(-np.inf,),
                                                                max=(None,)))[:, 0]
            if (column == np.inf).any():
                entry.inf_top.add(id(column))
    columns = {name: tuple(entry.columns[d] for d in ds) for name, ds in dims.items() if ds}
    return columns, entry


class _Context:
    """One (subsampled) sample during top-down fitting: its columns (:func:`_subsample_columns`) and the masks of
    the populations fitted so far, evaluated on those columns."""

    def __init__(self, strategy: GatingStrategy, dims: Mapping[str, tuple[Dimension, ...]], sample: Any,
                 spillover: Any, max_events: int | None) -> None:
        self.columns, self.entry = _subsample_columns(strategy, dims, sample, spillover, max_events)
        self.n = self.entry.sample.n_events
        self.masks: dict[str, np.ndarray] = {}
        self.pops: list[Population] = []  # the populations so far, with the gates fitted for this sample

    def update(self) -> None:
        """Evaluate the populations fitted so far."""
        _evaluate(self.pops, self.columns, self.masks, self.entry)

    def parent(self, pop: Population) -> np.ndarray:
        """Boolean mask of ``pop``'s parent (all events for a root population)."""
        return self.masks[pop.parent] if pop.parent is not None else np.ones(self.n, dtype=bool)

    def values(self, pop: Population, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), ndim)`` values of ``pop``'s dimensions at ``rows`` (indices or a boolean mask)."""
        columns = self.columns[pop.name]
        first = columns[0][rows]
        out = np.empty((first.size, len(columns)))  # float64, as the fits use them
        out[:, 0] = first
        for j, column in enumerate(columns[1:], 1):
            out[:, j] = column[rows]
        return out


def fit_strategy(
    strategy: GatingStrategy,
    samples: Sequence[Any],
    *,
    spillover: Any = None,
    controls: Mapping[str, Any] | None = None,
    scopes: Sequence[str] | set[str] | None = None,
    baseline: int | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> tuple[GatingStrategy, list[dict[str, Any]]]:
    """Fit the data-driven gates of a strategy, top-down, pooled over ``samples``.

    Parameters
    ----------
    strategy : GatingStrategy
        A strategy with some :class:`AutoGate` populations (others are fixed gates, used as they are).
    samples : sequence of cytopipe.fcs.Sample
        The samples to pool (one for ``sample`` scope; a subject's samples or its baseline for the others).
    spillover : Spillover or sequence of Spillover, optional
        The matrix for ``compensation="FCS"`` (one for all samples, or one per sample); ``None`` = each file's own.
    controls : dict of str to Sample, optional
        Control samples by sample-sheet role (``{"fmo:CD25": sample}``) for ``method: control`` cuts. A control is
        gated through the same fitted hierarchy as the samples, with the first sample's spillover.
    scopes : collection of str, optional
        Replace only the gates of these scopes (others stay unfitted in the returned strategy, e.g. ``sample``-scope
        gates left to each worker). Ancestors of other scopes are still fitted internally, ``sample``-scope ones on
        each sample alone. Default: every data-driven gate, each pooled over all ``samples``.
    baseline : int, optional
        Index into ``samples`` of the subject's baseline: ``baseline``-scope gates are fitted on it alone while
        ``subject``-scope gates pool all samples (default: every gate pools all ``samples``).
    max_events : int
        Events kept per sample for fitting (every k-th event); fitting time stays flat for large files.

    Returns
    -------
    (GatingStrategy, list of dict)
        The strategy with the chosen data-driven gates replaced by fitted fixed gates (same population names and
        order), and one row per replaced gate: ``population, type, scope, fitted_on, n_samples, n_events`` and
        the fitted parameters in friendly units (logicle decades, raw scatter).

    Raises
    ------
    MarkerError
        A sample lacks a marker; the message names the marker and the population that needs it.
    GateError
        A fit fails (too few events, a reference population listed after the gate using it, a missing control);
        the message names the population.

    Notes
    -----
    1. Resolve ``T: auto`` dimensions (logicle top of scale from the files' ``$PnR``).
    2. Keep every k-th event of each sample (about ``max_events``) and compute every column any gate reads once,
       with :meth:`GatingStrategy.apply` on open probe gates, so compensation, channel lookup and transforms are
       exactly those of the final gating. The columns are cached for the lifetime of the sample object, so
       :func:`sensitivity` on the same sample does not compute them again.
    3. Walk the populations in order: evaluate the gates fitted so far on each sample (a child only on its
       parent's events, as the engine does), pool the parent's events over the samples of the gate's scope and
       fit the gate on every k-th of them (at most the gate's ``max_events``, picked by index before copying).
    """
    samples = list(samples)
    label = strategy.name or "gating strategy"
    if not samples:
        raise GateError(f"{label}: fitting data-driven gates needs at least one sample")
    if isinstance(spillover, (list, tuple)):
        spills = list(spillover)
        if len(spills) != len(samples):
            raise ValueError(f"spillover: {len(spills)} matrices for {len(samples)} samples")
    else:
        spills = [spillover] * len(samples)
    wanted = set(SCOPES if scopes is None else scopes)
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"scopes: unknown scope(s) {sorted(unknown)}; use {', '.join(SCOPES)}")
    if baseline is not None and not 0 <= baseline < len(samples):
        raise ValueError(f"baseline: index {baseline} is not one of the {len(samples)} samples")
    if not needs_fitting(strategy):
        return strategy, []
    for pop in strategy.populations:
        for sample in samples:
            _check_markers(pop, sample)

    # Errors name the file when one file is fitted, else the strategy.
    single = str(getattr(samples[0], "path", "") or "") if len(samples) == 1 else ""
    where = f"{single or label}: population"
    dims = {}
    for pop in strategy.populations:
        gate = pop.gate
        if isinstance(gate, AutoGate) and gate.auto_top:
            gate = _resolve_top(gate, samples, f"{where} '{pop.name}'")
        dims[pop.name] = gate.dimensions
    contexts = [_Context(strategy, dims, s, spill, max_events) for s, spill in zip(samples, spills, strict=True)]
    control_contexts = {}
    wanted_roles = {r.casefold() for p in strategy.populations for r in getattr(p.gate, "controls", ())}
    for role, control in (controls or {}).items():
        if str(role).casefold() not in wanted_roles:
            continue
        # Controls are read by detector ($PnN of the first sample): an FMO tube often lacks the omitted marker's
        # label, and its detectors are those of the samples.
        by_detector = {name: tuple(_by_detector(d, samples[0]) for d in ds) for name, ds in dims.items()}
        try:
            control_contexts[str(role).casefold()] = _Context(strategy, by_detector, control, spills[0], max_events)
        except MarkerError as err:
            raise MarkerError(f"control '{role}': {err}") from None
    names = [_sample_name(s, i) for i, s in enumerate(samples)]
    last = max(i for i, p in enumerate(strategy.populations) if isinstance(p.gate, AutoGate))
    output: dict[str, Gate] = {}
    rows: list[dict[str, Any]] = []
    everything = [*contexts, *control_contexts.values()]
    for pop in strategy.populations[: last + 1]:
        gate = pop.gate
        if not isinstance(gate, AutoGate):
            for ctx in everything:
                ctx.pops.append(pop)
            continue
        for ctx in everything:
            ctx.update()
        gate = replace(gate, dimensions=dims[pop.name], name=gate.name or pop.name)
        # Which samples each fit pools: a sample-scope ancestor fitted only to reach the chosen gates is fitted on
        # each sample alone; a baseline-scope gate on the baseline sample when it is named.
        if gate.scope == "sample" and gate.scope not in wanted:
            groups = [[i] for i in range(len(contexts))]
        elif gate.scope == "baseline" and baseline is not None:
            groups = [[baseline]]
        else:
            groups = [list(range(len(contexts)))]
        known = {p.name for p in contexts[0].pops}
        fits = [_fit_population(gate, pop, f"{where} '{pop.name}'", [contexts[i] for i in group], control_contexts,
                                known) for group in groups]
        for k, group in enumerate(groups):
            for i in (range(len(contexts)) if len(groups) == 1 else group):
                contexts[i].pops.append(replace(pop, gate=fits[k][0]))
        for ctx in control_contexts.values():
            ctx.pops.append(replace(pop, gate=fits[0][0]))
        if gate.scope in wanted:
            fitted, info, n_used = fits[0]
            output[pop.name] = fitted
            rows.append({"population": pop.name, "type": gate.kind, "scope": gate.scope,
                         "fitted_on": ";".join(names[i] for i in groups[0]), "n_samples": len(groups[0]),
                         "n_events": n_used, **info})
    populations = tuple(replace(p, gate=output[p.name]) if p.name in output else p for p in strategy.populations)
    return replace(strategy, populations=populations), rows


def _resolve_top(gate: AutoGate, samples: Sequence[Any], where: str) -> AutoGate:
    """The gate with ``T: auto`` dimensions resolved from the samples' ``$PnR`` (which must agree)."""
    resolved = [tuple(resolve_dimension(d, s) for d in gate.dimensions) for s in samples]
    for dims, s in zip(resolved[1:], samples[1:], strict=True):
        if dims != resolved[0]:
            raise GateError(f"{where}: pooled samples differ in $PnR ({_sample_name(s, 0)}); fit them separately "
                            "or set T: keep")
    return replace(gate, dimensions=resolved[0])


def _fit_population(gate: AutoGate, pop: Population, where: str, contexts: list[_Context],
                    control_contexts: dict[str, _Context], known: set[str]) -> tuple[Gate, dict[str, Any], int]:
    """Fit one data-driven gate on its fitted parent's events pooled over the contexts."""
    needed = getattr(gate, "references", ())
    for ref in needed:
        if ref not in known:
            raise GateError(f"{where}: reference population '{ref}' must be defined before '{pop.name}'")
    # Every k-th of the pooled parent's events, picked by index before any copy: the scatter gate, for one, keeps
    # 2,500 of tens of thousands.
    rows = [np.flatnonzero(ctx.parent(pop)) for ctx in contexts]
    n_parent = sum(r.size for r in rows)
    step = max(1, -(-n_parent // gate.max_events))
    picked, offset = [], 0
    for ctx, r in zip(contexts, rows, strict=True):
        picked.append(ctx.values(pop, r[-offset % step::step]))
        offset += r.size
    values = np.concatenate(picked) if len(picked) > 1 else picked[0]
    reference = {ref: np.concatenate([ctx.values(pop, ctx.masks[ref]) for ctx in contexts]) for ref in needed}
    # A gate lists the control roles it can use (``controls``) and, in ``required_controls``, the groups of them of
    # which one must be given (a tail gate without control_required needs none: it falls back to its control-free
    # boundary). Gates that say nothing need every role they list.
    roles = tuple(getattr(gate, "controls", ()))
    for group in getattr(gate, "required_controls", tuple((r,) for r in roles)):
        if not any(r.casefold() in control_contexts for r in group):
            raise GateError(f"{where}: {missing_control(group)}")
    control_values, read_on = {}, {}
    for role in (r.casefold() for r in roles):
        if role in control_contexts:
            ctx = control_contexts[role]
            rows, ancestor = _control_rows(ctx, pop)
            control_values[role] = ctx.values(pop, rows)
            if ancestor is not None:
                read_on[role] = ancestor
    try:
        fitted, info = gate.fit_with_info(values, reference=reference, controls=control_values)
    except GateError as err:
        raise GateError(f"{where}: {err}") from None
    used = info.get("control")
    if isinstance(used, str) and used.casefold() in read_on:
        info = {**info, "control": f"{used} (on {read_on[used.casefold()]})"}
    return fitted, info, n_parent


def _control_rows(ctx: _Context, pop: Population) -> tuple[np.ndarray, str | None]:
    """A control tube's events in ``pop``'s parent, or, when the parent holds fewer than :data:`MIN_EVENTS` of
    them, in the nearest ancestor that holds enough (named in the second item; ``None`` for the parent).

    An unstained tube has no CD3+ CD4+ cells: its CD25 background is read on the last population it reaches
    (Singlets), where it still measures the channel's unstained spread."""
    if pop.parent is None:
        return ctx.parent(pop), None
    parents = {p.name: p.parent for p in ctx.pops}
    name: str | None = pop.parent
    while name is not None:
        mask = ctx.masks[name]
        if int(np.count_nonzero(mask)) >= MIN_EVENTS:
            return mask, None if name == pop.parent else name
        name = parents.get(name)
    return np.ones(ctx.n, dtype=bool), "all events"

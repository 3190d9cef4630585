"""The gating engine: a :class:`GatingResult` from a strategy and a sample (:meth:`GatingStrategy.apply`).

The gate models and the strategy live in :mod:`cytopipe.gates`; this module evaluates them. Children are gated
only on their parent's events; each transformed column is computed once, on the rows a gate needs, and cached
(:class:`_Column`). Large samples (at least :data:`LEAN_EVENTS` events) are gated a block of events at a time with
nothing kept but each population's members (int32) and 1-bit verdicts: compensated and transformed values of a
block are computed, gated and dropped, so a worker's memory stays close to the event data (the values are the
same, bit for bit: the same products and transforms, on fewer rows at a time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cytopipe.errors import GateError, MarkerError
from cytopipe.gates import (
    FCS,
    UNCOMPENSATED,
    AllEvents,
    BooleanGate,
    Dimension,
    Gate,
    GatingStrategy,
    PolygonGate,
    RectangleGate,
    SpectrumMatrix,
    _as_matrix,
    _box_mask_columns,
    _polygon_grid,
)
from cytopipe.memo import Memo

__all__ = ["GatingResult", "LEAN_EVENTS", "evaluate", "prepare"]

#: Samples with at least this many events are gated block by block, keeping no per-event values (see module doc).
LEAN_EVENTS = 1 << 21
#: Events per block in that mode (and per compensation product on selected rows).
BLOCK = 1 << 16


def evaluate(strategy: GatingStrategy, sample: Any, spillover: Any = None, exact: bool = False) -> GatingResult:
    """Gate ``sample`` with ``strategy`` (see :meth:`cytopipe.gates.GatingStrategy.apply`)."""
    return _Evaluator(strategy, sample, spillover, exact).run()


def prepare(strategy: GatingStrategy) -> None:
    """Build in this process what gating with ``strategy`` builds once per process: the lookup tables of its
    logicle and hyperlog transforms (~40 ms each) and the grids of its polygons. Worker processes forked afterwards
    share them instead of each building its own; the results are the same either way."""
    for pop in strategy.populations:
        for dim in getattr(pop.gate, "dimensions", ()):
            if dim.transform is not None:
                dim.transform.prepare()
        if isinstance(pop.gate, PolygonGate):
            _polygon_grid(pop.gate)


@dataclass(eq=False)
class GatingResult:
    """Per-population masks and counts for one sample.

    Attributes
    ----------
    masks : mapping of str to numpy.ndarray
        Population -> ``(n_events,)`` bool membership (parent chain applied); from :meth:`GatingStrategy.apply`
        each is built from ``members`` when asked for (a fresh array; none is kept).
    counts : dict of str to int
        Population -> number of events.
    n_events : int
        Events in the sample.
    channels : dict of str to str
        Each channel name used by the gates -> the ``$PnN`` it resolved to in this sample.
    timings : dict of str to float
        Seconds spent per stage: ``compensation``, ``transform`` (of the rows each gate needs), ``gating``.
    members : dict of str to numpy.ndarray
        Population -> its sorted event indices. ``values(gate, members[parent])`` returns the values the gate was
        evaluated on without computing or copying anything (what the gating figures draw).
    kept : dict of str to numpy.ndarray
        Population -> its gate's verdict on each event it was evaluated on (its parent's members, in order), packed
        8 to a byte (:func:`numpy.packbits`); read with :meth:`kept_of`. Geometric gates only.
    whole : dict of int to numpy.ndarray
        Events column -> a contiguous copy of it that the gating made (a root gate's untransformed,
        uncompensated scatter channels): reading rows of it is cheaper than reading the events' strided column.
    """

    masks: Mapping[str, np.ndarray]
    counts: dict[str, int]
    n_events: int
    channels: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _columns: dict[Any, _Column] = field(default_factory=dict, repr=False)
    members: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    kept: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    whole: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def kept_of(self, name: str, positions: np.ndarray | slice) -> np.ndarray | None:
        """Whether the gate of population ``name`` kept each of its parent's events at ``positions`` (indices into
        the parent's members, or into all events for a root gate; or a slice of them), or None when that was not
        recorded."""
        bits = self.kept.get(name)
        if bits is None:
            return None
        if isinstance(positions, slice):
            start, stop, step = positions.indices(bits.size * 8)
            if step == 1:
                return np.unpackbits(bits).view(bool)[positions]
            # Every k-th bit alone (a figure's stride over a large parent): unpacking them all costs more.
            at = np.arange(start, stop, step)
            return ((bits[at >> 3] >> (7 - (at & 7)).astype(np.uint8)) & 1) == 1
        count = int(positions.max()) + 1 if positions.size else 0
        return np.unpackbits(bits, count=count).view(bool)[positions]

    def values(self, gate: Gate, rows: np.ndarray | None = None, step: int = 1) -> np.ndarray:
        """The ``(n_events, ndim)`` transformed values ``gate`` was evaluated on (cached columns, for plotting);
        with ``rows`` (an index array) only those rows, computing no other.

        ``step > 1``: every ``step``-th of those rows (``rows[::step]``), read from the cache when the rows were
        computed, else computed for those rows alone and not kept (a figure's subsample of a large parent).
        """
        if isinstance(gate, BooleanGate):
            chosen = None if rows is None and step == 1 else _every(rows, step, self.n_events)
            return np.column_stack([self.masks[name] if chosen is None else self.masks[name][chosen]
                                    for name in gate.operands])
        columns = []
        for dim in gate.dimensions:
            column = self._columns.get(_column_key(dim))
            if column is None:
                raise GateError(f"gate '{gate.name}': dimension {dim.label} was not evaluated on this sample")
            columns.append(column.get(rows) if step == 1 else column.peek(rows, step))
        if len(columns) == 1:
            return columns[0].reshape(-1, 1)
        out = np.empty((columns[0].shape[0], len(columns)), dtype=np.result_type(*columns), order="F")
        for k, column in enumerate(columns):  # Fortran order: each dimension's values contiguous, as gated
            out[:, k] = column
        return out


def _every(rows: np.ndarray | None, step: int, n: int) -> np.ndarray:
    return np.arange(0, n, step) if rows is None else rows[::step]


class _Column:
    """A transformed column filled on demand, a row subset at a time; rows are never computed twice.

    Children are gated only on their parent's events, so most fluorescence columns are needed only on a small
    subset; the remaining rows are filled if someone asks for the whole column (e.g. for a plot).
    """

    def __init__(self, n: int, dim: Dimension, raws: list[Any], dtype: type, keep: bool = True) -> None:
        self.n = n
        self.keep = keep  # False (large samples): every request is computed for its rows and nothing is kept
        # The inputs, not a closure over the evaluator: a closure would form a reference cycle that keeps every
        # compensated column (and the events) alive until the cyclic garbage collector happens to run.
        self.dim = dim
        self.raws = raws
        self.dtype = dtype
        self.values: np.ndarray | None = None  # full length once more than one row set was asked for
        self.done: np.ndarray | None = None
        self.first: tuple[np.ndarray, np.ndarray] | None = None  # (rows, values) of the only request so far
        self.complete = False
        self.index: int | None = None  # the events column it is, for a plain (untransformed, uncompensated) one

    def adopt(self, values: np.ndarray) -> None:
        """Hold ``values`` -- the same values as the whole column, contiguous (a gate's stacked copy) -- in place of
        a strided view of the events, so later row reads gather from contiguous memory."""
        if self.keep and self.complete and self.values is not None and not self.values.flags.c_contiguous:
            self.values = values

    def compute(self, rows: np.ndarray | None) -> np.ndarray:
        """Transformed values of ``rows`` (an index array, or ``None`` for all rows)."""
        dim = self.dim
        parts = [_rows_of(r, rows) for r in self.raws]
        if dim.ratio is None and dim.transform is None:
            return parts[0]
        if dim.ratio is not None:
            values = dim.ratio.apply(np.column_stack(parts).astype(self.dtype, copy=False))
        else:
            values = parts[0].astype(self.dtype, copy=False)
        return dim.transform.apply(values) if dim.transform is not None else values

    def peek(self, rows: np.ndarray | None, step: int) -> np.ndarray:
        """Values of every ``step``-th of ``rows`` (``None`` = all rows): from the cache when it holds them, else
        computed for those rows only and not kept."""
        if self.complete:
            assert self.values is not None
            return self.values[::step] if rows is None else self.values[rows[::step]]
        if self.first is not None and rows is not None and rows is self.first[0]:
            return self.first[1][::step]
        chosen = _every(rows, step, self.n)
        if self.values is not None:
            assert self.done is not None
            if self.done[chosen].all():
                return self.values[chosen]
        return self.compute(chosen)

    def get(self, rows: np.ndarray | None) -> np.ndarray:
        if not self.keep:
            return self.compute(rows)
        if self.complete:
            assert self.values is not None
            return self.values if rows is None else self.values[rows]
        if self.values is None and self.first is None:
            fresh = self.compute(rows)
            if rows is None:
                self.values, self.complete = fresh, True
            else:
                self.first = (rows, fresh)  # the common case: one row set per column, kept without scatter
            return fresh
        if self.values is None:
            assert self.first is not None
            first_rows, first_values = self.first
            if rows is not None and rows is first_rows:
                return first_values
            self.values = np.full(self.n, np.nan, dtype=first_values.dtype)
            self.done = np.zeros(self.n, dtype=bool)
            self.values[first_rows] = first_values
            self.done[first_rows] = True
            self.first = None
        assert self.done is not None
        missing = np.flatnonzero(~self.done) if rows is None else rows[~self.done[rows]]
        if missing.size:
            self.values[missing] = self.compute(missing)
            self.done[missing] = True
        if rows is None:
            self.complete = True
            return self.values
        return self.values[rows]


def _compensate(raw: np.ndarray, unmix: np.ndarray, dtype: type) -> np.ndarray:
    """``unmix.T @ raw.T``: the ``(n_outputs, n_events)`` compensated values of ``(n_events, n_detectors)`` raw ones.

    With two outputs or more, a GEMM per :data:`BLOCK` events whose operand and output stay in the CPU cache (about
    1.5x faster than one product over a million events), element for element the same products as one GEMM (see
    :class:`_Compensation`). A single output is one matrix-vector product over all events, as before: BLAS
    computes the last few elements of a GEMV apart, so cutting it into blocks would move bits.
    """
    n = raw.shape[0]
    if unmix.shape[1] < 2 or n <= BLOCK:
        return unmix.T @ (raw.T if raw.dtype == dtype else np.ascontiguousarray(raw.T, dtype=dtype))
    out = np.empty((unmix.shape[1], n), dtype=dtype)
    for b0 in range(0, n, BLOCK):
        part = raw[b0:b0 + BLOCK]
        operand = part.T if part.dtype == dtype else np.ascontiguousarray(part.T, dtype=dtype)
        np.matmul(unmix.T, operand, out=out[:, b0:b0 + BLOCK])
    return out


# Unmixing matrices by matrix: the files of a study share their spillover, inverted once per worker.
_UNMIXINGS: Memo[np.ndarray] = Memo(64)


def _unmixing(matrix: SpectrumMatrix) -> np.ndarray:
    """``matrix.unmixing()`` (read-only), computed once per distinct matrix."""
    key = (matrix.fluorochromes, matrix.detectors, matrix.inverted, matrix.matrix.shape, matrix.matrix.tobytes())
    return _UNMIXINGS.get(key, lambda: _read_only(matrix.unmixing()))


def _read_only(matrix: np.ndarray) -> np.ndarray:
    found = np.array(matrix, dtype=np.float64)  # a copy: an inverted matrix is returned as is
    found.setflags(write=False)
    return found


def _rows_of(raw: Any, rows: np.ndarray | slice | None) -> np.ndarray:
    """``rows`` (an index array, a slice of events or None for all) of a raw column: a column of the events or a
    compensated output computed on demand (:class:`_Compensated`)."""
    if isinstance(raw, _Compensated):
        return raw.take(rows)
    return raw if rows is None else raw[rows]


class _Compensation:
    """One matrix's compensated outputs computed on demand for a set of rows (large samples).

    Each request computes the same product as the whole-sample path, ``unmix.T @ raw.T``, on the requested rows
    only, at most :data:`BLOCK` at a time: the same arithmetic per event (BLAS computes each output element from
    the same products in the same order whatever the number of columns), without ever holding every event's
    compensated values. The product of the last row set is kept, so the dimensions of one gate share it.
    """

    def __init__(self, events: np.ndarray, detectors: slice | list[int], unmix_t: np.ndarray, dtype: type) -> None:
        self.events = events
        self.detectors = detectors
        self.unmix_t = unmix_t
        self.dtype = dtype
        self.last: tuple[Any, np.ndarray] | None = None

    def product(self, rows: np.ndarray | slice) -> np.ndarray:
        """``(n_outputs, len(rows))`` compensated values of at most :data:`BLOCK` rows."""
        if self.last is not None and self.last[0] is rows:
            return self.last[1]
        if isinstance(self.detectors, slice):
            raw = self.events[rows, self.detectors]
        else:
            raw = self.events[rows][:, self.detectors] if isinstance(rows, slice) \
                else self.events[np.ix_(rows, self.detectors)]
        operand = raw.T if raw.dtype == self.dtype else np.ascontiguousarray(raw.T, dtype=self.dtype)
        block = self.unmix_t @ operand
        self.last = (rows, block)
        return block


class _Compensated:
    """Output ``index`` of a :class:`_Compensation`, as a raw column that computes the rows it is asked for."""

    def __init__(self, compensation: _Compensation, index: int) -> None:
        self.compensation = compensation
        self.index = index

    def take(self, rows: np.ndarray | slice | None) -> np.ndarray:
        n = self.compensation.events.shape[0]
        if rows is None:
            rows = slice(0, n)
        size = len(range(*rows.indices(n))) if isinstance(rows, slice) else rows.size
        if size <= BLOCK:
            return self.compensation.product(rows)[self.index]
        out = np.empty(size, dtype=self.compensation.dtype)
        start = rows.indices(n)[0] if isinstance(rows, slice) else 0
        for b0 in range(0, size, BLOCK):
            b1 = min(b0 + BLOCK, size)
            part = slice(start + b0, start + b1) if isinstance(rows, slice) else rows[b0:b1]
            out[b0:b1] = self.compensation.product(part)[self.index]
        return out


class _Masks(Mapping):
    """Population -> ``(n_events,)`` bool membership, built from the members on each access: nothing is kept, so
    a result holds its populations as sorted indices only."""

    def __init__(self, members: dict[str, np.ndarray], n: int, names: list[str]) -> None:
        self._members = members
        self._n = n
        self._names = names

    def __getitem__(self, name: str) -> np.ndarray:
        mask = np.zeros(self._n, dtype=bool)
        mask[self._members[name]] = True
        return mask

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _column_key(dim: Dimension) -> tuple:
    return (dim.channels, dim.compensation, dim.ratio, dim.transform)


class _Evaluator:
    """One evaluation of a strategy on a sample (holds the per-sample caches)."""

    def __init__(self, strategy: GatingStrategy, sample: Any, spillover: Any, exact: bool) -> None:
        self.strategy = strategy
        self.sample = sample
        self.spillover = spillover
        self.dtype = np.float64 if exact else np.float32
        self.where = sample.path or "sample"
        self.channel_index: dict[str, int] = {}
        self.raw: dict[tuple[str, str], np.ndarray] = {}
        self.plain: dict[tuple[str, str], int] = {}  # the raw columns that are columns of the events as they are
        self.columns: dict[tuple, _Column] = {}
        self._fcs_matrix: SpectrumMatrix | None | bool = False
        self.stacking = 0.0  # seconds spent computing the values gates read
        n = sample.events.shape[0]
        # Read at call time, so a test may lower it. Exact (float64) evaluation always takes the whole-sample path.
        self.lean = not exact and n >= LEAN_EVENTS
        self.index_type = np.int32 if self.lean and n < 2**31 else np.intp

    def find(self, name: str) -> int:
        if name not in self.channel_index:
            self.channel_index[name] = self.sample.find_channel(name)
        return self.channel_index[name]

    def fcs_matrix(self) -> SpectrumMatrix | None:
        if self._fcs_matrix is False:
            spill = self.spillover
            if spill is None:
                from cytopipe.compensate import spillover_from_metadata

                spill = spillover_from_metadata(self.sample.metadata, self.sample.channels, path=self.sample.path)
            self._fcs_matrix = None if spill is None else SpectrumMatrix.from_spillover(spill)
        return self._fcs_matrix  # type: ignore[return-value]

    def matrix(self, compensation: str) -> SpectrumMatrix | None:
        if compensation == UNCOMPENSATED:
            return None
        if compensation == FCS:
            return self.fcs_matrix()
        return _as_matrix(self.strategy.matrices[compensation], compensation)

    def matrix_output(self, matrix: SpectrumMatrix, channel: str) -> int | None:
        """Which output of ``matrix`` a dimension's channel is, or None if the matrix does not compensate it.

        A Gating-ML dimension names a matrix output directly (a fluorochrome such as ``Comp-PE``, or the detector
        ``$PnN`` for a square spillover); a YAML gate may name a marker (``CD25``), resolved to its ``$PnN`` first.
        """
        k = _matrix_output(matrix, channel)
        if k is None and channel not in matrix.fluorochromes:
            try:
                detector = self.sample.channels[self.find(channel)]
            except MarkerError:
                return None  # e.g. an output of another matrix; reported when the raw channel is looked up
            k = _matrix_output(matrix, detector)
        return k

    def prepare_raw(self) -> None:
        """Resolve channels and compensate every needed (channel, compensation) column in one product per matrix."""
        needed: dict[str, list[str]] = {}
        for pop in self.strategy.populations:
            for dim in pop.gate.dimensions:
                for channel in dim.channels:
                    wanted = needed.setdefault(dim.compensation, [])
                    if channel not in wanted:
                        wanted.append(channel)
        events = self.sample.events
        for compensation, channels in needed.items():
            matrix = self.matrix(compensation)
            outputs: list[tuple[str, int]] = []
            for channel in channels:
                k = self.matrix_output(matrix, channel) if matrix is not None else None
                if k is None:
                    # Kept in the sample's precision: casting a column that is only compared loses information
                    # for nothing; it is cast to the working precision where arithmetic starts (compute()).
                    self.raw[(channel, compensation)] = events[:, self.find(channel)]
                    self.plain[(channel, compensation)] = self.find(channel)
                else:
                    outputs.append((channel, k))
            if outputs:
                assert matrix is not None
                detectors = [self.find(d) for d in matrix.detectors]
                unmix = _unmixing(matrix)[:, [k for _, k in outputs]].astype(self.dtype)
                first = min(detectors)
                adjacent = sorted(detectors) == list(range(first, first + len(detectors)))
                if adjacent:
                    # Adjacent channels: read a slice (no gather), rows of U permuted to column order.
                    permuted = np.empty_like(unmix)
                    permuted[np.asarray(detectors) - first] = unmix
                    unmix = permuted
                if self.lean:  # computed on the rows each gate needs, a block at a time
                    where = slice(first, first + len(detectors)) if adjacent else detectors
                    lazy = _Compensation(events, where, np.ascontiguousarray(unmix.T), self.dtype)
                    for j, (channel, _) in enumerate(outputs):
                        self.raw[(channel, compensation)] = _Compensated(lazy, j)
                    continue
                raw = events[:, first:first + len(detectors)] if adjacent else events[:, detectors]
                # Channels-by-events layout: a GEMM (fast in BLAS even for 5 x 5 matrices, unlike a tall-skinny
                # product) whose output rows are contiguous columns for later gathers. The transposed view of the
                # events is already a column-major BLAS operand: copying it to C order would cost twice the GEMM.
                block = _compensate(raw, unmix, self.dtype)
                for j, (channel, _) in enumerate(outputs):
                    self.raw[(channel, compensation)] = block[j]

    def column(self, dim: Dimension) -> _Column:
        key = _column_key(dim)
        column = self.columns.get(key)
        if column is None:
            raws = [self.raw[(c, dim.compensation)] for c in dim.channels]
            column = self.columns[key] = _Column(self.sample.events.shape[0], dim, raws, self.dtype,
                                                 keep=not self.lean)
            if dim.transform is None and dim.ratio is None and len(dim.channels) == 1:
                column.index = self.plain.get((dim.channels[0], dim.compensation))
        return column

    def stack(self, dims: tuple[Dimension, ...], rows: np.ndarray | slice | None) -> np.ndarray:
        """``(n_rows, ndim)`` Fortran-ordered values, so each gate reads contiguous columns."""
        tick = time.perf_counter()
        parts = [self.column(dim).get(rows) for dim in dims]
        if len(parts) == 1:
            out = parts[0].reshape(-1, 1)
        else:
            out = np.empty((parts[0].shape[0], len(parts)), dtype=np.result_type(*parts), order="F")
            for k, part in enumerate(parts):
                out[:, k] = part
                if rows is None and out.dtype == part.dtype:
                    self.column(dims[k]).adopt(out[:, k])  # the copy just made serves later gathers too
        self.stacking += time.perf_counter() - tick
        return out

    def verdict(self, gate: Gate, rows: np.ndarray | None) -> np.ndarray:
        """The gate's mask over ``rows`` (its parent's events; None = all events). Large samples: a block of rows
        at a time, the block's values computed, gated and dropped (gates decide each event on its own values)."""
        size = self.sample.events.shape[0] if rows is None else rows.size
        if not self.lean or size <= BLOCK:
            return self.mask(gate, rows)
        inside = np.empty(size, dtype=bool)
        for b0 in range(0, size, BLOCK):
            b1 = min(b0 + BLOCK, size)
            part = slice(b0, b1) if rows is None else rows[b0:b1]  # one object: the dimensions share its product
            inside[b0:b1] = self.mask(gate, part)
        return inside

    def mask(self, gate: Gate, rows: np.ndarray | slice | None) -> np.ndarray:
        """``gate.mask`` of its values on ``rows``; a rectangle or a polygon reads its columns as they are (not
        stacked: a worker's events are column-major, so its plain columns are contiguous already)."""
        kind = type(gate)
        if (kind is RectangleGate and len(gate.dimensions) > 1) or (
                kind is PolygonGate and self.sample.events.flags.f_contiguous):
            tick = time.perf_counter()
            columns = [self.column(dim).get(rows) for dim in gate.dimensions]
            self.stacking += time.perf_counter() - tick
            if kind is RectangleGate:
                return _box_mask_columns(columns, zip(gate.min, gate.max, strict=True))
            if columns[0].dtype == columns[1].dtype:  # as stacked (else stacking would promote one of them)
                return gate.mask_columns(*columns)
        return gate.mask(self.stack(gate.dimensions, rows))

    def selected(self, inside: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """Sorted indices of the events ``inside`` marks (over ``rows``, or over all events)."""
        if rows is not None:
            return np.compress(inside, rows)  # rows[inside], ~3x faster than boolean indexing for a mixed mask
        if self.index_type is np.intp:
            return np.flatnonzero(inside)
        return np.concatenate([np.flatnonzero(inside[b0:b0 + BLOCK * 16]).astype(self.index_type) + b0
                               for b0 in range(0, inside.size, BLOCK * 16)] or [np.empty(0, self.index_type)])

    def run(self) -> GatingResult:
        clock = time.perf_counter
        start = clock()
        self.prepare_raw()
        compensated = clock()
        n = self.sample.events.shape[0]
        members: dict[str, np.ndarray] = {}  # population -> sorted event indices
        kept: dict[str, np.ndarray] = {}  # population -> its gate's verdict on each parent event, as bits
        masks: dict[str, np.ndarray] = {}  # full-length masks of Boolean gates' operands, during evaluation only

        def full_mask(name: str) -> np.ndarray:
            if name not in masks:
                mask = np.zeros(n, dtype=bool)
                mask[members[name]] = True
                masks[name] = mask
            return masks[name]

        gating = 0.0
        for pop in self.strategy.populations:
            gate = pop.gate
            rows = members[pop.parent] if pop.parent is not None else None
            if isinstance(gate, BooleanGate):
                tick = clock()
                mask = gate.mask(np.column_stack([full_mask(name) for name in gate.operands]))
                if pop.parent is not None:
                    mask &= full_mask(pop.parent)
                masks[pop.name] = mask
                members[pop.name] = self.selected(mask, None)
                gating += clock() - tick
                continue
            if isinstance(gate, AllEvents):
                members[pop.name] = np.arange(n, dtype=self.index_type) if rows is None else rows
                continue
            tick = clock()
            inside = self.verdict(gate, rows)
            members[pop.name] = self.selected(inside, rows)
            kept[pop.name] = np.packbits(inside)  # 1 bit per parent event: what the figure shows as gated
            gating += clock() - tick
        masks.clear()
        counts = {pop.name: int(members[pop.name].size) for pop in self.strategy.populations}
        named = {c for pop in self.strategy.populations for dim in pop.gate.dimensions for c in dim.channels}
        channels = {name: self.sample.channels[k] for name, k in self.channel_index.items() if name in named}
        timings = {"compensation": compensated - start, "transform": self.stacking, "gating": gating - self.stacking}
        masks_of = _Masks(members, n, [pop.name for pop in self.strategy.populations])
        whole = {c.index: c.values for c in self.columns.values()
                 if c.index is not None and c.complete and c.values is not None and c.values.flags.c_contiguous}
        return GatingResult(masks_of, counts, n, channels, timings, self.columns, members, kept, whole)


def _matrix_output(matrix: SpectrumMatrix, channel: str) -> int | None:
    """Index of ``channel`` among a matrix's outputs (exact, then case-insensitive), or None if not compensated."""
    if channel in matrix.fluorochromes:
        return matrix.fluorochromes.index(channel)
    lowered = [f.lower() for f in matrix.fluorochromes]
    if lowered.count(channel.lower()) == 1:
        return lowered.index(channel.lower())
    return None

"""Gate models and the gating hierarchy.

A :class:`Gate` is a small immutable object with one method, :meth:`Gate.mask`, that takes an ``(n, ndim)`` array
of transformed values (one column per :class:`Dimension`) and returns a boolean mask. A :class:`Population` is a
named gate with one parent; a :class:`GatingStrategy` holds the populations in topological order and evaluates them
on a :class:`~cytopipe.fcs.Sample`, returning a :class:`GatingResult`.

Semantics follow Gating-ML 2.0:

* rectangle/range: ``min <= x < max`` on every dimension (``None`` = open side);
* polygon: even-odd (crossing number) rule; an event exactly on a (non-horizontal) edge is inside;
* ellipsoid: ``(x - mean)^T C^-1 (x - mean) <= distance_square``;
* quadrant: one region of a Gating-ML ``QuadrantGate``; on each constrained dimension the event lies in the same
  interval ``[divider_k, divider_k+1)`` between dividers as the quadrant's location;
* boolean: ``and``/``or``/``not`` over other populations' full membership, each operand optionally complemented.

Evaluation precision: ``GatingStrategy.apply(..., exact=False)`` computes compensation and transforms in float32
(fast path for Treg pipelines); ``exact=True`` computes in float64 with exact logicle/hyperlog roots, which is what
the Gating-ML compliance suite requires for events lying on gate boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cytopipe.errors import GateError
from cytopipe.memo import Memo
from cytopipe.transforms import Ratio, Transform

if TYPE_CHECKING:
    from cytopipe.evaluate import GatingResult

__all__ = [
    "Dimension",
    "Gate",
    "RectangleGate",
    "PolygonGate",
    "EllipsoidGate",
    "QuadrantGate",
    "BooleanGate",
    "AllEvents",
    "SpectrumMatrix",
    "Population",
    "GatingStrategy",
]

#: Compensation references with a fixed meaning; anything else names a matrix in ``GatingStrategy.matrices``.
FCS = "FCS"
#: Most vertices a polygon gate may have: hand-drawn and FlowJo polygons have tens to hundreds; each vertex costs
#: a pass over the events, so a million would gate for hours.
MAX_VERTICES = 10_000
UNCOMPENSATED = "uncompensated"


@dataclass(frozen=True)
class Dimension:
    """One axis of a gate: a channel, how it is compensated and how it is transformed.

    Parameters
    ----------
    channel : str or tuple of (str, str)
        Marker or ``$PnN``; a ``(numerator, denominator)`` pair for a ratio dimension.
    transform : Transform or None
        Scale transform applied last (``None`` = raw scale units).
    compensation : str
        ``"FCS"`` (the file's own spillover), ``"uncompensated"`` or the id of a matrix in
        ``GatingStrategy.matrices``.
    ratio : Ratio or None
        For a ratio dimension (Gating-ML ``new-dimension``), the ``fratio`` combining the two channels before
        ``transform``.
    """

    channel: str | tuple[str, str]
    transform: Transform | None = None
    compensation: str = FCS
    ratio: Ratio | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channel, tuple):
            if len(self.channel) != 2 or self.ratio is None:
                raise GateError(f"dimension {self.channel!r}: a channel pair needs exactly two channels and a ratio")
        elif self.ratio is not None:
            raise GateError(f"dimension {self.channel!r}: a ratio needs a (numerator, denominator) channel pair")
        if self.transform is not None and isinstance(self.transform, Ratio):
            raise GateError(f"dimension {self.channel!r}: fratio '{self.transform.name}' must be given as ratio=")

    @property
    def channels(self) -> tuple[str, ...]:
        """The input channel names (one, or two for a ratio)."""
        return self.channel if isinstance(self.channel, tuple) else (self.channel,)

    @property
    def label(self) -> str:
        """A readable axis label, e.g. ``"CD4 (logicle)"``."""
        name = self.ratio.name if self.ratio is not None else str(self.channel)
        return f"{name} ({self.transform.name})" if self.transform is not None else name


@dataclass(frozen=True)
class Gate:
    """Base of all gates: a name, the dimensions it reads, and :meth:`mask`."""

    name: str
    dimensions: tuple[Dimension, ...]

    def _check_values(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != len(self.dimensions):
            raise ValueError(
                f"gate '{self.name}' needs an (n, {len(self.dimensions)}) array of values, got shape {values.shape}"
            )
        return values

    def mask(self, values: np.ndarray) -> np.ndarray:
        """Boolean membership of each event.

        Parameters
        ----------
        values : numpy.ndarray
            ``(n, ndim)`` values in the dimensions' transformed units, columns in ``dimensions`` order.

        Returns
        -------
        numpy.ndarray
            ``(n,)`` bool.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define mask()")

    def outline(self) -> np.ndarray | None:
        """Closed ``(k, 2)`` outline in transformed units for 2-D plots, or ``None``.

        Open rectangle sides are ``-inf``/``+inf``: clip them to the axis limits when drawing.
        """
        return None


def _box_mask(values: np.ndarray, bounds: Any) -> np.ndarray:
    """``lo <= x < hi`` on every column; an open side is +-inf, so +inf is outside an open top (as in flowCore)
    and NaN is outside everything."""
    return _box_mask_columns([values[:, k] for k in range(values.shape[1])], bounds)


def _box_mask_columns(columns: Sequence[np.ndarray], bounds: Any) -> np.ndarray:
    """:func:`_box_mask` of the columns given apart (the gating engine's own columns, not stacked first)."""
    out = np.ones(columns[0].shape[0], dtype=bool)
    for column, (lo, hi) in zip(columns, bounds, strict=False):
        out &= column >= (-np.inf if lo is None else lo)
        out &= column < (np.inf if hi is None else hi)
    return out


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class RectangleGate(Gate):
    """Range (1-D) or rectangle/hyper-rectangle gate: ``min <= x < max`` per dimension; ``None`` = open side."""

    min: tuple[float | None, ...] = ()
    max: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "min", tuple(_float_or_none(v) for v in self.min))
        object.__setattr__(self, "max", tuple(_float_or_none(v) for v in self.max))
        n = len(self.dimensions)
        if n == 0 or len(self.min) != n or len(self.max) != n:
            raise GateError(f"gate '{self.name}': min and max need one entry per dimension ({n})")
        for k, (lo, hi) in enumerate(zip(self.min, self.max, strict=True)):
            if lo is None and hi is None:
                raise GateError(f"gate '{self.name}': dimension {k + 1} has neither min nor max")
            if lo is not None and hi is not None and lo > hi:
                raise GateError(f"gate '{self.name}': dimension {k + 1} has min {lo} > max {hi}")

    def mask(self, values: np.ndarray) -> np.ndarray:
        values = self._check_values(values)
        return _box_mask(values, zip(self.min, self.max, strict=True))

    def outline(self) -> np.ndarray | None:
        if len(self.dimensions) != 2:
            return None
        x0, y0 = (-np.inf if v is None else v for v in self.min)
        x1, y1 = (np.inf if v is None else v for v in self.max)
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


@dataclass(frozen=True)
class PolygonGate(Gate):
    """2-D polygon gate (even-odd rule; self-intersecting polygons allowed).

    Notes
    -----
    The test is vectorised over events with a Python loop over the (few) edges only:

    1. Events strictly inside a precomputed inner square (centred on the area centroid, half-diagonal just under
       the centroid's distance to the nearest edge, used only when the centroid is inside and the square covers
       >= 20% of the bounding box) are inside without edge tests: no edge passes through that square. Of the
       rest, keep the events inside the bounding box.
    2. For each edge ``(x1, y1) -> (x2, y2)`` with ``y1 != y2`` and each event ``(x, y)`` with
       ``min(y1, y2) <= y < max(y1, y2)``, take ``c = (x2 - x1)(y - y1) - (x - x1)(y2 - y1)``. The edge lies
       right of the event (the ray to +x crosses it; parity bit flipped) when ``c`` has the sign of
       ``y2 - y1``; the event is on the edge when ``c == 0``.
    3. Inside = odd parity or on the boundary (Gating-ML boundaries are inclusive; this reproduces the
       compliance results, e.g. ``Poly1u`` events lying exactly on an edge).
    """

    vertices: tuple[tuple[float, float], ...] = ()
    _core: tuple[float, float, float, float] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            vertices = tuple((float(x), float(y)) for x, y in self.vertices)
        except (TypeError, ValueError) as exc:
            raise GateError(f"gate '{self.name}': vertices must be (x, y) pairs") from exc
        object.__setattr__(self, "vertices", vertices)
        if len(self.dimensions) != 2:
            raise GateError(f"gate '{self.name}': a polygon needs exactly 2 dimensions, got {len(self.dimensions)}")
        if len(vertices) < 3:
            raise GateError(f"gate '{self.name}': a polygon needs at least 3 vertices, got {len(vertices)}")
        if len(vertices) > MAX_VERTICES:
            raise GateError(f"gate '{self.name}': a polygon of {len(vertices)} vertices; at most {MAX_VERTICES}")
        if not np.all(np.isfinite(vertices)):
            raise GateError(f"gate '{self.name}': vertex coordinates must be finite")
        object.__setattr__(self, "_core", self._inner_square())

    def _inner_square(self) -> tuple[float, float, float, float] | None:
        """``(x0, y0, x1, y1)`` of an open square inside the polygon that no edge crosses, or None."""
        v = np.asarray(self.vertices, dtype=np.float64)
        x, y = v[:, 0], v[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = cross.sum() / 2
        if area == 0:
            return None
        cx = ((x + xn) * cross).sum() / (6 * area)
        cy = ((y + yn) * cross).sum() / (6 * area)
        dx, dy = xn - x, yn - y
        length2 = dx * dx + dy * dy
        t = np.clip(((cx - x) * dx + (cy - y) * dy) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        nearest = float(np.min(np.hypot(cx - (x + t * dx), cy - (y + t * dy))))
        # 1% margin: float32 rounding of the square's bounds can never reach an edge (see the size floor below).
        half = 0.99 * nearest / np.sqrt(2.0)
        scale = float(np.max(np.abs(v)))
        width, height = np.ptp(x), np.ptp(y)
        if not half > 1e-4 * scale or (2 * half) ** 2 < 0.2 * width * height:
            return None
        if not self._edge_test(np.array([cx]), np.array([cy]), np.float64)[0]:
            return None  # centroid outside (concave or self-intersecting shape)
        return (float(cx - half), float(cy - half), float(cx + half), float(cy + half))

    def mask(self, values: np.ndarray) -> np.ndarray:
        values = self._check_values(values)
        return self.mask_columns(values[:, 0], values[:, 1])

    def mask_columns(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """:meth:`mask` of the values given as two columns of one dtype (the gating engine's own columns, not
        stacked first)."""
        if x.dtype == np.float32 and x.size >= _GRID_MIN_EVENTS:
            grid = _polygon_grid(self)
            if grid is not None:
                return grid.mask(self, x, y)
        return self._exact_mask(x, y)

    def _exact_mask(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The test of every event on its own (see Notes); :meth:`mask` without the grid."""
        (x_low, x_high, y_low, y_high), _ = _edge_table(self.vertices, np.float64)  # float64 bounds, as always
        box = (x >= x_low) & (x <= x_high) & (y >= y_low) & (y <= y_high)
        if self._core is not None:
            x0, y0, x1, y1 = self._core
            out = (x > x0) & (x < x1) & (y > y0) & (y < y1)
            box ^= out  # the square lies inside the bounding box
        else:
            out = np.zeros(x.shape[0], dtype=bool)
        index = np.flatnonzero(box)
        if index.size == 0:
            return out
        # Edge arithmetic in float64 when exactness matters, in the data's precision otherwise.
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        out[index] = self._edge_test(x[index].astype(dtype, copy=False), y[index].astype(dtype, copy=False), dtype)
        return out

    def _edge_test(self, px: np.ndarray, py: np.ndarray, dtype: type) -> np.ndarray:
        """Even-odd parity or on an edge, for each event (see Notes)."""
        v = np.asarray(self.vertices, dtype=np.float64)
        if px.size * len(v) <= _EDGES_AT_ONCE:
            return _edge_test_at_once(_edge_table(self.vertices, dtype)[1], px, py)
        # Preallocated buffers and in-place ufuncs: ~12 passes over the events per edge, without allocation.
        m = px.size
        inside = np.zeros(m, dtype=bool)
        on_edge = np.zeros(m, dtype=bool)
        spans, hit = np.empty(m, dtype=bool), np.empty(m, dtype=bool)
        cross, other = np.empty(m, dtype=dtype), np.empty(m, dtype=dtype)
        for (x1, y1), (x2, y2) in zip(v, np.roll(v, -1, axis=0), strict=True):
            if y1 == y2:
                continue
            np.greater_equal(py, dtype(min(y1, y2)), out=spans)
            np.less(py, dtype(max(y1, y2)), out=hit)
            spans &= hit
            # Cross product of the edge with (event - start): exactly zero for an event on the edge in many
            # more cases than comparing with a computed intersection, e.g. on a 45-degree edge.
            np.subtract(py, dtype(y1), out=cross)
            cross *= dtype(x2 - x1)
            np.subtract(px, dtype(x1), out=other)
            other *= dtype(y2 - y1)
            cross -= other
            (np.greater if y2 > y1 else np.less)(cross, 0, out=hit)
            hit &= spans
            inside ^= hit
            np.equal(cross, 0, out=hit)
            if hit.any():  # rare: skip two passes per edge when no event lies on the edge's line
                hit &= spans
                on_edge |= hit
        inside |= on_edge
        return inside

    def outline(self) -> np.ndarray:
        v = np.asarray(self.vertices, dtype=float)
        return np.vstack([v, v[:1]])


#: Events x edges up to which :meth:`PolygonGate._edge_test` tests every edge in one array operation (a few hundred
#: events near the boundary: a dozen numpy calls instead of a dozen per edge).
_EDGES_AT_ONCE = 1 << 15


#: What the test of a few events derives from a polygon's vertices, by (vertices, dtype) (see _edge_table).
_EDGE_TABLES: Memo[tuple] = Memo(256)


def _edge_table(vertices: tuple[tuple[float, float], ...], dtype: type) -> tuple:
    """``(bounding box, edges)`` of a polygon, built once per vertices and dtype: the box as float64 scalars
    ``(x min, x max, y min, y max)``; the edges with ``y1 != y2`` (horizontal edges never count) as ``(edges, 1)``
    read-only columns of ``dtype``: ``min(y1, y2)``, ``max(y1, y2)``, ``y1``, ``x2 - x1``, ``x1``, ``y2 - y1``
    and whether ``y2 > y1`` (None without such edges). A grid's boundary events are tested a few hundred at a
    time, where deriving these again cost more than the test itself."""

    def build() -> tuple:
        v = np.asarray(vertices, dtype=np.float64)
        box = (v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max())
        nxt = np.roll(v, -1, axis=0)
        sloped = v[:, 1] != nxt[:, 1]
        (x1, y1), (x2, y2) = v[sloped].T, nxt[sloped].T
        if not x1.size:
            return box, None
        edge = (slice(None), None)
        columns = (np.minimum(y1, y2).astype(dtype)[edge], np.maximum(y1, y2).astype(dtype)[edge],
                   y1.astype(dtype)[edge], (x2 - x1).astype(dtype)[edge], x1.astype(dtype)[edge],
                   (y2 - y1).astype(dtype)[edge], (y2 > y1)[edge])
        for column in columns:
            column.setflags(write=False)
        return box, columns

    return _EDGE_TABLES.get((vertices, np.dtype(dtype).str), build)


def _edge_test_at_once(edges: tuple | None, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """:meth:`PolygonGate._edge_test` with every edge as a row of one ``(edges, events)`` array (``edges`` from
    :func:`_edge_table`): the same operations on the same operands for each event and edge, so the same bits."""
    if edges is None:
        return np.zeros(px.size, dtype=bool)
    y_low, y_high, y1, dx, x1, dy, rising = edges
    event = (None, slice(None))
    spans = py[event] >= y_low
    spans &= py[event] < y_high
    cross = py[event] - y1
    cross *= dx
    other = px[event] - x1
    other *= dy
    cross -= other
    hit = np.where(rising, cross > 0, cross < 0)
    hit &= spans
    inside = np.logical_xor.reduce(hit, axis=0)
    np.equal(cross, 0, out=hit)
    hit &= spans
    inside |= np.logical_or.reduce(hit, axis=0)
    return inside


#: A polygon applied to at least this many float32 events is first looked up in its grid (:class:`_PolygonGrid`).
_GRID_MIN_EVENTS = 2048
_GRID_CELLS = 64  # cells per axis over the bounding box (plus one ring outside it)
_GRID_MAX_VERTICES = 256  # more edges: the grid costs more to build than it saves
_GRID_BLOCK = 1 << 16  # events looked up at a time
_GRIDS: Memo[_PolygonGrid | None] = Memo(256)  # by vertices: built once per worker, whatever object holds them


@dataclass(frozen=True)
class _PolygonGrid:
    """A polygon gate compiled to a grid of cells, each wholly inside, wholly outside or near the boundary.

    Built once per polygon (:func:`_polygon_grid`); :meth:`mask` gives the verdict of
    :meth:`PolygonGate._exact_mask` for every event, computing it only for the events in boundary cells.

    Notes
    -----
    The float32 test of an event far enough from every edge is decided by the geometry alone: its crossing count
    changes only across the boundary, and every cross product it computes has the sign of the exact one when the
    event lies, horizontally, further from the edge than the product's rounding error over the edge's slope
    (``1e-5 x`` the coordinates' magnitude, ~10x the error bound of the few float32 operations). A cell whose
    rectangle, widened by its index rounding and vertex rounding margins, comes no closer to any edge than that
    takes the verdict of the exact test at its centre; every other cell (and each cell a horizontal edge passes
    near) is a boundary cell. Events beyond the grid are clamped into its outer ring, which lies outside the
    bounding box and is never inside. Polygons whose coordinates exceed 1000x their extent, or with more than
    :data:`_GRID_MAX_VERTICES` vertices, are not compiled.
    """

    origin: tuple[np.float32, np.float32]
    scale: tuple[np.float32, np.float32]
    classes: np.ndarray  # uint8 per cell, row-major in y: 0 outside, 1 inside, 2 boundary

    def mask(self, gate: PolygonGate, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        n = _GRID_CELLS + 2
        out = np.empty(x.size, dtype=bool)
        near = []
        # A block of events at a time: its temporaries stay in the CPU cache (and in the allocator's free lists).
        for b0 in range(0, x.size, _GRID_BLOCK):
            cells = None
            for values, origin, scale in ((y, self.origin[1], self.scale[1]), (x, self.origin[0], self.scale[0])):
                u = values[b0:b0 + _GRID_BLOCK] - origin
                u *= scale
                np.fmax(u, 0, out=u)  # NaN too: a NaN event lands in the outer ring
                np.fmin(u, n - 1, out=u)
                index = u.astype(np.int16)  # (n * n < 2**15) half the memory of int32 indices
                if cells is None:
                    cells = index
                    cells *= n
                else:
                    cells += index
            assert cells is not None
            kind = self.classes.take(cells)
            np.equal(kind, 1, out=out[b0:b0 + _GRID_BLOCK])
            if (found := np.flatnonzero(kind == 2)).size:
                near.append(found + b0 if b0 else found)
        if near:
            index = np.concatenate(near) if len(near) > 1 else near[0]
            out[index] = gate._exact_mask(x[index], y[index])
        return out


def _polygon_grid(gate: PolygonGate) -> _PolygonGrid | None:
    """The grid of a polygon (None when it is not compiled), built once per distinct list of vertices."""
    return _GRIDS.get(gate.vertices, lambda: _build_grid(gate))


def _build_grid(gate: PolygonGate) -> _PolygonGrid | None:
    v = np.asarray(gate.vertices, dtype=np.float64)
    if len(v) > _GRID_MAX_VERTICES:
        return None
    low, high = v.min(axis=0), v.max(axis=0)
    extent = high - low
    if not np.all(extent > 0):
        return None
    magnitude = np.maximum(np.abs(low), np.abs(high)) + extent
    if np.any(magnitude > 1e3 * extent):
        return None  # the float32 cell index of an event could miss its cell by more than the margin
    g = _GRID_CELLS
    n = g + 2
    step = extent / g
    origin = low - step
    # Each cell widened by 5% of a cell (index rounding: under 1% here) and by the vertices' float32 rounding.
    margin = 0.05 * step + 1e-5 * magnitude
    edges = np.arange(n + 1) * step[:, None] + origin[:, None]  # cell borders per axis
    cx0, cx1 = edges[0, :-1] - margin[0], edges[0, 1:] + margin[0]
    cy0, cy1 = edges[1, :-1] - margin[1], edges[1, 1:] + margin[1]
    near = np.zeros((n, n), dtype=bool)  # [row (y), column (x)]
    for (x1, y1), (x2, y2) in zip(v, np.roll(v, -1, axis=0), strict=True):
        ylo, yhi = min(y1, y2), max(y1, y2)
        band_lo, band_hi = np.maximum(cy0, ylo - margin[1]), np.minimum(cy1, yhi + margin[1])
        rows = band_hi >= band_lo
        if y1 == y2:  # skipped by the parity test, but the verdict changes across it
            lo = np.full(n, min(x1, x2) - margin[0])
            hi = np.full(n, max(x1, x2) + margin[0])
        else:
            slope = (x2 - x1) / (y2 - y1)
            xa = x1 + (np.clip(band_lo, ylo, yhi) - y1) * slope
            xb = x1 + (np.clip(band_hi, ylo, yhi) - y1) * slope
            reach = margin[0] + 1e-5 * (magnitude[1] * abs(slope) + magnitude[0] + extent[0])
            lo, hi = np.minimum(xa, xb) - reach, np.maximum(xa, xb) + reach
        near |= rows[:, None] & (cx0[None, :] <= hi[:, None]) & (cx1[None, :] >= lo[:, None])
    centres = (edges[:, :-1] + edges[:, 1:]) / 2
    cx, cy = np.meshgrid(centres[0], centres[1])
    inside = gate._exact_mask(cx.ravel().astype(np.float32), cy.ravel().astype(np.float32)).reshape(n, n)
    classes = np.where(near, 2, inside.astype(np.uint8)).astype(np.uint8).ravel()
    classes.setflags(write=False)
    return _PolygonGrid((np.float32(origin[0]), np.float32(origin[1])),
                        (np.float32(1 / step[0]), np.float32(1 / step[1])), classes)


@dataclass(frozen=True)
class EllipsoidGate(Gate):
    """Ellipse/ellipsoid in any number of dimensions: ``(x - mean)^T C^-1 (x - mean) <= distance_square``.

    ``covariance`` is used as written (Gating-ML allows a non-symmetric or indefinite matrix: only its inverse
    defines the quadratic form).
    """

    mean: tuple[float, ...] = ()
    covariance: tuple[tuple[float, ...], ...] = ()
    distance_square: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.dimensions)
        mean = tuple(float(v) for v in self.mean)
        cov = tuple(tuple(float(v) for v in row) for row in self.covariance)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "covariance", cov)
        object.__setattr__(self, "distance_square", float(self.distance_square))
        if n == 0 or len(mean) != n:
            raise GateError(f"gate '{self.name}': mean needs one coordinate per dimension ({n})")
        if len(cov) != n or any(len(row) != n for row in cov):
            raise GateError(f"gate '{self.name}': covariance must be a {n}x{n} matrix")
        if not self.distance_square > 0:
            raise GateError(f"gate '{self.name}': distance_square must be > 0, got {self.distance_square}")
        matrix = np.array(cov)
        if abs(np.linalg.det(matrix)) <= np.finfo(float).tiny:
            raise GateError(f"gate '{self.name}': covariance matrix is singular")

    @property
    def precision(self) -> np.ndarray:
        """The inverse covariance matrix."""
        return np.linalg.inv(np.array(self.covariance))

    def mask(self, values: np.ndarray) -> np.ndarray:
        values = self._check_values(values)
        dtype = np.float64 if values.dtype == np.float64 else np.float32
        diff = values.astype(dtype, copy=True)
        diff -= np.asarray(self.mean, dtype=dtype)
        quad = np.einsum("ij,jk,ik->i", diff, self.precision.astype(dtype), diff)
        return quad <= dtype(self.distance_square)

    def outline(self, n_points: int = 100) -> np.ndarray | None:
        if len(self.dimensions) != 2:
            return None
        cov = np.array(self.covariance)
        sym = 0.5 * (cov + cov.T)
        evals, evecs = np.linalg.eigh(sym)
        if np.any(evals <= 0):
            return None
        t = np.linspace(0.0, 2 * np.pi, n_points)
        circle = np.stack([np.cos(t), np.sin(t)], axis=1) * np.sqrt(evals * self.distance_square)
        points = circle @ evecs.T + np.asarray(self.mean)
        points[-1] = points[0]
        return points


@dataclass(frozen=True)
class QuadrantGate(Gate):
    """One quadrant (region) of a Gating-ML ``QuadrantGate``.

    Parameters
    ----------
    dividers : tuple of tuple of float
        Divider values per dimension (each divider may hold several values, e.g. 3 intervals).
    location : tuple of (float or None)
        A point inside the quadrant, per dimension; ``None`` leaves that dimension unconstrained (a region that
        spans all intervals of a divider).
    group : str
        The id of the Gating-ML ``QuadrantGate`` this quadrant belongs to (used on export).
    divider_ids : tuple of str
        Gating-ML divider ids, per dimension (used on export).

    Notes
    -----
    On each constrained dimension the quadrant is the interval ``[d_k, d_k+1)`` of sorted divider values that holds
    the location (``-inf``/``+inf`` beyond the outermost values). A location equal to a divider value belongs to
    the interval above it, matching the ``min <= x < max`` rectangle convention.
    """

    dividers: tuple[tuple[float, ...], ...] = ()
    location: tuple[float | None, ...] = ()
    group: str = ""
    divider_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.dimensions)
        dividers = tuple(tuple(sorted(float(v) for v in values)) for values in self.dividers)
        object.__setattr__(self, "dividers", dividers)
        object.__setattr__(self, "location", tuple(_float_or_none(v) for v in self.location))
        if not self.divider_ids:
            object.__setattr__(self, "divider_ids", tuple(f"{self.group or self.name}_d{k + 1}" for k in range(n)))
        if n == 0 or len(dividers) != n or len(self.location) != n or len(self.divider_ids) != n:
            raise GateError(f"gate '{self.name}': dividers, location and divider ids need one entry per dimension")
        if any(len(values) == 0 for values in dividers):
            raise GateError(f"gate '{self.name}': every divider needs at least one value")
        if all(v is None for v in self.location):
            raise GateError(f"gate '{self.name}': a quadrant must be positioned on at least one divider")

    @classmethod
    def from_signs(cls, name: str, dimensions: Sequence[Dimension], at: Sequence[float], signs: str) -> QuadrantGate:
        """Quadrant of a simple cross: ``signs`` like ``"+-"`` = at or above ``at[0]``, below ``at[1]``."""
        if len(signs) != len(dimensions) or len(at) != len(dimensions) or set(signs) - {"+", "-"}:
            raise GateError(f"gate '{name}': quadrant signs must be one '+' or '-' per dimension, got {signs!r}")
        location = tuple(float(a) + (1.0 if s == "+" else -1.0) * max(1.0, abs(float(a))) for a, s in zip(
            at, signs, strict=True))
        return cls(name=name, dimensions=tuple(dimensions), dividers=tuple((float(a),) for a in at),
                   location=location, group=name)

    def intervals(self) -> tuple[tuple[float | None, float | None], ...]:
        """The ``[low, high)`` interval per dimension (``None`` = unbounded)."""
        result = []
        for values, where in zip(self.dividers, self.location, strict=True):
            if where is None:
                result.append((None, None))
                continue
            k = int(np.searchsorted(values, where, side="right"))
            result.append((values[k - 1] if k > 0 else None, values[k] if k < len(values) else None))
        return tuple(result)

    def mask(self, values: np.ndarray) -> np.ndarray:
        values = self._check_values(values)
        return _box_mask(values, self.intervals())

    def outline(self) -> np.ndarray | None:
        if len(self.dimensions) != 2:
            return None
        (x0, x1), (y0, y1) = self.intervals()
        x0 = -np.inf if x0 is None else x0
        y0 = -np.inf if y0 is None else y0
        x1 = np.inf if x1 is None else x1
        y1 = np.inf if y1 is None else y1
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


@dataclass(frozen=True)
class BooleanGate(Gate):
    """``and`` / ``or`` / ``not`` over other populations (by name), each optionally used as its complement.

    ``mask(values)`` takes an ``(n, k)`` bool array whose columns are the operands' full membership (parent chains
    applied), in ``operands`` order; the gating strategy builds it.
    """

    op: str = "and"
    operands: tuple[str, ...] = ()
    complement: tuple[bool, ...] = ()
    dimensions: tuple[Dimension, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        if not self.complement:
            object.__setattr__(self, "complement", (False,) * len(self.operands))
        object.__setattr__(self, "complement", tuple(bool(c) for c in self.complement))
        if self.op not in ("and", "or", "not"):
            raise GateError(f"gate '{self.name}': boolean op must be 'and', 'or' or 'not', got {self.op!r}")
        if self.op == "not" and len(self.operands) != 1:
            raise GateError(f"gate '{self.name}': 'not' takes exactly one operand, got {len(self.operands)}")
        if self.op != "not" and len(self.operands) < 2:
            raise GateError(f"gate '{self.name}': '{self.op}' needs at least two operands")
        if len(self.complement) != len(self.operands):
            raise GateError(f"gate '{self.name}': one complement flag per operand")

    def mask(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=bool)
        if values.ndim != 2 or values.shape[1] != len(self.operands):
            raise ValueError(f"gate '{self.name}' needs an (n, {len(self.operands)}) bool array of operand masks")
        columns = [~values[:, k] if c else values[:, k] for k, c in enumerate(self.complement)]
        if self.op == "not":
            return ~columns[0]
        if self.op == "and":
            return np.logical_and.reduce(columns)
        return np.logical_or.reduce(columns)


@dataclass(frozen=True)
class AllEvents(Gate):
    """Every event of the parent (no dimensions): a pre-gated file's top population, or an optional population
    whose channels the file lacks."""

    dimensions: tuple[Dimension, ...] = ()
    reason: str = ""

    def mask(self, values: np.ndarray) -> np.ndarray:
        return np.ones(np.asarray(values).shape[0], dtype=bool)


@dataclass(frozen=True, eq=False)
class SpectrumMatrix:
    """A Gating-ML ``spectrumMatrix``: fluorochrome spectra over detectors, possibly non-square.

    Parameters
    ----------
    fluorochromes : tuple of str
        Names of the compensated (unmixed) output dimensions.
    detectors : tuple of str
        ``$PnN`` of the measured channels.
    matrix : numpy.ndarray
        ``(n_fluorochromes, n_detectors)`` spectra; or, when ``inverted`` is true, the already-inverted
        ``(n_detectors, n_fluorochromes)`` unmixing matrix.
    inverted : bool
        Gating-ML ``matrix-inverted-already``.

    Notes
    -----
    Unmixed values are ``raw[:, detectors] @ U`` with ``U = pinv(S)``: the exact inverse for a square matrix
    (ordinary compensation) and the least-squares solution of ``x S = raw`` for more detectors than fluorochromes.
    """

    fluorochromes: tuple[str, ...]
    detectors: tuple[str, ...]
    matrix: np.ndarray
    inverted: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        matrix = np.array(self.matrix, dtype=np.float64)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "fluorochromes", tuple(self.fluorochromes))
        object.__setattr__(self, "detectors", tuple(self.detectors))
        expected = (len(self.detectors), len(self.fluorochromes)) if self.inverted else (
            len(self.fluorochromes), len(self.detectors))
        if matrix.shape != expected:
            raise GateError(f"spectrum matrix {self.source!r}: expected shape {expected}, got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise GateError(f"spectrum matrix {self.source!r}: coefficients must be finite")

    @classmethod
    def from_spillover(cls, spillover: Any) -> SpectrumMatrix:
        """Wrap a square :class:`~cytopipe.compensate.Spillover` (outputs keep the detector names)."""
        channels = tuple(spillover.channels)
        return cls(channels, channels, np.asarray(spillover.matrix), False, getattr(spillover, "source", ""))

    def unmixing(self) -> np.ndarray:
        """The ``(n_detectors, n_fluorochromes)`` matrix ``U`` with ``unmixed = raw @ U``."""
        if self.inverted:
            return self.matrix
        if self.matrix.shape[0] == self.matrix.shape[1]:
            try:
                return np.linalg.inv(self.matrix)
            except np.linalg.LinAlgError as exc:
                raise GateError(f"spectrum matrix {self.source!r}: matrix is singular") from exc
        return np.linalg.pinv(self.matrix)


@dataclass(frozen=True)
class Population:
    """A named gate with one parent (``None`` = all events).

    ``optional``: when a file lacks one of the gate's channels the population passes all its parent's events
    (see :func:`cytopipe.adapt.adapt_strategy`) instead of failing the sample.
    """

    name: str
    gate: Gate
    parent: str | None = None
    optional: bool = False


def _as_matrix(matrix: Any, name: str) -> SpectrumMatrix:
    if isinstance(matrix, SpectrumMatrix):
        return matrix
    if hasattr(matrix, "channels") and hasattr(matrix, "matrix"):
        return SpectrumMatrix.from_spillover(matrix)
    raise GateError(f"matrix '{name}': expected a Spillover or SpectrumMatrix, got {type(matrix).__name__}")


@dataclass(frozen=True, eq=False)
class GatingStrategy:
    """A gating hierarchy: populations in topological order, with the matrices and transforms they use.

    Raises
    ------
    GateError
        On duplicate population names, unknown parents or boolean operands, cycles, or a dimension naming an
        unknown matrix.
    """

    populations: tuple[Population, ...]
    matrices: dict[str, Any] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    name: str = ""
    treg: str | None = None
    parent: str | None = None
    compensation: str = "file"
    source: str = ""
    #: How the events must be decoded for these gates (:data:`cytopipe.fcs.SCALES`): ``"log"`` ($PnE, FCS 3.1),
    #: ``"gain"`` (also $PnG: Gating-ML 2.0 as its compliance suite defines it) or ``"raw"``.
    scale: str = "log"

    def __post_init__(self) -> None:
        where = f"gating strategy {self.name!r}" if self.name else "gating strategy"
        if self.scale not in ("log", "gain", "raw"):
            raise GateError(f"{where}: scale must be 'log', 'gain' or 'raw', got {self.scale!r}")
        pops = tuple(self.populations)
        names: dict[str, Population] = {}
        for pop in pops:
            if pop.name in names:
                raise GateError(f"{where}: duplicate population name '{pop.name}'")
            names[pop.name] = pop
        for pop in pops:
            if pop.parent is not None and pop.parent not in names:
                raise GateError(f"{where}: population '{pop.name}' has unknown parent '{pop.parent}'")
            if isinstance(pop.gate, BooleanGate):
                for ref in pop.gate.operands:
                    if ref not in names:
                        raise GateError(f"{where}: boolean population '{pop.name}' references unknown '{ref}'")
            for dim in pop.gate.dimensions:
                comp = dim.compensation
                if comp not in (FCS, UNCOMPENSATED) and comp not in self.matrices:
                    raise GateError(f"{where}: population '{pop.name}' uses unknown compensation matrix '{comp}'")
        for key, matrix in self.matrices.items():
            _as_matrix(matrix, key)
        object.__setattr__(self, "populations", self._topological(pops, where))
        for label, value in (("treg", self.treg), ("parent", self.parent)):
            if value is not None and value not in names:
                raise GateError(f"{where}: {label} population '{value}' is not defined")

    @staticmethod
    def _topological(pops: tuple[Population, ...], where: str) -> tuple[Population, ...]:
        """Order so every population follows its parent and boolean operands (stable; detects cycles)."""
        by_name = {p.name: p for p in pops}
        state: dict[str, int] = {}  # 1 = visiting, 2 = done
        order: list[Population] = []

        def deps(pop: Population) -> list[str]:
            out = [pop.parent] if pop.parent is not None else []
            if isinstance(pop.gate, BooleanGate):
                out.extend(pop.gate.operands)
            return out

        for start in pops:
            if state.get(start.name) == 2:
                continue
            stack: list[tuple[Population, int]] = [(start, 0)]
            state[start.name] = 1
            while stack:
                pop, k = stack.pop()
                needs = deps(pop)
                if k < len(needs):
                    stack.append((pop, k + 1))
                    dep = by_name[needs[k]]
                    if state.get(dep.name) == 1:
                        raise GateError(f"{where}: population '{pop.name}' is part of a cycle through '{dep.name}'")
                    if state.get(dep.name) is None:
                        state[dep.name] = 1
                        stack.append((dep, 0))
                else:
                    state[pop.name] = 2
                    order.append(pop)
        return tuple(order)

    def population(self, name: str) -> Population:
        """The population called ``name`` (raises :class:`GateError` when unknown)."""
        for pop in self.populations:
            if pop.name == name:
                return pop
        known = ", ".join(p.name for p in self.populations)
        raise GateError(f"gating strategy {self.name!r}: no population '{name}' (known: {known})")

    def children(self, name: str | None) -> list[Population]:
        """Populations whose parent is ``name`` (``None`` = the roots)."""
        return [p for p in self.populations if p.parent == name]

    def apply(self, sample: Any, spillover: Any = None, *, exact: bool = False) -> GatingResult:
        """Gate a sample.

        Parameters
        ----------
        sample : cytopipe.fcs.Sample
            Events (scaled as the gates expect) with channel lookup.
        spillover : cytopipe.compensate.Spillover, optional
            The matrix for ``compensation="FCS"``; default: the file's own (``$SPILLOVER``/``SPILL``/``$COMP``),
            or none (uncompensated) when the file has none.
        exact : bool
            Compute in float64 with exact transform roots (compliance); default float32 fast path.

        Returns
        -------
        GatingResult

        Notes
        -----
        1. Resolve every channel once with ``sample.find_channel`` (:class:`MarkerError` if absent/ambiguous).
        2. Compensate only the needed output columns: ``raw[:, detectors] @ U[:, needed]``.
        3. Evaluate populations in topological order; a child is evaluated only on its parent's events.
        4. Transform each distinct (channels, compensation, ratio, transform) column only on the rows a gate
           needs, caching them; no row is transformed twice (``GatingResult.values`` fills in the rest).
        """
        from cytopipe.evaluate import evaluate

        return evaluate(self, sample, spillover, exact)


def __getattr__(name: str) -> Any:
    """``GatingResult`` lives with the engine (:mod:`cytopipe.evaluate`), which imports the gate models from here;
    it is still importable from this module."""
    if name == "GatingResult":
        from cytopipe.evaluate import GatingResult

        return GatingResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

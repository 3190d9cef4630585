"""Tails of a main population in 2-D: :func:`fit_tail` and :class:`TailGate` (``auto_tail``), for "X high, Y low"
populations such as CD25+ CD127low regulatory T cells, which sit beside the main CD4 cloud without a density
valley on either axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import GateError
from ..gates import Dimension, Gate, PolygonGate
from ..transforms import friendly_units
from .base import (
    AutoGate,
    _build,
    _check,
    _common,
    _number,
    control_roles,
    from_units,
    missing_control,
    parse_control,
    pick_control,
)
from .robust import _quantile, robust_covariance

DIRECTIONS = ("high", "low")
#: A 2-D gate fitted on fewer events than this raises GateError rather than guessing.
MIN_EVENTS_2D = 100


def clip_polygon(vertices: np.ndarray, normal: Sequence[float], offset: float) -> np.ndarray:
    """The part of a convex polygon where ``normal . p >= offset`` (Sutherland-Hodgman, one half-plane).

    Parameters
    ----------
    vertices : numpy.ndarray
        ``(m, 2)`` vertices of a convex polygon, in order (not closed).
    normal : (float, float)
        Normal of the half-plane, pointing inside.
    offset : float
        The half-plane is ``normal . p >= offset``.

    Returns
    -------
    numpy.ndarray
        ``(m', 2)`` vertices of the clipped polygon (``m' = 0`` when nothing is left).
    """
    out = []
    a = np.asarray(normal, dtype=float)
    m = len(vertices)
    for i in range(m):
        p, q = vertices[i], vertices[(i + 1) % m]
        sp, sq = float(a @ p) - offset, float(a @ q) - offset
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            out.append(p + (q - p) * (sp / (sp - sq)))
    return np.array(out, dtype=float).reshape(-1, 2)


def fit_tail(
    xy: np.ndarray,
    *,
    direction: tuple[str, str] = ("high", "low"),
    k: float = 3.0,
    x_cut: float | None = None,
) -> dict[str, Any]:
    """The tail of the main population of 2-D events in one quadrant direction, as half-planes.

    Parameters
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` transformed values of the parent population.
    direction : (str, str)
        ``"high"`` or ``"low"`` for X and for Y: ``("high", "low")`` is "X high, Y low" (CD25+ CD127low).
    k : float
        Distance of the boundary from the main population's centre, in robust SDs along its minor axis.
    x_cut : float, optional
        An extra cut on X (e.g. the 99th percentile of an isotype control), on the side ``direction[0]`` keeps.

    Returns
    -------
    dict
        ``center`` (2,), ``covariance`` (2, 2), ``normal`` (2,) and ``offset`` of the tilted boundary
        ``normal . p >= offset``, and ``halfplanes``: every ``(normal, offset)`` the region satisfies.

    Raises
    ------
    GateError
        Fewer than :data:`MIN_EVENTS_2D` finite events, or degenerate events.

    Notes
    -----
    1. Robust centre and covariance of the main population (:func:`~cytopipe.autogate.robust.robust_covariance`,
       a reweighted minimum covariance determinant estimate): a tail of a few per cent does not move them.
    2. The boundary runs parallel to the main population's major axis, ``k`` robust SDs out along its minor axis
       (oriented to the chosen quadrant): a tilted line following the cloud, like openCyto's *transitional* gate,
       without a density valley.
    3. The region also lies beyond the centre on both axes (X above the centre for ``high``, Y below it for
       ``low``), and beyond ``x_cut`` when given.
    """
    xy = np.asarray(xy, dtype=float)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if xy.shape[0] < MIN_EVENTS_2D:
        raise GateError(f"tail gate needs at least {MIN_EVENTS_2D} events in its parent, got {xy.shape[0]}")
    try:
        center, cov = robust_covariance(xy)
        values, vectors = np.linalg.eigh(cov)
    except (ValueError, np.linalg.LinAlgError):
        raise GateError("tail gate: the parent's events are degenerate (no spread on one axis)") from None
    if not values[0] > 0:
        raise GateError("tail gate: the parent's events are degenerate (no spread on one axis)")
    signs = np.array([1.0 if d == "high" else -1.0 for d in direction])
    minor = vectors[:, 0]
    if float(minor @ signs) < 0:
        minor = -minor
    offset = float(minor @ center) + k * float(np.sqrt(values[0]))
    halfplanes = [(minor, offset), (np.array([signs[0], 0.0]), signs[0] * center[0]),
                  (np.array([0.0, signs[1]]), signs[1] * center[1])]
    if x_cut is not None:
        halfplanes.append((np.array([signs[0], 0.0]), signs[0] * x_cut))
    return {"center": center, "covariance": cov, "normal": minor, "offset": offset, "halfplanes": halfplanes}


@dataclass(frozen=True)
class TailGate(AutoGate):
    """The events beyond a main population in one direction ("X high, Y low"), as a :class:`PolygonGate`.

    Parameters
    ----------
    direction : (str, str)
        ``high``/``low`` for the first and second channel (default ``("high", "low")``).
    k : float
        Robust SDs from the main population's centre to the tilted boundary, along its minor axis (default 3).
    control : str or tuple of str, optional
        Sample-sheet role of a control tube (``isotype:CD25``, ``fmo:CD25``, ``unstained``), or several acceptable
        roles in order of preference: X must also lie beyond the ``percentile`` of the first of them the sheet
        has (gated through the same fitted hierarchy). When none is given the gate is the control-free tail
        boundary (same robust centre and covariance, ``k`` SDs) and its ``gates_fitted.csv`` row says
        ``control: none``.
    control_required : bool
        Fail (one line naming the population and the roles) when none of the ``control`` roles is given, instead of
        falling back to the control-free boundary.
    percentile : float
        Percentile of the control's X values (0-100; for a ``low`` X, the ``100 - percentile``).

    See :func:`fit_tail` for the algorithm.
    """

    direction: tuple[str, str] = ("high", "low")
    k: float = 3.0
    control: str | tuple[str, ...] | None = None
    percentile: float = 99.0
    control_required: bool = False
    max_events: int = 20_000
    kind: ClassVar[str] = "auto_tail"
    _settings: ClassVar[tuple[str, ...]] = ("k", "control", "percentile", "control_required")

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"gate '{self.name}'"
        _check(len(self.dimensions) == 2, where, f"auto_tail needs 2 channels, got {len(self.dimensions)}")
        _check(isinstance(self.direction, tuple) and len(self.direction) == 2
               and all(d in DIRECTIONS for d in self.direction), where,
               f"direction must be two of high, low (one per channel), got {self.direction!r}")
        _check(self.k > 0, where, f"k must be positive, got {self.k!r}")
        _check(0 < self.percentile < 100, where, f"percentile must be between 0 and 100, got {self.percentile!r}")
        _check(all(isinstance(r, str) and r for r in self.controls), where,
               f"control must be a sample-sheet role or a list of them, got {self.control!r}")
        _check(not self.control_required or bool(self.controls), where,
               "control_required needs control: <sample-sheet role(s), e.g. isotype:CD25>")

    @property
    def controls(self) -> tuple[str, ...]:
        """The acceptable control roles, in order of preference (empty without ``control``)."""
        return control_roles(self.control)

    @property
    def required_controls(self) -> tuple[tuple[str, ...], ...]:
        """Groups of roles of which one must be given: the ``control`` roles with ``control_required``, else none
        (the gate falls back to the control-free boundary)."""
        return (self.controls,) if self.control_required and self.controls else ()

    def to_spec(self) -> dict[str, Any]:
        spec = super().to_spec()
        if self.direction != ("high", "low"):
            spec["direction"] = list(self.direction)
        if isinstance(self.control, tuple):
            spec["control"] = list(self.control)
        if not self.control:
            spec.pop("percentile", None)
        return spec

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[PolygonGate, dict[str, Any]]:
        values = self._subsample(values)
        x_cut = None
        role, source = pick_control(self.controls, controls)
        if source is None and self.control_required:
            raise GateError(f"gate '{self.name}': {missing_control(self.controls)}")
        if source is not None:
            data = np.asarray(source, dtype=float)[:, 0]
            data = data[np.isfinite(data)]
            if data.size < MIN_EVENTS_2D:
                raise GateError(f"gate '{self.name}': the control events are too few for a percentile "
                                f"({data.size} < {MIN_EVENTS_2D})")
            q = self.percentile if self.direction[0] == "high" else 100 - self.percentile
            x_cut = _quantile(data, q / 100)
        try:
            tail = fit_tail(values, direction=self.direction, k=self.k, x_cut=x_cut)
        except GateError as err:
            raise GateError(f"gate '{self.name}': {err}") from None
        vertices = _region(tail["halfplanes"], values)
        if vertices.shape[0] < 3:
            raise GateError(f"gate '{self.name}': the tail region is empty (the control cut lies beyond the data?)")
        gate = PolygonGate(self.name, self.dimensions, vertices=tuple(map(tuple, vertices)))
        return gate, self._info(tail, x_cut, role)

    def _info(self, tail: dict[str, Any], x_cut: float | None, role: str | None = None) -> dict[str, Any]:
        """The fitted parameters in friendly units (one ``gates_fitted.csv`` row)."""
        (sx, _), (sy, _) = (friendly_units(d.transform) for d in self.dimensions)
        x, y = (str(d.channel) for d in self.dimensions)
        center, cov, normal = tail["center"], tail["covariance"], tail["normal"]
        sd = np.sqrt(np.diag(cov))
        # The boundary normal . p = offset, where it crosses the centre's Y, and its slope, both in friendly units.
        edge = (tail["offset"] - normal[1] * center[1]) / normal[0] if normal[0] != 0 else float("nan")
        slope = -(normal[0] / sx) / (normal[1] / sy) if normal[1] != 0 else float("inf")
        info = {f"center {x}": from_units(center[0], self.dimensions[0].transform),
                f"center {y}": from_units(center[1], self.dimensions[1].transform),
                f"sd {x}": sd[0] * sx, f"sd {y}": sd[1] * sy, "correlation": cov[0, 1] / (sd[0] * sd[1]),
                f"boundary {x} at center": from_units(edge, self.dimensions[0].transform), "boundary slope": slope}
        if self.controls:
            # Which control set the X cut, or "none": the control-free boundary (said in acquisition_qc).
            info["control"] = role or "none"
        if x_cut is not None:
            info[f"control {x}"] = from_units(x_cut, self.dimensions[0].transform)
        return info

    def shifts(self, fitted: Gate, delta: float) -> list[tuple[str, str, float, Gate, Gate]]:
        """For :func:`~cytopipe.autogate.sensitivity`: the fitted region moved by -/+ ``delta`` friendly units
        along each axis, as ``(channel, bound, edge, moved down, moved up)``; ``edge`` is the region's inner
        edge on that axis (its lowest X for ``high``, highest Y for ``low``) in friendly units."""
        assert isinstance(fitted, PolygonGate)
        v = np.asarray(fitted.vertices, dtype=float)
        rows = []
        for axis, (dim, side) in enumerate(zip(self.dimensions, self.direction, strict=True)):
            scale = friendly_units(dim.transform)[0]
            edge = float(v[:, axis].min() if side == "high" else v[:, axis].max())
            moved = []
            for sign in (-1.0, 1.0):
                w = v.copy()
                w[:, axis] += sign * delta / scale
                moved.append(replace(fitted, vertices=tuple(map(tuple, w))))
            rows.append((str(dim.channel), "min" if side == "high" else "max", from_units(edge, dim.transform),
                         moved[0], moved[1]))
        return rows


def _region(halfplanes: Sequence[tuple[np.ndarray, float]], values: np.ndarray) -> np.ndarray:
    """The convex polygon where every half-plane holds, inside a box far beyond the data (an open region
    drawn and exported as a finite polygon)."""
    lo, hi = values.min(axis=0), values.max(axis=0)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
    lo, hi = lo - 100 * span, hi + 100 * span
    vertices = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    for normal, offset in halfplanes:
        vertices = clip_polygon(vertices, normal, offset)
        if vertices.shape[0] < 3:
            break
    return vertices


def build_tail(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> TailGate:
    """``type: auto_tail`` -> :class:`TailGate` (``direction``, ``k``, ``control`` (a role or a list of roles in
    order of preference), ``control_required``, ``percentile``)."""
    w = f"{where}: gate"
    settings = _common(spec, w, {"direction", "k", "control", "control_required", "percentile"},
                       {"max_events": 20_000})
    direction = spec.get("direction", ["high", "low"])
    if not isinstance(direction, list) or len(direction) != 2 or any(d not in DIRECTIONS for d in direction):
        raise GateError(f"{w}.direction: expected [high|low, high|low] (one per channel), got {direction!r}")
    control = parse_control(spec.get("control"), w)
    required = spec.get("control_required", False)
    if not isinstance(required, bool):
        raise GateError(f"{w}.control_required: expected true or false, got {required!r}")
    if required and control is None:
        raise GateError(f"{w}.control_required: needs control: <sample-sheet role(s), e.g. isotype:CD25>")
    settings.update(direction=tuple(direction), k=_number(spec, "k", w, 3.0), control=control,
                    percentile=_number(spec, "percentile", w, 99.0), control_required=required)
    return _build(TailGate, settings, dims, where)  # type: ignore[return-value]


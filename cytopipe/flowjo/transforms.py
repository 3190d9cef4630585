"""FlowJo's own axis transforms, where they differ from Gating-ML 2.0's.

FlowJo's *biex* is not Gating-ML's logicle: FlowJo tabulates a biexponential over 4096 display channels from its
``pos`` (decades), ``neg`` (extra negative decades) and ``width`` (width basis, negative) settings and reads values
off that table; FlowJo's *log* clips at its ``offset``. Both are monotone, so rectangle and range gates (stored in
data units) do not depend on them; polygons and ellipses drawn on these axes do, because their edges are straight
on the display. Output units: 0 to 1 over the display (biex channel / 4096, log decade fraction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from cytopipe.errors import GateError
from cytopipe.transforms import Transform

from .constants import BIEX_CHANNELS, BIEX_DEFAULT_MAX, BIEX_DEFAULT_NEG, BIEX_DEFAULT_POS, BIEX_DEFAULT_WIDTH

__all__ = ["FlowJoBiex", "FlowJoLog", "biex_from_table", "biex_table"]


def _negative_range(positive_range: float, width: float) -> float:
    """Root ``d`` of ``2 ln d + w d = 2 ln b - w b`` in ``(0, b]`` (``b = positive_range``; bisection)."""
    b = positive_range
    if width == 0:
        return b
    target = -2.0 * math.log(b) + width * b

    def f(d: float) -> float:
        return 2.0 * math.log(d) + width * d + target

    lo, hi = 0.0, b
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= 0.0 or mid == lo or mid == hi:
            break
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def biex_table(pos: float = BIEX_DEFAULT_POS, neg: float = BIEX_DEFAULT_NEG, width: float = BIEX_DEFAULT_WIDTH,
               max_value: float = BIEX_DEFAULT_MAX, channels: int = BIEX_CHANNELS) -> np.ndarray:
    """Data value at each of FlowJo's biex display channels ``0..channels`` (increasing).

    Notes
    -----
    FlowJo's biexponential (as documented by its authors' open ports, e.g. cytolib): with ``w = log10(-width)``,
    ``decades = pos - w/2`` and ``extra = max(neg, 0) + w/2``, the zero sits at channel
    ``z = min(int(extra * channels / (extra + decades)), channels / 2)``; above it a value is
    ``min * (e^(c r_p / n) - s e^(-c r_n / n) - k)`` and the table is mirrored below ``z``.
    """
    if width >= 0:
        raise GateError(f"FlowJo biex: width basis must be negative, got {width:g}")
    w = math.log10(-width)
    decades = pos - w / 2.0
    extra = max(neg, 0.0) + w / 2.0
    zero = int(extra * channels / (extra + decades))
    zero = int(min(zero, channels / 2))
    if zero > 0:
        decades = extra * channels / zero
    w = w / (2.0 * decades)
    positive_range = math.log(10.0) * decades
    minimum = max_value / math.exp(positive_range)
    negative_range = _negative_range(positive_range, w)
    n = channels + 1
    c = np.arange(n, dtype=np.float64)
    positive = np.exp(c / n * positive_range)
    negative = np.exp(c / n * -negative_range) * math.exp((positive_range + negative_range) * (w + extra / decades))
    shift = positive[zero] - negative[zero]
    values = positive.copy()
    values[zero:] = minimum * (positive[zero:] - negative[zero:] - shift)
    below = np.arange(zero)
    values[below] = -values[2 * zero - below]
    return values


def biex_from_table(values: np.ndarray, pos: float, neg: float, max_value: float,
                    rtol: float = 1e-5) -> FlowJoBiex | None:
    """The FlowJo biex whose table is ``values`` (FlowJo 9 ``CalibrationTables``), solving for its width basis.

    FlowJo 9 writes a table per compensated parameter (``<matrix name> <FITC-A>``) with the workspace's decades and
    extra negative decades, the parameter's ``highValue`` as top of scale and a width basis it fitted to that
    parameter's data, which the table does not name. The zero of the table fixes the width basis to an interval
    (FlowJo rounds the zero to a whole channel); within it the bottom value decides it (bisection).

    Returns
    -------
    FlowJoBiex or None
        ``None`` when no width basis reproduces the table within ``rtol`` (relative to ``|value| + 1``).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size != BIEX_CHANNELS + 1 or not np.all(np.diff(values) > 0):
        return None

    def table(lw: float) -> np.ndarray:
        return biex_table(pos, neg, -(10.0 ** lw), max_value)

    def fits(lw: float) -> bool:
        return bool(np.max(np.abs(table(lw) - values) / (np.abs(values) + 1.0)) <= rtol)

    # The zero channel z = int((neg + w/2) * channels / (neg + pos)), w = log10(-width), bounds w to one interval.
    zero = int(np.searchsorted(values, 0.0))
    if not 0 < zero < BIEX_CHANNELS // 2 or values[zero] != 0.0:
        return None
    span = neg + pos
    lo = max(2.0 * (zero * span / BIEX_CHANNELS - neg), 1e-9)
    hi = 2.0 * ((zero + 1) * span / BIEX_CHANNELS - neg) - 1e-9  # the next channel's zero starts there
    ends = sorted((lo, hi), key=lambda lw: table(lw)[0])
    for _ in range(60):  # the bottom value is monotone in w within the interval
        mid = 0.5 * (ends[0] + ends[1])
        if table(mid)[0] < values[0]:
            ends[0] = mid
        else:
            ends[1] = mid
    lw = 0.5 * (ends[0] + ends[1])
    if fits(lw):
        return FlowJoBiex(pos=pos, neg=neg, width=-(10.0 ** lw), max_value=max_value)
    return None


@dataclass(frozen=True)
class FlowJoBiex(Transform):
    """FlowJo's biex axis: data values to display position in ``[0, 1]`` (channel / 4096), by table lookup.

    Values between table entries are interpolated linearly; values beyond the table are clipped to its ends.
    """

    pos: float = BIEX_DEFAULT_POS
    neg: float = BIEX_DEFAULT_NEG
    width: float = BIEX_DEFAULT_WIDTH
    max_value: float = BIEX_DEFAULT_MAX
    name: str = "biex"
    bound_min: float | None = None
    bound_max: float | None = None
    _xs: np.ndarray = field(init=False, repr=False, compare=False, hash=False)

    kind: ClassVar[str] = "flowjo-biex"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_xs", biex_table(self.pos, self.neg, self.width, self.max_value))

    def _f(self, x: np.ndarray) -> np.ndarray:
        ys = np.linspace(0.0, 1.0, self._xs.size)
        return np.interp(x, self._xs, ys)

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        ys = np.linspace(0.0, 1.0, self._xs.size)
        return np.interp(y, ys, self._xs)

    def params(self) -> dict[str, float]:
        return {"pos": self.pos, "neg": self.neg, "width": self.width, "maxRange": self.max_value}


@dataclass(frozen=True)
class FlowJoLog(Transform):
    """FlowJo's log axis: ``(log10(max(x, offset)) - log10(offset)) / decades``."""

    offset: float = 1.0
    decades: float = 4.0
    name: str = "log"
    bound_min: float | None = None
    bound_max: float | None = None

    kind: ClassVar[str] = "flowjo-log"

    def __post_init__(self) -> None:
        if not (self.offset > 0 and self.decades > 0):
            raise GateError(f"FlowJo log: offset and decades must be positive, got {self.offset:g}, {self.decades:g}")

    def _f(self, x: np.ndarray) -> np.ndarray:
        return (np.log10(np.maximum(x, self.offset)) - math.log10(self.offset)) / self.decades

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        return self.offset * 10.0 ** (y * self.decades)

    def params(self) -> dict[str, float]:
        return {"offset": self.offset, "decades": self.decades}

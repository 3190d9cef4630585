"""Gating-ML 2.0 scale transforms: ``flin``, ``flog``, ``fasinh``, ``logicle``, ``hyperlog`` and ``fratio``.

Every transform returns values in Gating-ML 2.0 units (for example logicle maps the top of scale ``T`` to 1 and
``0`` to ``A / (M + A)``), so gate coordinates read from a Gating-ML file apply unchanged. Each transform is a small
frozen dataclass: equal parameters give equal (and equally hashed) objects, which lets the gating engine cache one
transformed column per (channel, compensation, transform).

Precision policy
----------------
``apply`` keeps the working precision of its input:

* float64 input -> float64 output computed exactly (logicle and hyperlog are inverted with a bracketed,
  vectorised Newton solver to ~1e-15). The Gating-ML compliance suite is evaluated this way, because an event lying
  within float32 rounding of a gate boundary must land on the same side as in the double-precision reference.
* float32 input -> float32 output. Logicle and hyperlog then use a lookup table indexed by the bit pattern of the
  float32 input (sign, exponent and the top 9 mantissa bits), with linear interpolation inside each cell. Within one
  cell ``x`` spans a relative width of 1/512, so the interpolation error is below 1e-7 in Gating-ML units, under the
  float32 resolution of the output near 1. This is 10-20x faster than flowutils' C solver. The table of a parameter
  set is built once that set has been applied to as many values (2**18) in total as the table has cells; until then
  only the cells the values fall in are solved, with the same bits as the table: a float32 result never depends
  on what else the process transformed before (byte-identical outputs whatever the workers).

``boundMin`` / ``boundMax`` (Gating-ML 2.0 section 6) clamp the result: ``max(min(f(x), bound_max), bound_min)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from cytopipe.errors import GateError

__all__ = [
    "Transform",
    "Linear",
    "Log",
    "Arcsinh",
    "Logicle",
    "AutoWidthLogicle",
    "Hyperlog",
    "Ratio",
    "LN10",
    "friendly_units",
]

LN10 = math.log(10.0)

# Bits of a float32 below the table index: 32 - 1 sign - 8 exponent - 9 mantissa bits kept.
_LUT_SHIFT = 14
_LUT_OFFSET = 1 << (31 - _LUT_SHIFT)
_LUT_CELLS = 1 << (32 - _LUT_SHIFT)


def _require(condition: bool, transform: str, message: str) -> None:
    if not condition:
        raise GateError(f"{transform}: {message}")


def _as_array(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a float array, keeping float32 and float64, promoting anything else to float64."""
    x = np.asarray(x)
    if x.dtype == np.float32 or x.dtype == np.float64:
        return x
    return x.astype(np.float64)


class Transform:
    """Base of all Gating-ML 2.0 transforms (subclasses are frozen dataclasses).

    Attributes
    ----------
    name : str
        Identifier used as ``transforms:id`` in Gating-ML.
    bound_min, bound_max : float or None
        Optional Gating-ML ``boundMin``/``boundMax``: the result is clamped to this interval.
    """

    name: str
    bound_min: float | None
    bound_max: float | None
    #: Gating-ML element name (``flin``, ``logicle``, ...).
    kind: ClassVar[str] = ""

    def _check_bounds(self) -> None:
        lo, hi = self.bound_min, self.bound_max
        if lo is not None and hi is not None and lo > hi:
            raise GateError(f"{self.kind} '{self.name}': boundMin {lo} is greater than boundMax {hi}")

    def _f(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _bound(self, y: np.ndarray) -> np.ndarray:
        if self.bound_min is not None or self.bound_max is not None:
            lo = -np.inf if self.bound_min is None else self.bound_min
            hi = np.inf if self.bound_max is None else self.bound_max
            np.clip(y, lo, hi, out=y)
        return y

    @property
    def bounded(self) -> bool:
        """True when ``boundMin`` or ``boundMax`` is set."""
        return self.bound_min is not None or self.bound_max is not None

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform scale values into Gating-ML 2.0 units.

        Parameters
        ----------
        x : numpy.ndarray
            Scale values; float32 stays float32 (fast path), anything else is computed in float64.

        Returns
        -------
        numpy.ndarray
            Transformed values of the same shape, bounded by ``bound_min``/``bound_max`` when set.
        """
        x = _as_array(x)
        return self._bound(np.asarray(self._f(x), dtype=x.dtype))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map Gating-ML units back to scale values (ignores bounds, which are not invertible)."""
        y = _as_array(y)
        return np.asarray(self._f_inv(y), dtype=y.dtype)

    def prepare(self) -> None:
        """Build now what :meth:`apply` builds on first use in this process (nothing, but for logicle and
        hyperlog: the float32 lookup table), e.g. before worker processes are forked, so that they share it."""

    def params(self) -> dict[str, float]:
        """The Gating-ML parameters of this transform, e.g. ``{"T": 262144, "W": 0.5, "M": 4.5, "A": 0}``."""
        return {k: getattr(self, k) for k in ("T", "W", "M", "A", "B", "C") if hasattr(self, k)}


@dataclass(frozen=True)
class Linear(Transform):
    """Gating-ML ``flin``: ``(x + A) / (T + A)``; maps ``[-A, T]`` onto ``[0, 1]``.

    Raises
    ------
    GateError
        If ``T <= 0`` or ``A`` is outside ``[0, T]``.
    """

    T: float = 262144.0
    A: float = 0.0
    name: str = "flin"
    bound_min: float | None = None
    bound_max: float | None = None
    kind: ClassVar[str] = "flin"

    def __post_init__(self) -> None:
        _require(self.T > 0, f"flin '{self.name}'", f"T must be > 0, got {self.T}")
        _require(0 <= self.A <= self.T, f"flin '{self.name}'", f"A must be in [0, T], got {self.A}")
        self._check_bounds()

    def _f(self, x: np.ndarray) -> np.ndarray:
        return (x + x.dtype.type(self.A)) * x.dtype.type(1.0 / (self.T + self.A))

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        return y * (self.T + self.A) - self.A


@dataclass(frozen=True)
class Log(Transform):
    """Gating-ML ``flog``: ``log10(x / T) / M + 1``; ``T`` maps to 1, ``M`` decades fill ``[0, 1]``.

    Non-positive ``x`` gives NaN (outside every gate), as the function is undefined there.

    Raises
    ------
    GateError
        If ``T <= 0`` or ``M <= 0``.
    """

    T: float = 262144.0
    M: float = 4.5
    name: str = "flog"
    bound_min: float | None = None
    bound_max: float | None = None
    kind: ClassVar[str] = "flog"

    def __post_init__(self) -> None:
        _require(self.T > 0, f"flog '{self.name}'", f"T must be > 0, got {self.T}")
        _require(self.M > 0, f"flog '{self.name}'", f"M must be > 0, got {self.M}")
        self._check_bounds()

    def _f(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log10(x / x.dtype.type(self.T)) / x.dtype.type(self.M) + x.dtype.type(1.0)
        y[~(x > 0)] = np.nan
        return y

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        return self.T * np.power(10.0, (y - 1.0) * self.M)


@dataclass(frozen=True)
class Arcsinh(Transform):
    """Gating-ML ``fasinh``: ``(asinh(x sinh(M ln10) / T) + A ln10) / ((M + A) ln10)``.

    A plain ``asinh(x / cofactor)`` scale is ``Arcsinh.from_cofactor(cofactor)``.

    Raises
    ------
    GateError
        If ``T <= 0``, ``M <= 0`` or ``A`` is outside ``[0, M]``.
    """

    T: float = 262144.0
    M: float = 4.5
    A: float = 0.0
    name: str = "fasinh"
    bound_min: float | None = None
    bound_max: float | None = None
    kind: ClassVar[str] = "fasinh"

    def __post_init__(self) -> None:
        who = f"fasinh '{self.name}'"
        _require(self.T > 0, who, f"T must be > 0, got {self.T}")
        _require(self.M > 0, who, f"M must be > 0, got {self.M}")
        _require(0 <= self.A <= self.M, who, f"A must be in [0, M], got {self.A}")
        self._check_bounds()

    @classmethod
    def from_cofactor(cls, cofactor: float, M: float = 4.5, name: str = "fasinh") -> Arcsinh:
        """The transform whose output is ``asinh(x / cofactor) / (M ln10)`` (A = 0)."""
        if not cofactor > 0:
            raise GateError(f"fasinh '{name}': cofactor must be > 0, got {cofactor}")
        return cls(T=cofactor * math.sinh(M * LN10), M=M, A=0.0, name=name)

    def _f(self, x: np.ndarray) -> np.ndarray:
        t = x.dtype.type
        scale = t(math.sinh(self.M * LN10) / self.T)
        return (np.arcsinh(x * scale) + t(self.A * LN10)) * t(1.0 / ((self.M + self.A) * LN10))

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        return np.sinh(y * (self.M + self.A) * LN10 - self.A * LN10) * self.T / math.sinh(self.M * LN10)


class _Biexponential(Transform):
    """Shared machinery of logicle and hyperlog: ``y = root(B(y) - x)`` for a monotone ``B``."""

    T: float
    W: float
    M: float
    A: float

    def _validate(self, w_positive: bool) -> None:
        who = f"{self.kind} '{self.name}'"
        for key in ("T", "W", "M", "A"):
            _require(math.isfinite(getattr(self, key)), who, f"{key} must be a finite number, got {getattr(self, key)}")
        _require(self.T > 0, who, f"T must be > 0, got {self.T}")
        _require(self.M > 0, who, f"M must be > 0, got {self.M}")
        if w_positive:
            _require(0 < self.W <= self.M / 2, who, f"W must be in (0, M/2], got {self.W}")
        else:
            _require(0 <= self.W <= self.M / 2, who, f"W must be in [0, M/2], got {self.W}")
        _require(-self.W <= self.A <= self.M - 2 * self.W, who, f"A must be in [-W, M - 2W], got {self.A}")
        # 10 ** (M + A) must stay a finite double for the coefficients.
        _require(self.M + self.A <= 300, who, f"M + A must be at most 300 decades, got {self.M + self.A}")
        self._check_bounds()

    @property
    def x1(self) -> float:
        """Gating-ML ``x1 = (A + W) / (M + A)``: the point where ``B`` crosses zero."""
        return (self.A + self.W) / (self.M + self.A)

    def _set_coefficients(self, compute: Callable[[], tuple]) -> None:
        """Store ``compute()``; parameters that are valid one by one but underflow together are a GateError."""
        try:
            coef = compute()
        except (ZeroDivisionError, OverflowError):
            coef = (math.nan,)
        _require(all(math.isfinite(c) for c in coef) and coef[0] > 0, f"{self.kind} '{self.name}'",
                 f"T={self.T}, W={self.W}, M={self.M}, A={self.A} give no usable scale (M + A = {self.M + self.A} "
                 "decades is too small to compute)")
        object.__setattr__(self, "_coef", coef)

    def _B_upper(self, y: np.ndarray) -> np.ndarray:
        """The scale value at display position ``y >= x1``."""
        raise NotImplementedError

    def _dB_upper(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _B(self, y: np.ndarray) -> np.ndarray:
        """The biexponential ``B(y)``, odd about ``x1``: ``B(y) = -B(2 x1 - y)`` below ``x1``."""
        x1 = self.x1
        upper = y >= x1
        value = self._B_upper(np.where(upper, y, 2 * x1 - y))
        return np.where(upper, value, -value)

    def _f_inv(self, y: np.ndarray) -> np.ndarray:
        return self._B(np.asarray(y, dtype=np.float64))

    def solve(self, x: np.ndarray) -> np.ndarray:
        """Exact float64 inverse of ``B``, vectorised.

        Notes
        -----
        ``B`` is odd about ``x1`` (Moore & Parks 2012; flowCore/flowutils evaluate it the same way), so only
        ``|x|`` is solved, on ``y >= x1``, and negatives are mirrored to ``2 x1 - y``.

        1. Newton iteration on ``h(y) = asinh(B(y) / s) - asinh(|x| / s)`` with ``s = B'(x1) / b``: ``h`` is
           close to linear both in the linear region near ``x1`` and in the logarithmic tail, so a few steps
           converge from a piecewise linear/logarithmic guess.
        2. Each step is kept inside a bracket ``[lo, hi]`` that shrinks with the sign of ``h``; a step leaving it
           is replaced by bisection, which guarantees convergence.
        3. Stop when every step is below 1e-15 relative (about 6 iterations), at most 200.
        """
        x = np.asarray(x, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        finite = np.isfinite(x)
        ax = np.abs(x[finite])
        if ax.size == 0:
            return out
        x1 = self.x1
        b = (self.M + self.A) * LN10
        s = float(self._dB_upper(np.array([x1]))[0]) / b
        lo = np.full(ax.shape, x1)
        hi = np.full(ax.shape, x1 + 1.0)
        for _ in range(64):  # grow the brackets; values near float max need a few doublings
            need = self._B_upper(hi) < ax
            if not need.any():
                break
            lo = np.where(need, hi, lo)
            hi = np.where(need, x1 + 2 * (hi - x1), hi)
        target = np.arcsinh(ax / s)
        top = float(self._B_upper(np.array([1.0]))[0])
        with np.errstate(divide="ignore"):
            y = np.maximum(x1 + ax / (s * b), 1.0 + np.log(ax / top) / b)
        y = np.clip(y, lo, hi)
        # A value stops at its own convergence, so its root never depends on the other values solved with it:
        # the table and a partial evaluation of it (_interpolate) then agree to the last bit. Values that have
        # converged are set aside (the rest are iterated alone, by the same operations).
        roots = y.copy()
        where = np.arange(y.size)
        for _ in range(200):
            value = self._B_upper(y)
            r = np.arcsinh(value / s) - target
            hi = np.where(r > 0, y, hi)
            lo = np.where(r > 0, lo, y)
            slope = self._dB_upper(y) / np.sqrt(s * s + value * value)
            y_new = y - r / slope
            outside = ~((y_new >= lo) & (y_new <= hi))
            y_new = np.where(outside, 0.5 * (lo + hi), y_new)
            done = np.abs(y_new - y) <= 1e-15 * (1.0 + np.abs(y))
            roots[where] = y_new
            if done.all():
                break
            going = ~done
            where, y, lo, hi, target = where[going], y_new[going], lo[going], hi[going], target[going]
        y = roots
        out[finite] = np.where(x[finite] < 0, 2 * x1 - y, y)
        return out

    def prepare(self) -> None:
        self._table()

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact values at every float32 cell edge and the per-cell slope (built once per parameter set)."""
        tables = _TABLES.pop(self._key(), None)
        if tables is None:
            edges = (np.arange(_LUT_CELLS + 1, dtype=np.int64) - _LUT_OFFSET) << _LUT_SHIFT
            edges[-1] = edges[-2]  # one past the last cell: a NaN pattern either way
            with np.errstate(invalid="ignore"):  # NaN bit patterns
                xs = edges.astype(np.int32).view(np.float32).astype(np.float64)
            # solve() works on |x| and mirrors negatives; cell i < _LUT_OFFSET holds -xs[i + _LUT_OFFSET]. Solving
            # the non-negative half and mirroring as solve() does halves the build with the same bits (its
            # iterations run per value, until every distinct value has converged).
            roots = self.solve(xs[_LUT_OFFSET:])
            roots = np.concatenate([roots[:_LUT_OFFSET], roots])
            exact = np.where(xs < 0, 2 * self.x1 - roots, roots)
            start = exact[:-1].astype(np.float32)
            # Slope per unit of the low mantissa bits, so interpolation needs no extra scaling.
            slope = ((exact[1:] - exact[:-1]) / (1 << _LUT_SHIFT)).astype(np.float32)
            tables = (start, slope)
            while len(_TABLES) >= _MAX_TABLES:  # least recently used first: per-sample W estimates vary
                _TABLES.pop(next(iter(_TABLES)))
        _TABLES[self._key()] = tables  # (re)inserted last = most recently used
        return tables

    def _key(self) -> tuple:
        return (self.kind, float(self.T), float(self.W), float(self.M), float(self.A))

    def _f(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float32:
            return self.solve(x)
        # Building a table costs about as much as solving as many values as it has cells: a parameter set is
        # evaluated on the cells its values fall in until it has been applied to that many values in total (e.g.
        # over several 50,000-event files), then the table is built and used from then on. Both give the same
        # bits, so the result never depends on what this process transformed before (workers, cache, Dask).
        key = self._key()
        if key not in _TABLES:
            seen = _APPLIED.pop(key, 0) + x.size
            if seen < _LUT_CELLS:
                while len(_APPLIED) >= _MAX_APPLIED:  # least recently used first
                    _APPLIED.pop(next(iter(_APPLIED)))
                _APPLIED[key] = seen
                return self._interpolate(x)
        return self._fast(x)

    def _interpolate(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_fast` without the table: the exact values at the edges of only the cells ``x`` falls in."""
        bits = np.ascontiguousarray(x).view(np.int32)
        idx = np.right_shift(bits, _LUT_SHIFT)
        idx += _LUT_OFFSET
        cells, where = np.unique(idx, return_inverse=True)
        edges = np.concatenate([cells, np.minimum(cells + 1, _LUT_CELLS - 1)]).astype(np.int64)
        with np.errstate(invalid="ignore"):  # NaN bit patterns
            xs = ((edges - _LUT_OFFSET) << _LUT_SHIFT).astype(np.int32).view(np.float32).astype(np.float64)
        exact = self.solve(xs)
        n = cells.size
        start = exact[:n].astype(np.float32)
        slope = ((exact[n:] - exact[:n]) / (1 << _LUT_SHIFT)).astype(np.float32)
        low = np.bitwise_and(bits, (1 << _LUT_SHIFT) - 1).astype(np.float32)
        low *= slope.take(where.reshape(-1))
        low += start.take(where.reshape(-1))
        return low.reshape(x.shape)

    def _fast(self, x: np.ndarray) -> np.ndarray:
        """float32 fast path: table lookup on the float's bit pattern plus linear interpolation."""
        start, slope = self._table()
        bits = np.ascontiguousarray(x).view(np.int32)
        idx = np.right_shift(bits, _LUT_SHIFT)
        idx += _LUT_OFFSET
        low = np.bitwise_and(bits, (1 << _LUT_SHIFT) - 1).astype(np.float32)
        low *= slope.take(idx)
        low += start.take(idx)
        return low

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map Gating-ML units back to scale values: ``B(y)`` evaluated in float64."""
        y = _as_array(y)
        return self._B(np.asarray(y, dtype=np.float64)).astype(y.dtype)


def _logicle_d(w: float, b: float) -> float:
    """The logicle ``d``: the root of ``2 (ln d - ln b) + w (b + d) = 0`` on ``(0, b]`` for ``w > 0``.

    Notes
    -----
    In ``u = ln d`` the function ``g(u) = 2 (u - ln b) + w (b + e^u)`` is increasing and convex, and
    ``g(ln b) = 2 w b > 0``: Newton steps from ``u = ln b`` decrease monotonically onto the root without
    overshooting, so iterating until a step no longer decreases ``u`` converges to machine precision (a few
    steps). One Newton step in ``d`` itself then removes the rounding of ``exp``. Against a 50-digit root over
    the whole Gating-ML parameter range this is as accurate as scipy's ``brentq`` at 4 eps relative tolerance
    (median 6 eps for both, the residual's rounding limits both); solving it here spares every process that
    builds a logicle the import of scipy.optimize (0.6-1 s).
    """
    log_b = math.log(b)
    u = log_b
    for _ in range(200):
        e = math.exp(u)
        step = (2 * (u - log_b) + w * (b + e)) / (2 + w * e)
        if not step > 0:
            break
        u -= step
    d = math.exp(u)
    return d - (2 * (math.log(d) - log_b) + w * (b + d)) / (2 / d + w)


#: Lookup tables by parameter set (insertion order = recency), 2 MB each, at most ``_MAX_TABLES``.
_TABLES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_MAX_TABLES = 32
#: Values solved directly so far per parameter set without a table (insertion order = recency).
_APPLIED: dict[tuple, int] = {}
_MAX_APPLIED = 1024


@dataclass(frozen=True)
class Logicle(_Biexponential):
    """Gating-ML ``logicle`` (Parks, Roederer & Moore 2006): ``root(B(y) - x)`` with
    ``B(y) = a e^(by) - c e^(-dy) - f``.

    Parameters
    ----------
    T : float
        Top of scale (maps to 1).
    W : float
        Width of the linear region in decades, ``0 <= W <= M/2``.
    M : float
        Decades of the logarithmic region.
    A : float
        Additional decades of negative data, ``-W <= A <= M - 2W``.

    Raises
    ------
    GateError
        If a parameter is outside its Gating-ML range (the message names it).
    """

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0
    name: str = "logicle"
    bound_min: float | None = None
    bound_max: float | None = None
    _coef: tuple = field(init=False, repr=False, compare=False, hash=False, default=())
    kind: ClassVar[str] = "logicle"

    def __post_init__(self) -> None:
        self._validate(w_positive=False)
        w = self.W / (self.M + self.A)
        x2 = self.A / (self.M + self.A)
        x1 = x2 + w
        x0 = x2 + 2 * w
        b = (self.M + self.A) * LN10

        def coefficients() -> tuple:
            d = b if w == 0 else _logicle_d(w, b)
            c_a = math.exp(x0 * (b + d))
            mf_a = math.exp(b * x1) - c_a * math.exp(-d * x1)
            a = self.T / (math.exp(b) - mf_a - c_a * math.exp(-d))
            return (a, b, c_a * a, d, mf_a * a)

        self._set_coefficients(coefficients)

    def _B_upper(self, y: np.ndarray) -> np.ndarray:
        a, b, c, d, f = self._coef
        return a * np.exp(b * y) - c * np.exp(-d * y) - f

    def _dB_upper(self, y: np.ndarray) -> np.ndarray:
        a, b, c, d, _ = self._coef
        return a * b * np.exp(b * y) + c * d * np.exp(-d * y)


@dataclass(frozen=True)
class AutoWidthLogicle(Logicle):
    """A logicle whose width ``W`` is fitted to each file's negative spread (YAML ``W: auto``).

    Until :func:`cytopipe.adapt.fit_widths` replaces it by a plain :class:`Logicle`, it transforms with the
    placeholder ``W`` it was built with; the pipeline always resolves it before gating.
    """

    def prepare(self) -> None:
        """Nothing: each file gets its own width, hence its own table."""


@dataclass(frozen=True)
class Hyperlog(_Biexponential):
    """Gating-ML ``hyperlog`` (Bagwell 2005): ``root(EH(y) - x)`` with ``EH(y) = a e^(by) + c y - f`` for
    ``y >= x1`` and ``EH(y) = -EH(2 x1 - y)`` below.

    Raises
    ------
    GateError
        If ``T <= 0``, ``M <= 0``, ``W`` outside ``(0, M/2]`` or ``A`` outside ``[-W, M - 2W]``.
    """

    T: float = 262144.0
    W: float = 0.5
    M: float = 4.5
    A: float = 0.0
    name: str = "hyperlog"
    bound_min: float | None = None
    bound_max: float | None = None
    _coef: tuple = field(init=False, repr=False, compare=False, hash=False, default=())
    kind: ClassVar[str] = "hyperlog"

    def __post_init__(self) -> None:
        self._validate(w_positive=True)
        w = self.W / (self.M + self.A)
        x2 = self.A / (self.M + self.A)
        x1 = x2 + w
        x0 = x2 + 2 * w
        b = (self.M + self.A) * LN10

        def coefficients() -> tuple:
            c_a = math.exp(b * x0) / w
            f_a = math.exp(b * x1) + c_a * x1
            a = self.T / (math.exp(b) + c_a - f_a)
            return (a, b, c_a * a, f_a * a)

        self._set_coefficients(coefficients)

    def _B_upper(self, y: np.ndarray) -> np.ndarray:
        a, b, c, f = self._coef
        return a * np.exp(b * y) + c * y - f

    def _dB_upper(self, y: np.ndarray) -> np.ndarray:
        a, b, c, _ = self._coef
        return a * b * np.exp(b * y) + c


@dataclass(frozen=True)
class Ratio(Transform):
    """Gating-ML ``fratio``: a new dimension ``A (x - B) / (y - C)`` over two channels.

    ``apply`` takes an ``(n, 2)`` array whose columns are the numerator and denominator channels (the channels
    themselves are named by the :class:`~cytopipe.gates.Dimension`). A zero denominator gives +-inf or NaN.
    """

    A: float = 1.0
    B: float = 0.0
    C: float = 0.0
    name: str = "fratio"
    bound_min: float | None = None
    bound_max: float | None = None
    kind: ClassVar[str] = "fratio"

    def __post_init__(self) -> None:
        for key in ("A", "B", "C"):
            value = getattr(self, key)
            _require(math.isfinite(value), f"fratio '{self.name}'", f"{key} must be a finite number, got {value}")
        self._check_bounds()

    def _f(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"fratio needs an (n, 2) array of numerator and denominator, got shape {x.shape}")
        t = x.dtype.type
        with np.errstate(divide="ignore", invalid="ignore"):
            return t(self.A) * (x[:, 0] - t(self.B)) / (x[:, 1] - t(self.C))

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """A ratio cannot be mapped back to two channels."""
        raise GateError(f"fratio '{self.name}': a ratio of two channels has no inverse")


def friendly_units(transform: Transform | None) -> tuple[float, float]:
    """The affine map from Gating-ML units to the friendly units a gate file uses.

    Parameters
    ----------
    transform : Transform or None
        A dimension's transform (``None`` = raw scale values).

    Returns
    -------
    tuple of float
        ``(scale, offset)`` with ``friendly = scale * gatingml + offset``.

    Raises
    ------
    GateError
        For a transform gate files cannot express (e.g. ``fratio``).

    Notes
    -----
    logicle and hyperlog: decades ``y * M``; arcsinh: ``y (M + A) ln10 - A ln10 = asinh(x / cofactor)`` with
    ``cofactor = T / sinh(M ln10)``; log: ``log10(x) = M (y - 1) + log10(T)``; a named linear transform: raw
    ``x = y (T + A) - A``.
    """
    if transform is None or isinstance(transform, Ratio) or transform.kind.startswith("flowjo-"):
        return 1.0, 0.0  # FlowJo's biex and log axes (cytopipe.flowjo): display fractions 0..1
    if isinstance(transform, (Logicle, Hyperlog)):
        return float(transform.M), 0.0
    if isinstance(transform, Arcsinh):
        return (transform.M + transform.A) * LN10, -transform.A * LN10
    if isinstance(transform, Log):
        return float(transform.M), math.log10(transform.T) - transform.M
    if isinstance(transform, Linear):
        return transform.T + transform.A, -float(transform.A)
    raise GateError(f"transform '{transform.name}' ({transform.kind}) has no YAML gate-file form")

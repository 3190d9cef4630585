"""Robust statistics on plain arrays, shared by the data-driven gates (exact numpy results, faster)."""

from __future__ import annotations

import math

import numpy as np


def _quantile(x: np.ndarray, q: float) -> float:
    """``np.quantile(x, q)`` of finite, non-empty ``x`` (linear interpolation, same result) from single-index
    partitions.

    numpy partitions at several indices at once for a median or an interpolated quantile, which on a few thousand
    transformed values (many ties) costs about ten times a partition at one index.
    """
    n = x.size
    virtual = (n - 1) * q  # numpy's virtual index for the linear method
    below = min(max(int(math.floor(virtual)), 0), n - 1)
    part = np.partition(x, below)
    a = float(part[below])
    if below + 1 >= n:
        return a
    b = float(part[below + 1:].min())
    t = virtual - below
    # numpy's _lerp, for identical rounding
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _sorted_quantile(xs: np.ndarray, q: float) -> float:
    """:func:`_quantile` of an already sorted array."""
    n = xs.size
    virtual = (n - 1) * q
    below = min(max(int(math.floor(virtual)), 0), n - 1)
    a = float(xs[below])
    if below + 1 >= n:
        return a
    b, t = float(xs[below + 1]), virtual - below
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _median(x: np.ndarray) -> float:
    """``np.median(x)`` of finite ``x`` (same result; NaN when empty) from one partition at a single index."""
    n = x.size
    if n == 0:
        return math.nan
    part = np.partition(x, n // 2)
    upper = float(part[n // 2])
    return upper if n % 2 else (float(part[: n // 2].max()) + upper) / 2


def _robust_sd(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation (the SD for normal data, insensitive to a minority of outliers)."""
    return float(1.4826 * _median(np.abs(x - _median(x))))


def _median_sd(x: np.ndarray) -> tuple[float, float]:
    """The median and the robust SD (:func:`_robust_sd`, at least 1e-6) of ``x``."""
    center = _median(x)
    return center, float(1.4826 * _median(np.abs(x - center))) or 1e-6


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = intercept + slope * x`` in closed form: ``(slope, intercept)``."""
    mx, my = float(x.mean()), float(y.mean())
    dx = x - mx
    slope = float(dx @ (y - my)) / max(float(dx @ dx), 1e-300)
    return slope, my - slope * mx

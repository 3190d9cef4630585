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
    # Elementwise sums, not BLAS dot (threaded for long vectors): the same digits whatever the thread count.
    slope = float(np.sum(dx * (y - my))) / max(float(np.sum(dx * dx)), 1e-300)
    return slope, my - slope * mx


def _chi2_2d(p: float) -> float:
    """The ``p`` quantile of the chi-square distribution with 2 degrees of freedom (``P = 1 - exp(-q/2)``: no
    scipy)."""
    return -2.0 * math.log1p(-p)


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (n - 1) covariance of ``(n, 2)`` rows by elementwise sums: no BLAS call, so the result does not
    depend on the number of threads."""
    mean = np.array([x[:, 0].mean(), x[:, 1].mean()])
    dx, dy = x[:, 0] - mean[0], x[:, 1] - mean[1]
    n1 = max(x.shape[0] - 1, 1)
    cxy = float((dx * dy).sum()) / n1
    return mean, np.array([[float((dx * dx).sum()) / n1, cxy], [cxy, float((dy * dy).sum()) / n1]])


def _mahalanobis2(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances of ``(n, 2)`` rows (closed-form 2 x 2 inverse)."""
    (a, b), (_, d) = cov
    det = a * d - b * b
    if not det > 0:
        raise ValueError("singular covariance")
    dx, dy = x[:, 0] - mean[0], x[:, 1] - mean[1]
    return (d * dx * dx - 2 * b * dx * dy + a * dy * dy) / det


def robust_covariance(x: np.ndarray, *, support: float = 0.75, max_steps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Robust centre and covariance of the main population of 2-D events (a deterministic minimum covariance
    determinant estimate, reweighted).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, 2)`` finite values.
    support : float
        Fraction of the events the raw estimate rests on (0.5-1; 0.75 resists up to a quarter of outliers).
    max_steps : int
        Most concentration steps.

    Returns
    -------
    (mean, covariance)
        ``(2,)`` and ``(2, 2)``, consistent with the mean and covariance of a bivariate normal main population.

    Raises
    ------
    ValueError
        The events are degenerate (all on a line or a point).

    Notes
    -----
    1. Start from the ``support`` fraction of events nearest the coordinatewise median in robust standard units
       (median absolute deviation per axis): one deterministic start instead of FAST-MCD's random subsets, which
       is enough for one dominant population.
    2. Concentration steps (Rousseeuw & Van Driessen 1999): the mean and covariance of the subset, then the
       subset of the ``support`` fraction of events with the smallest Mahalanobis distance to them (ties at the
       cut all kept), until the determinant falls by less than 1e-4 (relative; the reweighting below does not
       depend on the last digits).
    3. Scale the covariance so that the median squared distance equals the chi-square median (2 d.f.).
    4. Reweight: the mean and covariance of the events within the chi-square 97.5 % quantile, divided by the
       share of the variance a normal population keeps inside it (``P(chi2_4 <= q) / P(chi2_2 <= q)``).

    The sums are elementwise (no BLAS), so results are identical whatever the thread count. Compared with
    scikit-learn's ``MinCovDet`` in ``tests/test_autogate_2d.py``.
    """
    n = x.shape[0]
    h = min(n, max(3, int(math.ceil(support * n))))
    center = np.array([_median(x[:, 0]), _median(x[:, 1])])
    scale = np.array([_median(np.abs(x[:, j] - center[j])) for j in (0, 1)])
    scale = np.where(scale > 0, scale, 1.0)
    score = ((x[:, 0] - center[0]) / scale[0]) ** 2 + ((x[:, 1] - center[1]) / scale[1]) ** 2
    mean, cov = _mean_cov(x[score <= np.partition(score, h - 1)[h - 1]])
    det = float(np.linalg.det(cov))
    for _ in range(max_steps):
        d2 = _mahalanobis2(x, mean, cov)
        mean, cov = _mean_cov(x[d2 <= np.partition(d2, h - 1)[h - 1]])
        # Each step lowers the determinant; it stops falling when the subset no longer changes.
        before, det = det, float(np.linalg.det(cov))
        if det >= before * (1 - 1e-4):
            break
    d2 = _mahalanobis2(x, mean, cov)
    cov = cov * (_median(d2) / _chi2_2d(0.5))
    cut = _chi2_2d(0.975)
    inliers = _mahalanobis2(x, mean, cov) <= cut
    mean, cov = _mean_cov(x[inliers])
    # E[z z^T | |z|^2 <= q] of a standard bivariate normal is c I with c = P(chi2_4 <= q) / P(chi2_2 <= q).
    kept = 1.0 - math.exp(-cut / 2)
    return mean, cov / ((1.0 - math.exp(-cut / 2) * (1 + cut / 2)) / kept)

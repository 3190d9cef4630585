"""Data-driven gates: boundaries fitted on the data, then used like any fixed gate.

A data-driven gate follows the scikit-learn estimator contract. Its settings are given (and checked) when it is
built, from a YAML gate spec or in Python; :meth:`AutoGate.fit` learns the boundary from transformed event values
and returns an ordinary, immutable *fixed* gate from :mod:`cytopipe.gates` (an ellipse, a polygon or a rectangle),
so masking, plotting (``outline``) and Gating-ML export are shared with hand-drawn gates.

Gate types (the ``type`` of a YAML gate spec, registered in :data:`GATE_TYPES`):

``auto_scatter``
    :class:`ScatterGate`, a Gaussian mixture on FSC-A/SSC-A; the lymphocyte component is chosen by position and
    returned as an ellipse at a chosen probability.
``auto_singlets``
    :class:`SingletGate`, a robust straight-line fit of FSC-A on FSC-H; a polygon band of +/- k robust SDs of the
    relative residual keeps the singlets.
``auto_threshold``
    :class:`ThresholdGate`, one threshold per channel (a 1-D density valley, a percentile of a reference population
    or a percentile of an FMO/isotype control), returned as a rectangle with open outer sides.

:func:`fit_strategy` fits every data-driven gate of a strategy top-down (each on its fitted parent's events, pooled
over the given samples). :func:`gate_drift` compares fitted parameters with the subject's baseline fit and
:func:`sensitivity` reports how much the Treg % moves when a fitted threshold shifts.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import GateError, MarkerError
from .gates import BooleanGate, Dimension, EllipsoidGate, Gate, GatingStrategy, PolygonGate, Population, RectangleGate
from .transforms import Transform

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "SCOPES",
    "GATE_TYPES",
    "AutoGate",
    "ScatterGate",
    "SingletGate",
    "Threshold",
    "ThresholdGate",
    "density_valley",
    "fit_scatter_ellipse",
    "gaussian_mixture",
    "fit_singlet_band",
    "to_units",
    "from_units",
    "channel_top",
    "resolve_dimension",
    "needs_fitting",
    "client_scopes",
    "fit_strategy",
    "gate_drift",
    "sensitivity",
]

SCOPES = ("sample", "subject", "baseline")
METHODS = ("valley", "reference", "control")
SIDES = ("above", "below")
#: Events kept per sample (every k-th event) for fitting and sensitivity: their cost stays flat above this size.
DEFAULT_MAX_EVENTS = 50_000
#: A threshold fitted on fewer events than this raises GateError rather than guessing.
MIN_EVENTS = 50


# ----------------------------------------------------------------------------------------------------------------
# algorithms on plain arrays


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


def _smoothed_density(x: np.ndarray, xs: np.ndarray, bins: int, adjust: float) -> tuple[np.ndarray, np.ndarray]:
    """A fast KDE: a histogram on a fine grid smoothed with a Gaussian kernel (Silverman bandwidth x adjust).

    ``xs`` is ``x`` sorted: its quantiles are read off directly and the histogram is ``np.histogram``'s (bins
    ``[e_i, e_i+1)``, the last one closed) counted by binary search of the bin edges.
    """
    lo, q25, q75, hi = (_sorted_quantile(xs, q) for q in (0.0005, 0.25, 0.75, 0.9995))
    std = float(np.std(x))
    spread = min(std, float(q75 - q25) / 1.349) or std
    bandwidth = adjust * 0.9 * max(spread, 1e-9) * x.size ** -0.2
    lo, hi = lo - 3 * bandwidth, hi + 3 * bandwidth
    edges = np.linspace(lo, hi, bins + 1)
    index = np.searchsorted(xs, edges)
    index[-1] = np.searchsorted(xs, edges[-1], side="right")
    counts = np.diff(index)
    width = edges[1] - edges[0]
    from scipy import ndimage

    density = ndimage.gaussian_filter1d(counts.astype(float), bandwidth / width, mode="constant")
    density /= density.sum() * width
    return (edges[:-1] + edges[1:]) / 2, density


def density_valley(
    x: np.ndarray,
    *,
    bounds: tuple[float | None, float | None] | None = None,
    adjust: float = 1.5,
    k: float = 3.0,
    min_prominence: float = 0.002,
    bins: int = 512,
) -> tuple[float, str]:
    """Threshold at the density minimum between a negative and a positive mode (like openCyto's ``mindensity``).

    Parameters
    ----------
    x : numpy.ndarray
        1-D transformed values (non-finite values are ignored).
    bounds : (float or None, float or None), optional
        The threshold is searched for, and finally clamped, within ``[lo, hi]`` (same units as ``x``).
    adjust : float
        Bandwidth multiplier on Silverman's rule.
    k : float
        Robust SDs above the negative mode (or below the positive mode) used when only one mode is found.
    min_prominence : float
        A peak counts as a mode when its prominence is at least this fraction of the highest density.
    bins : int
        Grid points of the density estimate.

    Returns
    -------
    (float, str)
        The threshold and how it was found: ``"valley"``, ``"negative+k*sd"``, ``"positive-k*sd"``, with
        ``"+bound"`` appended when it was clamped into ``bounds``.

    Raises
    ------
    GateError
        Fewer than :data:`MIN_EVENTS` finite values.

    Notes
    -----
    1. Estimate the density on a ``bins``-point grid (histogram + Gaussian smoothing). The values are sorted
       once: the quantiles that set the bandwidth and the grid are read off directly and each bin is counted by
       a binary search of its edges (the counts of ``np.histogram``).
    2. Find the modes (peaks with enough prominence) and, between each pair of neighbouring modes, the lowest
       density. A valley's depth is the lower of its two modes' heights minus the valley's height.
    3. Choose the deepest valley inside ``bounds``; the cut is the middle of its floor (the longest run of grid
       points within 1 % of the depth above the minimum), so an empty gap is cut in its middle.
    4. With one mode only (e.g. no positive events): if the mode lies above ``bounds`` it is the positive mode and
       the threshold is ``mode - k * sd``; otherwise it is the negative mode and the threshold is ``mode + k * sd``.
       ``sd`` is the robust SD (1.4826 x median distance to the mode) of the wider of the mode's two halves.
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < MIN_EVENTS:
        raise GateError(f"density valley needs at least {MIN_EVENTS} events, got {x.size}")
    lo, hi = bounds if bounds is not None else (None, None)
    lo = -np.inf if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    from scipy import signal

    xs = np.sort(x)
    grid, density = _smoothed_density(x, xs, bins, adjust)
    peaks, _ = signal.find_peaks(np.concatenate(([0.0], density, [0.0])), prominence=min_prominence * density.max())
    peaks = peaks - 1
    best: tuple[float, float] | None = None  # (depth, position)
    for left, right in zip(peaks[:-1], peaks[1:], strict=False):
        inside = np.flatnonzero((grid >= max(grid[left], lo)) & (grid <= min(grid[right], hi)))
        inside = inside[(inside > left) & (inside < right)]
        if inside.size == 0:
            continue
        floor = float(density[inside].min())
        depth = min(density[left], density[right]) - floor
        # An empty gap between well-separated modes is flat: cut in the middle of the longest run of grid points
        # within 1 % of the depth above the floor, not at its arbitrary first point.
        low = density[inside] <= floor + 0.01 * depth
        runs = np.split(inside[low], np.flatnonzero(np.diff(inside[low]) > 1) + 1)
        run = max(runs, key=len)
        if best is None or depth > best[0]:
            best = (depth, float((grid[run[0]] + grid[run[-1]]) / 2))
    if best is not None:
        threshold, method = best[1], "valley"
    else:
        mode = float(grid[peaks[np.argmax(density[peaks])]]) if peaks.size else _sorted_quantile(xs, 0.5)
        # The wider half of the mode: a negative population piled against zero (integer data clipped at 0,
        # logicle compression) is narrow below its mode and wide above it; a few positives barely move either.
        halves = [mode - xs[: np.searchsorted(xs, mode, side="right")], xs[np.searchsorted(xs, mode):] - mode]
        sd = max((float(1.4826 * _median(h)) for h in halves if h.size >= MIN_EVENTS), default=_robust_sd(x))
        if mode > hi:
            threshold, method = mode - k * sd, "positive-k*sd"
        else:
            threshold, method = mode + k * sd, "negative+k*sd"
    if threshold < lo or threshold > hi:
        threshold, method = float(np.clip(threshold, lo, hi)), method + "+bound"
    return float(threshold), method


def gaussian_mixture(z: np.ndarray, n_components: int, *, random_state: int = 0, max_iter: int = 200,
                     tol: float = 1e-4, reg_covar: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-covariance Gaussian mixture by expectation-maximisation (k-means++ seeding, three k-means rounds).

    Parameters
    ----------
    z : numpy.ndarray
        ``(n, d)`` data, roughly standardised (``reg_covar`` is added to every covariance diagonal).
    n_components : int
        Number of components.
    random_state : int
        Seed of the k-means++ seeding (fits are reproducible).
    max_iter, tol
        EM stops after ``max_iter`` rounds or when the mean log-likelihood gains less than ``tol``.

    Returns
    -------
    (weights, means, covariances)
        ``(k,)``, ``(k, d)`` and ``(k, d, d)``.

    Notes
    -----
    The model of ``sklearn.mixture.GaussianMixture(covariance_type="full")``, written out in numpy with every EM
    step batched over components: on the few thousand 2-D events of a scatter gate, fitted for every sample,
    scikit-learn's per-iteration input validation made it 3-5 times slower. EM starts from k-means++ seeds moved
    by three k-means rounds (scikit-learn's default runs k-means to the end), which halves the EM rounds on
    scatter data.

    Each event is expanded once into its monomials ``[z_i z_j (i <= j), z_i, 1]`` (``m`` of them; 6 in 2-D). The
    M-step's weighted moments are then one ``(k, n) x (n, m)`` product, and the E-step's log densities another,
    ``(k, m) x (m, n)``, with coefficients from each component's precision matrix, so a round costs two small
    products and one exponential over the events; the exponentials are taken in float32 (four times faster;
    the responsibilities change by about 1e-7, the fitted scatter ellipse by about 1e-8 relative).
    """
    n, d = z.shape
    zt = np.ascontiguousarray(z.T)  # (d, n): distances over a few axes as whole-row operations

    def distances(centers: np.ndarray) -> np.ndarray:
        """``(len(centers), n)`` squared distances of the events to each centre."""
        out = (zt[0] - centers[:, 0, None]) ** 2
        for j in range(1, d):
            out += (zt[j] - centers[:, j, None]) ** 2
        return out

    rng = np.random.default_rng(random_state)
    centers = [z[rng.integers(n)]]
    nearest = np.full(n, np.inf)
    for _ in range(1, n_components):
        nearest = np.minimum(nearest, distances(centers[-1][None])[0])
        centers.append(z[rng.choice(n, p=nearest / nearest.sum())])
    means = np.array(centers)
    # A few k-means (Lloyd) rounds from the seeds: EM then needs about half the rounds.
    for _ in range(3):
        nearest_center = np.argmin(distances(means), axis=0)
        sizes = np.bincount(nearest_center, minlength=n_components)
        sums = np.stack([np.bincount(nearest_center, zt[j], minlength=n_components) for j in range(d)], axis=1)
        means = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], means)
    resp = np.zeros((n_components, n))
    resp[np.argmin(distances(means), axis=0), np.arange(n)] = 1.0
    # Every event as its monomials [z_i z_j (i <= j), z_i, 1]: the M-step's weighted moments and the E-step's
    # quadratic forms are then one (k, m) x (m, n) product each.
    iu, ju = np.triu_indices(d)
    features = np.column_stack([z[:, iu] * z[:, ju], z, np.ones(n)])  # (n, m)
    pairs = len(iu)
    twice = np.where(iu == ju, 1.0, 2.0)  # off-diagonal products appear twice in z^T P z
    eye = reg_covar * np.eye(d)
    constant = d * np.log(2 * np.pi)
    previous = -np.inf
    for _ in range(max_iter):
        # M-step from the weighted moments (float64: the data are standardised, so E[zz^T] - mm^T loses nothing)
        moments = resp @ features  # (k, m)
        counts = moments[:, -1] + 10 * np.finfo(float).eps
        weights = counts / n
        means = moments[:, pairs:pairs + d] / counts[:, None]
        second = np.empty((n_components, d, d))
        second[:, iu, ju] = moments[:, :pairs] / counts[:, None]
        second[:, ju, iu] = second[:, iu, ju]
        covs = second - means[:, :, None] * means[:, None, :] + eye
        # E-step: -2 log N(z) = z^T P z - 2 (P m)^T z + m^T P m + log det C + d log 2 pi, as coefficients of the
        # monomials; the exponentials in float32 (four times faster, and the responsibilities need no more).
        precision = np.linalg.inv(covs)
        pm = (precision @ means[:, :, None])[:, :, 0]
        logdet = np.linalg.slogdet(covs)[1]
        coef = np.column_stack([precision[:, iu, ju] * twice, -2 * pm,
                                (pm * means).sum(axis=1) + logdet + constant - 2 * np.log(weights)])
        log_prob = -0.5 * (coef @ features.T)  # (k, n)
        top = log_prob.max(axis=0)
        log_prob -= top
        resp = np.exp(log_prob.astype(np.float32))
        norm = resp.sum(axis=0)
        resp /= norm
        likelihood = float((top + np.log(norm)).mean())
        if likelihood - previous < tol:
            break
        previous = likelihood
    return weights, means, covs


def fit_scatter_ellipse(
    xy: np.ndarray,
    *,
    n_components: int = 5,
    probability: float = 0.95,
    min_weight: float = 0.05,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray, float, dict[str, float]]:
    """Find the lymphocyte cloud on FSC/SSC with a Gaussian mixture.

    Parameters
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` forward scatter (column 0) and side scatter (column 1), any linear scale.
    n_components : int
        Mixture components (debris, lymphocytes, monocytes, granulocytes, doublets ...).
    probability : float
        Probability mass of the returned ellipse under the chosen component (chi-square quantile, 2 d.f.).
    min_weight : float
        Components with a smaller mixing weight are never chosen as the lymphocytes.
    random_state : int
        Seed of the mixture initialisation (fits are reproducible).

    Returns
    -------
    (mean, covariance, distance_square, info)
        The ellipse in the units of ``xy`` and a dict with the chosen component's ``weight``.

    Raises
    ------
    GateError
        Fewer than :data:`MIN_EVENTS` finite events, or no component qualifies.

    Notes
    -----
    1. Standardise each axis on robust quantiles (median, 10-90 % range), so detector ranges (262,144 or
       1,048,576) and scatter gains do not matter.
    2. Fit a full-covariance Gaussian mixture (:func:`gaussian_mixture`).
    3. Lymphocytes are the component with the lowest side-to-forward scatter ratio of the means (each measured from
       the low end of its axis) among those with enough weight. Debris sits at the low end of forward scatter, so
       its ratio is large; monocytes and granulocytes have more side scatter. The ranking does not depend on
       either axis' gain. Doublets share the ratio but have a smaller weight;
       among components whose ratio is within 25 % of the lowest, the heaviest wins.
    4. Components whose mean lies inside the chosen ellipse are the same cloud split in two: they are merged
       (moment matching) before the ellipse is drawn.
    """
    xy = np.asarray(xy, dtype=float)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if xy.shape[0] < max(MIN_EVENTS, 10 * n_components):
        raise GateError(f"scatter gate needs at least {max(MIN_EVENTS, 10 * n_components)} events, got {xy.shape[0]}")
    q10, center, q90 = np.quantile(xy, [0.1, 0.5, 0.9], axis=0)
    scale = np.where(q90 > q10, q90 - q10, 1.0)
    weights, means, covs = gaussian_mixture((xy - center) / scale, n_components, random_state=random_state,
                                           tol=1e-3)
    means = means * scale + center
    covs = covs * np.outer(scale, scale)
    fsc_floor = _quantile(xy[:, 0], 0.02)
    ratio = (means[:, 1] - _quantile(xy[:, 1], 0.001)) / np.maximum(means[:, 0] - fsc_floor, 1e-12)
    candidates = [i for i in range(n_components) if weights[i] >= min_weight and means[i, 0] > fsc_floor]
    if not candidates:
        raise GateError("scatter gate: no mixture component looks like lymphocytes")
    lowest = min(ratio[i] for i in candidates)
    near = [i for i in candidates if ratio[i] <= 1.25 * lowest]
    chosen = max(near, key=lambda i: weights[i])
    from scipy import stats

    d2 = float(stats.chi2.ppf(probability, 2))
    members = [chosen]
    inverse = np.linalg.inv(covs[chosen])
    for i in range(n_components):
        delta = means[i] - means[chosen]
        if i != chosen and float(delta @ inverse @ delta) < d2:
            members.append(i)
    w = weights[members] / weights[members].sum()
    mean = (w[:, None] * means[members]).sum(axis=0)
    cov = sum(w[j] * (covs[m] + np.outer(means[m] - mean, means[m] - mean)) for j, m in enumerate(members))
    return mean, np.asarray(cov), d2, {"weight": float(weights[members].sum()), "components": float(len(members))}


def fit_singlet_band(area: np.ndarray, height: np.ndarray, *, k: float = 4.0) -> dict[str, float]:
    """Fit ``area = intercept + slope * height`` robustly and the spread of the relative residual.

    Parameters
    ----------
    area, height : numpy.ndarray
        Pulse area and height of the same events (linear units).
    k : float
        Half-width of the singlet band in robust SDs of the relative residual.

    Returns
    -------
    dict
        ``slope``, ``intercept``, ``center`` (median relative residual), ``sd`` (robust SD), ``low``/``high``
        (relative residual limits ``center -/+ k * sd``).

    Raises
    ------
    GateError
        Fewer than :data:`MIN_EVENTS` events with positive area and height.

    Notes
    -----
    Doublets have an area out of proportion to their height and all lie on one side of the singlet line, so the
    line is refitted by least squares on the events within 2.5 robust SDs of the previous fit (5 rounds, starting
    from the median area/height ratio through the origin). The residual is relative (divided by the fitted area)
    because the spread of singlets grows with signal.
    """
    area = np.asarray(area, dtype=float)
    height = np.asarray(height, dtype=float)
    ok = np.isfinite(area) & np.isfinite(height) & (area > 0) & (height > 0)
    area, height = area[ok], height[ok]
    if area.size < MIN_EVENTS:
        raise GateError(f"singlet gate needs at least {MIN_EVENTS} events with positive area and height, "
                        f"got {area.size}")
    slope, intercept = _median(area / height), 0.0
    keep = np.ones(area.size, dtype=bool)
    for round_ in range(6):
        fitted = intercept + slope * height
        rel = (area - fitted) / np.maximum(fitted, 1e-12)
        center, sd = _median_sd(rel[keep])
        kept, keep = keep, np.abs(rel - center) < 2.5 * sd
        # The same events as the line was fitted on: later rounds would repeat this one exactly.
        if round_ == 5 or keep.sum() < MIN_EVENTS or (round_ > 0 and np.array_equal(keep, kept)):
            break
        slope, intercept = _line(height[keep], area[keep])
    center, sd = _median_sd(rel[keep])
    return {"slope": slope, "intercept": intercept, "center": center, "sd": sd,
            "low": center - k * sd, "high": center + k * sd}


# ----------------------------------------------------------------------------------------------------------------
# units: YAML coordinates are "friendly" (logicle decades 0..M, raw for linear); gates work in Gating-ML units


def to_units(value: float, transform: Transform | None) -> float:
    """Friendly units (logicle decades 0..M, raw for linear; see :func:`cytopipe.gatefile.friendly_units`) ->
    Gating-ML units."""
    from .gatefile import friendly_units

    scale, offset = friendly_units(transform)
    return (float(value) - offset) / scale


def from_units(value: float, transform: Transform | None) -> float:
    """Gating-ML units -> friendly units (the inverse of :func:`to_units`)."""
    from .gatefile import friendly_units

    scale, offset = friendly_units(transform)
    return float(value) * scale + offset


def channel_top(sample: Any, channel: str) -> float | None:
    """Top of scale of a channel: ``$PnR`` (or the decoded top of a log-amplified ``$PnE`` channel).

    Returns ``None`` when the keyword is missing or not a positive number.
    """
    index = sample.find_channel(channel)
    meta = sample.metadata
    try:
        top = float(meta.get(f"$P{index + 1}R", ""))
    except ValueError:
        return None
    if not top > 0:
        return None
    decades, offset = 0.0, 0.0
    try:
        decades, offset = (float(v) for v in meta.get(f"$P{index + 1}E", "0,0").split(",")[:2])
    except ValueError:
        pass
    if decades > 0 and sample.n_events and float(np.nanmax(sample.events[:, index])) > top:
        top = 10.0 ** decades * (offset if offset > 0 else 1.0)  # the data were decoded to linear (scale=True)
    return top


def resolve_dimension(dim: Dimension, sample: Any) -> Dimension:
    """``T: auto``: a logicle/hyperlog dimension whose top of scale follows the channel's ``$PnR`` in ``sample``.

    A 1,048,576-channel instrument then shows the same decades as a 262,144-channel one, so bounds written in
    decades hold for both.
    """
    transform = dim.transform
    if transform is None or getattr(transform, "kind", "") not in ("logicle", "hyperlog") or dim.ratio is not None:
        return dim
    top = channel_top(sample, str(dim.channel))
    if top is None or top == transform.T:
        return dim
    return replace(dim, transform=replace(transform, T=top))


# ----------------------------------------------------------------------------------------------------------------
# gate classes


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise GateError(f"{where}: {message}")


@dataclass(frozen=True)
class AutoGate(Gate):
    """Base of the data-driven gates: settings only; :meth:`fit` returns a fixed gate.

    Parameters
    ----------
    name, dimensions
        As for every gate.
    scope : {"sample", "subject", "baseline"}
        What a fit pools: each sample alone, all of a subject's samples, or the subject's baseline sample (the
        gate is then applied unchanged to later timepoints). :func:`fit_strategy` fits on the samples it is given;
        the batch runner chooses them by scope.
    auto_top : bool
        Resolve the logicle/hyperlog top of scale ``T`` from each file's ``$PnR`` (YAML ``T: auto``, the default).
    max_events : int
        At most about this many of the pooled parent population's events (every k-th) are used for the fit
        (>= 1000).
    random_state : int
        Seed of any random initialisation (the scatter gate's mixture).
    """

    scope: str = "sample"
    auto_top: bool = True
    max_events: int = 50_000
    random_state: int = 0

    #: YAML ``type`` of the gate.
    kind: ClassVar[str] = "auto"

    def __post_init__(self) -> None:
        where = f"gate '{self.name}'"
        _check(self.scope in SCOPES, where, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        _check(isinstance(self.max_events, int) and self.max_events >= 1000, where,
               f"max_events must be an integer >= 1000, got {self.max_events!r}")

    def mask(self, values: np.ndarray) -> np.ndarray:
        """Data-driven gates cannot mask before they are fitted."""
        raise GateError(f"gate '{self.name}' is data-driven and has not been fitted (use autogate.fit_strategy)")

    def fit(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
            controls: Mapping[str, np.ndarray] | None = None) -> Gate:
        """Learn the boundary and return it as an immutable fixed gate.

        Parameters
        ----------
        values : numpy.ndarray
            ``(n, ndim)`` transformed values of the parent population's events (pooled over the samples of the
            scope), columns in ``dimensions`` order.
        reference : dict of str to numpy.ndarray, optional
            Reference population name -> its events' values on this gate's dimensions.
        controls : dict of str to numpy.ndarray, optional
            Control role (``fmo:CD25``) -> the control's parent-population events on this gate's dimensions.

        Returns
        -------
        Gate
            An :class:`EllipsoidGate`, :class:`PolygonGate` or :class:`RectangleGate` with this gate's name and
            dimensions.

        Raises
        ------
        GateError
            Too few events, or a reference/control the gate needs is missing.
        """
        return self.fit_with_info(values, reference=reference, controls=controls)[0]

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[Gate, dict[str, Any]]:
        """:meth:`fit`, plus the fitted parameters in friendly units (one ``gates_fitted.csv`` row)."""
        raise NotImplementedError(f"{type(self).__name__} does not define fit_with_info()")

    def to_spec(self) -> dict[str, Any]:
        """The YAML gate spec of this gate (used by :func:`cytopipe.gatefile.dump_yaml`); settings left at their
        defaults are omitted."""
        spec: dict[str, Any] = {"type": self.kind, "channels": [str(d.channel) for d in self.dimensions]}
        defaults = {f.name: f.default for f in fields(self)}
        for name in self._settings:
            value = getattr(self, name)
            if value != defaults[name]:
                spec[name] = value
        if not self.auto_top:
            spec["T"] = "keep"
        for name in ("scope", "max_events", "random_state"):
            if getattr(self, name) != defaults[name]:
                spec[name] = getattr(self, name)
        return spec

    #: Type-specific settings written by :meth:`to_spec`.
    _settings: ClassVar[tuple[str, ...]] = ()

    def _subsample(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values[:, 0])
        for j in range(1, values.shape[1]):
            finite &= np.isfinite(values[:, j])
        if not finite.all():
            values = values[finite]
        if values.shape[0] > self.max_events:
            values = values[:: -(-values.shape[0] // self.max_events)]
        return values


@dataclass(frozen=True)
class ScatterGate(AutoGate):
    """Lymphocytes on FSC-A/SSC-A: the lymphocyte component of a Gaussian mixture, as an :class:`EllipsoidGate`.

    Parameters
    ----------
    probability : float
        Probability mass of the ellipse under the fitted component (0 < p < 1); ``distance_square`` is the
        chi-square quantile with 2 degrees of freedom.
    components : int
        Mixture components (2-10).
    min_weight : float
        Smallest mixing weight a lymphocyte component may have.

    See :func:`fit_scatter_ellipse` for the algorithm.
    """

    probability: float = 0.95
    components: int = 5
    min_weight: float = 0.05
    max_events: int = 2_500
    kind: ClassVar[str] = "auto_scatter"
    _settings: ClassVar[tuple[str, ...]] = ("probability", "components", "min_weight")

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"gate '{self.name}'"
        _check(len(self.dimensions) == 2, where,
               f"auto_scatter needs 2 channels (FSC, SSC), got {len(self.dimensions)}")
        _check(0 < self.probability < 1, where, f"probability must be between 0 and 1, got {self.probability!r}")
        _check(isinstance(self.components, int) and 2 <= self.components <= 10, where,
               f"components must be an integer from 2 to 10, got {self.components!r}")
        _check(0 <= self.min_weight < 1, where, f"min_weight must be in [0, 1), got {self.min_weight!r}")

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[EllipsoidGate, dict[str, Any]]:
        mean, cov, d2, found = fit_scatter_ellipse(self._subsample(values), n_components=self.components,
                                                   probability=self.probability, min_weight=self.min_weight,
                                                   random_state=self.random_state)
        x, y = (str(d.channel) for d in self.dimensions)
        sd = np.sqrt(np.diag(cov))
        info = {f"center {x}": mean[0], f"center {y}": mean[1], f"sd {x}": sd[0], f"sd {y}": sd[1],
                "correlation": cov[0, 1] / (sd[0] * sd[1]), "distance_square": d2, "weight": found["weight"]}
        gate = EllipsoidGate(self.name, self.dimensions, mean=tuple(mean), covariance=tuple(map(tuple, cov)),
                             distance_square=d2)
        return gate, info


@dataclass(frozen=True)
class SingletGate(AutoGate):
    """Singlets: a band around the robust line ``area = a + b * height``, as a :class:`PolygonGate`.

    The first channel is the pulse area (``FSC-A``), the second the height (``FSC-H``).

    Parameters
    ----------
    k : float
        Half-width of the band in robust SDs of the relative residual (default 4).

    See :func:`fit_singlet_band` for the algorithm.
    """

    k: float = 4.0
    max_events: int = 10_000
    kind: ClassVar[str] = "auto_singlets"
    _settings: ClassVar[tuple[str, ...]] = ("k",)

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"gate '{self.name}'"
        _check(len(self.dimensions) == 2, where,
               f"auto_singlets needs 2 channels (area, height), got {len(self.dimensions)}")
        _check(self.k > 0, where, f"k must be positive, got {self.k!r}")

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[PolygonGate, dict[str, Any]]:
        values = self._subsample(values)
        band = fit_singlet_band(values[:, 0], values[:, 1], k=self.k)
        # Heights from below the data to far above it: the band's ends never cut real events.
        h_low = min(0.0, 2.0 * float(values[:, 1].min()))
        h_high = 2.0 * float(values[:, 1].max()) + 1.0
        line = [band["intercept"] + band["slope"] * h for h in (h_low, h_high)]
        lo, hi = 1.0 + band["low"], 1.0 + band["high"]
        vertices = ((line[0] * lo, h_low), (line[1] * lo, h_high), (line[1] * hi, h_high), (line[0] * hi, h_low))
        info = {"slope": band["slope"], "intercept": band["intercept"], "residual sd": band["sd"],
                "band low": band["low"], "band high": band["high"]}
        return PolygonGate(self.name, self.dimensions, vertices=vertices), info


@dataclass(frozen=True)
class Threshold:
    """How one dimension of a :class:`ThresholdGate` finds its cut.

    Parameters
    ----------
    side : {"above", "below"}
        Keep events at or above the cut (the gate's ``min``) or below it (``max``).
    method : {"valley", "reference", "control"}
        ``valley``: :func:`density_valley` on the parent's events; ``reference``: the ``percentile`` of a
        reference population's events (``population``, e.g. CD4-negative T cells); ``control``: the ``percentile``
        of an FMO/isotype control's events in the same parent (``control`` = its sample-sheet role, e.g.
        ``fmo:CD25``), gated through the same fitted hierarchy.
    bounds : (float or None, float or None) or None
        Valley search range and clamp, in Gating-ML units of the dimension.
    population, control : str or None
        Reference population name / control role, for the matching method.
    percentile : float
        0-100, for ``reference`` and ``control``.
    k : float
        Robust SDs for the one-mode fallback of ``valley``.
    adjust : float
        Bandwidth multiplier of the density estimate.
    within : {"parent", "gated"}
        Fit on all the parent's events, or only on those passing the cuts listed before this one in the gate
        (e.g. a CD25 cut among FoxP3+ cells).
    """

    side: str = "above"
    method: str = "valley"
    bounds: tuple[float | None, float | None] | None = None
    population: str | None = None
    control: str | None = None
    percentile: float = 99.0
    k: float = 3.0
    adjust: float = 1.5
    within: str = "parent"

    def check(self, where: str) -> None:
        """Raise :class:`GateError` naming the bad setting."""
        _check(self.side in SIDES, where, f"side must be 'above' or 'below', got {self.side!r}")
        _check(self.method in METHODS, where, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _check(self.within in ("parent", "gated"), where, f"within must be 'parent' or 'gated', got {self.within!r}")
        _check(0 < self.percentile < 100, where, f"percentile must be between 0 and 100, got {self.percentile!r}")
        _check(self.k > 0, where, f"k must be positive, got {self.k!r}")
        _check(self.adjust > 0, where, f"adjust must be positive, got {self.adjust!r}")
        _check(self.method != "reference" or bool(self.population), where,
               "method 'reference' needs population: <name of the reference population>")
        _check(self.method != "control" or bool(self.control), where,
               "method 'control' needs control: <sample-sheet role, e.g. fmo:CD25>")
        if self.bounds is not None:
            lo, hi = self.bounds
            _check(lo is None or hi is None or lo < hi, where, f"bounds must be [low, high] with low < high, got "
                                                               f"{list(self.bounds)}")


@dataclass(frozen=True)
class ThresholdGate(AutoGate):
    """One fitted cut per dimension; returns a :class:`RectangleGate` with open outer sides.

    ``CD3+`` is one ``above`` cut on CD3; ``CD4+`` an ``above`` cut on CD4 and a ``below`` cut on CD8; the Treg
    gate a CD25 cut from a reference population's percentile and a FoxP3 valley.

    Parameters
    ----------
    thresholds : tuple of Threshold
        One per dimension, fitted in this order.
    """

    thresholds: tuple[Threshold, ...] = ()
    max_events: int = DEFAULT_MAX_EVENTS
    kind: ClassVar[str] = "auto_threshold"

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"gate '{self.name}'"
        _check(len(self.thresholds) == len(self.dimensions) > 0, where,
               f"needs one threshold per channel ({len(self.dimensions)}), got {len(self.thresholds)}")
        for i, threshold in enumerate(self.thresholds):
            threshold.check(f"{where}: thresholds[{i}]")

    def to_spec(self) -> dict[str, Any]:
        spec = super().to_spec()
        items = []
        for dim, t in zip(self.dimensions, self.thresholds, strict=True):
            item: dict[str, Any] = {"side": t.side, "method": t.method}
            if t.bounds is not None:
                item["bounds"] = [None if b is None else round(from_units(b, dim.transform), 10) for b in t.bounds]
            for name in ("population", "control"):
                if getattr(t, name):
                    item[name] = getattr(t, name)
            if t.method != "valley":
                item["percentile"] = t.percentile
            for name, default in (("k", 3.0), ("adjust", 1.5), ("within", "parent")):
                if getattr(t, name) != default:
                    item[name] = getattr(t, name)
            items.append(item)
        spec["thresholds"] = items
        return spec

    @property
    def references(self) -> tuple[str, ...]:
        """Populations whose events this gate's ``reference`` cuts need."""
        return tuple(t.population for t in self.thresholds if t.method == "reference" and t.population)

    @property
    def controls(self) -> tuple[str, ...]:
        """Control roles (``fmo:CD25`` ...) this gate's ``control`` cuts need."""
        return tuple(t.control for t in self.thresholds if t.method == "control" and t.control)

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[RectangleGate, dict[str, Any]]:
        values = self._subsample(values)
        reference = {k: np.asarray(v, dtype=float) for k, v in (reference or {}).items()}
        controls = {k.casefold(): np.asarray(v, dtype=float) for k, v in (controls or {}).items()}
        lows: list[float | None] = [None] * len(self.dimensions)
        highs: list[float | None] = [None] * len(self.dimensions)
        methods = []
        for i, t in enumerate(self.thresholds):
            label = f"gate '{self.name}': {self.dimensions[i].channel}"
            if t.method == "valley":
                data = _passing(values, lows, highs) if t.within == "gated" else values
                try:
                    cut, how = density_valley(data[:, i], bounds=t.bounds, adjust=t.adjust, k=t.k)
                except GateError as err:
                    raise GateError(f"{label}: {err}") from None
            else:
                source = reference.get(t.population) if t.method == "reference" else controls.get(
                    str(t.control).casefold())
                if source is None:
                    what = f"reference population '{t.population}'" if t.method == "reference" else (
                        f"control '{t.control}' (a sample-sheet row with role {t.control})")
                    raise GateError(f"{label}: the {what} is not available")
                data = _passing(source, lows, highs) if t.within == "gated" else source
                data = data[np.isfinite(data[:, i]), i]
                if data.size < MIN_EVENTS:
                    raise GateError(f"{label}: the {t.method} events are too few for a percentile "
                                    f"({data.size} < {MIN_EVENTS})")
                cut, how = _quantile(data, t.percentile / 100), f"{t.method} p{t.percentile:g}"
            if t.side == "above":
                lows[i] = cut
            else:
                highs[i] = cut
            methods.append(how)
        info: dict[str, Any] = {}
        for dim, t, lo, hi, how in zip(self.dimensions, self.thresholds, lows, highs, methods, strict=True):
            bound = "min" if t.side == "above" else "max"
            info[f"{dim.channel} {bound}"] = from_units(lo if t.side == "above" else hi, dim.transform)
            info[f"{dim.channel} method"] = how
        return RectangleGate(self.name, self.dimensions, min=tuple(lows), max=tuple(highs)), info


def _passing(values: np.ndarray, lows: Sequence[float | None], highs: Sequence[float | None]) -> np.ndarray:
    """Rows of ``values`` inside the cuts fitted so far."""
    keep = np.ones(values.shape[0], dtype=bool)
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        if lo is not None:
            keep &= values[:, i] >= lo
        if hi is not None:
            keep &= values[:, i] < hi
    return values[keep]


# ----------------------------------------------------------------------------------------------------------------
# fitting a whole strategy


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
    control_values = {}
    for role in (r.casefold() for r in getattr(gate, "controls", ())):
        if role not in control_contexts:
            raise GateError(f"{where}: needs the control '{role}' (a sample-sheet row with role {role}); none given")
        ctx = control_contexts[role]
        control_values[role] = ctx.values(pop, ctx.parent(pop))
    try:
        fitted, info = gate.fit_with_info(values, reference=reference, controls=control_values)
    except GateError as err:
        raise GateError(f"{where}: {err}") from None
    return fitted, info, n_parent


# ----------------------------------------------------------------------------------------------------------------
# YAML gate specs -> gates (the registry gatefile.py looks types up in)

_COMMON_KEYS = {"scope", "T", "max_events", "random_state"}
# Keys gatefile.py handles itself for every gate type.
_LOADER_KEYS = {"type", "channels", "name", "id", "transform", "transforms", "compensation"}
_THRESHOLD_KEYS = {"side", "method", "bounds", "population", "control", "percentile", "k", "adjust", "within"}


def _number(spec: Mapping[str, Any], key: str, where: str, default: float, *, integer: bool = False) -> Any:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise GateError(f"{where}.{key}: expected {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _common(spec: Mapping[str, Any], where: str, allowed: set[str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - allowed - _COMMON_KEYS - _LOADER_KEYS)
    if unknown:
        listed = ", ".join(sorted(allowed | _COMMON_KEYS))
        raise GateError(f"{where}.{unknown[0]}: unknown setting for {spec.get('type')} (allowed: {listed})")
    top = spec.get("T", "auto")
    if top not in ("auto", "keep"):
        raise GateError(f"{where}.T: expected 'auto' (follow each file's $PnR) or 'keep', got {top!r}")
    scope = spec.get("scope", "sample")
    if scope not in SCOPES:
        raise GateError(f"{where}.scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    return {"scope": scope, "auto_top": top == "auto",
            "max_events": _number(spec, "max_events", where, defaults["max_events"], integer=True),
            "random_state": _number(spec, "random_state", where, 0, integer=True)}


def _gate_name(where: str) -> str:
    """The population name in a loader's ``where`` ("gates/x.yaml: population 'CD3+'"), or ''."""
    start = where.find("population '")
    if start < 0:
        return ""
    rest = where[start + len("population '"):]
    return rest[: rest.find("'")] if "'" in rest else ""


def _build(cls: type[AutoGate], settings: dict[str, Any], dims: tuple[Dimension, ...], where: str) -> AutoGate:
    try:
        return cls(_gate_name(where), tuple(dims), **settings)
    except GateError as err:
        detail = str(err).split(": ", 1)[-1]
        raise GateError(f"{where}: gate: {detail}") from None


def build_scatter(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> ScatterGate:
    """``type: auto_scatter`` -> :class:`ScatterGate` (``probability``, ``components``, ``min_weight``)."""
    w = f"{where}: gate"
    settings = _common(spec, w, {"probability", "components", "min_weight"}, {"max_events": 2_500})
    settings.update(probability=_number(spec, "probability", w, 0.95),
                    components=_number(spec, "components", w, 5, integer=True),
                    min_weight=_number(spec, "min_weight", w, 0.05))
    return _build(ScatterGate, settings, dims, where)  # type: ignore[return-value]


def build_singlets(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> SingletGate:
    """``type: auto_singlets`` -> :class:`SingletGate` (``k``)."""
    w = f"{where}: gate"
    settings = _common(spec, w, {"k"}, {"max_events": 10_000})
    settings["k"] = _number(spec, "k", w, 4.0)
    return _build(SingletGate, settings, dims, where)  # type: ignore[return-value]


def build_threshold(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> ThresholdGate:
    """``type: auto_threshold`` -> :class:`ThresholdGate` (``thresholds``: one mapping per channel).

    ``bounds`` are written in the dimension's friendly units (logicle decades) and converted here.
    """
    w = f"{where}: gate"
    settings = _common(spec, w, {"thresholds"}, {"max_events": DEFAULT_MAX_EVENTS})
    items = spec.get("thresholds")
    if not isinstance(items, list) or len(items) != len(dims):
        raise GateError(f"{w}.thresholds: expected a list with one entry per channel ({len(dims)}), got {items!r}")
    thresholds = []
    for i, (item, dim) in enumerate(zip(items, dims, strict=True)):
        wi = f"{w}.thresholds[{i}]"
        if not isinstance(item, Mapping):
            raise GateError(f"{wi}: expected a mapping such as {{side: above, method: valley}}, got {item!r}")
        unknown = sorted(set(item) - _THRESHOLD_KEYS)
        if unknown:
            raise GateError(f"{wi}.{unknown[0]}: unknown setting (allowed: {', '.join(sorted(_THRESHOLD_KEYS))})")
        bounds = item.get("bounds")
        if bounds is not None:
            if not isinstance(bounds, list) or len(bounds) != 2 or any(
                    b is not None and (isinstance(b, bool) or not isinstance(b, (int, float))) for b in bounds):
                raise GateError(f"{wi}.bounds: expected [low, high] (numbers or null), got {bounds!r}")
            bounds = tuple(None if b is None else to_units(b, dim.transform) for b in bounds)
        for key in ("side", "method", "within", "population", "control"):
            if key in item and not isinstance(item[key], str):
                raise GateError(f"{wi}.{key}: expected text, got {item[key]!r}")
        threshold = Threshold(side=item.get("side", "above"), method=item.get("method", "valley"), bounds=bounds,
                              population=item.get("population"), control=item.get("control"),
                              percentile=_number(item, "percentile", wi, 99.0), k=_number(item, "k", wi, 3.0),
                              adjust=_number(item, "adjust", wi, 1.5), within=item.get("within", "parent"))
        threshold.check(wi)
        thresholds.append(threshold)
    settings["thresholds"] = tuple(thresholds)
    return _build(ThresholdGate, settings, dims, where)  # type: ignore[return-value]


#: YAML ``type`` -> builder ``(spec, dimensions, where) -> Gate``; :mod:`cytopipe.gatefile` looks types up here.
GATE_TYPES: dict[str, Callable[[dict, tuple[Dimension, ...], str], Gate]] = {
    "auto_scatter": build_scatter,
    "auto_singlets": build_singlets,
    "auto_threshold": build_threshold,
}


# ----------------------------------------------------------------------------------------------------------------
# drift and sensitivity

_IDENTITY = {"sample", "subject", "timepoint", "day", "baseline", "population", "type", "scope", "fitted_on",
             "n_samples", "n_events"}


def gate_drift(fitted_rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Drift of every fitted gate parameter per timepoint against the subject's baseline fit.

    Parameters
    ----------
    fitted_rows : list of dict or pandas.DataFrame
        ``gates_fitted.csv`` rows: :func:`fit_strategy` rows with ``sample, subject, timepoint, day`` added (and
        optionally a bool ``baseline``; a subject with no row flagged falls back to its earliest day).

    Returns
    -------
    pandas.DataFrame
        One row per subject x timepoint x population x numeric parameter: ``subject, sample, timepoint, day,
        population, parameter, value, baseline_value, drift`` (value - baseline value, same units: logicle decades
        for thresholds, raw for scatter) and ``drift_pct`` (drift relative to the baseline value, percent). Gates
        fitted once per subject (``subject``/``baseline`` scope, rows without a day) are left out.

    Raises
    ------
    ValueError
        The rows lack ``subject``, ``day`` or ``population``.
    """
    import pandas as pd

    table = pd.DataFrame(list(fitted_rows) if not isinstance(fitted_rows, pd.DataFrame) else fitted_rows)
    columns = ["subject", "sample", "timepoint", "day", "population", "parameter", "value", "baseline_value",
               "drift", "drift_pct"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    missing = [c for c in ("subject", "day", "population") if c not in table.columns]
    if missing:
        raise ValueError(f"gate_drift: fitted rows lack column(s) {', '.join(missing)}")
    table = table[pd.to_numeric(table["day"], errors="coerce").notna()].copy()
    table["day"] = table["day"].astype(float)
    for col in ("sample", "timepoint"):
        if col not in table.columns:
            table[col] = ""
    params = [c for c in table.columns if c not in _IDENTITY and pd.api.types.is_numeric_dtype(table[c])]
    ids = ["subject", "sample", "timepoint", "day", "population"]
    if "baseline" in table.columns:
        ids.append("baseline")
    long = table.melt(id_vars=ids, value_vars=params, var_name="parameter", value_name="value")
    long = long.dropna(subset=["value"])
    # A subject without a flagged baseline row falls back to its earliest day.
    earliest = long["day"] == long.groupby("subject")["day"].transform("min")
    if "baseline" in long.columns:
        flagged = long["baseline"].astype(bool)
        base = long[flagged | (earliest & ~flagged.groupby(long["subject"]).transform("any"))]
    else:
        base = long[earliest]
    base = base.groupby(["subject", "population", "parameter"], as_index=False)["value"].first()
    out = long.merge(base.rename(columns={"value": "baseline_value"}), on=["subject", "population", "parameter"])
    out["drift"] = out["value"] - out["baseline_value"]
    scale = out["baseline_value"].abs().where(out["baseline_value"].abs() > 0)
    out["drift_pct"] = 100.0 * out["drift"] / scale
    order = {n: i for i, n in enumerate(dict.fromkeys(table["population"]))}
    out["_order"] = out["population"].map(order)
    out = out.sort_values(["subject", "day", "sample", "_order", "parameter"], kind="mergesort")
    return out[columns].reset_index(drop=True)


def sensitivity(
    strategy: GatingStrategy,
    sample: Any,
    treg: str | None = None,
    parent: str | None = None,
    *,
    delta: float = 0.1,
    spillover: Any = None,
    fitted: GatingStrategy | None = None,
    max_events: int | None = DEFAULT_MAX_EVENTS,
) -> list[dict[str, Any]]:
    """How much the Treg % moves when each data-driven threshold shifts by +/- ``delta``.

    Parameters
    ----------
    strategy : GatingStrategy
        The data-driven strategy (its :class:`ThresholdGate` populations are the thresholds examined).
    sample : cytopipe.fcs.Sample
        The sample.
    treg, parent : str, optional
        Treg population and denominator (default: the strategy's ``treg``/``parent``, else the population named
        ``Treg`` and its parent).
    delta : float
        Shift in friendly units of each dimension (logicle decades: default 0.1).
    spillover : Spillover, optional
        As for :meth:`GatingStrategy.apply`.
    fitted : GatingStrategy, optional
        The strategy already fitted for this sample (default: fitted here with :func:`fit_strategy`).
    max_events : int or None
        Larger samples are evaluated on every k-th event down to about this many (``None``: all events); the
        changes are then estimates, and ``treg_pct`` is that of the subsample. With the default (the fit's
        subsample size), the columns :func:`fit_strategy` computed for this sample object are reused.

    Returns
    -------
    list of dict
        One row per threshold: ``population, channel, bound`` (``min``/``max``), ``threshold`` (friendly units),
        ``delta``, ``treg_pct``, ``treg_pct_minus``, ``treg_pct_plus`` (threshold shifted down / up),
        ``max_change_pp`` (largest absolute change, percentage points) and ``n_events`` (events evaluated).

    Raises
    ------
    GateError
        No Treg population can be found.
    """
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    treg = treg or strategy.treg or next((p.name for p in strategy.populations if p.name.casefold() == "treg"), None)
    if treg is None:
        raise GateError(f"{strategy.name or 'gating strategy'}: no Treg population (name one with treg=)")
    parent = parent or strategy.parent or strategy.population(treg).parent
    if fitted is None:
        fitted, _ = fit_strategy(strategy, [sample], spillover=spillover, max_events=max_events or DEFAULT_MAX_EVENTS)
    # Only the populations the Treg % depends on are gated, on the columns the fit computed for this sample (the
    # same subsample, compensated and transformed once); each shifted threshold re-evaluates just its population
    # and the ones below it.
    needed = {treg, *([parent] if parent else [])}
    for pop in reversed(fitted.populations):
        if pop.name in needed:
            needed.update([pop.parent] if pop.parent else [])
            needed.update(pop.gate.operands if isinstance(pop.gate, BooleanGate) else ())
    pops = [p for p in fitted.populations if p.name in needed]
    columns, entry = _subsample_columns(fitted, {p.name: p.gate.dimensions for p in pops}, sample, spillover,
                                        max_events)
    n_events = entry.sample.n_events
    base_masks: dict[str, np.ndarray] = {}
    _evaluate(pops, columns, base_masks, entry)

    def treg_pct(masks: Mapping[str, np.ndarray]) -> float:
        n = n_events if parent is None else int(np.count_nonzero(masks[parent]))
        return 100.0 * int(np.count_nonzero(masks[treg])) / n if n else math.nan

    def below(name: str) -> set[str]:
        out = {name}
        for p in pops:
            if p.parent in out or (isinstance(p.gate, BooleanGate) and out & set(p.gate.operands)):
                out.add(p.name)
        return out

    base = treg_pct(base_masks)
    rows = []
    for pop in strategy.populations:
        if not isinstance(pop.gate, ThresholdGate) or pop.name not in needed:
            continue
        gate = fitted.population(pop.name).gate
        assert isinstance(gate, RectangleGate)
        stale = below(pop.name)
        for i, (dim, t) in enumerate(zip(gate.dimensions, pop.gate.thresholds, strict=True)):
            bound = "min" if t.side == "above" else "max"
            friendly = from_units((gate.min if bound == "min" else gate.max)[i], dim.transform)
            moved = []
            for sign in (-1.0, 1.0):
                shifted = list(gate.min if bound == "min" else gate.max)
                shifted[i] = to_units(friendly + sign * delta, dim.transform)
                new = replace(gate, **{bound: tuple(shifted)})
                masks = {k: v for k, v in base_masks.items() if k not in stale}
                _evaluate([replace(p, gate=new) if p.name == pop.name else p for p in pops], columns, masks, entry,
                          keep=False)
                moved.append(treg_pct(masks))
            rows.append({"population": pop.name, "channel": str(dim.channel), "bound": bound, "threshold": friendly,
                         "delta": delta, "treg_pct": base, "treg_pct_minus": moved[0], "treg_pct_plus": moved[1],
                         "max_change_pp": max(abs(moved[0] - base), abs(moved[1] - base)),
                         "n_events": n_events})
    return rows

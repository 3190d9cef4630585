"""Lymphocytes on FSC/SSC: :func:`gaussian_mixture`, :func:`fit_scatter_ellipse` and :class:`ScatterGate`
(``auto_scatter``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import GateError
from ..gates import Dimension, EllipsoidGate
from .base import (
    MIN_EVENTS,
    AutoGate,
    _build,
    _check,
    _common,
    _number,
)
from .robust import _chi2_2d, _quantile


def gaussian_mixture(z: np.ndarray, n_components: int, *, random_state: int = 0, max_iter: int = 200,
                     tol: float = 1e-4, reg_covar: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-covariance Gaussian mixture by expectation-maximisation; see :func:`mixture_em` (which also says whether
    EM converged)."""
    return mixture_em(z, n_components, random_state=random_state, max_iter=max_iter, tol=tol, reg_covar=reg_covar)[:3]


def mixture_em(z: np.ndarray, n_components: int, *, random_state: int = 0, max_iter: int = 200, tol: float = 1e-4,
               reg_covar: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
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
    (weights, means, covariances, converged)
        ``(k,)``, ``(k, d)`` and ``(k, d, d)``, and whether the log-likelihood gain fell below ``tol`` within
        ``max_iter`` rounds.

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
    # quadratic forms are then one (k, m) x (m, n) product each. The products are einsum loops, not BLAS: a
    # threaded BLAS may sum in another order with another thread count, and the fit must agree to the last digit
    # whatever the machine (byte-identical gates_fitted.csv for --workers 1, N or Dask).
    iu, ju = np.triu_indices(d)
    features = np.column_stack([z[:, iu] * z[:, ju], z, np.ones(n)])  # (n, m)
    pairs = len(iu)
    twice = np.where(iu == ju, 1.0, 2.0)  # off-diagonal products appear twice in z^T P z
    eye = reg_covar * np.eye(d)
    constant = d * np.log(2 * np.pi)
    previous = -np.inf
    converged = False
    for _ in range(max_iter):
        # M-step from the weighted moments (float64: the data are standardised, so E[zz^T] - mm^T loses nothing)
        moments = np.einsum("kn,nm->km", resp, features)  # (k, m)
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
        pm = np.einsum("kij,kj->ki", precision, means)
        logdet = np.linalg.slogdet(covs)[1]
        coef = np.column_stack([precision[:, iu, ju] * twice, -2 * pm,
                                (pm * means).sum(axis=1) + logdet + constant - 2 * np.log(weights)])
        log_prob = -0.5 * np.einsum("km,nm->kn", coef, features)  # (k, n)
        top = log_prob.max(axis=0)
        log_prob -= top
        resp = np.exp(log_prob.astype(np.float32))
        norm = resp.sum(axis=0)
        resp /= norm
        likelihood = float((top + np.log(norm)).mean())
        if likelihood - previous < tol:
            converged = True
            break
        previous = likelihood
    return weights, means, covs, converged and bool(np.isfinite(likelihood))


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
    d2 = _chi2_2d(probability)
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


def build_scatter(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> ScatterGate:
    """``type: auto_scatter`` -> :class:`ScatterGate` (``probability``, ``components``, ``min_weight``)."""
    w = f"{where}: gate"
    settings = _common(spec, w, {"probability", "components", "min_weight"}, {"max_events": 2_500})
    settings.update(probability=_number(spec, "probability", w, 0.95),
                    components=_number(spec, "components", w, 5, integer=True),
                    min_weight=_number(spec, "min_weight", w, 0.05))
    return _build(ScatterGate, settings, dims, where)  # type: ignore[return-value]

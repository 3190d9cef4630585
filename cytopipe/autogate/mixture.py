"""Two-dimensional mixture gates: :func:`fit_mixture_ellipse` and :class:`MixtureGate` (``auto_mixture``), the
analogue of openCyto's ``flowClust`` 2-D gate: the component of a Gaussian mixture nearest a target location, as an
ellipse at a chosen probability."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import GateError
from ..gates import Dimension, EllipsoidGate, Gate
from ..transforms import friendly_units
from .base import AutoGate, _build, _check, _common, _number, from_units, to_units
from .robust import _chi2_2d, _quantile
from .scatter import mixture_em
from .tail import MIN_EVENTS_2D


def fit_mixture_ellipse(
    xy: np.ndarray,
    target: tuple[float, float],
    *,
    n_components: int = 3,
    probability: float = 0.9,
    min_weight: float = 0.01,
    random_state: int = 0,
    max_iter: int = 500,
) -> dict[str, Any]:
    """The component of a 2-D Gaussian mixture nearest ``target``, as an ellipse.

    Parameters
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` transformed values of the parent population.
    target : (float, float)
        Where the wanted population lies, in the units of ``xy``.
    n_components : int
        Mixture components.
    probability : float
        Probability mass of the ellipse under the chosen component (chi-square quantile, 2 d.f.).
    min_weight : float
        Components with a smaller mixing weight are never chosen.
    random_state : int
        Seed of the k-means++ seeding.
    max_iter : int
        Most EM rounds.

    Returns
    -------
    dict
        ``mean`` (2,), ``covariance`` (2, 2), ``distance_square``, ``weight`` of the chosen component.

    Raises
    ------
    GateError
        Too few events, EM did not converge, or no component has ``min_weight``.

    Notes
    -----
    1. Standardise each axis on robust quantiles (median, 10-90 % range).
    2. Fit a full-covariance Gaussian mixture by EM (:func:`~cytopipe.autogate.scatter.mixture_em`: k-means++
       seeds from ``random_state``, float64 moments; ``max_iter`` rounds at most).
    3. Choose the component whose mean is nearest ``target`` (Euclidean, in the standardised units) among those
       with at least ``min_weight``; its ellipse holds ``probability`` of it.
    """
    xy = np.asarray(xy, dtype=float)
    xy = xy[np.isfinite(xy).all(axis=1)]
    needed = max(MIN_EVENTS_2D, 20 * n_components)
    if xy.shape[0] < needed:
        raise GateError(f"mixture gate needs at least {needed} events in its parent, got {xy.shape[0]}")
    q10, center, q90 = (np.array([_quantile(xy[:, j], q) for j in (0, 1)]) for q in (0.1, 0.5, 0.9))
    scale = np.where(q90 > q10, q90 - q10, 1.0)
    weights, means, covs, converged = mixture_em((xy - center) / scale, n_components, random_state=random_state,
                                                 max_iter=max_iter, tol=1e-5)
    if not converged or not (np.all(np.isfinite(means)) and np.all(np.isfinite(covs))):
        raise GateError(f"mixture gate: the {n_components}-component mixture did not converge in {max_iter} EM rounds "
                        "(try fewer components or a larger max_iter)")
    goal = (np.asarray(target, dtype=float) - center) / scale
    candidates = [i for i in range(n_components) if weights[i] >= min_weight]
    if not candidates:
        raise GateError(f"mixture gate: no component has a weight of at least {min_weight:g}")
    chosen = min(candidates, key=lambda i: float(((means[i] - goal) ** 2).sum()))
    mean = means[chosen] * scale + center
    cov = covs[chosen] * np.outer(scale, scale)
    return {"mean": mean, "covariance": cov, "distance_square": _chi2_2d(probability),
            "weight": float(weights[chosen])}


@dataclass(frozen=True)
class MixtureGate(AutoGate):
    """The mixture component nearest a target location, as an :class:`EllipsoidGate`.

    Parameters
    ----------
    target : (float, float)
        Where the wanted population lies, in Gating-ML units of the two dimensions (YAML: friendly units, e.g.
        logicle decades).
    components : int
        Mixture components (2-10, default 3).
    probability : float
        Probability mass of the ellipse under the chosen component (0 < p < 1, default 0.9; openCyto's
        ``quantile``).
    min_weight : float
        Smallest mixing weight the chosen component may have.
    max_iter : int
        Most EM rounds (default 500); a mixture that has not converged by then fails the sample.

    See :func:`fit_mixture_ellipse` for the algorithm.
    """

    target: tuple[float, float] = (0.0, 0.0)
    components: int = 3
    probability: float = 0.9
    min_weight: float = 0.01
    max_iter: int = 500
    max_events: int = 5_000
    kind: ClassVar[str] = "auto_mixture"
    _settings: ClassVar[tuple[str, ...]] = ("components", "probability", "min_weight", "max_iter")

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"gate '{self.name}'"
        _check(len(self.dimensions) == 2, where, f"auto_mixture needs 2 channels, got {len(self.dimensions)}")
        _check(isinstance(self.target, tuple) and len(self.target) == 2
               and all(isinstance(t, float) and math.isfinite(t) for t in self.target), where,
               f"target must be two finite numbers (one per channel), got {self.target!r}")
        _check(isinstance(self.components, int) and 2 <= self.components <= 10, where,
               f"components must be an integer from 2 to 10, got {self.components!r}")
        _check(0 < self.probability < 1, where, f"probability must be between 0 and 1, got {self.probability!r}")
        _check(0 <= self.min_weight < 1, where, f"min_weight must be in [0, 1), got {self.min_weight!r}")
        _check(isinstance(self.max_iter, int) and self.max_iter >= 1, where,
               f"max_iter must be a positive integer, got {self.max_iter!r}")

    def to_spec(self) -> dict[str, Any]:
        spec = super().to_spec()
        spec["target"] = [round(from_units(t, d.transform), 10) for t, d in zip(self.target, self.dimensions,
                                                                               strict=True)]
        return spec

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[EllipsoidGate, dict[str, Any]]:
        try:
            found = fit_mixture_ellipse(self._subsample(values), self.target, n_components=self.components,
                                        probability=self.probability, min_weight=self.min_weight,
                                        random_state=self.random_state, max_iter=self.max_iter)
        except GateError as err:
            raise GateError(f"gate '{self.name}': {err}") from None
        mean, cov = found["mean"], found["covariance"]
        (sx, _), (sy, _) = (friendly_units(d.transform) for d in self.dimensions)
        x, y = (str(d.channel) for d in self.dimensions)
        sd = np.sqrt(np.diag(cov))
        info = {f"center {x}": from_units(mean[0], self.dimensions[0].transform),
                f"center {y}": from_units(mean[1], self.dimensions[1].transform), f"sd {x}": sd[0] * sx,
                f"sd {y}": sd[1] * sy, "correlation": cov[0, 1] / (sd[0] * sd[1]),
                "distance_square": found["distance_square"], "weight": found["weight"]}
        gate = EllipsoidGate(self.name, self.dimensions, mean=tuple(map(float, mean)),
                             covariance=tuple(tuple(map(float, row)) for row in cov),
                             distance_square=found["distance_square"])
        return gate, info

    def shifts(self, fitted: Gate, delta: float) -> list[tuple[str, str, float, Gate, Gate]]:
        """For :func:`~cytopipe.autogate.sensitivity`: the fitted ellipse with its half-width along X shrunk and
        grown by ``delta`` friendly units, as ``(channel, "radius", half-width, smaller, larger)``."""
        assert isinstance(fitted, EllipsoidGate)
        dim = self.dimensions[0]
        scale = abs(friendly_units(dim.transform)[0])
        half = math.sqrt(fitted.distance_square * fitted.covariance[0][0]) * scale
        moved = [replace(fitted, distance_square=max(half + sign * delta, 1e-9 * half) ** 2
                         / (scale * scale * fitted.covariance[0][0])) for sign in (-1.0, 1.0)]
        return [(str(dim.channel), "radius", half, moved[0], moved[1])]


def build_mixture(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> MixtureGate:
    """``type: auto_mixture`` -> :class:`MixtureGate` (``target``, ``components``, ``probability``,
    ``min_weight``); ``target`` is written in friendly units and converted here."""
    w = f"{where}: gate"
    keys = {"target", "components", "probability", "min_weight", "max_iter"}
    settings = _common(spec, w, keys, {"max_events": 5_000})
    target = spec.get("target")
    if not isinstance(target, list) or len(target) != len(dims) or any(
            isinstance(t, bool) or not isinstance(t, (int, float)) for t in target):
        raise GateError(f"{w}.target: expected [x, y] (where the wanted population lies), got {target!r}")
    settings.update(target=tuple(to_units(t, d.transform) for t, d in zip(target, dims, strict=True)),
                    components=_number(spec, "components", w, 3, integer=True),
                    probability=_number(spec, "probability", w, 0.9),
                    min_weight=_number(spec, "min_weight", w, 0.01),
                    max_iter=_number(spec, "max_iter", w, 500, integer=True))
    return _build(MixtureGate, settings, dims, where)  # type: ignore[return-value]

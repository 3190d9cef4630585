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
``auto_mixture``
    :class:`MixtureGate`, a Gaussian mixture on two channels; the component nearest a ``target`` location is
    returned as an ellipse at a chosen probability (openCyto's ``flowClust`` 2-D gate).
``auto_tail``
    :class:`TailGate`, the events beyond the main population in one direction ("X high, Y low"): a robust centre
    and covariance, then a tilted boundary ``k`` robust SDs out along the minor axis, optionally with an X cut from
    a control tube; returned as a polygon.

:func:`fit_strategy` fits every data-driven gate of a strategy top-down (each on its fitted parent's events, pooled
over the given samples). :func:`gate_drift` compares fitted parameters with the subject's baseline fit and
:func:`sensitivity` reports how much the Treg % moves when a fitted threshold shifts.

Modules: :mod:`~cytopipe.autogate.base` (the :class:`AutoGate` base, units, ``T: auto``, YAML spec helpers),
one per gate family (:mod:`~cytopipe.autogate.scatter`, :mod:`~cytopipe.autogate.singlets`,
:mod:`~cytopipe.autogate.threshold`, :mod:`~cytopipe.autogate.mixture`, :mod:`~cytopipe.autogate.tail`),
:mod:`~cytopipe.autogate.fit` (the fitting driver),
:mod:`~cytopipe.autogate.drift` (drift and sensitivity) and :mod:`~cytopipe.autogate.robust` (array statistics).
Everything public is importable from ``cytopipe.autogate``. This package imports neither :mod:`cytopipe.gatefile`
(which looks gate types up in :data:`GATE_TYPES`) nor pandas/scipy at load.
"""

from __future__ import annotations

from collections.abc import Callable

from ..gates import Dimension, Gate
from .base import DEFAULT_MAX_EVENTS, MIN_EVENTS, SCOPES, AutoGate, channel_top, from_units, resolve_dimension, to_units
from .drift import gate_drift, sensitivity
from .fit import _SUBSAMPLES as _SUBSAMPLES
from .fit import _evaluate as _evaluate
from .fit import client_scopes, fit_strategy, needs_fitting
from .mixture import MixtureGate, build_mixture, fit_mixture_ellipse
from .robust import _median as _median
from .robust import _quantile as _quantile
from .robust import _sorted_quantile as _sorted_quantile
from .robust import robust_covariance
from .scatter import ScatterGate, build_scatter, fit_scatter_ellipse, gaussian_mixture
from .singlets import SingletGate, build_singlets, fit_singlet_band
from .tail import TailGate, build_tail, fit_tail
from .threshold import Threshold, ThresholdGate, build_threshold, density_valley

__all__ = [
    "SCOPES",
    "GATE_TYPES",
    "DEFAULT_MAX_EVENTS",
    "MIN_EVENTS",
    "AutoGate",
    "ScatterGate",
    "SingletGate",
    "Threshold",
    "ThresholdGate",
    "MixtureGate",
    "TailGate",
    "density_valley",
    "fit_scatter_ellipse",
    "gaussian_mixture",
    "fit_singlet_band",
    "fit_mixture_ellipse",
    "fit_tail",
    "robust_covariance",
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

#: YAML ``type`` -> builder ``(spec, dimensions, where) -> Gate``; :mod:`cytopipe.gatefile` looks types up here (the
#: only direction of import between the two: gate families never import the gate-file loader).
GATE_TYPES: dict[str, Callable[[dict, tuple[Dimension, ...], str], Gate]] = {
    "auto_scatter": build_scatter,
    "auto_singlets": build_singlets,
    "auto_threshold": build_threshold,
    "auto_mixture": build_mixture,
    "auto_tail": build_tail,
}

"""Singlets on pulse area/height: :func:`fit_singlet_band` and :class:`SingletGate` (``auto_singlets``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import GateError
from ..gates import Dimension, PolygonGate
from .base import (
    MIN_EVENTS,
    AutoGate,
    _build,
    _check,
    _common,
    _number,
)
from .robust import _line, _median, _median_sd


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


def build_singlets(spec: Mapping[str, Any], dims: tuple[Dimension, ...], where: str) -> SingletGate:
    """``type: auto_singlets`` -> :class:`SingletGate` (``k``)."""
    w = f"{where}: gate"
    settings = _common(spec, w, {"k"}, {"max_events": 10_000})
    settings["k"] = _number(spec, "k", w, 4.0)
    return _build(SingletGate, settings, dims, where)  # type: ignore[return-value]

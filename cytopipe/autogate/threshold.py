"""One-dimensional cuts: :func:`density_valley` and :class:`ThresholdGate` (``auto_threshold``): a valley, a
percentile of a reference population or a percentile of an FMO/isotype control per channel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import GateError
from ..gates import Dimension, RectangleGate
from .base import (
    DEFAULT_MAX_EVENTS,
    MIN_EVENTS,
    AutoGate,
    _build,
    _check,
    _common,
    _number,
    control_roles,
    from_units,
    parse_control,
    pick_control,
    to_units,
)
from .peaks import find_peaks, gaussian_filter1d
from .robust import _median, _quantile, _robust_sd, _sorted_quantile

METHODS = ("valley", "reference", "control")
SIDES = ("above", "below")


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
    density = gaussian_filter1d(counts.astype(float), bandwidth / width)
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
    xs = np.sort(x)
    grid, density = _smoothed_density(x, xs, bins, adjust)
    peaks = find_peaks(np.concatenate(([0.0], density, [0.0])), prominence=min_prominence * density.max())
    peaks = peaks - 1
    best: tuple[float, float] | None = None  # (depth, position)
    for left, right in zip(peaks[:-1], peaks[1:], strict=False):
        inside = np.flatnonzero((grid >= max(grid[left], lo)) & (grid <= min(grid[right], hi)))
        inside = inside[(inside > left) & (inside < right)]
        if inside.size == 0:
            continue
        floor = float(density[inside].min())
        depth = min(density[left], density[right]) - floor
        if depth <= 0:  # bounds cut the stretch between the modes to a slope: no valley inside them
            continue
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
    population : str or None
        Reference population name, for ``reference``.
    control : str or tuple of str or None
        Control role for ``control``, or several acceptable roles in order of preference (the first the sheet has
        is used; none is an error).
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
    control: str | tuple[str, ...] | None = None
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
                    value = getattr(t, name)
                    item[name] = list(value) if isinstance(value, tuple) else value
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
        """Control roles (``fmo:CD25`` ...) this gate's ``control`` cuts can use."""
        roles = (r for t in self.thresholds if t.method == "control" for r in control_roles(t.control))
        return tuple(dict.fromkeys(roles))

    @property
    def required_controls(self) -> tuple[tuple[str, ...], ...]:
        """Per ``control`` cut, the roles of which one must be given."""
        return tuple(control_roles(t.control) for t in self.thresholds if t.method == "control" and t.control)

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[RectangleGate, dict[str, Any]]:
        values = self._subsample(values)
        reference = {k: np.asarray(v, dtype=float) for k, v in (reference or {}).items()}
        controls = {k.casefold(): np.asarray(v, dtype=float) for k, v in (controls or {}).items()}
        used: dict[int, str] = {}
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
                if t.method == "reference":
                    source = reference.get(t.population)
                else:
                    role, source = pick_control(control_roles(t.control), controls)
                    if role is not None:
                        used[i] = role
                if source is None:
                    roles = ", ".join(control_roles(t.control))
                    what = f"reference population '{t.population}'" if t.method == "reference" else (
                        f"control '{roles}' (a sample-sheet row with role {roles})")
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
        for i, (dim, t, lo, hi, how) in enumerate(zip(self.dimensions, self.thresholds, lows, highs, methods,
                                                      strict=True)):
            bound = "min" if t.side == "above" else "max"
            info[f"{dim.channel} {bound}"] = from_units(lo if t.side == "above" else hi, dim.transform)
            info[f"{dim.channel} method"] = how
            if isinstance(t.control, tuple) and i in used:
                info[f"{dim.channel} control"] = used[i]  # which of the acceptable controls set the cut
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


_THRESHOLD_KEYS = {"side", "method", "bounds", "population", "control", "percentile", "k", "adjust", "within"}


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
        for key in ("side", "method", "within", "population"):
            if key in item and not isinstance(item[key], str):
                raise GateError(f"{wi}.{key}: expected text, got {item[key]!r}")
        threshold = Threshold(side=item.get("side", "above"), method=item.get("method", "valley"), bounds=bounds,
                              population=item.get("population"), control=parse_control(item.get("control"), wi),
                              percentile=_number(item, "percentile", wi, 99.0), k=_number(item, "k", wi, 3.0),
                              adjust=_number(item, "adjust", wi, 1.5), within=item.get("within", "parent"))
        threshold.check(wi)
        thresholds.append(threshold)
    settings["thresholds"] = tuple(thresholds)
    return _build(ThresholdGate, settings, dims, where)  # type: ignore[return-value]

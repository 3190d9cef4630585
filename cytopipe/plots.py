"""Figures: per-sample gating, per-subject time course, all-subject fold-change overview, as SVG.

Every figure is a :class:`cytopipe.svg.Figure` (a plain description of panels) rendered to SVG by
:func:`cytopipe.svg.render`; no matplotlib. Densities are numpy 2-D histograms embedded as small PNG rasters, the
rest (axes in intensities, gates, counts, labels) is vector text and paths that the HTML report inlines. One style:
text of at least 10 CSS px, the colour-blind-safe Okabe-Ito palette. :func:`save_figure` writes the SVG atomically.

User text (subject, timepoint, sample and population names) is escaped by :func:`cytopipe.svg.render`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cytopipe.columns import Table, as_table, length, sorted_by, take
from cytopipe.numeric import to_numeric
from cytopipe.outputs import atomic_write
from cytopipe.svg import Axis, Density, Figure, Panel, nice_ticks, path_d, render, trace, transform_ticks

if TYPE_CHECKING:  # pandas only for the per-subject figures: worker processes draw gating figures without it
    import pandas as pd

__all__ = ["PALETTE", "fold_change_overview", "gating_hierarchy", "save_figure", "time_course", "time_courses"]

#: Okabe & Ito (2008) colour-blind-safe palette.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_TREG, _PLATELET, _SIGNIFICANT, _GATE = PALETTE[0], PALETTE[1], PALETTE[3], "#C8102E"
#: At most this many of a parent's events are binned per density panel (an even stride through the parent): a
#: log-coloured 80 x 80 histogram of 15,000 events looks like that of all of them.
_MAX_PLOT_EVENTS = 15_000
_BINS = 80
#: Gating panel geometry (CSS px): plot square, margins; four panels per row keep the figure under 950 px wide.
_PLOT, _LEFT, _RIGHT, _TOP, _BOTTOM, _PER_ROW, _HEAD = 160, 56, 18, 44, 40, 4, 26


def figure_id(name: str) -> str:
    """An HTML-safe, unique-enough element id prefix for one figure (clip-path ids must be unique in a page)."""
    return "f" + hashlib.sha1(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def save_figure(fig: Figure, path: str | os.PathLike, ident: str | None = None) -> Path:
    """Write a figure as an SVG file, atomically (:func:`cytopipe.outputs.atomic_write`).

    Parameters
    ----------
    fig : cytopipe.svg.Figure
        The figure.
    path : str or os.PathLike
        Target path; ``.svg`` is appended when it has another suffix or none.
    ident : str, optional
        Element-id prefix (default: from the file name).

    Returns
    -------
    pathlib.Path
        The file written (byte-identical for the same figure).
    """
    path = Path(path)
    if path.suffix.lower() != ".svg":
        path = path.with_name(path.name + ".svg")
    data = figure_file_text(fig, path, ident).encode("utf-8")  # bytes: one buffered write
    try:
        atomic_write(path, data)
    except FileNotFoundError:  # its folder is missing (a worker writes many figures to one: no check each time)
        # Made here, then written again (a second failure raises). Not "raise when the folder exists now": two
        # workers that both found it missing race, and the one that looks after the other made it failed its
        # sample ("plot failed: ...: No such file or directory").
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    return path


def figure_file_text(fig: Figure, path: Path, ident: str | None = None) -> str:
    """The text :func:`save_figure` writes to ``path`` (the report inlines it and writes the file later)."""
    return '<?xml version="1.0" encoding="utf-8"?>\n' + render(fig, ident or figure_id(path.stem), standalone=True)


def _short(text: object, limit: int = 28) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------- gating


@lru_cache(maxsize=256)
def _dimension_label(dimension: Any) -> str:
    """``"CD4 (logicle)"``: the channel (or ratio) and the transform kind; raw scatter has no suffix."""
    channel = dimension.channel
    ratio = getattr(dimension, "ratio", None)
    name = ratio.name if ratio is not None else " / ".join(channel) if isinstance(channel, tuple) else str(channel)
    transform = getattr(dimension, "transform", None)
    kind = {"flin": "", "fasinh": "arcsinh", "flog": "log"}.get(getattr(transform, "kind", ""),
                                                               getattr(transform, "kind", ""))
    return _short(f"{name} ({kind})" if transform is not None and kind else name, 30)


def _ranges(values: np.ndarray) -> list[tuple[float, float]]:
    """Per column of ``values`` (``(n, k)``): the 0.2 and 99.8 % points of (at most 2,000 of) its finite values
    (:func:`_order_stats`); ``(0, 1)`` for a column without any."""
    some = values[:: max(1, -(-values.shape[0] // 2_000))]
    if some.shape[0] and np.isfinite(some).all():
        n = some.shape[0]
        return _order_stats(np.asfortranarray(some), int(0.002 * (n - 1)), math.ceil(0.998 * (n - 1)))
    out = []
    for k in range(some.shape[1]):  # NaN or infinite values (a ratio of zeros): each column on its finite values
        column = some[:, k][np.isfinite(some[:, k])]
        out.append(_ranges(column[:, None])[0] if column.size else (0.0, 1.0))
    return out


#: :func:`_order_stats` bounds its ranks with the minima and maxima of this many groups of values.
_GROUPS = 64


def _order_stats(values: np.ndarray, low: int, high: int) -> list[tuple[float, float]]:
    """Per column of ``values`` (``(n, k)``, finite, best in Fortran order): its ``low``-th and ``high``-th
    smallest values (0-based ranks, ``low`` and ``n - 1 - high`` small), exactly as :func:`numpy.partition` puts
    them, ties included.

    Notes
    -----
    A full partition of a column costs ~25 us (its comparisons are unpredictable branches). Instead the column is
    cut into :data:`_GROUPS` groups (every 64th value): the ``low + 1``-th smallest of the group minima is at or
    above the ``low``-th smallest value (those minima are ``low + 1`` distinct values), so every value up to the
    ``low``-th smallest is at most that bound; likewise for the largest. Only the few values beyond the two bounds
    are sorted, and the ranks counted among them are the ranks in the column.
    """
    n, k = values.shape
    below, above = low + 1, n - high  # values up to the low-th, from the high-th
    depth = n // _GROUPS
    if depth < 4 or max(below, above) > _GROUPS // 4:  # few values, or deep ranks: a partition
        ends = np.partition(values, (low, high), axis=0)
        return list(zip(ends[low].tolist(), ends[high].tolist(), strict=True))
    columns = values.T
    groups = columns[:, : depth * _GROUPS].reshape(k, depth, _GROUPS)
    floor = np.partition(groups.min(axis=1), below - 1, axis=1)[:, below - 1:below]
    ceiling = np.partition(groups.max(axis=1), _GROUPS - above, axis=1)[:, _GROUPS - above:_GROUPS - above + 1]
    beyond = columns <= floor
    beyond |= columns >= ceiling
    out = []
    for column, keep in zip(columns, beyond, strict=True):
        ends = np.sort(column[keep])
        out.append((float(ends[low]), float(ends[ends.size - above])))
    return out


def _limits(low_high: tuple[float, float], outline: Sequence[float] | None) -> tuple[float, float]:
    """Axis limits: the data's range (:func:`_ranges`) stretched towards the gate outline's vertices (those within
    half a range of it) and padded by 4 %."""
    lo, hi = low_high
    if outline:
        span = hi - lo if hi > lo else 1.0
        corners = [v for v in outline if math.isfinite(v) and lo - 0.5 * span < v < hi + 0.5 * span]
        if corners:
            lo, hi = min(lo, min(corners)), max(hi, max(corners))
    if not hi > lo:
        lo, hi = lo - 0.5, lo + 0.5
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def _bin(values: np.ndarray, origin: Any, scale: Any, bins: int) -> np.ndarray:
    """Cell of each value, ``1 + floor((value - origin) * scale)`` kept within ``0..bins + 1`` (NaN in 0): with
    ``origin = lo, scale = bins / (hi - lo)``, cells 1..bins are the equal bins over ``[lo, hi)``, 0 is below and
    bins + 1 above; ``origin = hi`` and a negative scale count the bins from the top. ``origin`` and ``scale`` may
    give one value per column of an ``(n, k)`` array (best in Fortran order: each column's values contiguous).
    Four float32 whole-array passes."""
    origin, scale = np.asarray(origin, dtype=float), np.asarray(scale, dtype=float)
    # (value - (origin - 1 / scale)) * scale is 1 + (value - origin) * scale: the shift by one cell rides along,
    # and truncation towards zero then puts (origin - one bin, origin) in cell 0.
    order = "F" if values.flags.f_contiguous else "C"
    cells = np.empty(values.shape, dtype=np.float32, order=order)
    np.subtract(values, (origin - 1 / scale).astype(np.float32), out=cells, dtype=np.float32)
    cells *= scale.astype(np.float32)
    every = cells.reshape(-1, order=order)  # all cells, a view
    np.fmax(every, _filled(0, every.size), out=every)  # fmax also turns NaN into 0
    np.minimum(every, _filled(bins + 1, every.size), out=every)
    return cells.astype(np.int32)


def _filled(value: int, size: int) -> np.ndarray | np.float32:
    """``size`` float32 copies of ``value`` (a view of a cached array; a float32 scalar above 2**16): numpy's
    maximum and minimum of two arrays run in SIMD loops, of an array and a scalar ~4x slower."""
    if size > 1 << 16:
        return np.float32(value)
    return _filled_block(value, max(size - 1, 1).bit_length())[:size]


@lru_cache(maxsize=32)
def _filled_block(value: int, bits: int) -> np.ndarray:
    block = np.full(1 << bits, value, dtype=np.float32)
    block.flags.writeable = False
    return block


def _raster(xy: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float], bins: int = _BINS) -> np.ndarray:
    """Event counts of the two columns of ``xy`` as the rows of a PNG image (:class:`cytopipe.svg.Density`):
    ``(bins, bins + 1)``, rows the y bins from the top, column 0 zero (each row's filter byte), then the x bins
    from the left; values outside the limits are dropped. Both columns binned in the same passes (the gating's
    values are in Fortran order), one :func:`numpy.bincount`.

    Notes
    -----
    Cells are counted at ``y * (bins + 1) + x`` (``x, y`` in ``0..bins + 1``, :func:`_bin`): a row of the image
    is bins + 1 counts, so the values left of the limits (x = 0) land in their row's column 0, and those right of
    them (x = bins + 1) in the next row's column 0; both are then zeroed. The rows above and below the limits lie
    outside the slice taken.
    """
    cells = _bin(np.asfortranarray(xy), (xlim[0], ylim[1]), (bins / (xlim[1] - xlim[0]), -bins / (ylim[1] - ylim[0])),
                 bins)
    flat = np.multiply(cells[:, 1], bins + 1, dtype=np.intp)
    flat += cells[:, 0]
    rows = np.bincount(flat, minlength=(bins + 1) ** 2)[bins + 1:(bins + 1) ** 2].reshape(bins, bins + 1)
    rows[:, 0] = 0
    return rows


def histogram2d(x: np.ndarray, y: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float],
                bins: int = _BINS) -> np.ndarray:
    """``(bins, bins)`` event counts (x along the first axis), as :func:`numpy.histogram2d` on equal half-open bins:
    the figures' own binning (:func:`_raster`), turned from image rows to numpy's layout."""
    return _raster(np.column_stack([x, y]), xlim, ylim, bins)[::-1, 1:].T


def _treg_name(strategy: Any, treg: str | None) -> str | None:
    names = [p.name for p in strategy.populations]
    for candidate in (treg, getattr(strategy, "treg", None)):
        if candidate in names:
            return candidate
    return next((n for n in names if n.lower() == "treg"), None)


def _is_scatter(channel: Any) -> bool:
    return isinstance(channel, str) and channel.upper().startswith(("FSC", "SSC"))


def _parent_values(result: Any, pop: Any, n_events: int, kept: bool = True
                   ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Every k-th of the values the gate was evaluated on (its parent's events), which of them it kept (``kept``;
    else None), and the parent's size. The values are the gating's own cached columns where it kept them (nothing
    is transformed again), else those of the k-th events alone; membership is looked up for those events only."""
    rows = _members(result, pop.parent) if pop.parent else None
    n_parent = n_events if rows is None else int(rows.size)
    step = max(1, -(-n_parent // _MAX_PLOT_EVENTS))
    try:
        values = np.asarray(result.values(pop.gate, rows, step=step))
    except TypeError:  # a result without row selection
        values = np.asarray(result.values(pop.gate))[_every(rows, step, n_events)]
    if not kept:
        return values, None, n_parent
    kept_of = getattr(result, "kept_of", None)
    inside = kept_of(pop.name, slice(0, n_parent, step)) if kept_of is not None else None
    return values, _member_of(result, pop.name, _every(rows, step, n_events)) if inside is None else inside, n_parent


def _values_at(result: Any, gate: Any, rows: np.ndarray) -> np.ndarray:
    """The values ``gate`` was evaluated on, at the event indices ``rows``."""
    try:
        return np.asarray(result.values(gate, rows))
    except TypeError:  # a result without row selection
        return np.asarray(result.values(gate))[rows]


def _every(rows: np.ndarray | None, step: int, n_events: int) -> np.ndarray:
    """Every ``step``-th of the event indices ``rows`` (``None``: of all events)."""
    return np.arange(0, n_events, step) if rows is None else rows[::step]


def _members(result: Any, name: str) -> np.ndarray:
    """Sorted event indices of a population (the gating's own, else from its mask)."""
    found = getattr(result, "members", {}).get(name)
    return np.flatnonzero(result.masks[name]) if found is None else found


def _member_of(result: Any, name: str, rows: np.ndarray) -> np.ndarray:
    """Whether each of the (sorted) event indices ``rows`` is in population ``name``: a binary search in its sorted
    members, so no full-length mask is built for a few thousand events."""
    members = getattr(result, "members", {}).get(name)
    if members is None:
        return np.asarray(result.masks[name])[rows]
    where = np.searchsorted(members, rows)
    inside = where < members.size
    inside[inside] = members[where[inside]] == rows[inside]
    return inside


def _outline(gate: Any) -> np.ndarray | None:
    """``gate.outline()`` as floats, computed once per gate in a worker (a fixed gate is the same object for every
    sample; its outline never changes)."""
    try:
        return _cached_outline(gate)
    except TypeError:  # an unhashable gate
        return _outline_of(gate)


def _outline_of(gate: Any) -> np.ndarray | None:
    outline = gate.outline()
    return None if outline is None else np.asarray(outline, dtype=float)


_cached_outline = lru_cache(maxsize=256)(_outline_of)


def _panel_box(index: int) -> tuple[float, float]:
    row, col = divmod(index, _PER_ROW)
    return _LEFT + col * (_LEFT + _PLOT + _RIGHT), _HEAD + _TOP + row * (_TOP + _PLOT + _BOTTOM)


class _Density:
    """A density panel's axes and counts (:func:`_raster`), kept so the back-gating panel can draw on the root
    scatter gate's."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float], counts: np.ndarray) -> None:
        self.xlim, self.ylim, self.counts = xlim, ylim, counts
        self.image = Density(counts)  # compressed once: viridis on its panel, greys under the back-gating


def _density_panel(panel: Panel, xy: np.ndarray | None, dims: Sequence[Any], outline: np.ndarray | None,
                   inside: np.ndarray | None, highlight_xy: np.ndarray | None = None,
                   on: _Density | None = None) -> _Density:
    """A 2-D density of the parent's events (``xy``: ``(n, 2)``) with the gate outline (or, without one, the gated
    events in red; ``highlight_xy``: those events given apart, e.g. every Treg event for back-gating). ``on``: the
    axes and counts of ``xy`` already binned (the root scatter gate's panel)."""
    if on is None:
        x_range, y_range = _ranges(xy)
        xlim = _limits(x_range, None if outline is None else outline[:, 0].tolist())
        ylim = _limits(y_range, None if outline is None else outline[:, 1].tolist())
        on = _Density(xlim, ylim, _raster(xy, xlim, ylim))
    xlim, ylim = on.xlim, on.ylim
    highlight = None
    if highlight_xy is not None:
        highlight = _raster(highlight_xy, xlim, ylim)
    elif inside is not None:
        highlight = _raster(xy[inside], xlim, ylim)
    panel.image = on.image.uri("viridis" if highlight is None else "greys")
    if highlight is not None:  # drawn over the grey density: where the highlighted events are, only they show
        panel.overlay = Density(highlight).uri("reds")
    if outline is not None:
        panel.path(_outline_d(outline, xlim, ylim, panel), stroke=_GATE, fill=_GATE, width=1.5, gid="gate",
                   fill_opacity=0.12)
    _axes(panel, xlim, ylim, transform_ticks(dims[0].transform, xlim), transform_ticks(dims[1].transform, ylim))
    panel.xlabel, panel.ylabel = _dimension_label(dims[0]), _dimension_label(dims[1])
    return on


def _outline_d(outline: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float], panel: Panel) -> str:
    """Path data of a closed gate outline (``(m, 2)`` data units) in the panel's pixels, open sides clipped
    (:meth:`cytopipe.svg.Axis.clip`)."""
    bottom = panel.y + panel.height
    return path_d(trace(outline[:, 0].tolist(), *xlim, panel.x, panel.x + panel.width),
                  trace(outline[:, 1].tolist(), *ylim, bottom, panel.y), close=True)


def _axes(panel: Panel, xlim: tuple[float, float], ylim: tuple[float, float], xticks: Sequence[tuple[float, str]],
          yticks: Sequence[tuple[float, str]]) -> None:
    """Set a panel's data limits and its ticks (``(value, label)``) placed in pixels (to 0.1 px)."""
    panel.limits = (*xlim, *ylim)
    panel.xticks = _placed(xticks, *xlim, panel.x, panel.x + panel.width)
    panel.yticks = _placed(yticks, *ylim, panel.y + panel.height, panel.y)


def _placed(ticks: Sequence[tuple[float, str]], lo: float, hi: float, px0: float, px1: float
            ) -> list[tuple[float, str]]:
    """Ticks at their pixel (to 0.1 px) on an axis from ``lo`` at ``px0`` to ``hi`` at ``px1``
    (:meth:`cytopipe.svg.Axis.place`, to the bit)."""
    scale = (px1 - px0) / (hi - lo)
    return [(round(px0 + (v - lo) * scale, 1), label) for v, label in ticks]


@lru_cache(maxsize=64)
def _steps(x0: float, width: float, bins: int) -> str:
    """The path format of a histogram's outline on ``bins`` equal bins from ``x0``: ``%`` the base line, each bin's
    top and the base line again (pixels)."""
    edges = [f"{x0 + k * width / bins:.1f}" for k in range(bins + 1)]
    return f"M{edges[0]},%.1f" + "".join(f"V%.1fH{e}" for e in edges[1:]) + "V%.1fZ"


def _histogram_panel(panel: Panel, x: np.ndarray, inside: np.ndarray, dim: Any, gate: Any, scale: float) -> None:
    """Parent's events in grey, the gated ones shaded red; counts scaled by the sampling stride."""
    bounds = [v for v in (*getattr(gate, "min", ()), *getattr(gate, "max", ())) if v is not None]
    (x_range,) = _ranges(x[:, None])
    xlim = _limits(x_range, bounds)
    # The cells of the events outside the gate, then (shifted by a row of cells) those inside: one bincount.
    cells = np.multiply(inside, _BINS + 2, dtype=np.intp)
    cells += _bin(x, xlim[0], _BINS / (xlim[1] - xlim[0]), _BINS)
    counts = np.bincount(cells, minlength=2 * (_BINS + 2)).reshape(2, _BINS + 2)[:, 1:-1]
    gated = counts[1] * scale
    every = (counts[0] + counts[1]) * scale
    top = max(float(every.max()) * 1.08, 1.0)
    bottom = panel.y + panel.height
    steps = _steps(panel.x, panel.width, _BINS)
    for heights, colour, opacity in ((every, "#9a9a9a", 1.0), (gated, _GATE, 0.65)):
        tops = (bottom - heights * (panel.height / top)).tolist()
        panel.path(steps % (bottom, *tops, bottom), fill=colour, opacity=opacity)
    ax = Axis(*xlim, panel.x, panel.x + panel.width)
    for value in bounds:  # the cut itself, where it selects
        px = ax.place(ax.clip(value))
        panel.path(f"M{px:.1f},{panel.y:g}V{bottom:g}", stroke=_GATE, width=1.5, gid="gate")
    _axes(panel, xlim, (0.0, top), transform_ticks(dim.transform, xlim),
          [(v, _count(v)) for v in nice_ticks(0.0, top, 3)])
    panel.xlabel, panel.ylabel = _dimension_label(dim), "events"


def _count(value: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _backgating_panel(result: Any, scatter: Any, treg_name: str, n_events: int, on: _Density | None,
                      outline: np.ndarray | None, index: int) -> Panel:
    """Every event (every k-th) on the scatter gate's axes in grey, the Treg events in red. ``on``: the root
    scatter gate's panel, whose axes and counts (the same events) are reused, with its gate dashed."""
    panel = Panel(*_panel_box(index), _PLOT, _PLOT)
    if on is None:
        xy = _values_at(result, scatter.gate, np.arange(0, n_events, max(1, -(-n_events // _MAX_PLOT_EVENTS))))
    else:
        xy = None
    # Every Treg event (every k-th above the cap) in red: a rare population must not vanish in the stride.
    tregs = _members(result, treg_name)
    n_treg = int(tregs.size)
    tregs = tregs[:: max(1, -(-n_treg // _MAX_PLOT_EVENTS))]
    treg_xy = _values_at(result, scatter.gate, tregs)
    on = _density_panel(panel, None if xy is None else xy[:, :2], scatter.gate.dimensions, None, None,
                        treg_xy[:, :2], on=on)
    panel.title = [f"Back-gating: {_short(treg_name, 16)}", f"{n_treg:,} events (red) on scatter"]
    panel.tooltip = f"{treg_name} events (red) over all events (grey)"
    if outline is not None:
        panel.path(_outline_d(outline, on.xlim, on.ylim, panel), stroke="#333333", width=1.0, dash="4 3")
        panel.tooltip += f"; dashed: the {scatter.name} gate"
    return panel


def gating_hierarchy(result: Any, strategy: Any, sample_name: str, treg: str | None = None) -> Figure:
    """The gating of one sample: one density panel per gated population, and the Tregs back-gated on scatter.

    Parameters
    ----------
    result : cytopipe.gates.GatingResult
        The gated sample (``masks``, ``n_events``, ``values(gate, rows)``).
    strategy : cytopipe.gates.GatingStrategy
        The strategy that produced ``result``.
    sample_name : str
        Shown in the title.
    treg : str, optional
        The Treg population for back-gating; default ``strategy.treg``, else the population named Treg.

    Returns
    -------
    cytopipe.svg.Figure
        Panels in rows of four. A 2-D gate: the log-coloured density of its parent's events on the gate's first
        two dimensions with ``gate.outline()`` drawn and lightly filled where it selects (open sides run past the
        axes; a singlet band is drawn as the band); without an outline (n-D gates) the gated events are shown in
        red over the parent in grey. A 1-D gate: the parent's histogram with the gated events shaded and the cuts
        drawn. Boolean gates (no dimensions) are skipped. Last, every event on the scatter gate's axes in grey with
        the Treg events in red (back-gating). Titles give exact counts and % of parent; axes are labelled in
        intensities (0, 10², 10³... on logicle axes).

    Notes
    -----
    Only the gating contract is used: ``strategy.populations``, ``pop.gate.dimensions``, ``pop.gate.outline()``,
    ``result.values(gate, rows)`` and ``result.masks``. A panel bins at most :data:`_MAX_PLOT_EVENTS` of its
    parent's events (every k-th; 1-D counts are scaled back by k), and only those rows' values are computed.
    """
    pops = [p for p in strategy.populations if len(getattr(p.gate, "dimensions", ()) or ()) >= 1]
    treg_name = _treg_name(strategy, treg)
    scatter = next((p for p in pops if len(p.gate.dimensions) >= 2
                    and all(_is_scatter(d.channel) for d in p.gate.dimensions[:2])), None)
    n_panels = max(len(pops) + (1 if treg_name and scatter is not None else 0), 1)
    n_rows = -(-n_panels // _PER_ROW)
    width = min(n_panels, _PER_ROW) * (_LEFT + _PLOT + _RIGHT) + 8
    height = _HEAD + n_rows * (_TOP + _PLOT + _BOTTOM)
    fig = Figure(width=width, height=height, title=f"Gating of {_short(sample_name, 60)}", kind="gating",
                 label=f"Gating of {sample_name}")
    n_events = int(getattr(result, "n_events", 0)) or len(next(iter(result.masks.values())))

    scatter_density = None  # the root scatter gate's panel: the back-gating panel draws on its axes and counts
    scatter_outline = None
    for index, pop in enumerate(pops):
        x0, y0 = _panel_box(index)
        panel = Panel(x0, y0, _PLOT, _PLOT)
        dims = pop.gate.dimensions
        outline = _outline(pop.gate) if len(dims) == 2 else None
        values, inside, n_parent = _parent_values(result, pop, n_events, kept=outline is None)
        n_in = int(result.counts[pop.name]) if pop.name in getattr(result, "counts", {}) \
            else int(np.count_nonzero(result.masks[pop.name]))  # masks carry the parent chain
        if len(dims) >= 2:
            density = _density_panel(panel, values[:, :2], dims, outline, inside)
            if pop is scatter and not pop.parent:
                scatter_density, scatter_outline = density, outline
        else:
            assert inside is not None
            _histogram_panel(panel, values[:, 0], inside, dims[0], pop.gate, n_parent / max(values.shape[0], 1))
        pct = f"{100.0 * n_in / n_parent:.1f}%" if n_parent else "–"
        panel.title = [_short(pop.name), f"{n_in:,} = {pct} of {_short(pop.parent or 'all events', 16)}"]
        panel.tooltip = f"{pop.name}: {n_in:,} events = {pct} of {pop.parent or 'all events'} ({n_parent:,})"
        fig.panels.append(panel)
    if treg_name and scatter is not None:
        fig.panels.append(_backgating_panel(result, scatter, treg_name, n_events, scatter_density, scatter_outline,
                                            len(pops)))
    if not fig.panels:
        panel = Panel(*_panel_box(0), _PLOT, _PLOT)
        panel.texts.append({"x": panel.x + 8, "y": panel.y + 20, "text": "no gate with dimensions to draw"})
        fig.panels.append(panel)
    return fig


# ---------------------------------------------------------------------------------------------- time course


class _Series(NamedTuple):
    """One subject's rows of a baseline table as plain arrays (sorted by day), and its platelet counts."""

    day: np.ndarray
    pct: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    low: np.ndarray
    significant: np.ndarray
    timepoint: list[str]
    baseline_pct: float
    rcv_pct: float
    platelets: tuple[np.ndarray, np.ndarray] | None  # (day, value), finite, sorted by day


def _floats(table: Table, column: str) -> np.ndarray:
    """A column as floats, as ``pandas.to_numeric(column, errors="coerce")`` (:func:`cytopipe.numeric.to_numeric`):
    numbers as they are, text read as pandas reads it, anything else NaN."""
    return to_numeric(table[column]).astype(np.float64)


def _groups(subjects: Any) -> dict[str, np.ndarray]:
    """Row positions of each subject (as text), in table order."""
    groups: dict[str, list[int]] = {}
    for i, subject in enumerate(subjects):
        groups.setdefault(str(subject), []).append(i)
    return {subject: np.asarray(rows, dtype=np.intp) for subject, rows in groups.items()}


def _by_day(day: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` ordered by ``day[rows]``, stably, NaN last (pandas' ``sort_values("day", kind="stable")``)."""
    return rows[np.argsort(day[rows], kind="stable")]


def _subject_series(baseline_df: Table | pd.DataFrame, clinical: Table | pd.DataFrame | None = None
                    ) -> dict[str, _Series]:
    """Every subject's time-course data, from one pass over the table (not one selection per subject).

    Platelets: the clinical table's rows of the subject (all days) when it has a day and a platelet column,
    else a platelet column joined into ``baseline_df``; finite values only, by day.
    """
    from cytopipe.stats import platelet_column

    baseline_df = as_table(baseline_df)
    clinical = None if clinical is None else as_table(clinical)
    day = _floats(baseline_df, "day")
    columns = {name: _floats(baseline_df, name) for name in ("treg_pct", "ci_low", "ci_high")}
    low = np.asarray(baseline_df["low_events"], dtype=bool)
    significant = np.asarray(baseline_df["significant"], dtype=bool)
    timepoint = baseline_df["timepoint"].tolist()
    base = _floats(baseline_df, "baseline_pct") if "baseline_pct" in baseline_df else None
    rcv = _floats(baseline_df, "rcv_pct") if "rcv_pct" in baseline_df else None
    plt_day = plt_value = plt_groups = None
    if clinical is not None and "day" in clinical and platelet_column(list(clinical)) is not None:
        plt_day, plt_value = _floats(clinical, "day"), _floats(clinical, platelet_column(list(clinical)))
        plt_groups = _groups(clinical["subject"].tolist())
    elif platelet_column(list(baseline_df)) is not None:
        plt_day, plt_value = day, _floats(baseline_df, platelet_column(list(baseline_df)))
    series = {}
    for subject, rows in _groups(baseline_df["subject"].tolist()).items():
        rows = _by_day(day, rows)
        platelets = None
        if plt_day is not None and plt_value is not None:
            own = rows if plt_groups is None else plt_groups.get(subject, np.zeros(0, dtype=np.intp))
            own = own[np.isfinite(plt_day[own]) & np.isfinite(plt_value[own])]
            own = _by_day(plt_day, own)
            platelets = (plt_day[own], plt_value[own]) if own.size else None
        series[subject] = _Series(
            day[rows], columns["treg_pct"][rows], columns["ci_low"][rows], columns["ci_high"][rows], low[rows],
            significant[rows], [timepoint[i] for i in rows],
            float(base[rows[0]]) if base is not None else float("nan"),
            float(rcv[rows[0]]) if rcv is not None else float("nan"), platelets)
    return series


def time_courses(baseline_df: Table | pd.DataFrame, clinical: Table | pd.DataFrame | None = None
                 ) -> dict[str, Figure]:
    """:func:`time_course` of every subject of the table (grouped once), by subject (as text, table order).

    Parameters
    ----------
    baseline_df : pandas.DataFrame or Table
        A :func:`cytopipe.stats.baseline_table` result (a DataFrame or a :mod:`cytopipe.columns` table).
    clinical : pandas.DataFrame or Table, optional
        As for :func:`time_course`.

    Returns
    -------
    dict of str to cytopipe.svg.Figure
        The figure of each subject, as :func:`time_course` draws it.
    """
    return {subject: _time_course(subject, s) for subject, s in _subject_series(baseline_df, clinical).items()}


def time_course(baseline_df: Table | pd.DataFrame, subject: str, clinical: Table | pd.DataFrame | None = None
                ) -> Figure:
    """Treg % of CD4 over days for one subject, with platelets on a second axis.

    Parameters
    ----------
    baseline_df : pandas.DataFrame or Table
        A :func:`cytopipe.stats.baseline_table` result (a DataFrame or a :mod:`cytopipe.columns` table).
    subject : str
        The subject to draw.
    clinical : pandas.DataFrame or Table, optional
        A :func:`cytopipe.stats.read_clinical` table; its platelet counts (all days, also those without a blood
        draw for cytometry) are drawn on the right axis. Without it, a platelet column joined into
        ``baseline_df`` is used.

    Returns
    -------
    cytopipe.svg.Figure
        Treg % (line and points, class ``treg_pct``) with the Wilson interval as a band, the baseline as a dashed
        line with the band of changes smaller than the RCV around it. Significance is the point itself: a
        significant change is a red diamond (not a mark floating above the data); low-event samples are open
        circles. Platelets (x10⁹/L) are squares on the right axis with the IWG complete-response line at 100.

    Raises
    ------
    ValueError
        When the subject is not in the table.
    """
    series = _subject_series(baseline_df, clinical).get(str(subject))
    if series is None:
        raise ValueError(f"subject {subject!r} is not in the baseline table")
    return _time_course(subject, series)


def _time_course(subject: Any, s: _Series) -> Figure:
    """The time course of one subject from its plain arrays (see :func:`time_course`)."""
    day, pct, lo_ci, hi_ci, low, sig = s.day, s.pct, s.ci_low, s.ci_high, s.low, s.significant
    base, rcv = s.baseline_pct, s.rcv_pct
    width, height = 660.0, 330.0
    panel = Panel(64.0, 40.0, 500.0, 190.0, grid=True)
    fig = Figure(width=width, height=height, title=f"{_short(subject, 50)}: Treg % of CD4 against baseline",
                 kind="timecourse", label=f"Treg % over time for {subject}")
    days = day[np.isfinite(day)]
    if s.platelets is not None:
        days = np.concatenate([days, s.platelets[0]])
    d_lo, d_hi = (float(days.min()), float(days.max())) if days.size else (0.0, 1.0)
    pad = 0.04 * (d_hi - d_lo if d_hi > d_lo else 10.0)
    ax = Axis(d_lo - pad, d_hi + pad, panel.x, panel.x + panel.width)
    candidates = np.concatenate([pct, hi_ci, [base * (1 + rcv / 100) if math.isfinite(base * rcv) else np.nan]])
    top = float(np.nanmax(candidates)) if np.isfinite(candidates).any() else 1.0
    top = top * 1.1 if top > 0 else 1.0
    ay = Axis(0.0, top, panel.y + panel.height, panel.y)
    legend: list[dict[str, Any]] = [{"kind": "dot", "colour": _TREG, "label": "Treg % of CD4"},
                                    {"kind": "band", "colour": _TREG, "label": "Wilson 95% interval"}]
    if math.isfinite(base):
        if math.isfinite(rcv):
            y1, y2 = ay(base * (1 + rcv / 100)), ay(max(base * (1 - rcv / 100), 0.0))
            panel.path(f"M{panel.x},{y1:.1f}H{panel.x + panel.width}V{y2:.1f}H{panel.x}Z", fill="#888888",
                       opacity=0.15)
            legend.append({"kind": "band", "colour": "#888888", "label": f"within RCV (±{rcv:.0f}%)",
                           "opacity": "0.3"})
        yb = ay(base)
        panel.path(f"M{panel.x},{yb:.1f}H{panel.x + panel.width}", stroke="#555555", dash="5 3")
        legend.append({"kind": "line", "colour": "#555555", "dash": "5 3", "label": f"baseline {base:.2f}%"})
    ok = np.isfinite(lo_ci) & np.isfinite(hi_ci) & np.isfinite(day)
    if ok.any():
        xs = ax(day[ok])
        panel.path(path_d(np.concatenate([xs, xs[::-1]]), np.concatenate([ay(lo_ci[ok]), ay(hi_ci[ok])[::-1]]),
                          close=True), fill=_TREG, opacity=0.2)
    panel.path(path_d(ax(day), ay(pct)), stroke=_TREG, width=1.6, gid="treg_pct")
    for d, p, is_low, is_sig, tp, a, b in zip(day, pct, low, sig, s.timepoint, lo_ci, hi_ci, strict=True):
        note = f"{tp} (day {d:g}): {p:.2f}% [{a:.2f}, {b:.2f}]" + ("; significant change" if is_sig else "") \
            + ("; low events" if is_low else "")
        if is_sig:
            panel.marker(float(ax(d)), float(ay(p)), "diamond", _SIGNIFICANT, _SIGNIFICANT, 4.0, note)
        else:
            panel.marker(float(ax(d)), float(ay(p)), "circle", "#ffffff" if is_low else _TREG, _TREG, 3.5, note)
    if sig.any():
        legend.append({"kind": "diamond", "colour": _SIGNIFICANT, "label": "significant change"})
    if low.any():
        legend.append({"kind": "open", "colour": _TREG, "label": "low events"})
    if s.platelets is not None:
        p_day, p_value = s.platelets
        p_top = max(110.0, float(p_value.max()) * 1.15)
        ap = Axis(0.0, p_top, panel.y + panel.height, panel.y)
        panel.path(path_d(ax(p_day), ap(p_value)), stroke=_PLATELET, width=1.3, dash="2 3")
        y100 = ap(100.0)
        panel.path(f"M{panel.x},{y100:.1f}H{panel.x + panel.width}", stroke=_PLATELET, width=0.9, dash="1 3")
        for d, v in zip(p_day, p_value, strict=True):
            panel.marker(float(ax(d)), float(ap(v)), "square", _PLATELET, _PLATELET, 3.0,
                         f"platelets day {d:g}: {v:g} x10⁹/L")
        panel.yticks_right = [(round(float(ap(v)), 1), f"{v:g}") for v in nice_ticks(0.0, p_top, 4)]
        panel.ylabel_right = "platelets (×10⁹/L)"
        panel.right_colour = "#9a6700"
        legend.append({"kind": "square", "colour": _PLATELET, "label": "platelets (IWG CR line at 100 ×10⁹/L)"})
    panel.yticks = [(round(float(ay(v)), 1), f"{v:g}") for v in nice_ticks(0.0, top, 4)]
    panel.ylabel = "Treg % of CD4+ T cells"
    panel.xticks = [(round(float(ax(d)), 1), f"d{d:g}") for d in np.unique(day[np.isfinite(day)])]
    for d, tp in zip(day, s.timepoint, strict=True):
        if math.isfinite(d):
            panel.outside.append({"x": round(float(ax(d)), 1), "y": panel.y + panel.height + 27, "anchor": "middle",
                                  "text": _short(tp, 10), "cls": "tick"})
    panel.limits = (ax.lo, ax.hi, 0.0, top)
    fig.panels.append(panel)
    _legend(fig, legend, panel.x - 40, panel.y + panel.height + 48, width - 20)
    return fig


def _legend(fig: Figure, items: list[dict[str, Any]], x0: float, y0: float, right: float) -> None:
    """Place legend items left to right, wrapping at ``right``; grows the figure to hold them."""
    x, y = x0, y0
    for item in items:
        size = 30 + 6.2 * len(item["label"])
        if x + size > right and x > x0:
            x, y = x0, y + 17
        fig.legend.append({**item, "x": round(x, 1), "y": round(y, 1)})
        x += size + 10
    fig.height = max(fig.height, y + 14)


# ---------------------------------------------------------------------------------------------- overview


def fold_change_overview(baseline_df: Table | pd.DataFrame) -> Figure:
    """Forest plot of every subject's fold changes against baseline with their intervals.

    Parameters
    ----------
    baseline_df : pandas.DataFrame or Table
        A :func:`cytopipe.stats.baseline_table` result (a DataFrame or a :mod:`cytopipe.columns` table).

    Returns
    -------
    cytopipe.svg.Figure
        One row per non-baseline sample, grouped by subject (one colour each), fold change on a log axis with the
        Katz interval as a bar; filled markers are significant changes, open ones are not. The grey band marks
        changes smaller than the RCV.
    """
    baseline_df = as_table(baseline_df)
    later = take(baseline_df, np.flatnonzero(~baseline_df["is_baseline"].astype(bool)))
    later = sorted_by(later, ["subject", "day"])
    n_later = length(later)
    n = max(n_later, 1)
    row_h, left = 16.0, 190.0
    panel = Panel(left, 40.0, 420.0, row_h * n)
    fig = Figure(width=660.0, height=panel.y + panel.height + 40, title="Fold change of Treg % of CD4, all subjects",
                 kind="overview", label="Fold change of Treg % against baseline, all subjects")
    fc = _floats(later, "fold_change")
    lo, hi = _floats(later, "fc_ci_low"), _floats(later, "fc_ci_high")
    bounds = np.concatenate([fc, lo, hi])
    bounds = bounds[np.isfinite(bounds) & (bounds > 0)]
    rcv = float(baseline_df["rcv_pct"][0]) if length(baseline_df) and "rcv_pct" in baseline_df else float("nan")
    x_lo = min(float(bounds.min()) if bounds.size else 0.5, 0.5) / 1.15
    x_hi = max(float(bounds.max()) if bounds.size else 2.0, 2.0) * 1.15
    ax = Axis(x_lo, x_hi, panel.x, panel.x + panel.width, log=True)
    if math.isfinite(rcv):
        a, b = ax(max(1 - rcv / 100, x_lo)), ax(min(1 + rcv / 100, x_hi))
        panel.path(f"M{a:.1f},{panel.y}H{b:.1f}V{panel.y + panel.height}H{a:.1f}Z", fill="#888888", opacity=0.15)
    one = ax(1.0)
    panel.path(f"M{one:.1f},{panel.y}V{panel.y + panel.height}", stroke="#555555", dash="5 3")
    colours: dict[str, str] = {}
    legend: list[dict[str, Any]] = []
    rows = zip(later["subject"].tolist(), later["timepoint"].tolist(), later["significant"].tolist(), strict=True)
    for i, (subject, timepoint, significant) in enumerate(rows):
        subject = str(subject)
        if subject not in colours:
            colours[subject] = PALETTE[len(colours) % len(PALETTE)]
            if len(legend) < 12:
                legend.append({"kind": "dot", "colour": colours[subject], "label": _short(subject, 20)})
        colour = colours[subject]
        y = panel.y + (i + 0.5) * row_h
        if math.isfinite(lo[i]) and math.isfinite(hi[i]) and lo[i] > 0:
            panel.path(f"M{ax(lo[i]):.1f},{y:.1f}H{ax(hi[i]):.1f}", stroke=colour, width=1.3)
        sig = bool(significant)
        panel.marker(float(ax(fc[i])) if fc[i] > 0 else float("nan"), y, "circle", colour if sig else "#ffffff",
                     colour, 3.5, f"{subject} {timepoint}: x{fc[i]:.2f} [{lo[i]:.2f}, {hi[i]:.2f}]"
                     + ("; significant" if sig else ""))
        panel.outside.append({"x": panel.x - 8, "y": round(y + 3.5, 1), "anchor": "end", "cls": "tick",
                              "text": _short(f"{subject}  {timepoint}", 30)})
    if not n_later:
        panel.texts.append({"x": panel.x + 8, "y": panel.y + 12, "text": "no timepoint after baseline"})
    ticks = [v for v in (0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 50, 100) if x_lo <= v <= x_hi]
    panel.xticks = [(round(float(ax(v)), 1), f"{v:g}") for v in ticks]
    panel.xlabel = "fold change against baseline (log scale; bars: Katz interval)"
    panel.limits = (x_lo, x_hi, 0.0, float(n))
    fig.panels.append(panel)
    legend += [{"kind": "dot", "colour": "#333333", "label": "significant"},
               {"kind": "open", "colour": "#333333", "label": "not significant"},
               {"kind": "band", "colour": "#888888", "label": f"within RCV (±{rcv:.0f}%)", "opacity": "0.3"}]
    _legend(fig, legend, 20.0, panel.y + panel.height + 52, fig.width - 10)
    return fig

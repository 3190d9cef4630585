"""Small vector-figure toolkit: axes geometry, ticks in intensities, density rasters as PNG, SVG through a template.

cytopipe's figures are drawn without matplotlib: a figure is a plain description (panels with ticks, paths,
markers, texts and an embedded raster) rendered by one Jinja2 template (``templates/figure.svg.j2``) into an SVG
that the HTML report inlines. Densities are 2-D histograms computed with :func:`numpy.bincount` and embedded as
small indexed PNG images (:func:`png_indexed`, written with :mod:`zlib`); axes, labels and gates stay vectors, so a
browser draws them crisply at any zoom. Drawing a six-panel gating figure costs a few milliseconds.

Sizes are CSS pixels: the SVG's ``width`` equals its ``viewBox`` width, so text set at 10 px is 10 px on screen at
100 % zoom (never scaled down to fit).
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import numpy as np

__all__ = ["Axis", "Figure", "Panel", "colormap", "density_png", "nice_ticks", "png_indexed", "render",
           "transform_ticks"]

#: Anchors (every sixteenth or eighth of the range) of matplotlib's colour maps, interpolated linearly to 256 entries.
_ANCHORS = {
    "viridis": ("#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
                "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725"),
    "greys": ("#f0f0f0", "#e4e4e4", "#d9d9d9", "#bdbdbd", "#959595", "#727272", "#515151", "#242424", "#000000"),
    "reds": ("#fcbba1", "#fca487", "#fc9272", "#fb694a", "#ee3a2c", "#ca181d", "#b3141a", "#a30f15", "#67000d"),
}
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
#: Transforms whose axes are labelled in decades of intensity (0, 10², 10³ ...).
_DECADE_KINDS = ("logicle", "hyperlog", "fasinh", "flog")


@cache
def colormap(name: str, n: int = 256) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours of a colour map (``viridis``, ``greys``, ``reds``)."""
    anchors = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in _ANCHORS[name]], dtype=float)
    where = np.linspace(0, 1, len(anchors))
    grid = np.linspace(0, 1, n)
    return np.column_stack([np.interp(grid, where, anchors[:, k]) for k in range(3)]).round().astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_indexed(pixels: np.ndarray, palette: np.ndarray, transparent: Sequence[int] = (0,)) -> bytes:
    """An 8-bit indexed-colour PNG.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(height, width)`` uint8 palette indices, first row at the top.
    palette : numpy.ndarray
        ``(k, 3)`` uint8 RGB, ``k <= 256``.
    transparent : sequence of int
        Palette indices drawn fully transparent (empty bins).

    Returns
    -------
    bytes
        The PNG file (deterministic: no timestamp or other ancillary chunk).
    """
    return _png(pixels, _colour_chunks(np.ascontiguousarray(palette, dtype=np.uint8).tobytes(), len(palette),
                                       tuple(transparent)))


def _colour_chunks(palette: bytes, size: int, transparent: tuple[int, ...]) -> bytes:
    """The ``PLTE`` and ``tRNS`` chunks of a palette (RGB bytes) with the ``transparent`` entries."""
    alpha = np.full(size, 255, dtype=np.uint8)
    alpha[list(transparent)] = 0
    return _chunk(b"PLTE", palette) + _chunk(b"tRNS", alpha.tobytes())


_IEND = _chunk(b"IEND", b"")


def _png(pixels: np.ndarray, colours: bytes) -> bytes:
    """An indexed PNG of ``pixels`` with ready-made palette chunks (see :func:`png_indexed`)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter byte 0 (none) before every row
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    data = rows.tobytes()
    # Fastest level; a window just covering the data (deflate finds the same matches, and sets up less memory).
    window = min(max((len(data) - 1).bit_length(), 9), 15)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + colours
            + _chunk(b"IDAT", zlib.compress(data, 1, window)) + _IEND)


@cache
def _palette_chunks(cmap: str, highlight_cmap: str) -> bytes:
    """:func:`_palette` as PNG chunks, empty bins transparent (built once per colour map pair)."""
    return _colour_chunks(_palette(cmap, highlight_cmap).tobytes(), 256, (0,))


@cache
def _palette(cmap: str, highlight_cmap: str) -> np.ndarray:
    """256 entries: 0 empty, then ``cmap`` (all 255 levels, or 127 and ``highlight_cmap``'s 127 after them)."""
    levels = 127 if highlight_cmap else 255
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1:levels + 1] = colormap(cmap, levels)
    if highlight_cmap:
        palette[levels + 1:2 * levels + 1] = colormap(highlight_cmap, levels)
    return palette


def density_png(counts: np.ndarray, cmap: str = "viridis", highlight: np.ndarray | None = None,
                highlight_cmap: str = "reds") -> str:
    """A log-coloured 2-D histogram as a ``data:image/png`` URI; empty bins are transparent.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(nx, ny)`` event counts, x along the first axis (as :func:`numpy.histogram2d`).
    cmap : str
        Colour map of the counts.
    highlight : numpy.ndarray, optional
        ``(nx, ny)`` counts of a sub-population (back-gating): bins holding any are drawn in ``highlight_cmap``
        over the others.
    highlight_cmap : str
        Colour map of the highlighted bins.

    Returns
    -------
    str
        The data URI.
    """
    levels = 127 if highlight is not None else 255

    def index(c: np.ndarray) -> np.ndarray:
        most = int(c.max())
        top = math.log(max(float(most), 2.0))
        if most < c.size:  # a table of the levels of 0..most, looked up per bin: the same values, fewer logs
            table = (np.log(np.arange(1, most + 1, dtype=float)) * ((levels - 1) / top)).astype(np.uint8)
            table += 1
            return np.concatenate([np.zeros(1, dtype=np.uint8), table])[c]
        # Whole-array passes (log 1 = 0 in empty bins, zeroed after): no boolean gather and scatter.
        scaled = (np.log(np.maximum(c, 1)) * ((levels - 1) / top)).astype(np.uint8)
        scaled += 1
        scaled *= c > 0
        return scaled

    pixels = index(counts)
    if highlight is not None:
        hot = highlight > 0
        pixels[hot] = (index(highlight) + levels)[hot]
    png = _png(pixels.T[::-1], _palette_chunks(cmap, highlight_cmap if highlight is not None else ""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------------------------------------- ticks


def _si(value: float) -> str:
    """A tick value as short text: 500, 50k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def nice_ticks(lo: float, hi: float, target: int = 4) -> list[float]:
    """About ``target`` round values (1, 2 or 5 x 10^k steps) within ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    raw = (hi - lo) / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step)
    return [k * step for k in range(first, int(math.floor(hi / step)) + 1)]


def _decade_label(value: float) -> str:
    if value == 0:
        return "0"
    exponent = int(round(math.log10(abs(value))))
    return ("−" if value < 0 else "") + "10" + str(exponent).translate(_SUPERSCRIPT)


@cache
def _decades(transform: Any) -> tuple[tuple[float, str], ...]:
    """0 and +-10^k (k = 1..7) placed through a transform, in order of preference (0, positive decades from 10²,
    then 10¹ and negative ones); computed once per transform (exact logicle roots are not free)."""
    candidates = sorted([0.0] + [s * 10.0 ** k for k in range(1, 8) for s in (1.0, -1.0)],
                        key=lambda v: (v < 0, abs(v) == 10, abs(v)))
    with np.errstate(all="ignore"):
        where = np.asarray(transform.apply(np.array(candidates)), dtype=float)
    return tuple((float(p), _decade_label(v)) for p, v in zip(where, candidates, strict=True) if math.isfinite(p))


def transform_ticks(transform: Any, limits: tuple[float, float]) -> list[tuple[float, str]]:
    """Tick positions (in transformed units) and labels in intensities for an axis.

    Parameters
    ----------
    transform : cytopipe.transforms.Transform or None
        The dimension's transform; ``None`` = raw values.
    limits : (float, float)
        Axis limits in transformed units.

    Returns
    -------
    list of (float, str)
        Logicle, hyperlog, arcsinh and log axes get 0 and the decades (``10²``, ``10³``, ``−10³``...) of intensity
        placed through the transform, so an axis reads like any cytometry software; linear axes get round values
        of intensity (``50k``).
    """
    lo, hi = limits
    if transform is not None and getattr(transform, "kind", "") in _DECADE_KINDS:
        # Decades crowd near zero on a biexponential axis: 0 and the positive decades first, then the others, each
        # kept only when at least 15 % of the axis away from every kept tick (labels never overlap).
        kept: list[tuple[float, str]] = []
        for p, label in _decades(transform):
            if lo <= p <= hi and all(abs(p - q) >= 0.15 * (hi - lo) for q, _ in kept):
                kept.append((p, label))
        return sorted(kept)
    if transform is None or not hasattr(transform, "inverse"):
        return [(v, _si(v)) for v in nice_ticks(lo, hi)]
    with np.errstate(all="ignore"):
        raw_lo, raw_hi = (float(v) for v in np.asarray(transform.inverse(np.array([lo, hi])), dtype=float))
        values = nice_ticks(raw_lo, raw_hi)
        where = np.asarray(transform.apply(np.array(values, dtype=float)), dtype=float) if values else []
    return [(float(p), _si(v)) for p, v in zip(where, values, strict=True) if math.isfinite(p)]


# ---------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Axis:
    """Linear map from data units to pixels (``log=True``: from log10 of the data)."""

    lo: float
    hi: float
    px0: float
    px1: float
    log: bool = False

    def __call__(self, values: Any) -> np.ndarray:
        v = np.asarray(values, dtype=float)
        lo, hi = self.lo, self.hi
        if self.log:
            with np.errstate(all="ignore"):
                v = np.log10(v)
            lo, hi = math.log10(lo), math.log10(hi)
        return self.px0 + (v - lo) * ((self.px1 - self.px0) / (hi - lo))

    def clip(self, values: Any) -> np.ndarray:
        """Infinite values (open gate sides) put one axis length beyond the limits, huge ones a thousand; finite
        values otherwise kept, so a slanted edge keeps its slope (the panel's clip path hides what lies outside)."""
        span = self.hi - self.lo
        v = np.asarray(values, dtype=float)
        v = np.where(np.isposinf(v), self.hi + span, np.where(np.isneginf(v), self.lo - span, v))
        return np.clip(v, self.lo - 1000 * span, self.hi + 1000 * span)


@lru_cache(maxsize=64)
def _points(n: int) -> str:
    """The format of ``n`` path points, ``%.1f,%.1fL...``: one formatting call per path."""
    return "L".join(["%.1f,%.1f"] * n)


def path_d(x: np.ndarray, y: np.ndarray, close: bool = False) -> str:
    """SVG path data through the points (pixels, one decimal); NaN points break the line."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return ""
    if ok.all():
        xy = np.empty(2 * x.size)
        xy[0::2], xy[1::2] = x, y
        return "M" + _points(x.size) % tuple(xy.tolist()) + ("Z" if close else "")
    parts = []
    move = True
    for a, b, good in zip(x.tolist(), y.tolist(), ok.tolist(), strict=True):
        if not good:
            move = True
            continue
        parts.append(f"{'M' if move else 'L'}{a:.1f},{b:.1f}")
        move = False
    return "".join(parts) + ("Z" if close else "")


@dataclass
class Panel:
    """One plot area: its box (pixels), ticks, labels and what is drawn inside (clipped to the box)."""

    x: float
    y: float
    width: float
    height: float
    title: list[str] = field(default_factory=list)
    tooltip: str = ""
    xlabel: str = ""
    ylabel: str = ""
    ylabel_right: str = ""
    xticks: list[tuple[float, str]] = field(default_factory=list)
    yticks: list[tuple[float, str]] = field(default_factory=list)
    yticks_right: list[tuple[float, str]] = field(default_factory=list)
    right_colour: str = "#333333"
    grid: bool = False
    image: str | None = None
    paths: list[dict[str, Any]] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    texts: list[dict[str, Any]] = field(default_factory=list)
    outside: list[dict[str, Any]] = field(default_factory=list)  # texts outside the clipped box (annotations)
    limits: tuple[float, ...] = ()  # x and y limits in data units (``data-limits``: lets a reader map pixels back)

    def path(self, d: str, stroke: str = "none", fill: str = "none", width: float = 1.2, dash: str = "",
             opacity: float = 1.0, gid: str = "", fill_opacity: float = 1.0) -> None:
        if d:
            self.paths.append({"d": d, "stroke": stroke, "fill": fill, "width": width, "dash": dash,
                               "opacity": opacity, "gid": gid, "fill_opacity": fill_opacity})

    def marker(self, x: float, y: float, shape: str = "circle", fill: str = "#333333", stroke: str = "#333333",
               size: float = 3.5, title: str = "") -> None:
        if math.isfinite(x) and math.isfinite(y):
            self.markers.append({"x": round(x, 1), "y": round(y, 1), "shape": shape, "fill": fill,
                                 "stroke": stroke, "size": size, "title": title})


@dataclass
class Figure:
    """A figure: size in CSS pixels, a title, panels and a legend (colour, kind, label)."""

    width: float
    height: float
    title: str = ""
    panels: list[Panel] = field(default_factory=list)
    legend: list[dict[str, str]] = field(default_factory=list)
    legend_y: float = 0.0
    kind: str = "figure"
    label: str = ""


def template_cache() -> Any:
    """Jinja2's cache of compiled templates (in the user's temporary folder, checked against the template's
    modification time): compiling the report and figure templates costs more than rendering them."""
    import jinja2

    return jinja2.FileSystemBytecodeCache(pattern="cytopipe-%s.cache")


def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("cytopipe", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             bytecode_cache=template_cache(), auto_reload=False)  # no stat of the file per render
    return env.get_template("figure.svg.j2")


#: Compiled once at import: worker processes forked (or preloaded by the fork server) after this module was
#: imported start drawing without compiling it again.
_TEMPLATE = _template()


def render(figure: Figure, ident: str = "f", standalone: bool = False) -> str:
    """The SVG element of a figure, for inlining in HTML (``standalone``: with the SVG namespace, for a file).

    ``ident`` prefixes the element ids (clip paths), which must be unique in the HTML page.
    """
    return _TEMPLATE.render(fig=figure, ident=ident, standalone=standalone)

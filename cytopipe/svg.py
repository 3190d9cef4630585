"""Small vector-figure toolkit: axes geometry, ticks in intensities, density rasters as PNG, SVG text.

cytopipe's figures are drawn without matplotlib: a figure is a plain description (panels with ticks, paths,
markers, texts and an embedded raster) written by :func:`render` as an SVG that the HTML report inlines. Densities
are 2-D histograms computed with :func:`numpy.bincount` and embedded as small indexed PNG images
(:func:`png_indexed`, written with :mod:`zlib`); axes, labels and gates stay vectors, so a browser draws them
crisply at any zoom.

Sizes are CSS pixels: the SVG's ``width`` equals its ``viewBox`` width, so text set at 10 px is 10 px on screen at
100 % zoom (never scaled down to fit).
"""

from __future__ import annotations

import base64
import html
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib.resources import files
from typing import Any

import numpy as np

__all__ = ["Axis", "Density", "Figure", "Panel", "colormap", "nice_ticks", "png_indexed", "render",
           "trace", "transform_ticks"]

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
    """The ``PLTE`` and ``tRNS`` chunks of a palette (RGB bytes) with the ``transparent`` entries. ``tRNS`` stops
    at the last transparent entry (the PNG standard makes those after it opaque): one byte for the densities."""
    alpha = np.full(size, 255, dtype=np.uint8)
    alpha[list(transparent)] = 0
    last = max((index % size for index in transparent), default=-1) + 1
    return _chunk(b"PLTE", palette) + (_chunk(b"tRNS", alpha[:last].tobytes()) if last else b"")


_IEND = _chunk(b"IEND", b"")


def _png(pixels: np.ndarray, colours: bytes) -> bytes:
    """An indexed PNG of ``pixels`` with ready-made palette chunks (see :func:`png_indexed`)."""
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # filter byte 0 (none) before every row
    rows[:, 1:] = pixels
    return _png_of(_image_data(rows), colours)


def _image_data(rows: np.ndarray) -> bytes:
    """The ``IHDR`` and ``IDAT`` chunks of an 8-bit indexed image from its rows, each after its filter byte
    (``(height, width + 1)`` uint8, C order, column 0 zero: no filter): everything of a PNG but its colours."""
    height, width = rows.shape[0], rows.shape[1] - 1
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    # Fastest level, run-length matches only (a density's rows are runs of empty and equal bins: as fast as the
    # general search and ~20 % smaller); a window just covering the data (less memory to set up).
    window = min(max((rows.size - 1).bit_length(), 9), 15)
    deflate = zlib.compressobj(1, zlib.DEFLATED, window, 8, zlib.Z_RLE)
    return _chunk(b"IHDR", header) + _chunk(b"IDAT", deflate.compress(rows) + deflate.flush())


def _png_of(data: bytes, colours: bytes) -> bytes:
    """A PNG from its image data (:func:`_image_data`) and palette chunks (``PLTE`` must precede ``IDAT``)."""
    cut = data.index(b"IDAT") - 4  # IHDR, then the colours, then IDAT
    return b"\x89PNG\r\n\x1a\n" + data[:cut] + colours + data[cut:] + _IEND


@cache
def _palette_chunks(cmap: str) -> bytes:
    """A density's palette as PNG chunks: 0 empty (transparent), then the 255 levels of ``cmap`` (built once per
    colour map)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1:] = colormap(cmap, 255)
    return _colour_chunks(palette.tobytes(), 256, (0,))


class Density:
    """A log-coloured 2-D histogram compressed once, to be drawn in any colour map (:meth:`uri`).

    Parameters
    ----------
    counts : numpy.ndarray
        ``(ny, nx + 1)`` event counts laid out as the image's rows after their PNG filter byte: first row at the
        top, column 0 zero, then the ``nx`` bins of x along the row (C order).

    Notes
    -----
    A bin of ``c >= 1`` events is colour ``1 + floor(log(c) / log(max(most, 2)) * 254)`` of the map's 255,
    ``most`` the fullest bin; empty bins are transparent. The palette is the only part of a PNG that depends on
    the colour map, so one compression serves a density drawn in viridis on its own panel and in greys under a
    back-gated population.
    """

    def __init__(self, counts: np.ndarray) -> None:
        self.data = _image_data(_levels(counts, 255))  # column 0 stays 0: the filter byte

    def uri(self, cmap: str = "viridis") -> str:
        """The density as a ``data:image/png`` URI in colour map ``cmap``."""
        png = _png_of(self.data, _palette_chunks(cmap))
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _levels(counts: np.ndarray, levels: int) -> np.ndarray:
    """Palette index (uint8) of each bin: 0 when empty, else its log level (see :class:`Density`)."""
    most = int(counts.max())
    if most <= 1 << 16:  # the levels of 0..most, looked up per bin
        return _level_table(most, levels).take(counts)
    scaled = (np.log(np.maximum(counts, 1)) * ((levels - 1) / math.log(most))).astype(np.uint8)
    scaled += 1
    scaled *= counts > 0
    return scaled


@lru_cache(maxsize=256)
def _level_table(most: int, levels: int) -> np.ndarray:
    """The palette index of ``0..most`` events in a bin when the fullest bin holds ``most``."""
    table = np.zeros(most + 1, dtype=np.uint8)
    table[1:] = np.log(np.arange(1, most + 1, dtype=float)) * ((levels - 1) / math.log(max(float(most), 2.0)))
    table[1:] += 1
    return table


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
        gap = 0.15 * (hi - lo)
        for p, label in _decades(transform):
            if lo <= p <= hi:
                for q, _ in kept:
                    if abs(p - q) < gap:
                        break
                else:
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

    def place(self, value: float) -> float:
        """The pixel of one value on a linear axis: :meth:`__call__` in plain float arithmetic."""
        return self.px0 + (value - self.lo) * ((self.px1 - self.px0) / (self.hi - self.lo))

    def clip(self, value: float) -> float:
        """One value with infinity (an open gate side) put one axis length beyond the limits, a huge value a
        thousand; others kept, so a slanted edge keeps its slope (the panel's clip path hides what lies outside)."""
        span = self.hi - self.lo
        if math.isinf(value):
            return self.hi + span if value > 0 else self.lo - span
        return min(max(value, self.lo - 1000 * span), self.hi + 1000 * span)  # NaN stays NaN (breaks a path)


def trace(values: Sequence[float], lo: float, hi: float, px0: float, px1: float) -> list[float]:
    """The pixels of values on a linear axis from ``lo`` (at ``px0``) to ``hi`` (at ``px1``), each value first
    kept within a thousand axis lengths of the limits and an infinite one put one length beyond them: what
    :meth:`Axis.place` of :meth:`Axis.clip` gives, to the bit, without two method calls per value."""
    span = hi - lo
    scale = (px1 - px0) / span
    low, high = lo - 1000 * span, hi + 1000 * span
    below, above = lo - span, hi + span
    return [px0 + (((below if v == -math.inf else low) if v < low else (above if v == math.inf else high)
                    if v > high else v) - lo) * scale for v in values]


@lru_cache(maxsize=64)
def _points(n: int) -> str:
    """The format of ``n`` path points, ``%.1f,%.1fL...``: one formatting call per path."""
    return "L".join(["%.1f,%.1f"] * n)


def path_d(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, close: bool = False) -> str:
    """SVG path data through the points (pixels, one decimal); NaN points break the line."""
    xs = x.tolist() if isinstance(x, np.ndarray) else list(x)
    ys = y.tolist() if isinstance(y, np.ndarray) else list(y)
    xy = [v for point in zip(xs, ys, strict=True) for v in point]
    end = "Z" if close else ""
    if all(map(math.isfinite, xy)):
        return "M" + _points(len(xs)) % tuple(xy) + end if xs else ""
    parts = []
    move = True
    for a, b in zip(xs, ys, strict=True):
        if not (math.isfinite(a) and math.isfinite(b)):
            move = True
            continue
        parts.append(f"{'M' if move else 'L'}{a:.1f},{b:.1f}")
        move = False
    return "".join(parts) + end if parts else ""


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
    overlay: str | None = None  # a second image drawn over ``image`` (a back-gated population's density)
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
    modification time): compiling the report templates costs more than rendering them."""
    import jinja2

    return jinja2.FileSystemBytecodeCache(pattern="cytopipe-%s.cache")


# ---------------------------------------------------------------------------------------------- SVG text
#
# A figure is written with small format strings, one per kind of element: a gating figure is a few hundred
# elements, which the Jinja template took ~0.45 ms to lay out (these strings: ~0.1 ms). Numbers are written as
# Python writes them (``str``); every string that is not a constant of this module goes through :func:`escape`.

#: The figure style sheet, embedded in standalone files (the HTML report carries it once for all figures).
_STYLE = (files("cytopipe") / "templates" / "figure.css").read_text(encoding="utf-8").removesuffix("\n")
_FONT = 'font-family="DejaVu Sans, Segoe UI, Helvetica, Arial, sans-serif" font-size="10"'
_SVG_NS = ' xmlns="http://www.w3.org/2000/svg"'
_BOLD = ("", ' class="b"')  # a panel title's first line is bold


def escape(text: object) -> str:
    """``text`` safe in SVG/HTML text and attribute values: ``& < > " '`` and every non-ASCII character as
    entities (an all-ASCII figure is joined, encoded and read back at memory speed; lone surrogates, which no XML
    document may hold, as U+FFFD)."""
    text = str(text)
    # A figure repeats short strings (tick labels, colours, names) across panels and samples: escaped once each.
    return _escape_short(text) if len(text) <= 80 else _escape(text)


def _escape(text: str) -> str:
    """:func:`escape` of a string."""
    if not any(c in text for c in "&<>\"'"):  # path data, base64 images: a few scans, no copy
        return text if text.isascii() else _ascii(text)
    return _ascii(html.escape(text))


def _ascii(text: str) -> str:
    """``text`` with every non-ASCII character as a numeric character reference."""
    if text.isascii():
        return text
    return "".join(c if c.isascii() else f"&#{_code(c)};" for c in text)


def _code(character: str) -> int:
    """The code point a character reference names: U+FFFD for a lone surrogate."""
    code = ord(character)
    return 0xFFFD if 0xD800 <= code < 0xE000 else code


_escape_short = lru_cache(maxsize=4096)(_escape)


def render(figure: Figure, ident: str = "f", standalone: bool = False) -> str:
    """The SVG element of a figure, for inlining in HTML (``standalone``: with the SVG namespace and the figure
    style sheet, for a file).

    ``ident`` prefixes the element ids (clip paths), which must be unique in the HTML page.
    """
    fig = figure
    out = [f'<svg{_SVG_NS if standalone else ""} width="{fig.width}" height="{fig.height}" '
           f'viewBox="0 0 {fig.width} {fig.height}" class="fig {escape(fig.kind)}" role="img" '
           f'aria-label="{escape(fig.label or fig.title)}" {_FONT}>\n']
    if standalone:
        out.append(f"<style>{_STYLE}</style>\n")
    if fig.title:
        out.append(f'<text class="head" x="8" y="16">{escape(fig.title)}</text>\n')
    ident = escape(ident)
    for index, panel in enumerate(fig.panels, 1):
        _panel(out, panel, f"{ident}-c{index}")
    if fig.legend:
        out.append('<g class="legend">\n')
        out.extend(_legend_item(item) for item in fig.legend)
        out.append("</g>\n")
    out.append("</svg>")
    return "".join(out)


def _panel(out: list[str], p: Panel, cid: str) -> None:
    """Append one panel's elements: clip box, title, background, clipped content, axes, ticks, labels."""
    box = f'x="{p.x}" y="{p.y}" width="{p.width}" height="{p.height}"'
    bottom, right = p.y + p.height, p.x + p.width
    limits = f' data-limits="{" ".join(map(str, p.limits))}"' if p.limits else ""
    out.append(f'<g class="panel"{limits}>\n<clipPath id="{cid}"><rect {box}/></clipPath>\n')
    if p.title:
        tooltip = f"<title>{escape(p.tooltip)}</title>" if p.tooltip else ""
        lines = "".join(f'<tspan x="{p.x}" dy="{13 if k else 0}"{_BOLD[k == 0]}>{escape(line)}</tspan>'
                        for k, line in enumerate(p.title))
        out.append(f'<text class="ttl" x="{p.x}" y="{p.y - 6 - 13 * (len(p.title) - 1)}">{tooltip}{lines}</text>\n')
    out.append(f'<rect {box} fill="#ffffff" stroke="none"/>\n')
    if p.grid:
        out.extend(f'<line x1="{p.x}" x2="{right}" y1="{t[0]}" y2="{t[0]}" stroke="#e3e3e3" stroke-width="0.6"/>'
                   for t in p.yticks)
    out.append(f'<g clip-path="url(#{cid})">\n')
    for image in (p.image, p.overlay):
        if image:
            out.append(f'<image {box} preserveAspectRatio="none" href="{escape(image)}"/>\n')
    out.extend(_path(s) for s in p.paths)
    out.extend(_marker(m) for m in p.markers)
    out.extend(_text(t) for t in p.texts)
    # The axes and every tick mark of both: one path.
    marks = "".join([f"M{x},{bottom}v4" for x, _ in p.xticks] + [f"M{p.x - 4},{y}h4" for y, _ in p.yticks])
    out.append(f'</g>\n<path d="M{p.x},{p.y}V{bottom}H{right}{marks}" fill="none" stroke="#333" stroke-width="1"/>\n')
    label_y, label_x = bottom + 14, p.x - 6
    out.extend(f'<text class="tick" x="{x}" y="{label_y}" text-anchor="middle">{escape(label)}</text>\n'
               for x, label in p.xticks)
    out.extend(f'<text class="tick" x="{label_x}" y="{y + 3.5}" text-anchor="end">{escape(label)}</text>\n'
               for y, label in p.yticks)
    if p.yticks_right:
        colour = escape(p.right_colour)
        out.append(f'<path d="M{right},{p.y}V{bottom}" stroke="{colour}" stroke-width="1"/>\n')
        out.extend(f'<line x1="{right}" x2="{right + 4}" y1="{y}" y2="{y}" stroke="{colour}"/>'
                   f'<text class="tick" x="{right + 6}" y="{y + 3.5}" style="fill: {colour}">{escape(label)}</text>\n'
                   for y, label in p.yticks_right)
    if p.xlabel:
        out.append(f'<text class="lab" x="{p.x + p.width / 2}" y="{bottom + 28}" text-anchor="middle">'
                   f"{escape(p.xlabel)}</text>\n")
    if p.ylabel:
        out.append(f'<text class="lab" transform="translate({p.x - 34},{p.y + p.height / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(p.ylabel)}</text>\n')
    if p.ylabel_right:
        out.append(f'<text class="lab" transform="translate({right + 40},{p.y + p.height / 2}) rotate(90)" '
                   f'text-anchor="middle" style="fill: {escape(p.right_colour)}">{escape(p.ylabel_right)}</text>\n')
    out.extend(_text(t) for t in p.outside)
    out.append("</g>\n")


def _path(s: dict[str, Any]) -> str:
    dash = f' stroke-dasharray="{escape(s["dash"])}"' if s["dash"] else ""
    opacity = f' opacity="{s["opacity"]}"' if s["opacity"] < 1 else ""
    fill_opacity = f' fill-opacity="{s["fill_opacity"]}"' if s["fill_opacity"] < 1 else ""
    gid = f' class="{escape(s["gid"])}"' if s["gid"] else ""
    return (f'<path d="{escape(s["d"])}" fill="{escape(s["fill"])}" stroke="{escape(s["stroke"])}" '
            f'stroke-width="{s["width"]}"{dash}{opacity}{fill_opacity}{gid} stroke-linejoin="round"/>\n')


def _marker(m: dict[str, Any]) -> str:
    x, y, size = m["x"], m["y"], m["size"]
    paint = f'fill="{escape(m["fill"])}" stroke="{escape(m["stroke"])}"'
    title = f"<title>{escape(m['title'])}</title>" if m["title"] else ""
    if m["shape"] == "square":
        return (f'<rect x="{x - size}" y="{y - size}" width="{2 * size}" height="{2 * size}" {paint} '
                f'stroke-width="1.2">{title}</rect>')
    if m["shape"] == "diamond":
        r = size * 1.4
        return f'<path d="M{x},{y - r}L{x + r},{y}L{x},{y + r}L{x - r},{y}Z" {paint} stroke-width="1.2">{title}</path>'
    return f'<circle cx="{x}" cy="{y}" r="{size}" {paint} stroke-width="1.4">{title}</circle>'


def _text(t: dict[str, Any]) -> str:
    fill = f' style="fill: {escape(t["fill"])}"' if t.get("fill") else ""
    return (f'<text x="{t["x"]}" y="{t["y"]}" text-anchor="{escape(t.get("anchor", "start"))}" '
            f'class="{escape(t.get("cls", "lab"))}"{fill}>{escape(t["text"])}</text>\n')


def _legend_item(item: dict[str, Any]) -> str:
    x, y, colour, kind = item["x"], item["y"], escape(item["colour"]), item["kind"]
    if kind == "line":
        dash = f' stroke-dasharray="{escape(item["dash"])}"' if item.get("dash") else ""
        mark = f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{colour}" stroke-width="1.6"{dash}/>'
    elif kind == "band":
        mark = (f'<rect x="{x}" y="{y - 5}" width="18" height="10" fill="{colour}" '
                f'opacity="{escape(item.get("opacity", 0.25))}"/>')
    elif kind == "open":
        mark = f'<circle cx="{x + 9}" cy="{y}" r="3.5" fill="#ffffff" stroke="{colour}" stroke-width="1.4"/>'
    elif kind == "square":
        mark = f'<rect x="{x + 5.5}" y="{y - 3.5}" width="7" height="7" fill="{colour}"/>'
    elif kind == "diamond":
        mark = f'<path d="M{x + 9},{y - 5}L{x + 14},{y}L{x + 9},{y + 5}L{x + 4},{y}Z" fill="{colour}"/>'
    else:
        mark = f'<circle cx="{x + 9}" cy="{y}" r="3.5" fill="{colour}"/>'
    return f'{mark}\n<text class="leg" x="{x + 23}" y="{y + 3.5}">{escape(item["label"])}</text>\n'

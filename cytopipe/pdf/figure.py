"""A :class:`cytopipe.svg.Figure` drawn as PDF vector operators, the way :func:`cytopipe.svg.render` draws it.

Same geometry, colours, dashes, opacities, marker shapes and text classes as the SVG (sizes in CSS pixels, scaled
as a whole to the page); densities embedded as indexed PNG become indexed image XObjects; paths keep their clip
box. Superscript digits (``10³``, ``×10⁹/L``) are set as raised smaller digits.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from cytopipe.pdf.document import _SUPERSCRIPTS, Page, Text, font_width
from cytopipe.svg import Figure, Panel

__all__ = ["draw_figure"]

_INK = "#1d2330"
#: Text classes of ``templates/figure.css``: size in px, font, colour.
_CLASSES = {"tick": (10.0, "F1", "#444444"), "lab": (11.0, "F1", _INK), "ttl": (11.0, "F1", _INK),
            "b": (11.0, "F2", _INK), "head": (12.5, "F2", _INK), "leg": (10.5, "F1", _INK)}
_TOKEN = re.compile(r"[MLHVZmlhvz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_K = 0.5523  # Bezier handle length of a quarter circle
_PLAIN = str.maketrans(_SUPERSCRIPTS, "0123456789-")


def _path_ops(d: str) -> str:
    """SVG path data of absolute M, L, H, V, Z commands as PDF path construction operators."""
    ops: list[str] = []
    command, x, y, numbers = "M", 0.0, 0.0, []

    def flush() -> None:
        nonlocal x, y
        values = [float(v) for v in numbers]
        if command in "ML":
            for i in range(0, len(values) - 1, 2):
                x, y = values[i], values[i + 1]
                ops.append(f"{x:.2f} {y:.2f} {'m' if command == 'M' and i == 0 else 'l'}")
        elif command == "H":
            for x in values:
                ops.append(f"{x:.2f} {y:.2f} l")
        elif command == "V":
            for y in values:
                ops.append(f"{x:.2f} {y:.2f} l")
        numbers.clear()

    for token in _TOKEN.findall(d):
        if token.isalpha():
            flush()
            command = token.upper()
            if command == "Z":
                ops.append("h")
        else:
            numbers.append(token)
    flush()
    return " ".join(ops)


def _dash(dash: str) -> str:
    values = [v for v in re.split(r"[\s,]+", dash.strip()) if v]
    return f"[{' '.join(values)}] 0 d" if values else "[] 0 d"


def _text(page: Page, text: Text, x: float, y: float, value: Any, cls: str = "lab", anchor: str = "start",
          colour: str = "", rotate: int = 0) -> None:
    """Text of a figure class; runs of superscript digits raised at 70 % size."""
    size, font, default = _CLASSES.get(cls, _CLASSES["lab"])
    colour = colour or default
    clean = text.clean(value, superscripts=True)
    if not any(c in _SUPERSCRIPTS for c in clean):
        page.text(x, y, clean, size, font, colour, anchor, rotate)
        return
    runs = [(part, bool(i % 2)) for i, part in enumerate(re.split(f"([{_SUPERSCRIPTS}]+)", clean)) if part]
    runs = [(p.translate(_PLAIN), sup) for p, sup in runs]
    total = sum(font_width(p, font, size * (0.7 if sup else 1.0)) for p, sup in runs)
    offset = -{"middle": total / 2, "end": total}.get(anchor, 0.0)
    for part, sup in runs:
        offset += page.text(x, y, part, size * (0.7 if sup else 1.0), font, colour, rotate=rotate,
                            rise=size * 0.38 if sup else 0.0, offset=offset)


def _circle(x: float, y: float, r: float) -> str:
    k = _K * r
    return (f"{x + r:.2f} {y:.2f} m {x + r:.2f} {y + k:.2f} {x + k:.2f} {y + r:.2f} {x:.2f} {y + r:.2f} c "
            f"{x - k:.2f} {y + r:.2f} {x - r:.2f} {y + k:.2f} {x - r:.2f} {y:.2f} c "
            f"{x - r:.2f} {y - k:.2f} {x - k:.2f} {y - r:.2f} {x:.2f} {y - r:.2f} c "
            f"{x + k:.2f} {y - r:.2f} {x + r:.2f} {y - k:.2f} {x + r:.2f} {y:.2f} c h")


def _marker(page: Page, m: dict[str, Any]) -> None:
    x, y, s = float(m["x"]), float(m["y"]), float(m["size"])
    if m["shape"] == "square":
        shape, width = f"{x - s:.2f} {y - s:.2f} {2 * s:.2f} {2 * s:.2f} re", 1.2
    elif m["shape"] == "diamond":
        r = s * 1.4
        shape = f"{x:.2f} {y - r:.2f} m {x + r:.2f} {y:.2f} l {x:.2f} {y + r:.2f} l {x - r:.2f} {y:.2f} l h"
        width = 1.2
    else:
        shape, width = _circle(x, y, s), 1.4
    page.fill(m["fill"])
    page.stroke(m["stroke"])
    page.raw(f"{width:.2f} w {shape} {'B' if m['fill'] != 'none' else 'S'}")


def _paint(page: Page, p: dict[str, Any]) -> None:
    fill, stroke = p["fill"] != "none", p["stroke"] != "none"
    if not (fill or stroke):
        return
    opacity = float(p.get("opacity", 1.0))
    fill_alpha = opacity * float(p.get("fill_opacity", 1.0))
    page.raw("q")
    if opacity < 1 or fill_alpha < 1:
        page.alpha(fill_alpha, opacity)
    if fill:
        page.fill(p["fill"])
    if stroke:
        page.stroke(p["stroke"])
        page.raw(f"{float(p['width']):.2f} w {_dash(p['dash']) if p.get('dash') else ''}")
    page.raw(_path_ops(p["d"]) + (" B" if fill and stroke else " f" if fill else " S"))
    page.raw("Q")


def _panel(page: Page, text: Text, p: Panel) -> None:
    if p.title:
        top = p.y - 6 - 13 * (len(p.title) - 1)
        for i, line in enumerate(p.title):
            _text(page, text, p.x, top + 13 * i, line, "b" if i == 0 else "ttl")
    page.rect(p.x, p.y, p.width, p.height, "#ffffff")
    if p.grid:
        for t, _ in p.yticks:
            page.line(p.x, t, p.x + p.width, t, "#e3e3e3", 0.6)
    page.raw(f"q {p.x:.2f} {p.y:.2f} {p.width:.2f} {p.height:.2f} re W n")
    for image in (p.image, p.overlay):  # a density, then any drawn over it
        if image and image.startswith("data:image/png;base64,"):
            page.image(base64.b64decode(image.split(",", 1)[1]), p.x, p.y, p.width, p.height)
    for path in p.paths:
        _paint(page, path)
    for m in p.markers:
        _marker(page, m)
    for t in p.texts:
        _text(page, text, t["x"], t["y"], t["text"], t.get("cls", "lab"), t.get("anchor", "start"),
              t.get("fill", ""))
    page.raw("Q")
    bottom = p.y + p.height
    page.raw(f"0.2 0.2 0.2 RG 1 w [] 0 d {p.x:.2f} {p.y:.2f} m {p.x:.2f} {bottom:.2f} l "
             f"{p.x + p.width:.2f} {bottom:.2f} l S")
    for t, label in p.xticks:
        page.line(t, bottom, t, bottom + 4, "#333333", 1)
        _text(page, text, t, bottom + 14, label, "tick", "middle")
    for t, label in p.yticks:
        page.line(p.x - 4, t, p.x, t, "#333333", 1)
        _text(page, text, p.x - 6, t + 3.5, label, "tick", "end")
    if p.yticks_right:
        right = p.x + p.width
        page.line(right, p.y, right, bottom, p.right_colour, 1)
        for t, label in p.yticks_right:
            page.line(right, t, right + 4, t, p.right_colour, 1)
            _text(page, text, right + 6, t + 3.5, label, "tick", colour=p.right_colour)
    if p.xlabel:
        _text(page, text, p.x + p.width / 2, bottom + 28, p.xlabel, "lab", "middle")
    if p.ylabel:
        _text(page, text, p.x - 34, p.y + p.height / 2, p.ylabel, "lab", "middle", rotate=-90)
    if p.ylabel_right:
        _text(page, text, p.x + p.width + 40, p.y + p.height / 2, p.ylabel_right, "lab", "middle",
              p.right_colour, rotate=90)
    for t in p.outside:
        _text(page, text, t["x"], t["y"], t["text"], t.get("cls", "lab"), t.get("anchor", "start"),
              t.get("fill", ""))


def _legend(page: Page, text: Text, item: dict[str, Any]) -> None:
    x, y, colour = float(item["x"]), float(item["y"]), item["colour"]
    kind = item["kind"]
    if kind == "line":
        dash = _dash(item["dash"]) if item.get("dash") else "[] 0 d"
        page.stroke(colour)
        page.raw(f"1.6 w {dash} {x:.2f} {y:.2f} m {x + 18:.2f} {y:.2f} l S [] 0 d")
    elif kind == "band":
        page.raw("q")
        page.alpha(float(item.get("opacity", 0.25)), 1.0)
        page.rect(x, y - 5, 18, 10, colour)
        page.raw("Q")
    elif kind == "open":
        _marker(page, {"x": x + 9, "y": y, "size": 3.5, "shape": "circle", "fill": "#ffffff", "stroke": colour})
    elif kind == "square":
        page.rect(x + 5.5, y - 3.5, 7, 7, colour)
    elif kind == "diamond":
        page.fill(colour)
        page.raw(f"{x + 9:.2f} {y - 5:.2f} m {x + 14:.2f} {y:.2f} l {x + 9:.2f} {y + 5:.2f} l "
                 f"{x + 4:.2f} {y:.2f} l h f")
    else:
        page.fill(colour)
        page.raw(_circle(x + 9, y, 3.5) + " f")
    _text(page, text, x + 23, y + 3.5, item["label"], "leg")


def draw_figure(page: Page, text: Text, figure: Figure, x: float, y: float, scale: float) -> None:
    """Draw a figure with its top left corner at ``(x, y)`` points, one CSS pixel = ``scale`` points.

    Parameters
    ----------
    page : cytopipe.pdf.document.Page
        The page.
    text : cytopipe.pdf.document.Text
        Cleans (and records) the figure's strings.
    figure : cytopipe.svg.Figure
        The figure description (:mod:`cytopipe.plots`).
    x, y, scale : float
        Placement.
    """
    page.raw(f"q {scale:.2f} 0 0 {scale:.2f} {x:.2f} {y:.2f} cm")
    page.raw(f"q 0.851 0.867 0.898 RG 0.8 w 0 0 {figure.width:.2f} {figure.height:.2f} re S Q")
    if figure.title:
        _text(page, text, 8, 16, figure.title, "head")
    for panel in figure.panels:
        _panel(page, text, panel)
    for item in figure.legend:
        _legend(page, text, item)
    page.raw("Q")

"""A minimal PDF 1.4 writer: pages of vector operators, the standard Helvetica fonts, indexed PNG rasters.

Coordinates are PDF points with the origin at the top left and y growing downwards (each page starts with a
``cm`` that flips the page), so layout code and figures (SVG pixels) share one convention. Text is Helvetica or
Helvetica-Bold with WinAnsiEncoding (the standard 14 fonts every PDF reader has: nothing embedded); widths come from
Adobe's AFM metrics (:data:`_WIDTHS`) for layout. Strings are escaped for PDF literal strings; characters the
encoding cannot hold are replaced by a visible ``<U+XXXX>`` code by :class:`Text` (the caller records and reports
them). Content streams are zlib-compressed. Output is deterministic: no date, no random ``/ID``.
"""

from __future__ import annotations

import re
import struct
import unicodedata
import zlib
from functools import cache
from typing import Any

__all__ = ["Document", "Page", "Text", "font_width", "wrap"]

#: Advance widths (1/1000 em) of WinAnsiEncoding codes 32-255 in Helvetica and Helvetica-Bold (Adobe Core 14 AFM).
_AFM = {
    "F1": (278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556, 556, 556,
           556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778, 722, 278,
           500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469,
           556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500,
           278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, 761, 556, 0, 222, 556, 333, 1000, 556, 556, 333,
           1000, 667, 333, 1000, 0, 611, 0, 0, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500,
           667, 278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333, 333,
           333, 556, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611, 667, 667, 667, 667, 667, 667, 1000, 722, 667,
           667, 667, 667, 278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667,
           667, 611, 556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, 556, 556, 556,
           556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500),
    "F2": (278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556, 556, 556,
           556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667, 611, 778, 722, 278,
           556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584,
           556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, 611, 611, 389, 556,
           333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584, 761, 556, 0, 278, 556, 500, 1000, 556, 556, 333,
           1000, 667, 333, 1000, 0, 611, 0, 0, 278, 278, 500, 500, 350, 556, 1000, 333, 1000, 556, 333, 944, 0, 500,
           667, 278, 333, 556, 556, 556, 556, 280, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333, 333,
           333, 611, 556, 278, 333, 333, 365, 556, 834, 834, 834, 611, 722, 722, 722, 722, 722, 722, 1000, 722, 667,
           667, 667, 667, 278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667,
           667, 611, 556, 556, 556, 556, 556, 556, 889, 556, 556, 556, 556, 556, 278, 278, 278, 278, 611, 611, 611,
           611, 611, 611, 611, 584, 611, 611, 611, 611, 611, 556, 611, 556),
}
_FONTS = {"F1": "Helvetica", "F2": "Helvetica-Bold"}


def _char_widths(widths: tuple[int, ...]) -> dict[str, float]:
    table = {}
    for code, width in enumerate(widths, start=32):
        try:
            table[bytes([code]).decode("cp1252")] = width / 1000.0
        except UnicodeDecodeError:
            pass
    return table


_WIDTHS = {font: _char_widths(w) for font, w in _AFM.items()}

#: Typographic characters outside WinAnsiEncoding with a faithful ASCII spelling (nothing user-specific is lost).
_TYPOGRAPHIC = str.maketrans({"\u2212": "-", "\u2264": "<=", "\u2265": ">=", "\u2192": "->", "\u2009": " ",
                              "\u202f": " ", "\u2010": "-", "\u2011": "-", "\u221a": "sqrt", "\u0394": "Delta "})
_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹⁻"
_SUPER_RE = re.compile(f"[{_SUPERSCRIPTS}]+")
_PLAIN = str.maketrans(_SUPERSCRIPTS, "0123456789-")
#: What the standard fonts show: printable WinAnsi characters (controls and the codes cp1252 leaves undefined are
#: not among them).
_SHOWABLE = frozenset(_WIDTHS["F1"]) - {"\x7f", "\xad"}  # DEL; the soft hyphen (invisible in HTML) as a code
_FAST_RE = re.compile(r"[ -~]*")


_MEASURED: dict[str, dict[str, float]] = {font: {} for font in _WIDTHS}


def font_width(text: str, font: str = "F1", size: float = 10.0) -> float:
    """Width in points of an already cleaned string (see :meth:`Text.clean`) in a font at a size."""
    measured = _MEASURED[font]
    width = measured.get(text)
    if width is None:
        widths = _WIDTHS[font]
        try:
            width = sum(map(widths.__getitem__, text))
        except KeyError:  # superscript digits kept for a figure
            width = sum(widths.get(c, 0.556) for c in text)
        if len(measured) < 100_000:  # words and cells repeat: remember them (bounded)
            measured[text] = width
    return width * size


class Text:
    """Turns any string into what the standard fonts can show, remembering what had to be replaced.

    Superscript digits become ``^`` and digits (``x10⁹`` -> ``x10^9``; figures raise them instead), a few
    typographic signs their ASCII spelling, and every other character outside WinAnsiEncoding (CJK, emoji,
    right-to-left scripts) or any control character a visible ``<U+XXXX>`` code: nothing is dropped silently.

    Attributes
    ----------
    replaced : set of str
        The characters shown as codes so far.
    """

    def __init__(self) -> None:
        self.replaced: set[str] = set()
        self._cache: dict[str, str] = {}

    def clean(self, text: Any, superscripts: bool = False) -> str:
        """The string as the standard fonts show it (``superscripts``: keep superscript digits for the caller)."""
        text = str(text)
        if _FAST_RE.fullmatch(text):
            return text
        key = ("s" if superscripts else "p") + text
        done = self._cache.get(key)
        if done is not None:
            return done
        out = unicodedata.normalize("NFC", text).translate(_TYPOGRAPHIC)
        if not superscripts:
            out = _SUPER_RE.sub(lambda m: "^" + m.group().translate(_PLAIN), out)
        parts = []
        for char in out:
            if char in _SHOWABLE or (superscripts and char in _SUPERSCRIPTS):
                parts.append(char)
            else:
                self.replaced.add(char)
                parts.append(f"<U+{ord(char):04X}>")
        done = self._cache[key] = "".join(parts)
        return done


def _escaped(text: str) -> str:
    """Cleaned text with ``\\``, ``(`` and ``)`` escaped, for the inside of a PDF literal string."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def literal(text: str) -> bytes:
    """A PDF literal string of cleaned text: WinAnsi bytes with ``(``, ``)`` and ``\\`` escaped."""
    return b"(" + _escaped(text).encode("cp1252") + b")"


def _utf16(text: str) -> bytes:
    """A PDF text string of any Unicode text (UTF-16BE with its byte order mark, as hex: nothing to escape)."""
    return b"<feff" + text.encode("utf-16-be", "surrogatepass").hex().encode() + b">"


def wrap(text: str, width: float, font: str = "F1", size: float = 10.0) -> list[str]:
    """Cleaned text broken into lines no wider than ``width`` points: at spaces, inside words only when one word
    is wider than a line."""
    if font_width(text, font, size) <= width:
        return [text]
    widths = _WIDTHS[font]
    space = widths[" "] * size
    lines: list[str] = []
    line, used = "", 0.0
    for word in text.split(" "):
        w = font_width(word, font, size)
        if line and used + space + w <= width:
            line, used = line + " " + word, used + space + w
            continue
        if line:
            lines.append(line)
        line, used = "", 0.0
        while w > width and len(word) > 1:  # a word longer than a line: break it where it overflows
            taken, acc = 0, 0.0
            for char in word:
                step = widths.get(char, 0.556) * size
                if acc + step > width and taken:
                    break
                acc += step
                taken += 1
            lines.append(word[:taken])
            word = word[taken:]
            w = font_width(word, font, size)
        line, used = word, w
    lines.append(line)
    return lines


def rgb(colour: str) -> tuple[float, float, float] | None:
    """``#rrggbb``, ``#rgb`` or a few names as 0-1 RGB; ``none`` (or unknown) -> None."""
    colour = colour.strip().lower()
    names = {"white": "#ffffff", "black": "#000000", "red": "#ff0000", "grey": "#808080", "gray": "#808080"}
    colour = names.get(colour, colour)
    if colour.startswith("#") and len(colour) == 4:
        colour = "#" + "".join(c * 2 for c in colour[1:])
    if not (colour.startswith("#") and len(colour) == 7):
        return None
    try:
        return tuple(int(colour[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
    except ValueError:
        return None


@cache
def _colour_op(colour: str, op: str) -> str:
    value = rgb(colour)
    if value is None:
        return ""
    return " ".join(f"{c:.3f}".rstrip("0").rstrip(".") or "0" for c in value) + " " + op


class Page:
    """One page: a list of content operators in top-down point coordinates (written with two decimals, 1/7200
    inch)."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.ops: list[str] = [f"1 0 0 -1 0 {doc.height:.2f} cm 1 j"]

    def fill(self, colour: str) -> None:
        self.ops.append(_colour_op(colour, "rg"))

    def stroke(self, colour: str) -> None:
        self.ops.append(_colour_op(colour, "RG"))

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.ops.append(f"{_colour_op(fill, 'rg')} {x:.2f} {y:.2f} {w:.2f} {h:.2f} re f")

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 0.5) -> None:
        self.ops.append(f"{_colour_op(colour, 'RG')} {width:.2f} w {x1:.2f} {y1:.2f} m {x2:.2f} {y2:.2f} l S")

    def text(self, x: float, y: float, text: str, size: float, font: str = "F1", colour: str = "#1d2330",
             anchor: str = "start", rotate: int = 0, rise: float = 0.0, offset: float = 0.0) -> float:
        """Draw cleaned text with its baseline through ``(x, y)``; returns its width.

        ``rotate``: 0, 90 (reading downwards) or -90 degrees (upwards); ``offset`` moves the text along its
        baseline, ``rise`` across it (superscripts)."""
        width = font_width(text, font, size)
        along = offset - {"middle": width / 2, "end": width}.get(anchor, 0.0)
        if rotate == 0:
            matrix = f"1 0 0 -1 {x + along:.2f} {y - rise:.2f}"
        elif rotate == -90:
            matrix = f"0 -1 -1 0 {x - rise:.2f} {y - along:.2f}"
        else:
            matrix = f"0 1 1 0 {x + rise:.2f} {y + along:.2f}"
        self.ops.append(f"BT {_colour_op(colour, 'rg')} /{font} {size:.2f} Tf {matrix} Tm ({_escaped(text)}) Tj ET")
        return width

    def raw(self, op: str) -> None:
        self.ops.append(op)

    def alpha(self, fill: float = 1.0, stroke: float = 1.0) -> None:
        """Set the fill and stroke opacity (an ExtGState shared by the whole document)."""
        self.ops.append(f"/{self.doc.gstate(fill, stroke)} gs")

    def image(self, png: bytes, x: float, y: float, w: float, h: float) -> None:
        """Draw an 8-bit indexed PNG (as :func:`cytopipe.svg.png_indexed` writes) stretched over a box."""
        name = self.doc.image(png)
        self.ops.append(f"q {w:.2f} 0 0 {-h:.2f} {x:.2f} {y + h:.2f} cm /{name} Do Q")


def _png_image(png: bytes) -> dict[str, Any]:
    """An indexed PNG's pieces for a PDF image XObject (its IDAT stream is used as is, with the PNG predictor)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, chunks, idat = 8, {}, []
    while pos + 8 <= len(png):
        length, tag = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if tag == b"IDAT":
            idat.append(data)
        else:
            chunks[tag] = data
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    if depth != 8 or colour != 3 or interlace or b"PLTE" not in chunks:
        raise ValueError("only 8-bit indexed, non-interlaced PNGs are embedded")
    alpha = chunks.get(b"tRNS", b"")
    return {"width": width, "height": height, "palette": chunks[b"PLTE"], "data": b"".join(idat),
            "transparent": [i for i, a in enumerate(alpha) if a == 0]}


class Document:
    """A PDF being built: pages, shared fonts, opacity states and images; :meth:`tobytes` writes it."""

    def __init__(self, width: float = 595.276, height: float = 841.89, title: str = "",
                 producer: str = "cytopipe") -> None:
        self.width, self.height = width, height
        self.title, self.producer = title, producer
        self.pages: list[Page] = []
        self._gstates: dict[tuple[float, float], str] = {}
        self._images: dict[bytes, tuple[str, dict[str, Any]]] = {}
        self.outline: list[tuple[int, str, int, float]] = []

    def bookmark(self, title: str, level: int, y: float) -> None:
        """A bookmark (level 1, or 2 under the last level-1 one) to the current page at ``y`` points from its top;
        any Unicode title (bookmarks are UTF-16 text strings, not the page font)."""
        if self.pages:
            self.outline.append((level if self.outline else 1, title, len(self.pages) - 1, y))

    def add_page(self) -> Page:
        page = Page(self)
        self.pages.append(page)
        return page

    def gstate(self, fill: float, stroke: float) -> str:
        key = (round(fill, 3), round(stroke, 3))
        if key not in self._gstates:
            self._gstates[key] = f"GS{len(self._gstates)}"
        return self._gstates[key]

    def image(self, png: bytes) -> str:
        if png not in self._images:
            self._images[png] = (f"Im{len(self._images)}", _png_image(png))
        return self._images[png][0]

    def _outline(self, root: int, page_ids: list[int]) -> list[bytes]:
        """The outline (bookmarks) objects, numbered from ``root``: level-1 items, each with its level-2 children."""
        items = [{"id": root + 1 + i, "level": level, "title": title, "page": page, "y": y, "kids": []}
                 for i, (level, title, page, y) in enumerate(self.outline)]
        top: list[dict[str, Any]] = []
        for item in items:
            if item["level"] == 2 and top:
                item["parent"] = top[-1]["id"]
                top[-1]["kids"].append(item)
            else:
                item["parent"] = root
                top.append(item)

        def links(siblings: list[dict[str, Any]]) -> None:
            for k, item in enumerate(siblings):
                item["prev"] = siblings[k - 1]["id"] if k else None
                item["next"] = siblings[k + 1]["id"] if k + 1 < len(siblings) else None
                links(item["kids"])

        links(top)
        out = [f"<< /Type /Outlines /First {top[0]['id']} 0 R /Last {top[-1]['id']} 0 R /Count {len(top)} >>"
               .encode()]
        for item in items:
            fields = [f"/Parent {item['parent']} 0 R",
                      f"/Dest [{page_ids[item['page']]} 0 R /XYZ 0 {self.height - item['y']:.2f} 0]"]
            fields += [f"/{key.capitalize()} {item[key]} 0 R" for key in ("prev", "next") if item[key]]
            if item["kids"]:
                fields.append(f"/First {item['kids'][0]['id']} 0 R /Last {item['kids'][-1]['id']} 0 R "
                              f"/Count -{len(item['kids'])}")  # closed: a long report lists sections first
            out.append(b"<< /Title " + _utf16(item["title"]) + (" " + " ".join(fields) + " >>").encode())
        return out

    def tobytes(self, level: int = 6) -> bytes:
        """The PDF file (byte-identical for the same pages)."""
        n_fixed = 3 + len(_FONTS)  # catalog, pages, resources, fonts
        image_ids = {name: n_fixed + 1 + i for i, (name, _) in enumerate(self._images.values())}
        first_page = n_fixed + len(image_ids) + 1
        page_ids = [first_page + 2 * i for i in range(len(self.pages))]
        info_id = first_page + 2 * len(self.pages)
        objects: list[bytes] = []
        kids = " ".join(f"{i} 0 R" for i in page_ids)
        outline_id = info_id + 1
        objects.append(b"<< /Type /Catalog /Pages 2 0 R"
                       + (f" /Outlines {outline_id} 0 R /PageMode /UseOutlines".encode() if self.outline else b"")
                       + b" >>")
        objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(self.pages)} >>".encode())
        fonts = " ".join(f"/{key} {4 + i} 0 R" for i, key in enumerate(_FONTS))
        states = " ".join(f"/{name} << /Type /ExtGState /ca {a} /CA {b} >>" for (a, b), name in self._gstates.items())
        images = " ".join(f"/{name} {i} 0 R" for name, i in image_ids.items())
        objects.append(f"<< /Font << {fonts} >> /ExtGState << {states} >> /XObject << {images} >> "
                       "/ProcSet [/PDF /Text /ImageC /ImageI] >>".encode())
        for name in _FONTS.values():
            objects.append(f"<< /Type /Font /Subtype /Type1 /BaseFont /{name} /Encoding /WinAnsiEncoding >>"
                           .encode())
        for _, image in self._images.values():
            mask = " ".join(f"{i} {i}" for i in image["transparent"][:1])
            head = (f"<< /Type /XObject /Subtype /Image /Width {image['width']} /Height {image['height']} "
                    f"/ColorSpace [/Indexed /DeviceRGB {len(image['palette']) // 3 - 1} <{image['palette'].hex()}>] "
                    f"/BitsPerComponent 8 /Filter /FlateDecode /DecodeParms << /Predictor 15 /Colors 1 "
                    f"/BitsPerComponent 8 /Columns {image['width']} >> /Interpolate false"
                    + (f" /Mask [{mask}]" if mask else "") + f" /Length {len(image['data'])} >>")
            objects.append(head.encode() + b"\nstream\n" + image["data"] + b"\nendstream")
        for page, page_id in zip(self.pages, page_ids, strict=True):
            objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {self.width:.2f} {self.height:.2f}] "
                           f"/Resources 3 0 R /Contents {page_id + 1} 0 R >>".encode())
            body = zlib.compress("\n".join(op for op in page.ops if op).encode("cp1252"), level)
            objects.append(f"<< /Length {len(body)} /Filter /FlateDecode >>\nstream\n".encode() + body
                           + b"\nendstream")
        objects.append(b"<< /Title " + _utf16(self.title) + b" /Producer " + literal(self.producer) + b" >>")
        if self.outline:
            objects.extend(self._outline(outline_id, page_ids))
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
        xref = len(out)
        out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
        out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
        out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info_id} 0 R >>\nstartxref\n{xref}\n"
                "%%EOF\n").encode()
        return bytes(out)

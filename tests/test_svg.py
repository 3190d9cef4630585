"""SVG text of a figure (cytopipe.svg.render): every user string escaped wherever it lands, the document parses,
the numbers written are the figure's."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from cytopipe.svg import Figure, Panel, render

NS = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x')</script> & \"q\""


def _every_slot(name: str) -> Figure:
    """A figure with ``name`` in every string a caller can set."""
    panel = Panel(60.0, 40.0, 200.0, 100.0, title=[name, f"2 of {name}"], tooltip=name, xlabel=name, ylabel=name,
                  ylabel_right=name, xticks=[(70.0, name)], yticks=[(90.0, name)], yticks_right=[(80.0, name)],
                  right_colour="#9a6700", grid=True, limits=(0.0, 1.0, 0.0, 2.0))
    panel.path("M60,40L100,100Z", stroke="#333333", dash="2 3", opacity=0.5, gid="gate", fill_opacity=0.2)
    for shape in ("circle", "square", "diamond"):
        panel.marker(100.0, 80.0, shape, title=name)
    panel.texts.append({"x": 70, "y": 60, "text": name, "fill": "#111111"})
    panel.outside.append({"x": 10, "y": 160, "text": name, "anchor": "end", "cls": "tick"})
    legend = [{"kind": kind, "colour": "#0072B2", "label": name, "x": 10.0, "y": 180.0, "dash": "5 3"}
              for kind in ("line", "band", "open", "square", "diamond", "dot")]
    return Figure(300.0, 200.0, title=name, panels=[panel], legend=legend, label=name)


def test_render_escapes_user_strings_everywhere() -> None:
    for standalone in (False, True):
        text = render(_every_slot(HOSTILE), ident="f1", standalone=standalone)
        assert "<script" not in text and "'x'" not in text and '"q"' not in text
        root = ET.fromstring(text if standalone else text.replace("<svg", f'<svg xmlns="{NS[1:-1]}"', 1))
        assert root.get("aria-label") == HOSTILE
        texts = [e for e in root.iter() if e.tag in (f"{NS}text", f"{NS}tspan", f"{NS}title")]
        found = ["".join(e.itertext()) for e in texts if e.text]
        # head, 2 title lines (+ tooltip), 3 labels, 3 ticks, 3 marker titles, inside and outside text, 6 legend labels
        assert sum(HOSTILE in t for t in found) >= 19
        assert root.find(f".//{NS}style") is not None if standalone else root.find(f".//{NS}style") is None


def test_render_writes_ascii_and_every_character_reads_back() -> None:
    """Non-ASCII text (superscripts, accents, a name's emoji) is written as character references, so the file is
    ASCII; a parser reads the same text back. A lone surrogate (no XML document may hold one) reads as U+FFFD."""
    name = "Müller−10³ 🧪 \ud800<x>"
    text = render(_every_slot(name), ident="f1", standalone=True)
    assert text.isascii()
    root = ET.fromstring(text)
    assert root.get("aria-label") == name.replace("\ud800", "\ufffd")


def test_render_writes_the_figures_numbers() -> None:
    text = render(_every_slot("a"), ident="p<1>")
    root = ET.fromstring(text.replace("<svg", f'<svg xmlns="{NS[1:-1]}"', 1))
    assert root.get("viewBox") == "0 0 300.0 200.0" and root.get("width") == "300.0"
    (g,) = [g for g in root.iter(f"{NS}g") if g.get("class") == "panel"]
    assert g.get("data-limits") == "0.0 1.0 0.0 2.0"
    clip = g.find(f"{NS}clipPath")
    assert clip.get("id") == "p<1>-c1"  # the id prefix escaped in the file, intact once parsed
    assert [clip[0].get(k) for k in ("x", "y", "width", "height")] == ["60.0", "40.0", "200.0", "100.0"]
    (gate,) = [p for p in g.iter(f"{NS}path") if p.get("class") == "gate"]
    assert (gate.get("d"), gate.get("stroke-dasharray"), gate.get("opacity"), gate.get("fill-opacity")) == \
        ("M60,40L100,100Z", "2 3", "0.5", "0.2")
    ticks = {(t.get("x"), t.get("y"), t.get("text-anchor")) for t in g.iter(f"{NS}text") if t.get("class") == "tick"}
    assert {("70.0", "154.0", "middle"), ("54.0", "93.5", "end"), ("266.0", "83.5", None)} <= ticks
    assert render(_every_slot("a"), ident="p<1>") == text  # deterministic


def test_a_saved_figure_inlines_as_its_render(tmp_path) -> None:
    """What the report inlines from a figure file (report.inline_svg, read as each sample's result arrives) is the
    figure's own SVG element: no namespace, no style sheet, nothing else lost; line breaks in user text read as a
    text-mode read gives them."""
    from cytopipe.plots import figure_id, save_figure
    from cytopipe.report import inline_svg

    for name in ("S1", HOSTILE, "a\r\nb\rc"):
        figure = _every_slot(name)
        path = save_figure(figure, tmp_path / "g.svg", ident=figure_id(name))
        expected = render(figure, figure_id(name)).replace("\r\n", "\n").replace("\r", "\n")
        assert inline_svg(path) == expected
    (tmp_path / "bad.svg").write_bytes(b"<svg>\xff</svg>")
    assert inline_svg(tmp_path / "bad.svg") is None and inline_svg(tmp_path / "missing.svg") is None


def test_trace_places_clipped_values_as_the_axis_does() -> None:
    """svg.trace (a gate outline's pixels, without two method calls per vertex) is Axis.place of Axis.clip, to the
    bit: open sides one axis length beyond the limits, huge values a thousand, NaN kept (it breaks the path)."""
    import math

    from cytopipe.svg import Axis, trace

    for lo, hi, px0, px1 in ((0.0, 1.0, 56.0, 216.0), (-0.37, 4.42, 230.0, 70.0), (1e-3, 262143.0, 0.0, 160.0)):
        axis = Axis(lo, hi, px0, px1)
        span = hi - lo
        values = [lo, hi, 0.1 * span + lo, -math.inf, math.inf, lo - 999 * span, hi + 2000 * span, -1e300, 1e300,
                  0.0, -0.0]
        expected = [axis.place(axis.clip(v)) for v in values]
        got = trace(values, lo, hi, px0, px1)
        assert [v.hex() for v in got] == [v.hex() for v in expected]
        assert math.isnan(trace([math.nan], lo, hi, px0, px1)[0])

"""Figures: what is drawn matches the data (the SVG parses, points and gates sit where the data says, text is legible),
files are written atomically and byte-reproducibly. Not timed: speed is measured in benchmarks/bench.py."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from cytopipe.fcs import Sample
from cytopipe.gates import BooleanGate, Dimension, GatingStrategy, PolygonGate, Population, RectangleGate
from cytopipe.plots import (
    fold_change_overview,
    gating_hierarchy,
    histogram2d,
    save_figure,
    time_course,
    time_courses,
)
from cytopipe.stats import baseline_table
from cytopipe.svg import colormap, png_indexed, render, transform_ticks
from cytopipe.transforms import Logicle

REPO = Path(__file__).resolve().parents[1]
NS = {"s": "http://www.w3.org/2000/svg"}
LOGICLE = Logicle(T=262144, W=0.5, M=4.5, A=0)


def _table(subjects: dict[str, list[tuple[str, int, int, int]]], clinical: pd.DataFrame | None = None
           ) -> pd.DataFrame:
    rows = [(f"{s}_{tp}", s, tp, day, cd4, treg) for s, visits in subjects.items() for tp, day, cd4, treg in visits]
    treg = pd.DataFrame(rows, columns=["sample", "subject", "timepoint", "day", "cd4_events", "treg_events"])
    treg["treg_pct"] = 100 * treg["treg_events"] / treg["cd4_events"]
    return baseline_table(treg, clinical=clinical)


STUDY = {"ITP-01": [("D0", 0, 20000, 600), ("W1", 7, 20000, 1100), ("W3", 21, 20000, 1800), ("W6", 42, 1500, 60)],
         "P $1$ <x>": [("D0", 0, 20000, 800), ("W3", 21, 20000, 830)]}
CLINICAL = pd.DataFrame({"subject": ["ITP-01"] * 5 + ["P $1$ <x>"] * 2, "day": [0.0, 7, 21, 28, 42, 0, 21],
                         "platelets": [36.0, 41, 85, 80, 60, 40, 45]})


class Drawn:
    """An SVG figure parsed back: panels with their box and data limits, so pixels map back to data units."""

    def __init__(self, text: str) -> None:
        if "xmlns=" not in text:  # inlined in HTML without the namespace
            text = text.replace("<svg", f'<svg xmlns="{NS["s"]}"', 1)
        self.text = text
        self.root = ET.fromstring(text)
        self.panels = [_Panel(g) for g in self.root.iter(f"{{{NS['s']}}}g") if g.get("class") == "panel"]

    def font_sizes(self) -> list[float]:
        """Every font size in the figure (CSS rules and attributes), in px."""
        sizes = [float(v) for v in re.findall(r"font-size:\s*([0-9.]+)px", self.text)]
        sizes += [float(e.get("font-size")) for e in self.root.iter() if e.get("font-size")]
        return sizes


class _Panel:
    def __init__(self, g: ET.Element) -> None:
        self.g = g
        rect = g.find("s:clipPath/s:rect", NS)
        self.x, self.y = float(rect.get("x")), float(rect.get("y"))
        self.w, self.h = float(rect.get("width")), float(rect.get("height"))
        self.limits = [float(v) for v in g.get("data-limits", "").split()] or None
        self.title = [t.text for t in g.iterfind("s:text[@class='ttl']/s:tspan", NS)]

    def data(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x0, x1, y0, y1 = self.limits
        return x0 + (px - self.x) / self.w * (x1 - x0), y0 + (self.y + self.h - py) / self.h * (y1 - y0)

    def paths(self, cls: str) -> list[np.ndarray]:
        return [_points(p.get("d")) for p in self.g.iter(f"{{{NS['s']}}}path") if p.get("class") == cls]

    def markers(self, tag: str) -> list[ET.Element]:
        return list(self.g.iter(f"{{{NS['s']}}}{tag}"))

    def ticks(self, axis: str) -> list[tuple[float, str]]:
        """(pixel, label) of the x (below the box) or y (left of the box) tick labels."""
        out = []
        for t in self.g.iterfind("s:text[@class='tick']", NS):
            x, y = float(t.get("x")), float(t.get("y"))
            if axis == "x" and y > self.y + self.h and abs(y - (self.y + self.h + 14)) < 0.5:
                out.append((x, t.text))
            elif axis == "y" and x < self.x and t.get("text-anchor") == "end":
                out.append((y - 3.5, t.text))
        return out

    def image(self) -> np.ndarray:
        """The panel's raster as a browser shows it: its images (a density, and any drawn over it) composited."""
        shown = None
        for element in self.g.iterfind(".//s:image", NS):
            href = element.get("href")
            assert href.startswith("data:image/png;base64,")
            layer = Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))).convert("RGBA")
            shown = layer if shown is None else Image.alpha_composite(shown, layer)
        assert shown is not None
        return np.asarray(shown)


def _points(d: str) -> np.ndarray:
    """The vertices of SVG path data made of absolute M, L, H, V and Z commands."""
    points: list[tuple[float, float]] = []
    x = y = 0.0
    for command, args in re.findall(r"([MLHVZ])([^MLHVZ]*)", d):
        values = [float(v) for v in re.findall(r"-?[0-9.]+", args)]
        if command in "ML":
            points += list(zip(values[::2], values[1::2], strict=True))
            x, y = points[-1]
        for value in values if command in "HV" else ():
            x, y = (value, y) if command == "H" else (x, value)
            points.append((x, y))
    return np.array(points)


def test_png_writer_round_trips() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    palette = colormap("viridis", 12)
    decoded = Image.open(io.BytesIO(png_indexed(pixels, palette)))
    assert decoded.mode == "P" and decoded.size == (4, 3)
    assert np.array_equal(np.asarray(decoded), pixels)
    rgba = np.asarray(decoded.convert("RGBA"))
    assert rgba[0, 0, 3] == 0 and (rgba.reshape(-1, 4)[1:, 3] == 255).all()  # index 0 transparent
    assert np.array_equal(rgba[2, 3, :3], palette[11])


@pytest.mark.parametrize("transparent", [(0,), (), (0, 3), (-1,)])
def test_png_transparency_ends_at_the_last_transparent_entry(transparent: tuple[int, ...]) -> None:
    pixels = np.array([[0, 1, 2], [3, 250, 255]], dtype=np.uint8)
    png = png_indexed(pixels, colormap("viridis", 256), transparent)
    alpha = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3]
    assert np.array_equal(alpha, np.where(np.isin(pixels, [t % 256 for t in transparent]), 0, 255))
    # tRNS lists the entries up to the last transparent one only (the others are opaque by the standard).
    trns = png.find(b"tRNS")
    length = int.from_bytes(png[trns - 4:trns], "big") if trns > 0 else 0
    assert length == (max(t % 256 for t in transparent) + 1 if transparent else 0)


def test_viridis_matches_matplotlib() -> None:
    from matplotlib import colormaps

    ours = colormap("viridis").astype(float)
    theirs = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255
    assert np.abs(ours - theirs).max() < 6  # 17 anchors, linear between them: within 6 of 255 per channel


def test_histogram2d_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 5000), rng.normal(1, 2, 5000)
    x[:10] = np.nan
    ours = histogram2d(x, y, (-2.0, 2.0), (-3.0, 5.0), bins=20)
    theirs, _, _ = np.histogram2d(x[10:], y[10:], bins=20, range=((-2, 2), (-3, 5)))
    # numpy closes the last bin on the right; ours is half-open: values exactly at the top edge are the only
    # possible difference, and there are none in continuous data.
    assert np.array_equal(ours, theirs.astype(int))


@pytest.mark.parametrize("n", [1, 5, 300, 1_000, 2_000, 12_345])
def test_axis_ranges_are_the_order_statistics_numpy_partition_gives(n: int) -> None:
    from cytopipe.plots import _order_stats, _ranges

    rng = np.random.default_rng(n)
    columns = [rng.normal(0, 1, n), rng.lognormal(0, 2, n), rng.integers(0, 3, n) * 1.0,  # heavy ties
               np.sort(rng.normal(0, 1, n)), np.full(n, 7.0)]  # sorted, constant
    values = np.asfortranarray(np.column_stack(columns).astype(np.float32))
    some = values[:: max(1, -(-n // 2_000))]
    m = some.shape[0]
    ranks = (int(0.002 * (m - 1)), int(np.ceil(0.998 * (m - 1))))
    expected = np.partition(some, ranks, axis=0)[list(ranks)].T.tolist()
    assert [list(r) for r in _ranges(values)] == expected
    for low, high in ((0, m - 1), (min(3, m - 1), max(m - 4, 0)), (min(15, m - 1), max(m - 16, 0))):
        ends = np.partition(some, (low, high), axis=0)
        expected = list(zip(ends[low].tolist(), ends[high].tolist(), strict=True))
        assert _order_stats(np.asfortranarray(some), low, high) == expected
    with_nan = values.copy()
    with_nan[::3, 0] = np.nan  # each column on its finite values
    column = with_nan[:: max(1, -(-n // 2_000)), 0]
    finite = column[np.isfinite(column)]
    if finite.size:
        ranks = (int(0.002 * (finite.size - 1)), int(np.ceil(0.998 * (finite.size - 1))))
        assert _ranges(with_nan)[0] == tuple(np.partition(finite, ranks)[list(ranks)].tolist())
    else:
        assert _ranges(with_nan)[0] == (0.0, 1.0)


def test_logicle_ticks_are_intensities() -> None:
    ticks = dict((label, pos) for pos, label in transform_ticks(LOGICLE, (0.0, 1.0)))
    assert {"0", "10³", "10⁴", "10⁵"} <= set(ticks)
    assert ticks["10³"] == pytest.approx(float(LOGICLE.apply(np.array([1000.0]))[0]), abs=1e-9)
    assert ticks["0"] == pytest.approx(float(LOGICLE.apply(np.array([0.0]))[0]), abs=1e-9)
    positions = sorted(ticks.values())
    assert min(np.diff(positions)) >= 0.15  # labels never overlap
    linear = transform_ticks(None, (0.0, 262144.0))
    assert [label for _, label in linear] == ["0", "100k", "200k"]


# ------------------------------------------------------------------------------------------------ time course


def test_time_course_draws_the_table() -> None:
    table = _table(STUDY, CLINICAL)
    drawn = Drawn(render(time_course(table, "ITP-01", CLINICAL), standalone=True))
    (panel,) = drawn.panels
    rows = table[table["subject"] == "ITP-01"]
    (line,) = panel.paths("treg_pct")
    days, pct = panel.data(line[:, 0], line[:, 1])
    assert days == pytest.approx(list(rows["day"]), abs=0.2)
    assert pct == pytest.approx(list(rows["treg_pct"]), abs=0.05)
    # Significance is the point itself (a red diamond at the value), not a mark above it: W1 and W3.
    diamonds = [m for m in panel.markers("path") if m.find("s:title", NS) is not None]
    assert [m.find("s:title", NS).text.split(" ")[0] for m in diamonds] == ["W1", "W3"]
    for m in diamonds:
        tip = _points(m.get("d"))  # M top, L right, L bottom, L left: the centre is the mean
        _, value = panel.data(*tip.mean(axis=0))
        label = m.find("s:title", NS).text.split(" ")[0]
        assert value == pytest.approx(float(rows[rows["timepoint"] == label]["treg_pct"].iloc[0]), abs=0.05)
    circles = panel.markers("circle")
    assert [c.get("fill") for c in circles] == ["#0072B2", "#ffffff"]  # D0 filled, W6 (low events) open
    squares = panel.markers("rect")[2:]  # after the clip and background rectangles
    assert len(squares) == 5  # every clinical platelet count, also day 28 without a blood draw
    assert "platelets (×10⁹/L)" in [e.text for e in drawn.root.iter()]
    assert [label for _, label in panel.ticks("x")] == ["d0", "d7", "d21", "d42"]
    assert min(drawn.font_sizes()) >= 10


def test_time_course_without_clinical_and_escaping(tmp_path: Path) -> None:
    table = _table(STUDY)
    path = save_figure(time_course(table, "P $1$ <x>"), tmp_path / "p1")
    text = path.read_text()
    assert path.name == "p1.svg" and "P $1$ &lt;x&gt;" in text and "<x>" not in text
    assert "platelets" not in text and "significant change" not in text
    ET.fromstring(text.split("\n", 1)[1])
    with pytest.raises(ValueError, match="not in the baseline table"):
        time_course(table, "nobody")


def test_time_courses_group_the_table_once_and_draw_each_subject_by_day() -> None:
    """The report's one-pass grouping draws what time_course draws for each subject, in day order whatever the
    table's row order (also a missing day, and platelets joined into the table instead of a clinical table)."""
    table = _table(STUDY, CLINICAL)
    shuffled = table.iloc[::-1].reset_index(drop=True)
    shuffled.loc[shuffled["timepoint"] == "W3", "platelets"] = np.nan
    shuffled.loc[(shuffled["subject"] == "ITP-01") & (shuffled["timepoint"] == "W6"), "day"] = np.nan
    for clinical in (CLINICAL, None):
        figures = time_courses(shuffled, clinical)
        assert list(figures) == ["P $1$ <x>", "ITP-01"]
        for subject, figure in figures.items():
            text = render(figure, standalone=True)
            assert text == render(time_course(shuffled, subject, clinical), standalone=True)
            (line,) = Drawn(text).panels[0].paths("treg_pct")
            assert (np.diff(line[:, 0]) > 0).all()  # by day, the visit without a day left out
    drawn = Drawn(render(time_courses(shuffled)["ITP-01"], standalone=True))
    assert len(drawn.panels[0].markers("rect")[2:]) == 2  # platelets of the table: D0 and W1 (W3 NaN, W6 no day)


def test_fold_change_overview_rows() -> None:
    table = _table(STUDY)
    drawn = Drawn(render(fold_change_overview(table)))
    (panel,) = drawn.panels
    labels = [t.text for t in panel.g.iterfind("s:text[@text-anchor='end']", NS) if float(t.get("x")) < panel.x]
    labels = [label for label in labels if "  " in label]
    assert labels == ["ITP-01  W1", "ITP-01  W3", "ITP-01  W6", "P $1$ <x>  W3"]
    later = table[~table["is_baseline"]].sort_values(["subject", "day"])
    circles = panel.markers("circle")
    x0, x1 = panel.limits[:2]
    fold = [10 ** (np.log10(x0) + (float(c.get("cx")) - panel.x) / panel.w * (np.log10(x1) - np.log10(x0)))
            for c in circles]
    assert fold == pytest.approx(list(later["fold_change"]), rel=0.01)
    filled = [c.get("fill") != "#ffffff" for c in circles]
    assert filled == list(later["significant"].astype(bool))
    baseline_only = _table({"A": [("D0", 0, 20000, 600)]})
    assert "no timepoint after baseline" in render(fold_change_overview(baseline_only))


def test_save_figure_atomic_and_deterministic(tmp_path: Path) -> None:
    fig = time_course(_table(STUDY, CLINICAL), "ITP-01", CLINICAL)
    path = save_figure(fig, tmp_path / "sub" / "tc")
    assert path == tmp_path / "sub" / "tc.svg"
    first = path.read_bytes()
    assert first.startswith(b"<?xml")
    save_figure(time_course(_table(STUDY, CLINICAL), "ITP-01", CLINICAL), tmp_path / "sub" / "tc.svg")
    assert path.read_bytes() == first  # no timestamps or random ids
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "tc.svg"]


# ------------------------------------------------------------------------------------------------ gating


def _sample_and_strategy(n: int = 6000) -> tuple[Sample, GatingStrategy]:
    rng = np.random.default_rng(7)
    lymph = rng.random(n) < 0.7
    fsc = np.where(lymph, rng.normal(50000, 5000, n), rng.normal(110000, 8000, n))
    ssc = np.where(lymph, rng.normal(15000, 3000, n), rng.normal(60000, 8000, n))
    cd4_pos = rng.random(n) < 0.6
    cd4 = np.where(cd4_pos, rng.normal(5000, 1000, n), rng.normal(50, 80, n))
    treg = cd4_pos & (rng.random(n) < 0.06)
    cd25 = np.where(treg, rng.normal(8000, 1500, n), rng.normal(200, 150, n))
    events = np.column_stack([fsc, ssc, cd4, cd25]).astype(np.float32)
    sample = Sample("", events, ("FSC-A", "SSC-A", "FITC-A", "PE-A"), ("", "", "CD4", "CD25"), {}, "FCS3.1")
    logicle = Logicle(T=262144, W=0.5, M=4.5, A=0)
    scatter = (Dimension("FSC-A"), Dimension("SSC-A"))
    pops = (
        Population("Lymphocytes", PolygonGate("Lymphocytes", scatter,
                                              vertices=((30000, 2000), (75000, 2000), (75000, 30000), (30000, 30000)))),
        Population("CD4+", RectangleGate("CD4+", (Dimension("CD4", logicle),), min=(0.5,), max=(None,)),
                   "Lymphocytes"),
        Population("Treg", RectangleGate("Treg", (Dimension("CD4", logicle), Dimension("CD25", logicle)),
                                         min=(0.5, 0.55), max=(None, None)), "CD4+"),
        Population("Tcon", BooleanGate("Tcon", op="not", operands=("Treg",)), "CD4+"),
    )
    return sample, GatingStrategy(pops, treg="Treg", parent="CD4+", compensation="none")



def test_gating_hierarchy_panels_follow_the_strategy() -> None:
    sample, strategy = _sample_and_strategy()
    result = strategy.apply(sample)
    assert 100 < result.counts["Treg"] < result.counts["CD4+"] < result.counts["Lymphocytes"]
    drawn = Drawn(render(gating_hierarchy(result, strategy, "S1 <x>")))
    assert len(drawn.panels) == 4  # three gates + back-gating; the boolean Tcon has no axes of its own to draw
    for panel, pop in zip(drawn.panels, ("Lymphocytes", "CD4+", "Treg"), strict=False):
        parent = strategy.population(pop).parent
        n_parent = result.counts[parent] if parent else result.n_events
        assert panel.title == [pop, f"{result.counts[pop]:,} = {100 * result.counts[pop] / n_parent:.1f}% of "
                                    f"{parent or 'all events'}"]
    assert drawn.panels[3].title == ["Back-gating: Treg", f"{result.counts['Treg']:,} events (red) on scatter"]
    assert "Gating of S1 &lt;x&gt;" in drawn.text
    # The polygon is drawn at its vertices (pixels mapped back through the panel's limits).
    (outline,) = drawn.panels[0].paths("gate")
    xs, ys = drawn.panels[0].data(outline[:, 0], outline[:, 1])
    assert xs[:4] == pytest.approx([30000, 75000, 75000, 30000], rel=0.005)
    assert ys[:4] == pytest.approx([2000, 2000, 30000, 30000], rel=0.01)
    # The 1-D CD4 gate: a histogram with the cut drawn at 0.5 in logicle units, the axis labelled in intensities.
    (cut,) = drawn.panels[1].paths("gate")
    assert drawn.panels[1].data(cut[:, 0], cut[:, 1])[0] == pytest.approx([0.5, 0.5], abs=0.005)  # top to bottom
    labels = [label for _, label in drawn.panels[1].ticks("x")]
    assert "10³" in labels and "0" in labels
    # The open Treg rectangle: its closed corner at (0.5, 0.55), open sides beyond the axes.
    (rect,) = drawn.panels[2].paths("gate")
    x, y = drawn.panels[2].data(rect[:, 0], rect[:, 1])
    assert x.min() == pytest.approx(0.5, abs=0.005) and y.min() == pytest.approx(0.55, abs=0.005)
    x0, x1, y0, y1 = drawn.panels[2].limits
    assert x.max() > x1 and y.max() > y1


def _inside_path(outline_px: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return MplPath(outline_px).contains_points(np.column_stack([px, py]))


def test_gate_outline_selects_what_the_gate_selects() -> None:
    """Events inside the drawn outline (as a browser would fill it) are the events the gate keeps."""
    sample, strategy = _sample_and_strategy(20000)
    result = strategy.apply(sample)
    drawn = Drawn(render(gating_hierarchy(result, strategy, "S1")))
    for index, name in ((0, "Lymphocytes"), (2, "Treg")):
        panel = drawn.panels[index]
        pop = strategy.population(name)
        parent = result.masks[pop.parent] if pop.parent else np.ones(result.n_events, bool)
        values = result.values(pop.gate)[parent]
        x0, x1, y0, y1 = panel.limits
        px = panel.x + (values[:, 0] - x0) / (x1 - x0) * panel.w
        py = panel.y + panel.h - (values[:, 1] - y0) / (y1 - y0) * panel.h
        (outline,) = panel.paths("gate")
        visible = (px > panel.x) & (px < panel.x + panel.w) & (py > panel.y) & (py < panel.y + panel.h)
        agree = _inside_path(outline, px, py) == pop.gate.mask(values)
        assert visible.sum() > 0.95 * values.shape[0]
        assert agree[visible].mean() > 0.995, name  # only events within a pixel of the edge may differ


def test_gating_densities_are_the_parents_events() -> None:
    sample, strategy = _sample_and_strategy(20000)
    result = strategy.apply(sample)
    drawn = Drawn(render(gating_hierarchy(result, strategy, "S1")))
    root = drawn.panels[0].image()
    filled = root[..., 3] > 0
    # The densest bins are where most events are (the lymphocyte cloud at 50k / 15k).
    rows, cols = np.nonzero(filled)
    assert filled.sum() > 200
    x0, x1, y0, y1 = drawn.panels[0].limits
    ny, nx = filled.shape
    bright = np.unravel_index(np.argmax(root[..., :3].astype(int).sum(axis=-1) * filled), filled.shape)
    cx = x0 + (bright[1] + 0.5) / nx * (x1 - x0)
    cy = y1 - (bright[0] + 0.5) / ny * (y1 - y0)
    assert abs(cx - 50000) < 8000 and abs(cy - 15000) < 5000
    # Back-gating: red bins exist exactly where Treg events are on scatter.
    back = drawn.panels[3].image()
    red = (back[..., 3] > 0) & (back[..., 0].astype(int) > back[..., 2].astype(int) + 60)
    scatter = result.values(strategy.population("Lymphocytes").gate)[result.masks["Treg"]]
    bx0, bx1, by0, by1 = drawn.panels[3].limits
    ix = ((scatter[:, 0] - bx0) / (bx1 - bx0) * back.shape[1]).astype(int)
    iy = back.shape[0] - 1 - ((scatter[:, 1] - by0) / (by1 - by0) * back.shape[0]).astype(int)
    ok = (ix >= 0) & (ix < back.shape[1]) & (iy >= 0) & (iy < back.shape[0])
    expected = np.zeros(red.shape, bool)
    expected[iy[ok], ix[ok]] = True
    assert np.array_equal(red, expected)


def test_back_gating_is_drawn_on_the_scatter_gate_panel() -> None:
    """The back-gating panel shows every event where the root scatter panel shows it (same axes, same bins: grey
    wherever the root density has events), the scatter gate dashed at its vertices, and the Treg bins red."""
    sample, strategy = _sample_and_strategy(20000)
    result = strategy.apply(sample)
    drawn = Drawn(render(gating_hierarchy(result, strategy, "S1")))
    root, back = drawn.panels[0], drawn.panels[3]
    assert back.limits == root.limits
    (dashed,) = [p for p in back.g.iter(f"{{{NS['s']}}}path") if p.get("stroke-dasharray")]
    xs, ys = back.data(*_points(dashed.get("d")).T)
    assert xs[:4] == pytest.approx([30000, 75000, 75000, 30000], rel=0.005)
    assert ys[:4] == pytest.approx([2000, 2000, 30000, 30000], rel=0.01)
    image = back.image()
    red = (image[..., 3] > 0) & (image[..., 0].astype(int) > image[..., 2].astype(int) + 60)
    assert 0 < red.sum() < (image[..., 3] > 0).sum()
    # Every Treg event is red, also one whose bin the every-k-th events of the grey density left empty.
    assert np.array_equal(image[..., 3] > 0, (root.image()[..., 3] > 0) | red)


def test_a_worker_s_caches_never_change_a_figure(tmp_path: Path) -> None:
    """A worker keeps what repeats between samples (escaped strings, gate outlines, colour-level tables, histogram
    path formats, axis labels): a figure drawn after many others is byte-identical to one drawn from empty caches,
    and to the same figure drawn in a fresh process (so the number of workers never changes a file)."""
    import subprocess
    import sys

    from cytopipe import plots, svg

    def clear() -> None:
        for cached in (svg._escape_short, svg._level_table, plots._cached_outline, plots._steps,
                       plots._dimension_label):
            cached.cache_clear()

    samples = [_sample_and_strategy(n) for n in (300_000, 20_000, 6000)]
    results = [(strategy.apply(sample), strategy) for sample, strategy in samples]
    clear()
    fresh = [save_figure(gating_hierarchy(r, s, f"S{k} é<"), tmp_path / f"a{k}.svg", "g").read_bytes()
             for k, (r, s) in enumerate(results)]
    for k, (r, s) in reversed(list(enumerate(results))):  # caches full, other order
        assert save_figure(gating_hierarchy(r, s, f"S{k} é<"), tmp_path / f"b{k}.svg", "g").read_bytes() == fresh[k]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_plots import _sample_and_strategy; "
            "from cytopipe.plots import gating_hierarchy, save_figure; sample, s = _sample_and_strategy(6000); "
            "save_figure(gating_hierarchy(s.apply(sample), s, 'S2 é<'), sys.argv[2], 'g')")
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "c2.svg")], check=True)
    assert (tmp_path / "c2.svg").read_bytes() == fresh[2]

def test_gating_text_is_legible_and_unscaled() -> None:
    sample, strategy = _sample_and_strategy()
    text = render(gating_hierarchy(strategy.apply(sample), strategy, "S1"), standalone=True)
    drawn = Drawn(text)
    assert len(drawn.font_sizes()) >= 6 and min(drawn.font_sizes()) >= 10  # >= 9 px at 100 % zoom
    width, height = float(drawn.root.get("width")), float(drawn.root.get("height"))
    assert drawn.root.get("viewBox") == f"0 0 {width:g} {height:g}"  # 1 user unit = 1 CSS px
    assert width <= 1040  # four panels a row: fits the report's 1,044-px column without being scaled down


def test_gating_hierarchy_of_a_large_sample_bins_a_sample_of_events_and_gives_exact_counts() -> None:
    from cytopipe import plots

    sample, strategy = _sample_and_strategy(300_000)
    result = strategy.apply(sample)
    drawn = Drawn(render(gating_hierarchy(result, strategy, "big")))
    assert drawn.panels[1].title[1].startswith(f"{result.counts['CD4+']:,} = ")
    # 1-D counts scaled back to events: the histogram's area is about the parent's count.
    grey = [p for p in drawn.panels[1].g.iter(f"{{{NS['s']}}}path") if p.get("fill") == "#9a9a9a"][0]
    pts = _points(grey.get("d"))
    x, y = drawn.panels[1].data(pts[:, 0], pts[:, 1])
    heights = y[1:-1:2]
    assert heights.sum() == pytest.approx(result.counts["Lymphocytes"], rel=0.02)
    # The gated events shaded (every k-th event's own verdict, read from the gating's packed bits): CD4+ count.
    red = [p for p in drawn.panels[1].g.iter(f"{{{NS['s']}}}path") if p.get("fill") == "#C8102E"][0]
    pts = _points(red.get("d"))
    x, y = drawn.panels[1].data(pts[:, 0], pts[:, 1])
    assert y[1:-1:2].sum() == pytest.approx(result.counts["CD4+"], rel=0.02)
    assert np.all(y[1:-1:2][x[2::2] < 0.49] < 1)  # nothing shaded below the cut at 0.5
    assert plots._MAX_PLOT_EVENTS < result.counts["Lymphocytes"]


def test_gating_hierarchy_draws_empty_populations() -> None:
    sample, strategy = _sample_and_strategy()
    nothing = Population("Treg", RectangleGate("Treg", (Dimension("CD4", LOGICLE), Dimension("CD25", LOGICLE)),
                                               min=(5.0, 5.0), max=(None, None)), "CD4+")
    below = Population("CD25 dim", RectangleGate("CD25 dim", (Dimension("CD25", LOGICLE),), min=(0.1,),
                                                 max=(None,)), "Treg")
    strategy = GatingStrategy((*strategy.populations[:2], nothing, below), treg="Treg", compensation="none")
    result = strategy.apply(sample)
    assert result.counts["Treg"] == result.counts["CD25 dim"] == 0
    drawn = Drawn(render(gating_hierarchy(result, strategy, "empty")))
    assert drawn.panels[2].title == ["Treg", "0 = 0.0% of CD4+"]
    assert drawn.panels[3].title == ["CD25 dim", "0 = – of Treg"]


@pytest.mark.slow
def test_gating_on_the_bundled_study_draws_the_singlet_band(tmp_path: Path) -> None:
    fcs_path, gates_path = REPO / "sample_fcs" / "ITP-01_W3.fcs", REPO / "gates" / "treg.yaml"
    if not (fcs_path.is_file() and gates_path.is_file()):
        pytest.skip("bundled study or gates/treg.yaml not present")
    from cytopipe import autogate
    from cytopipe.fcs import read_fcs
    from cytopipe.gatefile import load_gates
    from cytopipe.pipeline import choose_spillover

    strategy = load_gates(gates_path)
    sample = read_fcs(fcs_path)
    spillover = choose_spillover(sample, strategy)
    if autogate.needs_fitting(strategy):  # the default gate file is data-driven
        strategy, _ = autogate.fit_strategy(strategy, [sample], spillover=spillover)
    result = strategy.apply(sample, spillover)
    path = save_figure(gating_hierarchy(result, strategy, "ITP-01_W3"), tmp_path / "gating_ITP-01_W3")
    drawn = Drawn(path.read_text().split("\n", 1)[1])
    assert len(drawn.panels) == len(strategy.populations) + 1
    assert path.stat().st_size < 100_000  # the report's per-sample budget
    singlets = next(p for p in drawn.panels if p.title[0] == "Singlets")
    (band,) = singlets.paths("gate")
    pop = strategy.population("Singlets")
    values = result.values(pop.gate)[result.masks[pop.parent]]
    x0, x1, y0, y1 = singlets.limits
    px = singlets.x + (values[:, 0] - x0) / (x1 - x0) * singlets.w
    py = singlets.y + singlets.h - (values[:, 1] - y0) / (y1 - y0) * singlets.h
    inside = _inside_path(band, px, py)
    # The band itself is drawn (a polygon of real width holding the singlets), not a centre line.
    assert inside.mean() > 0.95
    assert (inside == pop.gate.mask(values)).mean() > 0.995


def test_figures_of_a_plain_table_are_those_of_its_dataframe() -> None:
    """time_course(s) and fold_change_overview draw the same SVG from a cytopipe.columns table as from the
    DataFrame (also a clinical table as either, text numbers and an index that is not the default one)."""
    from cytopipe.columns import from_frame

    frame = _table(STUDY, CLINICAL).iloc[::-1]
    frame.index = range(100, 100 + len(frame))  # positions, not labels
    clinical = CLINICAL.assign(platelets=CLINICAL["platelets"].astype(object))
    clinical.loc[0, "platelets"] = str(clinical.loc[0, "platelets"])  # a number as text: read as the number
    plain, plain_clinical = from_frame(frame), from_frame(clinical)
    assert render(fold_change_overview(plain)) == render(fold_change_overview(frame))
    for other, expected in ((plain_clinical, clinical), (clinical, clinical), (None, None)):
        drawn = {s: render(f) for s, f in time_courses(plain, other).items()}
        assert drawn == {s: render(f) for s, f in time_courses(frame, expected).items()}
        assert render(time_course(plain, "ITP-01", other)) == drawn["ITP-01"]
        if other is not None:
            assert "platelets day 0" in drawn["ITP-01"]


def test_save_figure_survives_another_worker_making_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Two workers write their first figures into a plots folder that does not exist yet: both fail, one makes the
    folder; the other, finding it made, writes its figure (it failed its sample with "No such file or directory").
    """
    import cytopipe.plots as plots

    real = plots.atomic_write
    calls = []

    def raced(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 1:  # the folder is missing for this worker's write, and another worker makes it meanwhile
            Path(path).parent.mkdir()
            raise FileNotFoundError(2, "No such file or directory", str(path))
        real(path, data)

    monkeypatch.setattr(plots, "atomic_write", raced)
    path = save_figure(time_course(_table(STUDY), "ITP-01"), tmp_path / "plots" / "tc")
    assert path.read_bytes().startswith(b"<?xml") and len(calls) == 2

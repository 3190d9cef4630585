"""Figures: what is drawn matches the table (not just "a figure came back"), files are written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from cytopipe.fcs import Sample
from cytopipe.gates import BooleanGate, Dimension, GatingStrategy, PolygonGate, Population, RectangleGate
from cytopipe.plots import fold_change_overview, gating_hierarchy, save_figure, time_course
from cytopipe.stats import baseline_table
from cytopipe.transforms import Logicle

REPO = Path(__file__).resolve().parents[1]


def _table(subjects: dict[str, list[tuple[str, int, int, int]]], clinical: pd.DataFrame | None = None
           ) -> pd.DataFrame:
    rows = [(f"{s}_{tp}", s, tp, day, cd4, treg) for s, visits in subjects.items() for tp, day, cd4, treg in visits]
    treg = pd.DataFrame(rows, columns=["sample", "subject", "timepoint", "day", "cd4_events", "treg_events"])
    treg["treg_pct"] = 100 * treg["treg_events"] / treg["cd4_events"]
    return baseline_table(treg, clinical=clinical)


STUDY = {"ITP-01": [("D0", 0, 20000, 600), ("W1", 7, 20000, 1100), ("W3", 21, 20000, 1800), ("W6", 42, 1500, 60)],
         "P $1$": [("D0", 0, 20000, 800), ("W3", 21, 20000, 830)]}
CLINICAL = pd.DataFrame({"subject": ["ITP-01"] * 5 + ["P $1$"] * 2, "day": [0.0, 7, 21, 28, 42, 0, 21],
                         "platelets": [36.0, 41, 85, 80, 60, 40, 45]})


def _lines_with(fig: Figure, marker: str) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == marker and len(line.get_xdata())]


def test_time_course_draws_the_table() -> None:
    table = _table(STUDY, CLINICAL)
    fig = time_course(table, "ITP-01", CLINICAL)
    assert len(fig.axes) == 2  # Treg % and platelets
    treg_ax, platelet_ax = fig.axes
    line = next(ln for ln in treg_ax.get_lines() if ln.get_gid() == "treg_pct")
    assert list(line.get_ydata()) == pytest.approx(list(table[table["subject"] == "ITP-01"]["treg_pct"]))
    # Significant timepoints (W1, W3) get a star; the low-event W6 is an open circle.
    stars = _lines_with(fig, "*")
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [7, 21]
    open_points = [ln for ln in _lines_with(fig, "o") if ln.get_markerfacecolor() == "white"]
    assert list(open_points[0].get_xdata()) == [42]
    # All clinical platelet counts are drawn, also day 28 without a blood draw.
    squares = [ln for ln in platelet_ax.get_lines() if ln.get_marker() == "s"]
    assert list(squares[0].get_xdata()) == [0, 7, 21, 28, 42]
    assert [t.get_text() for t in treg_ax.get_xticklabels()][:2] == ["D0\nd0", "W1\nd7"]


def test_time_course_without_clinical_and_literal_dollars(tmp_path: Path) -> None:
    table = _table(STUDY)
    fig = time_course(table, "P $1$")
    assert len(fig.axes) == 1 and not _lines_with(fig, "*")
    save_figure(fig, tmp_path / "p1")  # a '$' in a name must not be parsed as mathtext
    assert "P $1$" in (tmp_path / "p1.svg").read_text()
    with pytest.raises(ValueError, match="not in the baseline table"):
        time_course(table, "nobody")


def test_fold_change_overview_rows() -> None:
    table = _table(STUDY)
    fig = fold_change_overview(table)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["ITP-01  W1", "ITP-01  W3", "ITP-01  W6", r"P \$1\$  W3"]
    assert ax.get_xscale() == "log"
    baseline_only = _table({"A": [("D0", 0, 20000, 600)]})
    assert fold_change_overview(baseline_only).axes[0].texts[0].get_text() == "no timepoint after baseline"


def test_save_figure_atomic_and_deterministic(tmp_path: Path) -> None:
    fig = time_course(_table(STUDY, CLINICAL), "ITP-01", CLINICAL)
    written = save_figure(fig, tmp_path / "sub" / "tc")
    assert [p.name for p in written] == ["tc.png", "tc.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = written[1].read_bytes()
    save_figure(fig, tmp_path / "sub" / "tc")
    assert written[1].read_bytes() == first  # no timestamps or random ids
    only = save_figure(fig, tmp_path / "one.png")
    assert only == [tmp_path / "one.png"] and not (tmp_path / "one.svg").exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["one.png", "sub", "tc.png", "tc.svg"]


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
    fig = gating_hierarchy(result, strategy, "S1 <x>")
    axes = fig.axes
    assert len(axes) == 4  # three gates + back-gating; the boolean Tcon has no axes of its own to draw
    assert result.counts["Tcon"] == result.counts["CD4+"] - result.counts["Treg"]
    titles = [ax.get_title() for ax in axes]
    for ax_title, pop in zip(titles, ("Lymphocytes", "CD4+", "Treg"), strict=False):
        assert ax_title.startswith(f"{pop}\n{result.counts[pop]:,} = ")
    assert "Back-gating: Treg" in titles[3] and f"{result.counts['Treg']:,} events" in titles[3]
    # 2-D panels are log-coloured densities (one image) of the parent's events with the gate outline; the polygon
    # is drawn where it is.
    image = axes[0].get_images()[0]
    assert isinstance(image, AxesImage) and image.norm.__class__.__name__ == "LogNorm"
    assert int(image.get_array().sum()) == pytest.approx(result.n_events, rel=0.01)  # all but the 0.2 % tails
    outline = axes[0].get_lines()[0]
    assert list(outline.get_xdata()) == pytest.approx([30000, 75000, 75000, 30000, 30000])
    # The Treg rectangle is open upwards/rightwards: its open sides are pushed beyond the axes.
    treg_line = axes[2].get_lines()[0]
    # Logicle axes read in decades, like gate files: the Gating-ML cut 0.5 is drawn at 0.5 x M = 2.25.
    assert np.isfinite(treg_line.get_xdata()).all() and min(treg_line.get_xdata()) == pytest.approx(0.5 * 4.5)
    assert axes[2].get_xlabel() == "CD4 (logicle, decades)"
    assert axes[1].get_yscale() == "log"  # 1-D gate: histogram with the gated events shaded
    # Back-gating draws exactly the Treg events on scatter.
    dots = axes[3].get_lines()[0]
    assert len(dots.get_xdata()) == result.counts["Treg"]
    assert fig.get_suptitle() == "Gating of S1 <x>"


def test_gating_hierarchy_of_a_large_sample_draws_a_sample_of_events_and_exact_counts() -> None:
    """Above 200,000 events a panel bins every k-th parent event; titles still give the exact counts, 1-D counts
    are scaled back to events, and back-gating dots are Treg events (every k-th above 20,000)."""
    from cytopipe import plots

    sample, strategy = _sample_and_strategy(900_000)
    result = strategy.apply(sample)
    assert result.counts["Treg"] > plots._MAX_BACKGATE_DOTS
    axes = gating_hierarchy(result, strategy, "big").axes
    root = axes[0].get_images()[0].get_array()
    binned = len(range(0, result.n_events, -(-result.n_events // plots._MAX_PLOT_EVENTS)))
    assert 0.99 * binned < root.sum() <= binned <= plots._MAX_PLOT_EVENTS  # all but the 0.2 % tails
    assert axes[1].get_title().startswith(f"CD4+\n{result.counts['CD4+']:,} = ")
    grey, gated = axes[1].collections[:2]  # the parent's histogram, counts scaled back to events, and the gated
    heights = [np.asarray(c.get_paths()[0].vertices[:, 1]) for c in (grey, gated)]
    assert heights[0].max() > 0.01 * result.counts["Lymphocytes"]
    assert heights[1].max() <= heights[0].max()
    dots = axes[3].get_lines()[0]
    step = -(-result.counts["Treg"] // plots._MAX_BACKGATE_DOTS)
    assert len(dots.get_xdata()) == len(range(0, result.counts["Treg"], step)) <= plots._MAX_BACKGATE_DOTS
    scatter = result.values(strategy.populations[0].gate)
    tregs = scatter[result.masks["Treg"]]
    assert set(zip(dots.get_xdata(), dots.get_ydata(), strict=True)) <= set(map(tuple, tregs.tolist()))
    assert f"{result.counts['Treg']:,} events on scatter" in axes[3].get_title()


def test_gating_hierarchy_draws_empty_populations(recwarn: pytest.WarningsRecorder) -> None:
    sample, strategy = _sample_and_strategy()
    logicle = Logicle(T=262144, W=0.5, M=4.5, A=0)
    nothing = Population("Treg", RectangleGate("Treg", (Dimension("CD4", logicle), Dimension("CD25", logicle)),
                                               min=(5.0, 5.0), max=(None, None)), "CD4+")
    below = Population("CD25 dim", RectangleGate("CD25 dim", (Dimension("CD25", logicle),), min=(0.1,),
                                                 max=(None,)), "Treg")
    strategy = GatingStrategy((*strategy.populations[:2], nothing, below), treg="Treg", compensation="none")
    result = strategy.apply(sample)
    assert result.counts["Treg"] == result.counts["CD25 dim"] == 0
    axes = gating_hierarchy(result, strategy, "empty").axes
    assert axes[2].get_title() == "Treg\n0 = 0.0% of CD4+" and axes[3].get_title().startswith("CD25 dim\n0 = nan%")
    assert axes[3].get_yscale() == "linear" and not recwarn.list  # no log axis without counts


@pytest.mark.slow
def test_gating_hierarchy_on_the_bundled_study(tmp_path: Path) -> None:
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
    fig = gating_hierarchy(result, strategy, "ITP-01_W3")
    assert len(fig.axes) == len(strategy.populations) + 1
    png, svg = save_figure(fig, tmp_path / "gating_ITP-01_W3")
    assert png.stat().st_size > 20000 and svg.stat().st_size > 20000

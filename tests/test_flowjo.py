"""FlowJo workspaces as gate files, checked against the counts FlowJo itself stored in them.

Oracles (``../shared/data/flowjo``, see its SOURCES.md): FlowKit's simple examples (FlowJo 10.6/10.7, exact counts),
flowWorkspaceData's A2004 (FlowJo 9.2, real LSR II data, compensation in the workspace) and LabKey's advanced
tutorial saved by FlowJo 7.6.5, 9.7.2 and 10.8 (FlowJo disagrees with itself across versions there; 5 %).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from cytopipe.errors import GateError
from cytopipe.fcs import read_fcs
from cytopipe.flowjo import read_workspace
from cytopipe.flowjo.check import CHECK_COLUMNS, NOT_COMPUTED, check_workspace
from cytopipe.flowjo.transforms import FlowJoBiex, biex_from_table, biex_table
from cytopipe.gatefile import convert, load_strategy
from cytopipe.gates import Dimension, GatingStrategy, Population, RectangleGate
from cytopipe.transforms import Arcsinh

FLOWJO = SHARED_DATA / "flowjo"
SIMPLE = FLOWJO / "flowkit_simple_examples"
A2004 = FLOWJO / "flowworkspacedata_a2004" / "A2004Analysis.xml"
LABKEY = FLOWJO / "labkey_flowjo_advanced_tutorial"
DIAMOND = SIMPLE / "simple_diamond_example" / "test_data_diamond_01.fcs"
REPO = Path(__file__).resolve().parents[1]
SIMPLE_WORKSPACES = sorted(SIMPLE.glob("*/*.wsp")) if SIMPLE.is_dir() else []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cytopipe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def _flowjo_counts(folder: Path) -> list[dict[str, str]]:
    with (folder / "flowjo_counts.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("workspace", SIMPLE_WORKSPACES, ids=[p.name for p in SIMPLE_WORKSPACES])
def test_flowkit_simple_examples_reproduce_flowjo_exactly(shared_data: Path, workspace: Path) -> None:
    result = check_workspace(workspace, tolerance=0.0)
    assert not result.missing and not result.failed
    expected = {(r["sample_name"], r["population_path"]): r["flowjo_count"] for r in _flowjo_counts(SIMPLE)
                if r["workspace"].endswith(workspace.name) and r["population_path"]}
    assert len(result.table) == len(expected)
    for row in result.table.itertuples(index=False):
        assert str(row.flowjo_count) == expected[(row.sample, row.population)]
        if int(row.flowjo_count) <= 0:  # -1 / 0 under 100 events: never computed by FlowJo, marked not compared
            assert row.relative_difference == NOT_COMPUTED
        else:
            assert row.cytopipe_count == int(row.flowjo_count), (workspace.name, row.population)
    assert result.ok and not result.magnetic


def test_biex_table_is_flowjos_own(shared_data: Path) -> None:
    """FlowJo 9.2 wrote its biex table (channel -> value, decades 4.5, width -10) into A2004's CalibrationTables."""
    text = A2004.read_text(encoding="latin-1")
    start = text.index("<Table name=\"InputParameterTransform_Gain1_Offset1\"")
    body = text[text.index(">", start) + 1:text.index("</Table>", start)]
    pairs = np.array([float(v) for v in body.replace("\n", "").split(",") if v.strip()]).reshape(-1, 2)
    ours = biex_table(pos=4.5, neg=0.0, width=-10.0, max_value=262144.0)
    channels = pairs[:, 0].astype(int)
    assert channels.max() <= 4096 and len(channels) > 1000
    # FlowJo prints 8 significant digits.
    np.testing.assert_allclose(ours[channels], pairs[:, 1], rtol=1e-6, atol=1e-4)


def _a2004_tables() -> dict[str, np.ndarray]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(A2004.read_bytes().replace(b"<!DOCTYPE Workspace>", b""))
    return {t.get("name", ""): np.array([float(v) for v in (t.text or "").split(",") if v.strip()]).reshape(-1, 2)
            for t in root.iter("Table")}


def test_a2004_per_parameter_biex_is_flowjos_table(shared_data: Path) -> None:
    """FlowJo 9.2 tabulated a biex per compensated parameter (``A2004-A2005_06i <APC-A>``...), each with its own
    width basis on the parameter's highValue: the reader's axis reproduces each table to FlowJo's 8 digits."""
    tables = {name: pairs for name, pairs in _a2004_tables().items() if name.startswith("A2004-A2005_06i <")}
    assert len(tables) == 8
    widths = {}
    for name, pairs in tables.items():
        axis = biex_from_table(pairs[:, 1], pos=4.5, neg=0.0, max_value=2.615899324417114e5)
        assert axis is not None, name
        np.testing.assert_allclose(biex_table(axis.pos, axis.neg, axis.width, axis.max_value)[pairs[:, 0].astype(int)],
                                   pairs[:, 1], rtol=1e-6, atol=1e-4)
        widths[name] = axis.width
    # Not FlowJo's default -10: APC-A's -sqrt(10), Am Cyan-A's about -30.
    assert widths["A2004-A2005_06i <APC-A>"] == pytest.approx(-10 ** 0.5, rel=1e-6)
    assert widths["A2004-A2005_06i <Am Cyan-A>"] == pytest.approx(-29.69, rel=1e-3)
    sample = read_workspace(A2004).samples[1]
    b_cell = sample.nodes[0].children[0].children[0]
    assert b_cell.name == "B Cell"
    assert [d.transform.width for d in b_cell.gate.dimensions] == pytest.approx(
        [widths["A2004-A2005_06i <Am Cyan-A>"], widths["A2004-A2005_06i <APC-A>"]])


def test_a2004_gate_pixels_follow_the_per_parameter_tables(shared_data: Path) -> None:
    """The pixel bounds FlowJo stored with A2004's gates (``bounds="top,left,bottom,right"``) are a straight line
    of the per-parameter biex positions of their vertices (within 1 px), not of the default biex (off by 8-17 px):
    the per-parameter tables are the axes the gates were drawn on."""
    tables = _a2004_tables()
    amcyan = biex_from_table(tables["A2004-A2005_06i <Am Cyan-A>"][:, 1], 4.5, 0.0, 2.615899324417114e5)
    apc = biex_from_table(tables["A2004-A2005_06i <APC-A>"][:, 1], 4.5, 0.0, 2.615899324417114e5)
    default = FlowJoBiex(pos=4.5, neg=0.0, width=-10.0)
    # mDC, B Cell, pDC of sample 2 (Am Cyan-A x APC-A): vertex extremes and their pixels.
    x = np.array([-303.5798645019531, -246.9458312988281, 776.4312133789062, 1605.509765625, 1431.260620117188,
                  9473.6875])
    x_px = np.array([10, 20, 194, 233, 227, 320])
    y = np.array([25986.697265625, 547.297119140625, 166.4415893554688, -26.90511512756348, 425.3051147460938,
                  -27.86159133911133])
    y_px = np.array([80, 214, 257, 357, 223, 358])

    def worst(axis: FlowJoBiex, values: np.ndarray, pixels: np.ndarray) -> float:
        display = axis.apply(values)
        fit = np.polyfit(display, pixels, 1)
        return float(np.abs(np.polyval(fit, display) - pixels).max())

    assert worst(amcyan, x, x_px) < 1.0 and worst(apc, y, y_px) < 1.0
    assert worst(default, x, x_px) > 5.0 and worst(default, y, y_px) > 5.0


@pytest.mark.parametrize("name, kind", [("test_data_diamond_biex_rect.wsp", "biex"),
                                        ("test_data_diamond_asinh_rect.wsp", "fasinh"),
                                        ("test_data_diamond_asinh_rect2.wsp", "fasinh")])
def test_rectangles_on_flowjo_axes_give_flowjos_counts(shared_data: Path, name: str, kind: str) -> None:
    """The same rectangle moved onto FlowJo's transformed axis (limits mapped, events mapped) keeps FlowJo's count:
    the transform read from the workspace is FlowJo's (monotone, and the same on limits and events)."""
    workspace = read_workspace(SIMPLE / "simple_diamond_example" / name)
    sample = workspace.samples[0]
    gate = sample.nodes[0].gate
    assert isinstance(gate, RectangleGate)
    sample_el = (SIMPLE / "simple_diamond_example" / name).read_text()
    assert f"<transforms:{kind} " in sample_el
    from cytopipe.flowjo.reader import _GmlReader  # the transforms as the reader builds them for polygons

    reader = _GmlReader(workspace.path, __import__("xml.etree.ElementTree").etree.ElementTree.fromstring(
        sample_el.encode()))
    reader.samples()
    axes = [reader.transforms[d.channel] for d in gate.dimensions]
    assert all(isinstance(a, FlowJoBiex if kind == "biex" else Arcsinh) for a in axes)
    dims = tuple(Dimension(d.channel, a, d.compensation) for d, a in zip(gate.dimensions, axes, strict=True))
    lo = [a.apply(np.array([v]))[0] for a, v in zip(axes, gate.min, strict=True)]
    hi = [a.apply(np.array([v]))[0] for a, v in zip(axes, gate.max, strict=True)]
    moved = GatingStrategy((Population("moved", RectangleGate("moved", dims, tuple(lo), tuple(hi)), None),))
    counts = moved.apply(read_fcs(DIAMOND, scale="gain", exact=True), exact=True).counts
    assert counts["moved"] == sample.nodes[0].count


#: A2004 populations under Monocytes that cytopipe does not reproduce within 1 % (see the xfail below).
A2004_MONOCYTES = "/Live/Monocytes"


def _a2004_off(compared: pd.DataFrame) -> pd.DataFrame:
    return compared[(compared["difference"].astype(int).abs() > 5)
                    & (compared["relative_difference"].astype(float).abs() > 1.0)]


def test_a2004_flowjo9_populations_outside_monocytes(shared_data: Path) -> None:
    """FlowJo 9.2, LSR II, compensation and per-parameter biex axes from the workspace: every computed population
    outside the Monocytes branch within 1 % or 5 events (B Cell and pDC only with the per-parameter axes and their
    bottom-of-scale rule)."""
    result = check_workspace(A2004)
    assert result.missing == ["a2004_O1T2pb05i_A1_A01.fcs"]  # its FCS file is not in the data set
    compared = result.compared
    assert len(compared) == 15
    others = compared[~compared["population"].str.startswith(A2004_MONOCYTES)]
    assert len(others) == 10
    off = _a2004_off(others)
    assert off.empty, off.to_string()
    counts = dict(zip(compared["population"], compared["cytopipe_count"].astype(int), strict=True))
    assert abs(counts["/Live/APC/B Cell"] - 1727) <= 8 and abs(counts["/Live/APC/pDC"] - 81) <= 2


def _nodes(nodes: list) -> list:
    return [n for node in nodes for n in (node, *_nodes(node.children))]


def test_a2004_magnetic_gates_are_read_and_counted_in_the_summary(shared_data: Path) -> None:
    """A2004's B Cell and Monocytes are FlowJo *magnetic* gates (``<PolygonGate magnetic="1">``). FlowJo's manual
    ("Magnetic gates", www.flowjo.com/v3/html/gatemagnetic.html): FlowJo moves such a gate on each sample to where it
    holds the most events and draws an arrow from where it was set. FlowJo 9.2 stores only where it was set: the same
    vertices in the group and in both samples, and no per-sample move (FlowJo 10 writes it as ``adjustX``/``adjustY``
    on the transformed gate, RGLab/CytoML issue #85). ``flowjo check`` says how many compared populations this is."""
    workspace = read_workspace(A2004)
    for sample in workspace.samples:
        assert {n.path for n in _nodes(sample.nodes) if n.magnetic} == {"/Live/APC/B Cell", "/Live/Monocytes"}
    assert not any(n.magnetic for nodes in workspace.groups.values() for n in _nodes(nodes)
                   if n.name not in ("B Cell", "Monocytes"))
    text = A2004.read_text(encoding="latin-1")
    assert text.count('magnetic="1"') == 6 and "adjustX" not in text and "adjustY" not in text
    for name in ("B Cell", "Monocytes"):  # group + 2 samples, one set of vertices
        blocks = text.split(f'<Polygon name="{name}"')[1:]
        assert len(blocks) == 3
        assert len({tuple(re.findall(r"<Vertex [^>]*>", block[:block.index("</Polygon>")])) for block in blocks}) == 1
    result = check_workspace(A2004)
    assert sorted(path for _, path in result.magnetic) == [
        "/Live/APC/B Cell", "/Live/Monocytes", "/Live/Monocytes/IFNa+", "/Live/Monocytes/IL-12+",
        "/Live/Monocytes/IL-6+", "/Live/Monocytes/TNFa+"]
    assert "6 at or below a FlowJo magnetic gate" in result.summary("A2004Analysis.xml")


@pytest.mark.xfail(strict=True, reason="Monocytes 1812 vs FlowJo 1846 (-34, 1.8 %) and Monocytes/IL-12+ 33 vs 39 "
                   "(-6); the other 13 of 15 computed populations are within 1 % or 5 events. Monocytes is a "
                   "magnetic gate: FlowJo moves it on each sample to where it holds the most events (FlowJo manual, "
                   "www.flowjo.com/v3/html/gatemagnetic.html) and FlowJo 9.2 stores only where it was set (see "
                   "test_a2004_magnetic_gates_are_read_and_counted_in_the_summary). FlowJo's search is not "
                   "documented, and its obvious readings do not reproduce FlowJo's counts: a local most-events "
                   "search on the display (18 variants: exact counts in steps of 1/256-1/4096 of the axis or counts "
                   "binned on 128-1024 grids, 4 or 8 neighbours) puts B Cell at 1736-1748 (FlowJo 1727, unmoved "
                   "1733) and Monocytes at 1819-1879, and none keeps all 15 within tolerance (closest, steps of "
                   "1/2048 and 4 neighbours: B Cell 1739, Monocytes 1829, IL-12+ 33 vs 39); moving each gate to "
                   "the centroid of its events gives Monocytes 1854-1864 but B Cell 1441-1671. "
                   "The stored polygon moved +0.01 display units along PerCP-Cy5-5-A gives every count, but that "
                   "offset is fitted to FlowJo's counts, not stored. Ruled out: the polygon's axes (linear, log, "
                   "default, per-parameter or calibrationIndex biex tables, linear or spline interpolation: "
                   "1792-1829), the matrix (transposed: B Cell -621), display binning (256/512/1024), clipping raw "
                   "values, Live over the 151 SSC-A=262143 events (Monocytes 1867 but IL-12+ 73).")
def test_a2004_flowjo9_with_workspace_compensation(shared_data: Path) -> None:
    """FlowJo 9.2, LSR II, compensation from the workspace: computed populations within 1 % or 5 events."""
    result = check_workspace(A2004)
    assert result.missing == ["a2004_O1T2pb05i_A1_A01.fcs"]  # its FCS file is not in the data set
    compared = result.compared
    assert len(compared) >= 14
    off = _a2004_off(compared)
    assert off.empty, off.to_string()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["advanced-v7.6.5.wsp", "advanced-v9.7.2.xml"])
def test_labkey_tutorial_within_five_percent(shared_data: Path, name: str) -> None:
    result = check_workspace(LABKEY / name, tolerance=5.0)
    assert not result.missing and not result.failed
    compared = result.compared
    within = (compared["relative_difference"].astype(float).abs() <= 5.0).mean()
    # The issue asks for 90 %; every computed population is within 5 % (largest 3.5 %, FlowJo 7.6.5 vs 9.7.2
    # themselves disagree by a median 3.7 % on these files).
    assert len(compared) >= 150 and within == 1.0, f"{within:.1%} within 5 %"


def test_labkey_flowjo10_parses(shared_data: Path) -> None:
    workspace = read_workspace(LABKEY / "advanced-v10.8.wsp")
    assert workspace.flowjo_version == "10.8.0" and len(workspace.samples) == 16
    for group in ("GateTest", "T Cell Analysis", "PBMS Subsets"):
        strategy = load_strategy(LABKEY / "advanced-v10.8.wsp", group)
        assert strategy.populations and strategy.scale == "gain"


def test_boolean_ellipse_quadrant_bifurcation_nodes_are_read(shared_data: Path) -> None:
    """LabKey's GateTest group: And/Or/Not nodes, ellipses, quadrants and a bifurcation, in all three versions."""
    for name in ("advanced-v7.6.5.wsp", "advanced-v9.7.2.xml", "advanced-v10.8.wsp"):
        strategy = load_strategy(LABKEY / name, "GateTest")
        kinds = {type(p.gate).__name__ for p in strategy.populations}
        ops = {getattr(p.gate, "op", None) for p in strategy.populations}
        assert {"RectangleGate", "EllipsoidGate", "BooleanGate"} <= kinds, (name, kinds)
        assert {"and", "or", "not"} <= ops, (name, ops)


def test_flowjo_check_cli(shared_data: Path, tmp_path: Path) -> None:
    ok = _cli("flowjo", "check", str(SIMPLE / "simple_diamond_example" / "simple_diamond_example_quad_gate.wsp"),
              "--out", "check.csv", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "4/4 populations within 1 %" in ok.stdout and len(ok.stdout.strip().splitlines()) == 1
    with (tmp_path / "check.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CHECK_COLUMNS and len(rows) == 5
    # An FCS folder without the files: listed, exit 1.
    (tmp_path / "empty").mkdir()
    missing = _cli("flowjo", "check", str(A2004), "--fcs-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert missing.returncode == 1
    assert "2 FCS file(s) not found: a2004_O1T2pb05i_A1_A01.fcs, a2004_O1T2pb05i_A2_A02.fcs" in missing.stdout
    assert (tmp_path / "flowjo_check.csv").is_file()


def test_workspace_as_gate_file_on_gate_and_convert(shared_data: Path, tmp_path: Path) -> None:
    wsp = SIMPLE / "simple_line_example" / "single_ellipse_51_events.wsp"
    fcs = SIMPLE / "simple_line_example" / "data_set_simple_line_100.fcs"
    done = _cli("gate", str(fcs), "--gates", str(wsp), "--out", "m.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "applying the gates of sample 'data_set_simple_line_100.fcs'" in done.stderr  # the default, said once
    assert int(np.loadtxt(tmp_path / "m.csv", skiprows=1).sum()) == 51
    own = _cli("gate", str(fcs), "--gates", str(wsp), "--wsp-sample", "own", "--out", "o.csv", cwd=tmp_path)
    assert own.returncode == 0 and "applying" not in own.stderr
    quad = SIMPLE / "simple_diamond_example" / "simple_diamond_example_quad_gate.wsp"
    text = convert(quad, "yaml", wsp_sample="test_data_diamond_01.fcs")
    (tmp_path / "quad.yaml").write_text(text)
    counts = load_strategy(tmp_path / "quad.yaml").apply(read_fcs(DIAMOND, scale="gain")).counts
    assert sorted(counts.values()) == [49403, 49671, 50330, 50596]


def test_bad_workspaces_are_one_line_errors(shared_data: Path, tmp_path: Path) -> None:
    not_xml = tmp_path / "broken.wsp"
    not_xml.write_text("this is not a workspace")
    with pytest.raises(GateError, match=r"broken.wsp: not a FlowJo workspace \(not XML"):
        read_workspace(not_xml)
    source = (SIMPLE / "simple_line_example" / "single_ellipse_51_events.wsp").read_text()
    old = tmp_path / "old.wsp"
    old.write_text(source.replace('flowJoVersion="10.6.1"', 'flowJoVersion="6.4"'))
    with pytest.raises(GateError, match=r"old.wsp: <Workspace flowJoVersion='6.4'>: FlowJo version not supported"):
        read_workspace(old)
    odd = tmp_path / "odd.wsp"
    odd.write_text(source.replace("gating:EllipsoidGate", "gating:SpiderGate"))
    with pytest.raises(GateError, match=r"odd.wsp: <SpiderGate>: population 'ellipse1': gate type not supported"):
        read_workspace(odd)
    with pytest.raises(GateError, match=r"sample 'GateTst' is not in the workspace \(did you mean 'GateTest'\?\)"):
        load_strategy(LABKEY / "advanced-v9.7.2.xml", "GateTst")
    done = _cli("gates", "check", str(not_xml), cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_convert_to_yaml_keeps_biex_axes_and_the_workspace_matrix(shared_data: Path, tmp_path: Path) -> None:
    """A2004's tree (FlowJo biex polygons, workspace compensation) as YAML: same counts on the real file."""
    out = tmp_path / "a2004.yaml"
    convert(A2004, "yaml", out)
    text = out.read_text()
    assert "type: flowjo_biex" in text and "compensation: a2004.spillover.csv" in text
    assert (tmp_path / "a2004.spillover.csv").is_file()
    sample = read_fcs(A2004.parent / "a2004_O1T2pb05i_A2_A02.fcs", scale="gain")
    assert load_strategy(out).apply(sample).counts == load_strategy(A2004).apply(sample).counts
    with pytest.raises(GateError, match="compensation matrix is written beside the YAML file: give --out"):
        convert(A2004, "yaml")

"""FlowJo workspaces out (``gates_fitted.wsp``), checked by FlowKit reading them back.

FlowKit's FlowJo 10 reader (``flowkit.Workspace``) is the independent oracle: it finds each FCS file by the
``DataSet`` URI, applies the workspace's spillover matrix to the ``Comp-`` parameters and its transforms to the gate
coordinates, and must count exactly what cytopipe counted, for every sample and population.

FlowKit quirks respected here: with a matrix in the sample, FlowKit compensates every parameter the matrix holds
(even one a gate names without ``Comp-``), so no oracle gate uses an uncompensated fluorescence channel; FlowKit
converts FlowJo ellipses to 128-gons, which is why cytopipe writes its own exact polygon instead.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe import gatefile, simulate
from cytopipe.errors import GateError
from cytopipe.fcs import read_fcs
from cytopipe.flowjo.write import (
    COMP_PREFIX,
    WORKSPACE_NAME,
    ellipse_polygon,
    file_uri,
    join_workspace,
    render_workspace,
    sample_fragment,
    sample_tree,
    write_workspace,
)
from cytopipe.gates import Dimension, EllipsoidGate, PolygonGate
from cytopipe.pipeline import SampleTask, choose_spillover, process_sample

fk = pytest.importorskip("flowkit")

REPO = Path(__file__).resolve().parents[1]

# Every fixed gate type FlowJo holds, on linear, logicle, arcsinh, log and hyperlog axes (hyperlog only under a
# rectangle: FlowJo has no hyperlog, and rectangle limits are raw values whatever the axis).
EVERY_GATE = """\
name: every FlowJo gate
compensation: file
transforms:
  logicle: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
  asinh: {type: arcsinh, cofactor: 150}
  log: {type: log, T: 262144, M: 4.5}
  hlog: {type: hyperlog, T: 262144, W: 0.5, M: 4.5, A: 0}
  lin: {type: linear, T: 262144, A: 0}
populations:
  - name: Lymphocytes
    gate: {type: ellipse, channels: [FSC-A, SSC-A], center: [55000, 14000],
           covariance: [[250000000.0, 30000000.0], [30000000.0, 50000000.0]], distance: 6}
  - name: Singlets
    parent: Lymphocytes
    gate: {type: polygon, channels: [FSC-A, FSC-H], vertices: [[25000, 18750], [100000, 75000], [100000, 98000],
                                                              [25000, 25000]]}
  - name: SSC low
    parent: Lymphocytes
    gate: {type: range, channels: [{channel: SSC-A, transform: log}], max: 4.15}
  - name: CD3+
    parent: Singlets
    gate: {type: range, channels: [CD3], min: 2.1}
  - name: CD4+
    parent: CD3+
    gate: {type: rectangle, channels: [CD4, {channel: CD8, transform: hlog}], min: [2.2, null], max: [null, 2.0]}
  - name: Treg
    parent: CD4+
    gate: {type: rectangle, channels: [CD25, {channel: FoxP3, transform: asinh}], min: [2.25, 2.0], max: [4.0, null]}
  - name: Act
    parent: CD4+
    gate: {type: ellipse, channels: [CD25, CD127], center: [1.3, 2.4], covariance: [[0.1, 0.02], [0.02, 0.05]],
           distance: 4}
  - name: FoxP3 poly
    parent: CD4+
    gate: {type: polygon, channels: [CD4, {channel: FoxP3, transform: asinh}],
           vertices: [[2.0, 1.0], [4.0, 1.2], [4.2, 3.5], [2.4, 3.0]]}
  - name: CD25+CD127-
    parent: CD4+
    gate: {type: quadrant, channels: [CD25, CD127], at: [2.0, 1.75], quadrant: "+-"}
  - name: SSC-H window
    gate: {type: range, channels: [{channel: SSC-H, transform: lin}], min: 2000, max: 12000}
  - name: not Treg
    parent: CD4+
    gate: {type: not, of: [Treg]}
  - name: Treg or Act
    parent: CD4+
    gate: {type: or, of: [Treg, Act]}
  - name: window non-Treg CD4
    gate: {type: and, of: ["SSC-H window", {not: Treg}, CD4+]}
"""


@pytest.fixture(scope="module")
def fcs_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20,000-event simulated Treg-panel file with ``$SPILLOVER``."""
    path = tmp_path_factory.mktemp("flowjo_out") / "sim file.fcs"  # a space: the URI must be percent-encoded
    sample = simulate.simulate_sample(simulate.SampleSpec(n_events=20_000), np.random.default_rng(3))
    simulate.write_sample(path, sample)
    return path


def _tree(text: str, fcs: Path, tmp_path: Path, name: str = "sim") -> tuple[dict, dict[str, int]]:
    gates = tmp_path / "gates.yaml"
    gates.write_text(text, encoding="utf-8")
    strategy = gatefile.load_strategy(gates)
    sample = read_fcs(fcs)
    spillover = choose_spillover(sample, strategy)
    result = strategy.apply(sample, spillover)
    return sample_tree(strategy, sample, result, spillover, name=name), result.counts


def _flowkit_counts(wsp: Path, name: str) -> dict[str, int]:
    workspace = fk.Workspace(str(wsp), find_fcs_files_from_wsp=True)
    workspace.analyze_samples(sample_id=name, use_mp=False)
    report = workspace.get_gating_results(name).report
    return {str(g): int(c) for g, c in zip(report["gate_name"], report["count"], strict=True)}


def _nodes(wsp: Path) -> dict[str, dict[str, int]]:
    """sample -> {population: count attribute} as written (every node kind)."""
    out = {}
    for sample in ET.parse(wsp).getroot().iter("SampleNode"):
        out[sample.get("name")] = {n.get("name"): int(n.get("count")) for n in sample.iter()
                                   if n.tag in ("Population", "AndNode", "OrNode", "NotNode")}
    return out


def test_every_gate_type_round_trips_through_flowkit(tmp_path: Path, fcs_path: Path) -> None:
    tree, ours = _tree(EVERY_GATE, fcs_path, tmp_path)
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, [tree])
    theirs = _flowkit_counts(wsp, "sim")
    # FlowJo has no complemented Boolean operand: {not: Treg} became an extra NotNode beside the And node.
    assert theirs.pop("not Treg (window non-Treg CD4)") == 20_000 - ours["Treg"]
    assert {name: theirs[name] for name in ours} == ours
    assert {name: count for name, count in _nodes(wsp)["sim"].items() if name in ours} == ours
    # The oracle is worth something only if every gate keeps some events and drops others.
    assert all(0 < count < 20_000 for count in ours.values())


def test_compensation_transforms_and_coordinates_as_flowjo_writes_them(tmp_path: Path, fcs_path: Path) -> None:
    tree, _ = _tree(EVERY_GATE, fcs_path, tmp_path)
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, [tree])
    root = ET.parse(wsp).getroot()
    t = "{http://www.isac-net.org/std/Gating-ML/v2.0/transformations}"
    d = "{http://www.isac-net.org/std/Gating-ML/v2.0/datatypes}"
    g = "{http://www.isac-net.org/std/Gating-ML/v2.0/gating}"
    sample = root.find("SampleList/Sample")
    assert sample.find("DataSet").get("uri").endswith("/sim%20file.fcs")
    matrix = sample.find(f"{t}spilloverMatrix")
    assert matrix.get("prefix") == COMP_PREFIX
    detectors = [p.get(f"{d}name") for p in matrix.iter(f"{d}parameter")]
    spill = read_fcs(fcs_path).metadata["$SPILLOVER"].split(",")
    n = int(spill[0])
    assert detectors == spill[1:n + 1]
    rows = [[float(c.get(f"{t}value")) for c in row.iter(f"{t}coefficient")] for row in matrix.iter(f"{t}spillover")]
    np.testing.assert_array_equal(rows, np.array(spill[n + 1:], dtype=float).reshape(n, n))
    # The CD3 range is compensated; its limit is a raw value (logicle 2.1 decades of 4.5 -> about 1,200).
    cd3 = next(p for p in sample.iter("Population") if p.get("name") == "CD3+")
    dim = cd3.find(f"Gate/{g}RectangleGate/{g}dimension")
    cd3_pnn = read_fcs(fcs_path).channels[read_fcs(fcs_path).find_channel("CD3")]
    assert dim.find(f"{d}fcs-dimension").get(f"{d}name") == COMP_PREFIX + cd3_pnn
    assert 500 < float(dim.get(f"{g}min")) < 3000 and dim.get(f"{g}max") is None
    kinds = {x.find(f"{d}parameter").get(f"{d}name"): x.tag.replace(t, "")
             for x in sample.find("Transformations")}
    assert kinds[cd3_pnn] == kinds[COMP_PREFIX + cd3_pnn] == "logicle"
    # SSC-A carries a log range and the Lymphocytes ellipse: the scale the ellipse is drawn on wins (the range's
    # limits are raw values, right on any scale).
    assert kinds["FSC-A"] == kinds["SSC-A"] == "linear"
    assert kinds[COMP_PREFIX + read_fcs(fcs_path).channels[read_fcs(fcs_path).find_channel("FoxP3")]] == "fasinh"
    keywords = {k.get("name"): k.get("value") for k in sample.iter("Keyword")}
    assert keywords == read_fcs(fcs_path).metadata  # $FIL among them: how FlowJo re-finds a moved file


def test_ellipse_polygon_keeps_exactly_the_ellipse_events() -> None:
    rng = np.random.default_rng(7)
    dims = (Dimension("x"), Dimension("y"))
    gate = EllipsoidGate("E", dims, mean=(1.0, -2.0), covariance=((4.0, 1.5), (1.5, 1.0)), distance_square=3.0)
    values = rng.multivariate_normal([1.0, -2.0], [[4.0, 1.5], [1.5, 1.0]], size=200_000)
    inside = gate.mask(values)
    vertices = ellipse_polygon(gate, values, inside)
    polygon = PolygonGate("P", dims, vertices=[tuple(v) for v in vertices])
    assert np.array_equal(polygon.mask(values), inside)
    assert 64 <= len(vertices) <= 4096 and 0 < inside.sum() < len(values)
    # float32 values (the fast path) take the band pre-selection; it finds the polygon the full float64 pass finds.
    values32 = values.astype(np.float32)
    inside32 = gate.mask(values32)
    band = ellipse_polygon(gate, values32, inside32)
    assert np.array_equal(band, ellipse_polygon(gate, values32.astype(np.float64), inside32))
    assert np.array_equal(PolygonGate("P", dims, vertices=[tuple(v) for v in band]).mask(values32), inside32)
    # Without events: the 256-gon with its vertices on the ellipse.
    bare = ellipse_polygon(gate)
    diff = bare - np.asarray(gate.mean)
    quad = np.einsum("ij,jk,ik->i", diff, gate.precision, diff)
    assert len(bare) == 256 and np.allclose(quad, 3.0, rtol=1e-12)


HOSTILE = '<ITP&01 "x">\'\n\x01\u00e9'


def test_hostile_names_and_keywords_are_escaped(tmp_path: Path, fcs_path: Path) -> None:
    text = EVERY_GATE.replace("name: Treg\n", "name: 'Treg <&> \"q\"'\n").replace(
        "of: [Treg]", "of: ['Treg <&> \"q\"']").replace("of: [Treg, Act]", "of: ['Treg <&> \"q\"', Act]").replace(
        "{not: Treg}", "{not: 'Treg <&> \"q\"'}")
    tree, ours = _tree(text, fcs_path, tmp_path, name=HOSTILE)
    tree["keywords"].append(["HOSTILE <K>", "a&b\x00c\x1f\r\n\"d\"\ud800"])
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, [tree])
    root = ET.parse(wsp).getroot()  # well-formed
    node = root.find("SampleList/Sample/SampleNode")
    assert node.get("name") == HOSTILE.replace("\x01", "\ufffd")  # XML 1.0 cannot hold U+0001 at all
    keyword = [k for k in root.iter("Keyword") if k.get("name") == "HOSTILE <K>"]
    assert keyword[0].get("value") == "a&b\ufffdc\ufffd\r\n\"d\"\ufffd"
    assert 'Treg <&> "q"' in _nodes(wsp)[HOSTILE.replace("\x01", "\ufffd")]


def test_gates_flowjo_cannot_hold_are_one_line_errors(tmp_path: Path, fcs_path: Path) -> None:
    ratio = ("transforms:\n  r: {type: ratio, A: 1, B: 0, C: 0}\npopulations:\n  - name: R\n    gate: {type: range, "
             "channels: [{channel: [CD4, CD8], ratio: r}], min: 1}\n")
    with pytest.raises(GateError, match="ratio dimension"):
        _tree(ratio, fcs_path, tmp_path)
    cube = ("populations:\n  - name: C\n    gate: {type: rectangle, channels: [CD4, CD8, CD3], "
            "min: [1, 1, 1]}\n")
    with pytest.raises(GateError, match="3-dimensional rectangle"):
        _tree(cube, fcs_path, tmp_path)
    scales = ("transforms:\n  asinh: {type: arcsinh, cofactor: 150}\npopulations:\n"
              "  - name: P\n    gate: {type: polygon, channels: [CD4, CD8], vertices: [[1, 1], [3, 1], [3, 3]]}\n"
              "  - name: Q\n    gate: {type: polygon, channels: [{channel: CD4, transform: asinh}, CD8], "
              "vertices: [[1, 1], [3, 1], [3, 3]]}\n")
    with pytest.raises(GateError, match="two scales") as err:
        _tree(scales, fcs_path, tmp_path)
    assert "\n" not in str(err.value)


def test_a_sample_flowjo_cannot_hold_still_counts(tmp_path: Path, fcs_path: Path) -> None:
    gates = tmp_path / "cube.yaml"
    gates.write_text("populations:\n  - name: Treg\n    gate: {type: rectangle, channels: [CD4, CD8, CD3], "
                     "min: [1, 1, 1]}\n", encoding="utf-8")
    strategy = gatefile.load_strategy(gates)
    result = process_sample(SampleTask(sample="s", file=str(fcs_path), strategy=strategy, treg="Treg"))
    assert result.ok and result.treg is not None
    assert "3-dimensional rectangle" in result.workspace["error"]


def test_render_is_deterministic_and_groups_reference_samples(tmp_path: Path, fcs_path: Path) -> None:
    one, _ = _tree(EVERY_GATE, fcs_path, tmp_path, name="a")
    two = json.loads(json.dumps({**one, "name": "b"}))  # as the batch cache stores it
    text = render_workspace([one, two], groups={"subject X": ["b"]})
    assert text == render_workspace(json.loads(json.dumps([one, two])), groups={"subject X": ["b"]})
    root = ET.fromstring(text.encode())
    groups = {g.get("name"): [r.get("sampleID") for r in g.iter("SampleRef")] for g in root.iter("GroupNode")}
    assert groups == {"All Samples": ["1", "2"], "subject X": ["2"]}
    ids = [g.get("{http://www.isac-net.org/std/Gating-ML/v2.0/gating}id") for g in root.iter("Gate")]
    assert len(ids) == len(set(ids))


def test_fragments_rendered_in_any_order_join_to_one_numbering(tmp_path: Path, fcs_path: Path) -> None:
    """Workers render each sample's <Sample> element in whatever order samples finish; the join numbers sample and
    gate ids in the workspace's sample order, so the text never depends on that order."""
    from cytopipe.batch.cache import _valid_workspace
    from cytopipe.flowjo import render

    one, _ = _tree(EVERY_GATE, fcs_path, tmp_path, name="a")
    trees = [json.loads(json.dumps({**one, "name": name})) for name in ("a", "b & <c>", "d")]
    render._MEMO.clear()
    reference = render_workspace(trees)
    render._MEMO.clear()
    backwards = [json.loads(json.dumps(sample_fragment(tree))) for tree in trees[::-1]]  # as the cache stores them
    assert all(_valid_workspace(fragment) for fragment in backwards)
    assert join_workspace(backwards[::-1]) == reference
    assert write_workspace(tmp_path / "w.wsp", backwards[::-1]) == len(reference.encode())
    assert (tmp_path / "w.wsp").read_text(encoding="utf-8") == reference
    assert "\x00" not in reference
    gating = "{http://www.isac-net.org/std/Gating-ML/v2.0/gating}"
    root = ET.fromstring(reference.encode())
    samples = list(root.iter("Sample"))
    assert [s.find("DataSet").get("sampleID") for s in samples] == ["1", "2", "3"]
    assert [s.find("SampleNode").get("sampleID") for s in samples] == ["1", "2", "3"]
    per_sample = [[g.get(f"{gating}id") for g in s.iter("Gate")] for s in samples]
    flat = [gate for ids in per_sample for gate in ids]
    assert flat == [f"ID{k}" for k in range(1, len(flat) + 1)] and len(per_sample[0]) == len(flat) // 3
    for ids, sample in zip(per_sample, samples, strict=True):  # a parent is a gate of the same sample
        assert {g.get(f"{gating}parent_id") for g in sample.iter("Gate")} - {None} <= set(ids)
    broken = {**backwards[0], "xml": backwards[0]["xml"].replace("\x001\x00", "\x0099\x00")}
    assert not _valid_workspace(broken)  # a cached fragment whose markers do not add up is recomputed


def test_polygon_vertices_are_raw_values_on_the_drawn_scale(tmp_path: Path, fcs_path: Path) -> None:
    """FlowJo stores polygon vertices untransformed; transforming them back gives the gate file's coordinates."""
    tree, _ = _tree(EVERY_GATE, fcs_path, tmp_path)
    poly = next(p for p in tree["populations"][0]["children"][0]["children"][0]["children"][0]["children"]
                if p["name"] == "FoxP3 poly")["gate"]
    strategy = gatefile.load_strategy(tmp_path / "gates.yaml")
    gate = strategy.population("FoxP3 poly").gate
    back = np.column_stack([dim.transform.apply(np.asarray(poly["vertices"])[:, k])
                            for k, dim in enumerate(gate.dimensions)])
    np.testing.assert_allclose(back, np.asarray(gate.vertices), rtol=1e-12)


@pytest.mark.slow
def test_bundled_study_workspace_reproduced_by_flowkit(tmp_path: Path) -> None:
    """``cytopipe run`` on the bundled study with gates/treg.yaml: FlowKit counts what populations.csv says."""
    import cytopipe

    written = {}
    for workers in (1, 2):
        result = cytopipe.run(REPO / "sample_fcs" / "study.csv", gates=REPO / "gates" / "treg.yaml",
                              out=tmp_path / f"w{workers}", workers=workers, plots=False, report=False, progress=False,
                              quiet=True)
        assert result.exit_code == 0
        written[workers] = (tmp_path / f"w{workers}" / WORKSPACE_NAME).read_bytes()
    assert written[1] == written[2]  # byte-identical whatever the number of workers
    wsp = tmp_path / "w2" / WORKSPACE_NAME
    populations = pd.read_csv(tmp_path / "w2" / "populations.csv")
    manifest = json.loads((tmp_path / "w2" / "manifest.json").read_text())
    assert manifest["flowjo_workspace"]["samples"] == 12 and not manifest["flowjo_workspace"]["left_out"]
    workspace = fk.Workspace(str(wsp), find_fcs_files_from_wsp=True)
    workspace.analyze_samples(use_mp=False)
    written = _nodes(wsp)
    compared = 0
    for sample, rows in populations.groupby("sample"):
        ours = dict(zip(rows["population"], rows["count"].astype(int), strict=True))
        report = workspace.get_gating_results(sample).report
        theirs = {str(g): int(c) for g, c in zip(report["gate_name"], report["count"], strict=True)}
        assert theirs == ours, sample
        assert written[sample] == ours
        compared += len(ours)
    assert compared == 12 * len(gatefile.load_strategy(REPO / "gates" / "treg.yaml").populations)
    # cytopipe's own FlowJo reader (cytopipe.flowjo, written apart from this writer) agrees event for event.
    from cytopipe.flowjo.check import check_workspace

    check = check_workspace(wsp, fcs_dir=REPO / "sample_fcs", tolerance=0.0)
    assert check.ok and len(check.compared) == compared
    assert (check.compared["difference"].astype(int) == 0).all()


def test_transform_elements_follow_flowjo_parameterisation() -> None:
    from cytopipe.flowjo.write import _transform_element
    from cytopipe.transforms import Arcsinh, Hyperlog, Linear, Log, Logicle

    sample = read_fcs(REPO / "sample_fcs" / "ITP-01_W1.fcs")
    kind, attrs = _transform_element(Log(T=262144, M=4.5), "FITC-A", sample)
    # FlowJo's log: (log10(x) - log10(offset)) / decades, the Gating-ML flog with offset = T / 10^M.
    assert kind == "log" and dict(attrs) == pytest.approx({"offset": 262144 / 10 ** 4.5, "decades": 4.5})
    assert _transform_element(Logicle(T=1000, W=0.4, M=4, A=0.5), "FITC-A", sample) == (
        "logicle", [["length", 256], ["T", 1000.0], ["A", 0.5], ["W", 0.4], ["M", 4.0]])
    assert _transform_element(Arcsinh(T=5000, M=4, A=1), "FITC-A", sample)[0] == "fasinh"
    assert _transform_element(Linear(T=1000, A=10), "FSC-A", sample)[1][:2] == [["minRange", -10.0],
                                                                                 ["maxRange", 1000.0]]
    k = sample.channels.index("FSC-A") + 1
    assert _transform_element(None, "FSC-A", sample)[1][1] == ["maxRange", float(sample.metadata[f"$P{k}R"])]
    assert _transform_element(Hyperlog(), "FITC-A", sample) is None
    # FlowJo's own axes, from a strategy read from a FlowJo workspace, go back as FlowJo wrote them.
    from cytopipe.flowjo.transforms import FlowJoBiex, FlowJoLog

    assert _transform_element(FlowJoBiex(pos=4.5, neg=0, width=-10, max_value=262144), "FITC-A", sample) == (
        "biex", [["length", 256], ["maxRange", 262144.0], ["neg", 0.0], ["width", -10.0], ["pos", 4.5]])
    assert _transform_element(FlowJoLog(offset=0.2, decades=3.84), "FITC-A", sample) == (
        "log", [["offset", 0.2], ["decades", 3.84]])


def test_two_dimensional_data_driven_gates_round_trip(tmp_path: Path, fcs_path: Path) -> None:
    """auto_tail (fitted to a polygon) and auto_mixture (fitted to an ellipse) on logicle axes, as fitted."""
    from cytopipe import autogate

    text = (REPO / "gates" / "treg.yaml").read_text(encoding="utf-8") + """\
  - name: CD25+ CD127low
    parent: CD4+
    gate: {type: auto_tail, channels: [CD25, CD127], direction: [high, low], k: 3}
  - name: CD4 main
    parent: CD4+
    gate: {type: auto_mixture, channels: [CD25, CD127], components: 2, target: [1.5, 2.5], probability: 0.9}
"""
    gates = tmp_path / "gates.yaml"
    gates.write_text(text, encoding="utf-8")
    strategy = gatefile.load_strategy(gates)
    sample = read_fcs(fcs_path)
    spillover = choose_spillover(sample, strategy)
    fitted, _ = autogate.fit_strategy(strategy, [sample], spillover=spillover)
    result = fitted.apply(sample, spillover)
    tree = sample_tree(fitted, sample, result, spillover, name="sim")
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, [tree])
    theirs = _flowkit_counts(wsp, "sim")
    assert {name: theirs[name] for name in result.counts} == result.counts
    assert 0 < result.counts["CD25+ CD127low"] < result.counts["CD4+"]
    assert 0 < result.counts["CD4 main"] < result.counts["CD4+"]


def test_gates_convert_to_wsp_gates_each_file(tmp_path: Path, fcs_path: Path) -> None:
    """``cytopipe gates convert treg.yaml --to wsp --fcs ...``: each file gated as ``cytopipe gate`` gates it."""
    from cytopipe.cli import main
    from cytopipe.pipeline import event_membership

    out = tmp_path / "review.wsp"
    gates = REPO / "gates" / "treg.yaml"
    assert main(["gates", "convert", str(gates), "--to", "wsp", "--fcs", str(fcs_path), "--fcs", str(fcs_path),
                 "--out", str(out)]) == 0
    ours = {name: int(column.sum()) for name, column in event_membership(fcs_path, gates).items()}
    assert _flowkit_counts(out, "sim file.fcs") == ours
    assert set(_nodes(out)) == {"sim file.fcs", "sim file.fcs (2)"}
    assert main(["gates", "convert", str(gates), "--to", "wsp", "--out", str(out)]) == 2  # no --fcs: one line


def test_values_must_be_flowjos_gain_divided_values(tmp_path: Path, fcs_path: Path) -> None:
    """FlowJo divides linear channels by $PnG (its counts on the LabKey FACScan files agree only so): a sample
    gated on stored values of a channel with gain 2 is refused, the same file read with scale="gain" is written."""
    from cytopipe.fcs import write_fcs

    raw = read_fcs(fcs_path, scale="raw")
    k = raw.channels.index("FSC-A") + 1
    path = tmp_path / "gain.fcs"
    write_fcs(path, raw.events, raw.channels, raw.markers, {**raw.metadata, f"$P{k}G": "2"})
    strategy = gatefile.load_strategy(REPO / "gates" / "treg_fixed.yaml")
    stored = read_fcs(path, scale="log")
    spillover = choose_spillover(stored, strategy)
    with pytest.raises(GateError, match=r"FSC-A was gated as stored, not divided by its \$PnG gain \(2\)"):
        sample_tree(strategy, stored, strategy.apply(stored, spillover), spillover, name="g")
    divided = read_fcs(path, scale="gain")
    result = strategy.apply(divided, spillover)
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, [sample_tree(strategy, divided, result, spillover, name="g")])
    assert _flowkit_counts(wsp, "g") == result.counts  # FlowKit divides by $PnG as FlowJo does


@pytest.mark.parametrize("workspace", ["test_data_diamond_biex_rect.wsp", "simple_diamond_example_quad_gate.wsp",
                                       "test_data_diamond_asinh_rect.wsp"])
def test_flowjo_in_flowjo_out(shared_data: Path, tmp_path: Path, workspace: str) -> None:
    """A FlowJo 10 workspace used as the gate file (``--gates x.wsp --wsp-sample own``) is written back and gives
    FlowJo's counts (stored in the original workspace) through FlowKit."""
    from cytopipe.flowjo import load_workspace_strategy

    folder = shared_data / "flowjo" / "flowkit_simple_examples" / "simple_diamond_example"
    fcs = folder / "test_data_diamond_01.fcs"
    strategy = load_workspace_strategy(folder / workspace, "own", fcs)
    sample = read_fcs(fcs, scale=strategy.scale)
    spillover = choose_spillover(sample, strategy)
    result = strategy.apply(sample, spillover)
    original = {n.get("name"): int(n.get("count")) for n in ET.parse(folder / workspace).getroot().iter("Population")}
    assert {name: result.counts[name] for name in original} == original  # the reader's part
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, [sample_tree(strategy, sample, result, spillover, name="diamond")])
    assert _flowkit_counts(wsp, "diamond") == original


@pytest.mark.slow
def test_flowjo_7_and_10_trees_round_trip_through_cytopipes_reader(shared_data: Path, tmp_path: Path) -> None:
    """Every sample's own tree of the LabKey workspaces saved by FlowJo 10.8 and 7.6.5 (polygons on FlowJo log
    axes, ellipses and inverted ellipses, quadrants, ranges, And/Or/Not nodes) written out and read back by
    cytopipe.flowjo: identical counts, population for population."""
    from cytopipe.flowjo import load_workspace_strategy
    from cytopipe.flowjo.check import check_workspace

    folder = shared_data / "flowjo" / "labkey_flowjo_advanced_tutorial"
    trees = []
    for workspace in ("advanced-v10.8.wsp", "advanced-v7.6.5.wsp"):
        for fcs in sorted((folder / "fcs").glob("*.fcs")):
            strategy = load_workspace_strategy(folder / workspace, "own", fcs)
            sample = read_fcs(fcs, scale=strategy.scale, exact=True)
            spillover = choose_spillover(sample, strategy)
            result = strategy.apply(sample, spillover, exact=True)
            trees.append(sample_tree(strategy, sample, result, spillover, name=f"{workspace} {fcs.name}"))
    wsp = tmp_path / WORKSPACE_NAME
    write_workspace(wsp, trees)
    text = wsp.read_text(encoding="utf-8")
    assert 'eventsInside="0"' in text and "<transforms:log " in text and "<NotNode " in text
    check = check_workspace(wsp, fcs_dir=folder / "fcs", tolerance=0.0)
    assert check.ok and check.table["sample"].nunique() == 32 and len(check.compared) > 300
    assert (check.compared["difference"].astype(int) == 0).all()


@pytest.mark.parametrize(("path", "uri"), [
    ("/data/run_1/A01-CD4.fcs", "file:/data/run_1/A01-CD4.fcs"),
    ("/data/run 1/A01 50%.fcs", "file:/data/run%201/A01%2050%25.fcs"),
    ("/data/Étude/tube#2?.fcs", "file:/data/%C3%89tude/tube%232%3F.fcs"),
])
def test_file_uri_quotes_only_what_needs_quoting(path: str, uri: str) -> None:
    assert file_uri(path) == uri


def test_characters_xml_cannot_hold_are_exactly_those_outside_its_char_production():
    """The characters replaced by U+FFFD in a workspace: every code point outside XML 1.0's Char production."""
    from cytopipe.flowjo.render import _NOT_XML

    def allowed(c: int) -> bool:
        return c in (0x9, 0xA, 0xD) or 0x20 <= c <= 0xD7FF or 0xE000 <= c <= 0xFFFD or 0x10000 <= c <= 0x10FFFF

    text = "".join(map(chr, range(0x110000)))
    assert [ord(c) for c in _NOT_XML.findall(text)] == [c for c in range(0x110000) if not allowed(c)]

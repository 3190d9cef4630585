"""Gating-ML export: schema-valid, re-imports to identical per-event results, and FlowKit (an independent
implementation) reproduces cytopipe's counts on the exported files."""

from __future__ import annotations

import csv
import sys
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from cytopipe.errors import GateError
from cytopipe.fcs import read_fcs, write_fcs
from cytopipe.gates import BooleanGate, Dimension, GatingStrategy, Population, QuadrantGate, RectangleGate
from cytopipe.gatingml import gate_ids, read_gatingml, write_gatingml
from cytopipe.transforms import Logicle

flowkit = pytest.importorskip("flowkit")
from conftest import REPO, SHARED_DATA  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_gating  # noqa: E402

ISAC = SHARED_DATA / "gatingml2" / "isac_gatingMLData"
SETS = {1: "data1.fcs", 2: "data2.fcs", 3: "9399_1_3_NKR.fcs", 4: "9399_1_3_NKR.fcs", 5: "9399_1_3_NKR.fcs"}


@cache
def _sample(name: str):
    return read_fcs(ISAC / "FCSFiles" / name, scale=True)


def _schema_valid(path: Path) -> bool:
    from flowkit._resources import gml_schema
    from lxml import etree

    return bool(gml_schema.validate(etree.parse(str(path))))


@pytest.mark.parametrize("number", sorted(SETS), ids=lambda k: f"gates{k}")
def test_export_import_is_identical_per_event(shared_data: Path, tmp_path: Path, number: int) -> None:
    original = read_gatingml(ISAC / "Gating-MLFiles" / f"gates{number}.xml")
    out = tmp_path / f"gates{number}.xml"
    write_gatingml(original, out)
    assert _schema_valid(out), f"exported gates{number}.xml does not validate against the Gating-ML 2.0 XSD"
    again = read_gatingml(out)
    assert [p.name for p in again.populations] == [p.name for p in original.populations]
    sample = _sample(SETS[number])
    first, second = original.apply(sample, exact=True), again.apply(sample, exact=True)
    for name, mask in first.masks.items():
        assert np.array_equal(mask, second.masks[name]), name
    # The second export is byte-identical to the first: nothing drifts through a round trip.
    write_gatingml(again, tmp_path / "again.xml")
    assert (tmp_path / "again.xml").read_bytes() == out.read_bytes()


def _flowkit_passes() -> dict[int, set[str]]:
    path = ISAC / "flowkit_1.3.2_results.csv"
    passes: dict[int, set[str]] = {}
    if path.is_file():
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["flowkit_1.3.2_outcome"] == "PASS":
                    passes.setdefault(int(row["set"]), set()).add(row["gate_id"])
    return passes


def _flowkit_counts(xml: Path, fcs: Path) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        strategy = flowkit.parse_gating_xml(str(xml))
        result = strategy.gate_sample(flowkit.Sample(str(fcs)))
    report = result.report
    return {str(row.gate_name): int(row["count"]) for _, row in report.iterrows()}


@pytest.mark.parametrize("number", [1, 2, 5], ids=lambda k: f"gates{k}")
def test_flowkit_reproduces_counts_on_exported_compliance_files(shared_data: Path, tmp_path: Path,
                                                                number: int) -> None:
    """Gates FlowKit 1.3.2 handles in the original file (flowkit_1.3.2_results.csv: PASS) must give cytopipe's
    counts from cytopipe's export; the others (bounds, non-square matrices) FlowKit cannot evaluate at all."""
    strategy = read_gatingml(ISAC / "Gating-MLFiles" / f"gates{number}.xml")
    out = tmp_path / "export.xml"
    write_gatingml(strategy, out)
    ours = strategy.apply(_sample(SETS[number]), exact=True).counts
    theirs = _flowkit_counts(out, ISAC / "FCSFiles" / SETS[number])
    ids = gate_ids(strategy)
    comparable = sorted(_flowkit_passes().get(number, set()) & set(ours))
    assert len(comparable) >= 10
    mismatched = {n: (ours[n], theirs.get(ids[n])) for n in comparable if ours[n] != theirs.get(ids[n])}
    assert not mismatched


def test_flowkit_reproduces_a_treg_strategy_with_renamed_ids(tmp_path: Path) -> None:
    """A YAML-style strategy (names like 'CD4+', logicle, FCS compensation, quadrant, boolean) exported to
    Gating-ML: FlowKit's counts equal ours in both precision modes."""
    fcs = tmp_path / "treg.fcs"
    write_fcs(fcs, bench_gating.simulate(40_000, seed=3), bench_gating.CHANNELS, bench_gating.MARKERS,
              {"$SPILLOVER": bench_gating._spillover_keyword()})
    base = bench_gating.treg_strategy()
    logicle = base.transforms["logicle"]
    cd4, cd8 = Dimension("FITC-A", logicle), Dimension("PerCP-Cy5.5-A", logicle)
    extra = (
        Population("CD4+CD8-", QuadrantGate.from_signs("CD4+CD8-", (cd4, cd8), (0.6, 0.55), "+-"), "CD3+"),
        Population("CD4-CD8+", QuadrantGate("CD4-CD8+", (cd4, cd8), ((0.6,), (0.55,)), (0.0, 1.0), "CD4+CD8-",
                                            ("CD4+CD8-_d1", "CD4+CD8-_d2")), "CD3+"),
        Population("non-Treg CD4", BooleanGate("non-Treg CD4", op="and", operands=("CD4+", "Treg"),
                                               complement=(False, True))),
    )
    strategy = GatingStrategy(base.populations + extra, transforms=base.transforms, treg="Treg", parent="CD4+")
    out = tmp_path / "treg.xml"
    write_gatingml(strategy, out)
    assert _schema_valid(out)
    ids = gate_ids(strategy)
    assert ids["CD4+"] == "CD4_pos" and ids["Treg"] == "Treg"
    assert [p.name for p in read_gatingml(out).populations] == [p.name for p in strategy.populations]
    theirs = _flowkit_counts(out, fcs)
    sample = read_fcs(fcs)
    for exact in (False, True):
        ours = strategy.apply(sample, exact=exact).counts
        assert {name: theirs[ids[name]] for name in ours} == ours
    assert ours["CD4+CD8-"] == ours["CD4+"] and ours["Treg"] > 50


YAML_FILES = sorted((REPO / "gates").glob("*.yaml"))
STUDY_FILE = REPO / "sample_fcs" / "ITP-01_W1.fcs"


@pytest.mark.parametrize("yaml_path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_strategies_export_identically_and_flowkit_agrees(tmp_path: Path, yaml_path: Path) -> None:
    """gates/*.yaml (data-driven gates fitted first): export -> import is identical per event, and FlowKit
    reproduces the counts once markers are written as $PnN (FlowKit matches $PnN only)."""
    from cytopipe import autogate
    from cytopipe.gatefile import load_gates, resolve_channels

    if not STUDY_FILE.is_file():
        pytest.skip(f"{STUDY_FILE} is absent (python -m cytopipe.simulate writes it)")
    sample = read_fcs(STUDY_FILE)
    # A strategy cutting on a control tube (treg_cd127.yaml: isotype:CD25) gets the sample itself as that tube:
    # what is tested is the export of whatever was fitted.
    strategy = load_gates(yaml_path)
    roles = {r for p in strategy.populations for r in getattr(p.gate, "controls", ())}
    strategy, _ = autogate.fit_strategy(strategy, [sample], controls={r: sample for r in roles})
    out = tmp_path / "yaml.xml"
    write_gatingml(strategy, out)
    assert _schema_valid(out)
    ours = strategy.apply(sample)
    again = read_gatingml(out).apply(sample)
    for name, mask in ours.masks.items():
        assert np.array_equal(mask, again.masks[name]), name
    renamed = resolve_channels(strategy, sample)
    write_gatingml(renamed, tmp_path / "pnn.xml")
    theirs = _flowkit_counts(tmp_path / "pnn.xml", STUDY_FILE)
    ids = gate_ids(renamed)
    assert {name: theirs[ids[name]] for name in ours.counts} == ours.counts
    assert ours.counts[strategy.treg or "Treg"] > 0


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    strategy = GatingStrategy((Population("A", RectangleGate("A", (Dimension("FSC-A"),), (1.0,), (None,))),))
    out = tmp_path / "g.xml"
    out.write_text("old")
    write_gatingml(strategy, out)
    assert read_gatingml(out).population("A").gate.min == (1.0,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.xml"]


def test_bounds_and_transform_parameters_survive_export(tmp_path: Path) -> None:
    bounded = Logicle(10000, 0.5, 4.5, 0, name="L", bound_min=0.4)
    strategy = GatingStrategy((Population("A", RectangleGate("A", (Dimension("FL1-H", bounded),), (0.37,),
                                                             (0.63,))),), transforms={"L": bounded})
    write_gatingml(strategy, tmp_path / "b.xml")
    again = read_gatingml(tmp_path / "b.xml").population("A").gate.dimensions[0].transform
    assert again == bounded


GOOD_HEAD = ('<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
             'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes" '
             'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations">')
DIM = '<gating:dimension gating:compensation-ref="{comp}" {extra}><data-type:fcs-dimension data-type:name="FL1-H"/>' \
      '</gating:dimension>'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<gating:RectangleGate gating:id='R1'>" + DIM.format(comp="uncompensated", extra='gating:min="x"')
         + "</gating:RectangleGate>", "gate 'R1': min is not a number"),
        ("<gating:RectangleGate gating:id='R1'>" + DIM.format(comp="NoSuchMatrix", extra='gating:min="1"')
         + "</gating:RectangleGate>", "gate 'R1': unknown compensation-ref 'NoSuchMatrix'"),
        ("<gating:RectangleGate gating:id='R1'>" + DIM.format(comp="FCS", extra='gating:transformation-ref="T9"')
         + "</gating:RectangleGate>", "gate 'R1': unknown transformation-ref 'T9'"),
        ("<gating:RectangleGate gating:id='R1' gating:parent_id='R0'>" + DIM.format(comp="FCS",
         extra='gating:min="1"') + "</gating:RectangleGate>", "gate 'R1': unknown parent_id 'R0'"),
        ("<gating:BooleanGate gating:id='B1'><gating:and><gating:gateReference gating:ref='X'/>"
         "<gating:gateReference gating:ref='Y'/></gating:and></gating:BooleanGate>",
         "gate 'B1': gateReference to unknown gate 'X'"),
        ("<gating:PolygonGate gating:id='P1'>" + DIM.format(comp="FCS", extra="") * 2
         + "<gating:vertex><gating:coordinate data-type:value='1'/></gating:vertex></gating:PolygonGate>",
         "gate 'P1': every vertex needs two coordinates"),
        ("<transforms:transformation transforms:id='T1'><transforms:logicle transforms:T='1000' transforms:W='9'"
         " transforms:M='4' transforms:A='0'/></transforms:transformation>", "transformation 'T1'"),
        ("<gating:RectangleGate gating:id='R1'>", "malformed XML"),
        ("<transforms:transformation transforms:id='T1'><transforms:flin transforms:T='1' transforms:A='0'/>"
         "</transforms:transformation>" * 2, "transformation 'T1': duplicate transforms:id"),
        (("<gating:RectangleGate gating:id='R1'>" + DIM.format(comp="FCS", extra='gating:min="1"')
          + "</gating:RectangleGate>") * 2, "duplicate population name 'R1'"),
    ],
)
def test_malformed_files_raise_one_line_gate_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(GOOD_HEAD + body + "</gating:Gating-ML>")
    with pytest.raises(GateError) as info:
        read_gatingml(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


def test_not_gatingml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "other.xml"
    path.write_text("<root/>")
    with pytest.raises(GateError, match="not a Gating-ML 2.0 file"):
        read_gatingml(path)
    with pytest.raises(GateError, match="cannot read"):
        read_gatingml(tmp_path / "missing.xml")


def test_data_driven_or_unsupported_gates_cannot_be_exported(tmp_path: Path) -> None:
    from cytopipe.gates import Gate

    strategy = GatingStrategy((Population("A", Gate("A", (Dimension("FSC-A"),))),))
    with pytest.raises(GateError, match="cannot be written to Gating-ML"):
        write_gatingml(strategy, tmp_path / "x.xml")
    assert not (tmp_path / "x.xml").exists()


def test_quadrant_groups_must_share_dividers_and_parent(tmp_path: Path) -> None:
    cd4, cd8 = Dimension("CD4", Logicle()), Dimension("CD8", Logicle())
    root = Population("T", RectangleGate("T", (cd4,), (0.0,), (None,)))
    a = QuadrantGate.from_signs("Q++", (cd4, cd8), (0.5, 0.5), "++")
    b = QuadrantGate("Q--", (cd4, cd8), ((0.5,), (0.4,)), (0.0, 0.0), a.group, a.divider_ids)
    strategy = GatingStrategy((root, Population("Q++", a, "T"), Population("Q--", b, "T")))
    with pytest.raises(GateError, match="quadrants of 'Q\\+\\+' differ"):
        write_gatingml(strategy, tmp_path / "q.xml")


def test_a_ratio_is_written_once_with_its_channels(tmp_path: Path) -> None:
    from cytopipe.transforms import Log, Ratio

    ratio = Ratio(1, 0, 0, name="CD4/CD8")
    plain = Dimension(("FITC-A", "PE-A"), None, "uncompensated", ratio)
    logged = Dimension(("FITC-A", "PE-A"), Log(100, 2, name="log"), "uncompensated", ratio)
    strategy = GatingStrategy((Population("r1", RectangleGate("r1", (plain,), (1.0,), (None,))),
                               Population("r2", RectangleGate("r2", (logged,), (0.5,), (None,)), "r1")))
    write_gatingml(strategy, tmp_path / "r.xml")
    assert _schema_valid(tmp_path / "r.xml")
    text = (tmp_path / "r.xml").read_text()
    assert text.count("<transforms:fratio") == 1 and 'transforms:id="CD4_CD8"' in text
    again = read_gatingml(tmp_path / "r.xml")
    assert again.population("r2").gate.dimensions[0].channel == ("FITC-A", "PE-A")
    assert again.population("r2").gate.dimensions[0].ratio.params() == ratio.params()
    other = Dimension(("APC-A", "PE-A"), None, "uncompensated", ratio)
    clash = GatingStrategy(strategy.populations + (Population("r3", RectangleGate("r3", (other,), (1.0,),
                                                                                  (None,))),))
    with pytest.raises(GateError, match="two channel pairs"):
        write_gatingml(clash, tmp_path / "clash.xml")

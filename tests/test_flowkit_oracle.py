"""FlowKit as an independent oracle: strategies exported to Gating-ML give FlowKit's counts on a real FCS file.

Each strategy (the fixed gate files in ``gates/`` and a strategy of our own that uses every gate type and every
YAML transform) is exported with :func:`cytopipe.gatingml.write_gatingml`, parsed with
``flowkit.parse_gating_xml`` and evaluated with ``GatingStrategy.gate_sample`` on a simulated file written by
:func:`cytopipe.fcs.write_fcs`.

FlowKit quirks handled here:

* it matches dimensions by exact ``$PnN``/``$PnS`` only, so the export names ``$PnN``
  (:func:`cytopipe.gatefile.resolve_channels`);
* it uses the file's ``$SPILLOVER`` for ``compensation-ref="FCS"`` (the simulated files carry one);
* it multiplies the Time channel by ``$TIMESTEP``, so no oracle gate uses Time;
* it computes a ratio (``fratio``) from uncompensated values whatever the dimension's ``compensation-ref``, so the
  oracle's ratio gate is uncompensated;
* it reports by Gating-ML id, which differs from the population name when that is no XML id (``CD4+``):
  :func:`cytopipe.gatingml.gate_ids` gives the mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cytopipe import autogate, gatefile, simulate
from cytopipe.fcs import read_fcs
from cytopipe.gates import GatingStrategy
from cytopipe.gatingml import gate_ids, read_gatingml, write_gatingml

fk = pytest.importorskip("flowkit")

REPO = Path(__file__).resolve().parents[1]

# Every fixed gate type and every YAML transform, with population names that are valid Gating-ML ids.
EVERY_GATE_TYPE = """\
name: every gate type
compensation: file
transforms:
  logicle: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
  asinh: {type: arcsinh, cofactor: 150}
  log: {type: log, T: 262144, M: 4.5}
  hlog: {type: hyperlog, T: 262144, W: 0.5, M: 4.5, A: 0}
  lin: {type: linear, T: 262144, A: 0}
  cd4cd8: {type: ratio, A: 2, B: 100, C: -50}
populations:
  - name: Lymphocytes
    gate:
      type: polygon
      channels: [FSC-A, SSC-A]
      vertices: [[36000, 2500], [74000, 2500], [80000, 14000], [76000, 24000], [58000, 27000], [42000, 24000],
                 [35000, 12000]]
  - name: Singlets
    parent: Lymphocytes
    gate: {type: polygon, channels: [FSC-A, FSC-H], vertices: [[25000, 18750], [100000, 75000], [100000, 98000],
                                                              [25000, 25000]]}
  - name: SSClow
    parent: Lymphocytes
    gate: {type: range, channels: [{channel: SSC-A, transform: log}], max: 4.15}
  - name: CD3pos
    parent: Singlets
    gate: {type: range, channels: [CD3], min: 2.1}
  - name: CD4pos
    parent: CD3pos
    gate: {type: rectangle, channels: [CD4, {channel: CD8, transform: hlog}], min: [2.2, null], max: [null, 2.0]}
  - name: Treg
    parent: CD4pos
    gate: {type: rectangle, channels: [CD25, {channel: FoxP3, transform: asinh}], min: [2.25, 2.0], max: [4.0, null]}
  - name: Act
    parent: CD4pos
    gate: {type: ellipse, channels: [CD25, CD127], center: [1.3, 2.4], covariance: [[0.1, 0.02], [0.02, 0.05]],
           distance: 4}
  - name: CD25hiCD127lo
    parent: CD4pos
    gate: {type: quadrant, channels: [CD25, CD127], at: [2.0, 1.75], quadrant: "+-"}
  - name: SSChlow
    gate: {type: range, channels: [{channel: SSC-H, transform: lin}], min: 2000, max: 12000}
  - name: CD4overCD8
    parent: CD3pos
    gate: {type: range, channels: [{channel: [CD4, CD8], ratio: cd4cd8, compensation: none}], min: 40, max: 500}
  - name: NotTreg
    parent: CD4pos
    gate: {type: not, of: [Treg]}
  - name: TregOrAct
    parent: CD4pos
    gate: {type: or, of: [Treg, Act]}
  - name: SSChlowNonTreg
    gate: {type: and, of: [SSChlow, {not: Treg}, CD4pos]}
"""

# treg.yaml holds data-driven gates: they are fitted on the sample first, then exported like any other.
CASES = ["gates/treg_fixed.yaml", "gates/treg_cd127_fixed.yaml", "gates/treg.yaml", "every-gate-type"]


@pytest.fixture(scope="module")
def fcs_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20,000-event simulated Treg-panel file with ``$SPILLOVER``, written by ``cytopipe.fcs.write_fcs``."""
    path = tmp_path_factory.mktemp("oracle") / "sim.fcs"
    sample = simulate.simulate_sample(simulate.SampleSpec(n_events=20_000), np.random.default_rng(3))
    simulate.write_sample(path, sample)
    return path


def _gate_file(case: str, tmp_path: Path) -> Path:
    if case == "every-gate-type":
        path = tmp_path / "every.yaml"
        path.write_text(EVERY_GATE_TYPE, encoding="utf-8")
        return path
    path = REPO / case
    if not path.is_file():
        pytest.skip(f"{case} is not in the repository yet")
    return path


def _flowkit_counts(xml: Path, fcs: Path) -> dict[str, int]:
    results = fk.parse_gating_xml(str(xml)).gate_sample(fk.Sample(str(fcs)))
    report = results.report
    return {str(k): int(v) for k, v in zip(report["gate_name"], report["count"], strict=True)}


def _export(case: str, tmp_path: Path, fcs: Path) -> tuple[GatingStrategy, Path, dict[str, str]]:
    """Load (and fit) a gate file and export it with $PnN names; return the strategy, the XML and name -> id."""
    strategy = gatefile.load_strategy(_gate_file(case, tmp_path))
    sample = read_fcs(fcs)
    if autogate.needs_fitting(strategy):
        strategy, _ = autogate.fit_strategy(strategy, [sample])
    xml = tmp_path / "export.xml"
    write_gatingml(gatefile.resolve_channels(strategy, sample), xml)
    # Names that are not XML ids (``CD4+``) are written under another id and restored on import.
    assert sorted(p.name for p in read_gatingml(xml).populations) == sorted(p.name for p in strategy.populations)
    return strategy, xml, gate_ids(strategy)


@pytest.mark.parametrize("case", CASES)
def test_flowkit_reproduces_exported_counts(case: str, tmp_path: Path, fcs_path: Path) -> None:
    _, xml, ids = _export(case, tmp_path, fcs_path)
    ours = read_gatingml(xml).apply(read_fcs(fcs_path))
    theirs = _flowkit_counts(xml, fcs_path)
    assert {name: theirs[i] for name, i in ids.items()} == ours.counts
    # The oracle is only worth something if every gate keeps some events and drops others.
    assert all(0 < count < ours.n_events for count in ours.counts.values())


@pytest.mark.parametrize("case", CASES)
def test_flowkit_reproduces_yaml_counts(case: str, tmp_path: Path, fcs_path: Path) -> None:
    """The strategy as loaded (marker names such as ``CD4``) counts what FlowKit counts on the export."""
    strategy, xml, ids = _export(case, tmp_path, fcs_path)
    ours = strategy.apply(read_fcs(fcs_path))
    theirs = _flowkit_counts(xml, fcs_path)
    assert {n: theirs[i] for n, i in ids.items()} == ours.counts

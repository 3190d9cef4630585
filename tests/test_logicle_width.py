"""``W: auto``: the logicle width fitted to each file's negative spread (flowCore's ``estimateLogicle`` rule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.adapt import apply_widths, fit_widths, logicle_width
from cytopipe.cli import main
from cytopipe.fcs import read_fcs, write_fcs
from cytopipe.gatefile import dump_yaml, load_gates
from cytopipe.transforms import AutoWidthLogicle, Logicle


@pytest.mark.parametrize("spread", [20.0, 300.0, 3000.0])
def test_fitted_width_puts_the_negative_spread_on_scale(spread):
    """The point of the rule: the 5 % quantile of the negatives, r, lands at the bottom of the display (0..0.1
    of the logicle's [0, 1]) instead of below it."""
    x = np.random.default_rng(1).normal(0.0, spread, 50_000)
    w, r, n, how = logicle_width(x, 262144.0, 4.5)
    assert how == "fitted" and n == int((x < 0).sum())
    assert r == pytest.approx(np.quantile(x[x < 0], 0.05))
    y = float(Logicle(T=262144.0, W=w, M=4.5).apply(np.array([r]))[0])
    assert 0.0 <= y < 0.1
    if spread >= 300:  # a fixed W = 0.5 pushes the same events off the bottom of the scale
        assert float(Logicle(T=262144.0, W=0.5, M=4.5).apply(np.array([r]))[0]) < 0.0


def test_width_without_negatives_or_out_of_range():
    assert logicle_width(np.array([1.0, 5.0, 100.0]), 262144.0, 4.5)[::3] == (0.0, "no negatives")
    w, _, _, how = logicle_width(np.array([-1e9, -2e9] * 50), 262144.0, 4.5)
    assert how == "clamped" and w == pytest.approx(2.25)  # M / 2, the widest logicle there is


GATES = """\
name: width test
treg: Treg
parent: CD4+
compensation: none
transforms:
  wide: {type: logicle, T: 262144, W: auto, M: 4.5, A: 0}
populations:
  - name: CD4+
    gate: {type: range, channels: [FSC-A], min: 0}
  - name: Treg
    parent: CD4+
    gate: {type: range, channels: [{channel: CD25, transform: wide}], min: 2.5}
"""


def test_gate_file_w_auto_is_fitted_per_sample_and_recorded(tmp_path: Path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(GATES)
    strategy = load_gates(gates)
    assert isinstance(strategy.population("Treg").gate.dimensions[0].transform, AutoWidthLogicle)
    assert "W: auto" in dump_yaml(strategy)
    rng = np.random.default_rng(2)
    spreads = {"narrow": 30.0, "wide": 1500.0}
    for name, spread in spreads.items():
        n = 5000
        cd25 = np.where(rng.random(n) < 0.05, rng.normal(30000, 4000, n), rng.normal(0, spread, n))
        write_fcs(tmp_path / f"{name}.fcs", np.column_stack([rng.normal(50000, 5000, n), cd25]).astype(np.float32),
                  ["FSC-A", "FL1"], ["", "CD25"])
    (tmp_path / "study.csv").write_text("file,subject,timepoint,day\nnarrow.fcs,S1,D0,0\nwide.fcs,S2,D0,0\n")
    assert main(["run", str(tmp_path / "study.csv"), "--gates", str(gates), "--out", str(tmp_path / "r"),
                 "--workers", "1", "--quiet"]) == 0
    fitted = pd.read_csv(tmp_path / "r" / "gates_fitted.csv").set_index("sample")
    assert set(fitted["type"]) == {"logicle W: auto"}
    for name in spreads:
        sample = read_fcs(tmp_path / f"{name}.fcs")
        expected = logicle_width(sample.column("CD25"), 262144.0, 4.5)[0]
        assert fitted.loc[name, "CD25 W"] == pytest.approx(expected, rel=1e-6)
    assert fitted.loc["wide", "CD25 W"] > fitted.loc["narrow", "CD25 W"] + 0.5
    widths, rows = fit_widths(strategy, [read_fcs(tmp_path / "wide.fcs")])
    fixed = apply_widths(strategy, widths)
    transform = fixed.population("Treg").gate.dimensions[0].transform
    assert type(transform) is Logicle and transform.W == pytest.approx(rows[0]["CD25 W"])

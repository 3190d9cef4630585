"""Two-dimensional data-driven gates: ``auto_tail`` (robust centre/covariance, tilted boundary) and ``auto_mixture``
(the mixture component nearest a target), on synthetic data whose truth is known."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cytopipe import autogate
from cytopipe.errors import GateError
from cytopipe.fcs import Sample
from cytopipe.gatefile import dump_yaml, parse_gates
from cytopipe.gates import EllipsoidGate, PolygonGate
from cytopipe.gatingml import read_gatingml, write_gatingml

TAIL_YAML = """
name: tail
treg: Tail
compensation: none
transforms:
  logicle: {type: linear, T: 1}
populations:
  - name: Tail
    gate: {type: auto_tail, channels: [X, Y], direction: [high, low], k: 3}
"""


def _sample(events: np.ndarray, name: str = "synthetic.fcs") -> Sample:
    return Sample(name, np.ascontiguousarray(events, dtype=np.float32), ("X", "Y"), ("", ""), {}, "FCS3.1")


def _tail_data(n: int = 20_000, tail: float = 0.04, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A correlated main cloud (slope ~2, like uncompensated CD25 x CD127) and a tail below and to its right."""
    rng = np.random.default_rng(seed)
    n_tail = int(n * tail)
    main = rng.multivariate_normal([1.1, 1.5], [[0.03, 0.024], [0.024, 0.068]], n - n_tail)
    out = rng.multivariate_normal([1.6, 0.95], [[0.02, 0.0], [0.0, 0.03]], n_tail)
    return np.vstack([main, out]), np.r_[np.zeros(n - n_tail, bool), np.ones(n_tail, bool)]


def _f1(mask: np.ndarray, truth: np.ndarray) -> float:
    return 2 * int((mask & truth).sum()) / int(mask.sum() + truth.sum())


def test_robust_covariance_agrees_with_scikit_learn_mincovdet():
    pytest.importorskip("sklearn")
    from sklearn.covariance import MinCovDet

    rng = np.random.default_rng(3)
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    x = np.vstack([rng.multivariate_normal([1, 2], cov, 4750), rng.multivariate_normal([5, -3], 0.3 * np.eye(2), 250)])
    mean, found = autogate.robust_covariance(x)
    oracle = MinCovDet(random_state=0).fit(x)
    # Both resist the 5 % outliers: within 0.05 of the truth and of each other (4,750 clean events; their standard
    # errors are about 0.015-0.03).
    np.testing.assert_allclose(mean, [1, 2], atol=0.06)
    np.testing.assert_allclose(found, cov, atol=0.1)
    np.testing.assert_allclose(mean, oracle.location_, atol=0.03)
    np.testing.assert_allclose(found, oracle.covariance_, rtol=0.05, atol=0.03)


def test_tail_gate_finds_the_tail_with_a_tilted_boundary():
    xy, truth = _tail_data()
    sample = _sample(xy)
    strategy = parse_gates(TAIL_YAML)
    fitted, rows = autogate.fit_strategy(strategy, [sample])
    gate = fitted.population("Tail").gate
    assert isinstance(gate, PolygonGate) and gate.outline().shape[1] == 2
    mask = fitted.apply(sample).masks["Tail"]
    assert _f1(mask, truth) > 0.9
    assert abs(100 * mask.mean() - 100 * truth.mean()) < 0.5
    (row,) = rows
    assert row["type"] == "auto_tail" and row["center X"] == pytest.approx(1.1, abs=0.02)
    # The boundary follows the main cloud: parallel to its major axis (slope var(Y)/cov ~ 2.3 here), not vertical.
    assert 1.5 < row["boundary slope"] < 4
    # fitting is deterministic, and the YAML form of the unfitted gate reads back the same
    again, _ = autogate.fit_strategy(strategy, [_sample(xy)])
    assert again.population("Tail").gate == gate
    assert parse_gates(dump_yaml(strategy)).populations == strategy.populations


def test_tail_gate_control_cut_and_its_errors():
    xy, truth = _tail_data()
    rng = np.random.default_rng(5)
    control = _sample(np.column_stack([rng.normal(1.3, 0.05, 5000), rng.normal(1.5, 0.25, 5000)]), "iso.fcs")
    text = TAIL_YAML.replace("k: 3}", "k: 3, control: 'isotype:X', percentile: 99}")
    strategy = parse_gates(text)
    fitted, rows = autogate.fit_strategy(strategy, [_sample(xy)], controls={"isotype:X": control})
    cut = rows[0]["control X"]
    assert cut == pytest.approx(1.3 + 2.326 * 0.05, abs=0.02)
    gate = fitted.population("Tail").gate
    assert np.asarray(gate.vertices)[:, 0].min() >= autogate.to_units(cut, gate.dimensions[0].transform) * (1 - 1e-12)
    assert rows[0]["control"] == "isotype:X"
    # Without the control tube: the control-free boundary (said in the row), or one line with control_required.
    free, free_rows = autogate.fit_strategy(strategy, [_sample(xy)])
    assert free_rows[0]["control"] == "none" and "control X" not in free_rows[0]
    assert free.population("Tail").gate == autogate.fit_strategy(parse_gates(TAIL_YAML), [_sample(xy)])[0].population(
        "Tail").gate
    strict = parse_gates(text.replace("percentile: 99}", "percentile: 99, control_required: true}"))
    with pytest.raises(GateError, match=r"population 'Tail'.*control 'isotype:x'"):
        autogate.fit_strategy(strict, [_sample(xy)])
    with pytest.raises(GateError) as info:
        autogate.fit_strategy(parse_gates(TAIL_YAML), [_sample(xy[:60], "tiny.fcs")])
    message = str(info.value)
    assert message.startswith("tiny.fcs: population 'Tail'") and "at least 100 events" in message
    assert "\n" not in message
    for bad, expected in (("direction: [up, low]", "direction"), ("k: -1", "k must be positive"),
                          ("percentile: 120, control: fmo:X", "percentile")):
        with pytest.raises(GateError, match=expected):
            parse_gates(TAIL_YAML.replace("direction: [high, low], k: 3", bad))


def test_tail_gate_sensitivity_and_gatingml_export(tmp_path):
    xy, _ = _tail_data()
    sample = _sample(xy)
    strategy = parse_gates(TAIL_YAML)
    fitted, _ = autogate.fit_strategy(strategy, [sample])
    rows = autogate.sensitivity(strategy, sample, fitted=fitted, delta=0.1)
    assert [(r["channel"], r["bound"]) for r in rows] == [("X", "min"), ("Y", "max")]
    for row in rows:
        # moving the region towards the main cloud takes more events: X down, Y up
        lower, upper = row["treg_pct_minus"], row["treg_pct_plus"]
        assert (lower > row["treg_pct"] > upper) if row["bound"] == "min" else (upper > row["treg_pct"] > lower)
    path = tmp_path / "tail.xml"
    write_gatingml(fitted, path)
    again = read_gatingml(path)
    assert np.array_equal(again.apply(sample).masks["Tail"], fitted.apply(sample).masks["Tail"])


MIXTURE_YAML = """
name: mixture
compensation: none
transforms:
  logicle: {type: linear, T: 1}
populations:
  - name: Target
    gate: {type: auto_mixture, channels: [X, Y], components: 3, target: [3, 0], probability: 0.9}
"""


def _three_clouds(seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.multivariate_normal([0, 0], [[0.2, 0.05], [0.05, 0.3]], 6000)
    b = rng.multivariate_normal([0, 3], [[0.3, 0], [0, 0.2]], 3000)
    c = rng.multivariate_normal([3, 0.5], [[0.2, -0.08], [-0.08, 0.25]], 1000)
    return np.vstack([a, b, c]), np.r_[np.zeros(9000, bool), np.ones(1000, bool)]


def test_mixture_gate_picks_the_component_nearest_the_target():
    xy, truth = _three_clouds()
    sample = _sample(xy)
    strategy = parse_gates(MIXTURE_YAML)
    fitted, rows = autogate.fit_strategy(strategy, [sample])
    gate = fitted.population("Target").gate
    assert isinstance(gate, EllipsoidGate)
    np.testing.assert_allclose(gate.mean, [3, 0.5], atol=0.05)
    np.testing.assert_allclose(gate.covariance, [[0.2, -0.08], [-0.08, 0.25]], atol=0.03)
    mask = fitted.apply(sample).masks["Target"]
    # 90 % of the target cloud inside its 90 % ellipse (1,000 events: +/- 1 % binomial SE), nothing else
    assert mask[truth].mean() == pytest.approx(0.9, abs=0.03) and mask[~truth].mean() < 0.002
    assert rows[0]["weight"] == pytest.approx(0.1, abs=0.01)
    assert parse_gates(dump_yaml(strategy)).populations == strategy.populations
    rows = autogate.sensitivity(strategy, sample, treg="Target", fitted=fitted, delta=0.1)
    assert rows[0]["bound"] == "radius" and rows[0]["treg_pct_minus"] < rows[0]["treg_pct"] < rows[0]["treg_pct_plus"]


def test_mixture_gate_errors_are_one_line_and_name_the_population():
    xy, _ = _three_clouds()
    with pytest.raises(GateError) as info:
        autogate.fit_strategy(parse_gates(MIXTURE_YAML.replace("probability: 0.9", "max_iter: 1")), [_sample(xy)])
    assert str(info.value).startswith("synthetic.fcs: population 'Target'") and "did not converge" in str(info.value)
    with pytest.raises(GateError, match="population 'Target'.*at least 100 events"):
        autogate.fit_strategy(parse_gates(MIXTURE_YAML), [_sample(xy[:50])])
    with pytest.raises(GateError, match="target"):
        parse_gates(MIXTURE_YAML.replace("target: [3, 0]", "target: 3"))
    with pytest.raises(GateError, match="components"):
        parse_gates(MIXTURE_YAML.replace("components: 3", "components: 1"))


def test_two_d_fits_are_identical_across_blas_thread_counts():
    # Run in fresh interpreters so the BLAS thread count is set before numpy starts.
    code = ("import numpy as np, sys; sys.path.insert(0, '.');"
            "from tests.test_autogate_2d import _three_clouds, _tail_data, _sample, MIXTURE_YAML, TAIL_YAML;"
            "from cytopipe import autogate; from cytopipe.gatefile import parse_gates;"
            "m = autogate.fit_strategy(parse_gates(MIXTURE_YAML), [_sample(_three_clouds()[0])])[0];"
            "t = autogate.fit_strategy(parse_gates(TAIL_YAML), [_sample(_tail_data()[0])])[0];"
            "g = m.population('Target').gate; v = t.population('Tail').gate.vertices;"
            "print(np.asarray(g.mean).tobytes().hex(), np.asarray(g.covariance).tobytes().hex(),"
            " np.asarray(v).tobytes().hex())")
    outputs = set()
    for threads in ("1", "2"):
        env = {**__import__("os").environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                              cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
        outputs.add(done.stdout)
    assert len(outputs) == 1


def test_in_a_batch_a_sample_whose_2d_gate_cannot_be_fitted_fails_alone(tmp_path):
    import pandas as pd

    from cytopipe.cli import main
    from cytopipe.fcs import write_fcs

    xy, _ = _tail_data(n=5000)
    # linear values 10**x, so the (default logicle) transform sees a log-normal cloud and its tail
    raw = (10 ** (xy + 1)).astype(np.float32)
    write_fcs(tmp_path / "good.fcs", raw, ["X", "Y"])
    write_fcs(tmp_path / "tiny.fcs", raw[:60], ["X", "Y"])
    gates = tmp_path / "gates.yaml"
    gates.write_text("name: batch\ntreg: Tail\npopulations:\n  - name: Tail\n"
                     "    gate: {type: auto_tail, channels: [X, Y], direction: [high, low], k: 3}\n"
                     "  - name: Cloud\n"
                     "    gate: {type: auto_mixture, channels: [X, Y], components: 2, target: [2.1, 2.5]}\n")
    pd.DataFrame({"file": ["good.fcs", "tiny.fcs"], "subject": ["A", "B"], "timepoint": ["t0", "t0"],
                  "day": [0, 0], "baseline": [True, True]}).to_csv(tmp_path / "sheet.csv", index=False)
    code = main(["run", str(tmp_path / "sheet.csv"), "--gates", str(gates), "--out", str(tmp_path / "out"),
                 "--workers", "1", "--quiet", "--no-plots"])
    assert code == 1
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert failures["sample"].tolist() == ["tiny"]
    (message,) = failures["reason"].tolist()
    assert "population 'Tail'" in message and "at least 100 events" in message and "\n" not in message
    treg = pd.read_csv(tmp_path / "out" / "treg.csv")
    assert treg["sample"].tolist() == ["good"] and 2 < treg["treg_pct"].iloc[0] < 6

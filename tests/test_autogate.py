"""Data-driven gates: the algorithms on arrays with known answers, the YAML types, and whole-strategy fitting on
simulated files whose every event's population is known."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cytopipe import autogate
from cytopipe import simulate as sim
from cytopipe.errors import GateError, MarkerError
from cytopipe.fcs import Sample
from cytopipe.gatefile import dump_yaml, load_strategy, parse_gates
from cytopipe.gates import Dimension, EllipsoidGate, PolygonGate, RectangleGate
from cytopipe.transforms import Logicle

REPO = Path(__file__).resolve().parents[1]
AUTO_YAML = REPO / "gates" / "treg.yaml"
LOGICLE = Logicle(T=262144, W=0.5, M=4.5, A=0)


def _sample(style: str = "bd", n_events: int = 30_000, seed: int = 7, **biology: float) -> tuple[Sample, np.ndarray]:
    """A simulated tube as an in-memory Sample, with its per-event labels."""
    spec = sim.SampleSpec(biology=sim.Biology(**biology), n_events=n_events, style=style, file=f"{style}.fcs")
    out = sim.simulate_sample(spec, np.random.default_rng(seed))
    sample = Sample(f"{style}_{seed}.fcs", out.events, out.channels, out.markers, out.metadata, "FCS3.1")
    return sample, out.labels


@pytest.fixture(scope="module")
def strategy():
    return load_strategy(AUTO_YAML)


@pytest.fixture(scope="module")
def bd():
    return _sample("bd", seed=7, treg_pct=6.0)


# ---------------------------------------------------------------------------------------------------------------
# algorithms


def test_density_valley_finds_the_minimum_between_two_modes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.25, 0.04, 19_000), rng.normal(0.60, 0.05, 1_000)])
    cut, method = autogate.density_valley(x)
    assert method == "valley"
    # The true density minimum of this mixture lies near 0.45; misclassified events are a tiny minority.
    grid = np.linspace(0.3, 0.55, 2001)
    true = (0.95 * np.exp(-0.5 * ((grid - 0.25) / 0.04) ** 2) / 0.04
            + 0.05 * np.exp(-0.5 * ((grid - 0.6) / 0.05) ** 2) / 0.05)
    assert abs(cut - grid[np.argmin(true)]) < 0.03
    wrong = np.sum(x[:19_000] >= cut) + np.sum(x[19_000:] < cut)
    assert wrong < 0.005 * x.size


def test_partition_quantiles_equal_numpys():
    """The single-index partition median/quantiles the fits use give numpy's results to the bit."""
    rng = np.random.default_rng(4)
    for n in (1, 2, 3, 50, 1001, 20_000):
        for x in (rng.normal(size=n), np.round(rng.normal(size=n), 1)):
            assert autogate._median(x) == np.median(x)
            for q in (0.0005, 0.02, 0.25, 0.5, 0.99, 0.9995):
                assert autogate._quantile(x, q) == np.quantile(x, q)
                assert autogate._sorted_quantile(np.sort(x), q) == np.quantile(x, q)


def test_density_valley_cuts_an_empty_gap_in_its_middle():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.uniform(0.0, 0.2, 8_000), rng.uniform(0.6, 0.8, 8_000)])
    cut, method = autogate.density_valley(x, adjust=0.5)
    assert method == "valley" and cut == pytest.approx(0.4, abs=0.03)


def test_density_valley_one_mode_falls_back_to_negative_plus_k_sd():
    x = np.random.default_rng(1).normal(0.3, 0.05, 20_000)
    cut, method = autogate.density_valley(x, k=3.0)
    assert method == "negative+k*sd"
    assert cut == pytest.approx(0.3 + 3 * 0.05, abs=0.015)


def test_density_valley_one_mode_uses_the_wider_half():
    # A negative population piled against zero (integer data clipped at 0): narrow below its mode, wide above.
    rng = np.random.default_rng(9)
    x = np.concatenate([0.3 - np.abs(rng.normal(0, 0.01, 10_000)), 0.3 + np.abs(rng.normal(0, 0.05, 10_000))])
    cut, method = autogate.density_valley(x, k=3.0)
    assert method == "negative+k*sd"
    # The narrow lower half alone would put the cut near 0.3 + 3 * 0.01, inside the negatives' upper tail.
    assert 0.38 < cut < 0.47
    assert np.mean(x >= cut) < 0.03


def test_density_valley_positive_mode_above_bounds_cuts_below_it():
    x = np.random.default_rng(2).normal(0.7, 0.05, 20_000)
    cut, method = autogate.density_valley(x, bounds=(0.2, 0.5), k=3.0)
    assert method == "positive-k*sd+bound" or method == "positive-k*sd"
    assert 0.5 <= cut + 1e-12 and cut <= 0.7 - 2 * 0.05


def test_density_valley_clamps_into_bounds_and_needs_events():
    x = np.random.default_rng(3).normal(0.3, 0.05, 5_000)
    cut, method = autogate.density_valley(x, bounds=(0.2, 0.35))
    assert cut == 0.35 and method.endswith("+bound")
    with pytest.raises(GateError, match="at least 50 events"):
        autogate.density_valley(x[:10])


def _scatter_mixture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    def blob(n: int, mean: list[float], cov: list[list[float]]) -> np.ndarray:
        return rng.multivariate_normal(mean, cov, n)

    parts = [blob(2_000, [12_000, 8_000], [[3e7, 0], [0, 2e7]]),            # debris
             blob(12_000, [60_000, 15_000], [[4e7, 8e6], [8e6, 1e7]]),        # lymphocytes
             blob(3_000, [90_000, 45_000], [[8e7, 1e7], [1e7, 1e8]]),         # monocytes
             blob(600, [118_000, 30_000], [[1e8, 1e7], [1e7, 4e7]])]          # doublets
    labels = np.repeat([0, 1, 2, 3], [len(p) for p in parts])
    return np.vstack(parts), labels


def test_scatter_ellipse_finds_lymphocytes_whatever_the_gains():
    xy, labels = _scatter_mixture(np.random.default_rng(4))
    mean, cov, d2, _ = autogate.fit_scatter_ellipse(xy)
    assert mean == pytest.approx([60_000, 15_000], rel=0.03)
    gains = np.array([4.0, 2.5])  # a 1,048,576-range instrument with other scatter gains
    mean2, cov2, _, _ = autogate.fit_scatter_ellipse(xy * gains)
    assert mean2 == pytest.approx(mean * gains, rel=0.02)
    dims = (Dimension("FSC-A"), Dimension("SSC-A"))
    gate = EllipsoidGate("L", dims, mean=tuple(mean), covariance=tuple(map(tuple, cov)), distance_square=d2)
    inside = gate.mask(xy)
    assert inside[labels == 1].mean() > 0.9
    assert inside[labels != 1].mean() < 0.03


def test_gaussian_mixture_agrees_with_scikit_learn():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(10)
    z = np.vstack([rng.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], 3000),
                   rng.multivariate_normal([6, 1], [[0.5, 0], [0, 2]], 2000),
                   rng.multivariate_normal([2, 7], [[2, -0.6], [-0.6, 0.7]], 1000)])
    weights, means, covs = autogate.gaussian_mixture(z, 3, random_state=0)
    reference = GaussianMixture(3, covariance_type="full", random_state=0, reg_covar=1e-4, tol=1e-5).fit(z)
    for w, m, c in zip(reference.weights_, reference.means_, reference.covariances_, strict=True):
        j = np.argmin(((means - m) ** 2).sum(axis=1))
        assert weights[j] == pytest.approx(w, abs=0.005)
        assert means[j] == pytest.approx(m, abs=0.01)
        assert covs[j] == pytest.approx(c, abs=0.02)


def test_singlet_band_recovers_the_line_and_drops_doublets():
    rng = np.random.default_rng(5)
    height = rng.normal(50_000, 10_000, 20_000)
    area = 1.2 * height * (1 + rng.normal(0, 0.03, height.size))
    doublet = np.arange(height.size) < 1_500
    area[doublet] *= 1.6
    band = autogate.fit_singlet_band(area, height, k=4.0)
    assert band["slope"] == pytest.approx(1.2, rel=0.02)
    assert band["sd"] == pytest.approx(0.03, rel=0.15)
    rel = (area - (band["intercept"] + band["slope"] * height)) / (band["intercept"] + band["slope"] * height)
    kept = (rel >= band["low"]) & (rel <= band["high"])
    assert kept[~doublet].mean() > 0.99 and kept[doublet].mean() < 0.01


# ---------------------------------------------------------------------------------------------------------------
# gate classes


def test_threshold_gate_fits_an_open_rectangle_from_reference_and_valley():
    rng = np.random.default_rng(6)
    dims = (Dimension("CD25", LOGICLE), Dimension("FoxP3", LOGICLE))
    values = np.column_stack([rng.normal(0.3, 0.05, 10_000), np.concatenate([rng.normal(0.25, 0.04, 9_500),
                                                                             rng.normal(0.6, 0.05, 500)])])
    reference = rng.normal(0.25, 0.05, (5_000, 2))
    gate = autogate.ThresholdGate("Treg", dims, thresholds=(
        autogate.Threshold(method="reference", population="CD4- T", percentile=99),
        autogate.Threshold(method="valley")))
    fitted, info = gate.fit_with_info(values, reference={"CD4- T": reference})
    assert isinstance(fitted, RectangleGate) and fitted.max == (None, None)
    assert fitted.min[0] == pytest.approx(np.percentile(reference[:, 0], 99))
    assert 0.35 < fitted.min[1] < 0.5
    assert info["CD25 method"] == "reference p99" and info["FoxP3 method"] == "valley"
    assert info["CD25 min"] == pytest.approx(fitted.min[0] * 4.5)  # friendly units: logicle decades
    assert fitted.outline().shape == (5, 2)
    with pytest.raises(GateError, match="reference population 'CD4- T' is not available"):
        gate.fit(values)


def test_threshold_within_gated_fits_on_events_passing_earlier_cuts():
    rng = np.random.default_rng(7)
    dims = (Dimension("FoxP3", LOGICLE), Dimension("CD25", LOGICLE))
    neg = np.column_stack([rng.normal(0.25, 0.04, 9_000), rng.normal(0.6, 0.04, 9_000)])  # FoxP3- CD25 bright
    pos = np.column_stack([rng.normal(0.6, 0.04, 1_000), rng.normal(0.3, 0.04, 1_000)])   # FoxP3+ CD25 dim
    values = np.vstack([neg, pos])
    gate = autogate.ThresholdGate("x", dims, thresholds=(
        autogate.Threshold(method="valley"),
        autogate.Threshold(method="valley", side="below", within="gated")))
    fitted = gate.fit(values)
    # Among FoxP3+ events CD25 is unimodal near 0.3: the cut is that mode + 3 SD, not the 0.45 valley of all events.
    assert fitted.max[1] == pytest.approx(0.3 + 3 * 0.04, abs=0.03)


def test_unfitted_gate_cannot_mask_and_settings_are_checked():
    dims = (Dimension("FSC-A"), Dimension("SSC-A"))
    with pytest.raises(GateError, match="not been fitted"):
        autogate.ScatterGate("L", dims).mask(np.zeros((3, 2)))
    with pytest.raises(GateError, match="probability must be between 0 and 1"):
        autogate.ScatterGate("L", dims, probability=1.5)
    with pytest.raises(GateError, match="scope must be one of sample, subject, baseline"):
        autogate.SingletGate("S", dims, scope="weekly")
    with pytest.raises(GateError, match="percentile must be between 0 and 100"):
        autogate.ThresholdGate("T", dims[:1], thresholds=(autogate.Threshold(percentile=150),))
    with pytest.raises(GateError, match="one threshold per channel"):
        autogate.ThresholdGate("T", dims, thresholds=(autogate.Threshold(),))


@pytest.mark.parametrize(("gate", "message"), [
    ("{type: auto_scatter, channels: [FSC-A, SSC-A], probabilty: 0.9}",
     "gate.probabilty: unknown setting for auto_scatter"),
    ("{type: auto_scatter, channels: [FSC-A, SSC-A], scope: weekly}", "gate.scope: expected one of sample"),
    ("{type: auto_singlets, channels: [FSC-A, FSC-H], k: many}", "gate.k: expected a number, got 'many'"),
    ("{type: auto_threshold, channels: [CD3], thresholds: [{side: up}]}",
     "gate.thresholds[0]: side must be 'above' or 'below'"),
    ("{type: auto_threshold, channels: [CD3, CD4], thresholds: [{side: above}]}",
     "gate.thresholds: expected a list with one entry per channel (2)"),
    ("{type: auto_threshold, channels: [CD3], thresholds: [{method: reference}]}",
     "method 'reference' needs population"),
    ("{type: auto_threshold, channels: [CD3], thresholds: [{bounds: [3, 1]}]}", "bounds must be [low, high]"),
    ("{type: auto_threshold, channels: [CD3], T: 1000}", "gate.T: expected 'auto'"),
])
def test_yaml_mistakes_give_one_line_messages_naming_the_population_and_field(gate, message):
    text = f"populations:\n  - name: P1\n    gate: {gate}\n"
    with pytest.raises(GateError) as err:
        parse_gates(text, "mine.yaml")
    assert message in str(err.value)
    assert "mine.yaml" in str(err.value) and "population 'P1'" in str(err.value)
    assert "\n" not in str(err.value)


def test_data_driven_gate_files_round_trip(strategy):
    text = dump_yaml(strategy)
    assert "auto_scatter" in text and "bounds: [1.0, 3.5]" in text
    again = parse_gates(text, "again.yaml")
    assert [p.gate for p in again.populations] == [p.gate for p in strategy.populations]
    custom = parse_gates("""populations:
  - name: L
    gate: {type: auto_scatter, channels: [FSC-A, SSC-A], probability: 0.9, scope: baseline, T: keep}
  - name: S
    parent: L
    gate: {type: auto_singlets, channels: [FSC-A, FSC-H], k: 3, max_events: 5000}
  - name: C
    parent: S
    gate: {type: auto_threshold, channels: [CD3], thresholds: [{side: below, k: 2, within: gated}]}
""", "custom.yaml")
    text = dump_yaml(custom)
    assert "probability: 0.9" in text and "T: keep" in text and "scope: baseline" in text and "k: 2.0" in text
    assert [p.gate for p in parse_gates(text, "again.yaml").populations] == [p.gate for p in custom.populations]


def test_yaml_bounds_are_converted_from_decades(strategy):
    cd3 = strategy.population("CD3+").gate
    assert isinstance(cd3, autogate.ThresholdGate)
    assert cd3.thresholds[0].bounds == pytest.approx((1.0 / 4.5, 3.5 / 4.5))
    assert cd3.name == "CD3+"
    assert autogate.needs_fitting(strategy) and autogate.client_scopes(strategy) == set()


# ---------------------------------------------------------------------------------------------------------------
# whole strategies on simulated files


def _treg_pct(strategy, sample):
    result = strategy.apply(sample)
    return 100.0 * result.counts["Treg"] / result.counts["CD4+"]


def test_fit_strategy_gives_fixed_gates_close_to_truth(strategy, bd):
    sample, labels = bd
    fitted, rows = autogate.fit_strategy(strategy, [sample])
    assert not autogate.needs_fitting(fitted)
    kinds = [type(p.gate) for p in fitted.populations]
    assert kinds == [EllipsoidGate, PolygonGate, *[RectangleGate] * 5]
    for pop in fitted.populations:
        assert pop.gate.name == pop.name
        if len(pop.gate.dimensions) == 2:
            assert np.isfinite(pop.gate.outline()[:, :]).any()
    assert [r["population"] for r in rows] == [p.name for p in strategy.populations]
    assert all(r["fitted_on"] == "bd_7" and r["scope"] == "sample" for r in rows)
    truth = sim.truth_counts(labels)["treg_pct_true"]
    assert abs(_treg_pct(fitted, sample) - truth) < 0.6
    # Fitting is deterministic and the fitted strategy is an ordinary one: it round-trips through YAML.
    again, _ = autogate.fit_strategy(strategy, [sample])
    assert again.population("Treg").gate == fitted.population("Treg").gate
    reloaded = parse_gates(dump_yaml(fitted), "fitted.yaml")
    assert reloaded.apply(sample).counts == fitted.apply(sample).counts


def test_fitted_gates_draw_in_the_gating_plot(strategy, bd, tmp_path):
    from cytopipe.plots import gating_hierarchy, save_figure

    sample, _ = bd
    fitted, _ = autogate.fit_strategy(strategy, [sample])
    figure = gating_hierarchy(fitted.apply(sample), fitted, "bd_7")
    drawn = [path for panel in figure.panels for path in panel.paths if path["gid"] == "gate"]
    assert len(drawn) >= 2  # at least the scatter ellipse and the singlet band are outlined
    assert save_figure(figure, tmp_path / "gating.svg").stat().st_size > 10_000


@pytest.mark.parametrize("style", ["bd", "navios"])
def test_rare_tregs_are_still_found(strategy, style):
    # 0.5 % Tregs (a few dozen events): the FoxP3 cut comes from the conventional CD4 cells, whatever the Tregs.
    sample, labels = _sample(style, n_events=50_000, seed=3, treg_pct=0.5)
    fitted, rows = autogate.fit_strategy(strategy, [sample])
    assert rows[-1]["FoxP3 method"] == "reference p99.8"
    assert abs(_treg_pct(fitted, sample) - sim.truth_counts(labels)["treg_pct_true"]) < 0.3


def test_fitting_on_a_subsample_of_a_big_file_stays_accurate(strategy):
    sample, labels = _sample("bd", n_events=150_000, seed=11, treg_pct=8.0)
    fitted, rows = autogate.fit_strategy(strategy, [sample], max_events=40_000)
    assert rows[0]["n_events"] <= 40_000 < sample.n_events
    truth = sim.truth_counts(labels)["treg_pct_true"]
    assert abs(_treg_pct(fitted, sample) - truth) < 0.6


def test_logicle_top_follows_the_files_range(strategy):
    sample, _ = _sample("attune", seed=3)
    fitted, _ = autogate.fit_strategy(strategy, [sample])
    dims = fitted.population("Treg").gate.dimensions
    assert {d.transform.T for d in dims} == {1_048_576}
    kept = load_strategy(AUTO_YAML)
    treg = kept.population("Treg")
    keep_gate = dataclasses.replace(treg.gate, auto_top=False)
    kept = dataclasses.replace(kept, populations=tuple(dataclasses.replace(p, gate=keep_gate) if p.name == "Treg"
                                                       else p for p in kept.populations))
    fitted_keep, _ = autogate.fit_strategy(kept, [sample])
    assert {d.transform.T for d in fitted_keep.population("Treg").gate.dimensions} == {262_144}


def test_scopes_replace_only_the_chosen_gates_and_pool_samples(strategy):
    first, _ = _sample("bd", seed=21, treg_pct=3.0)
    second, _ = _sample("bd", seed=22, treg_pct=9.0)
    treg = strategy.population("Treg")
    locked = dataclasses.replace(strategy, populations=tuple(
        dataclasses.replace(p, gate=dataclasses.replace(p.gate, scope="baseline")) if p.name == "Treg" else p
        for p in strategy.populations))
    assert autogate.client_scopes(locked) == {"baseline"}
    at_baseline, rows = autogate.fit_strategy(locked, [first], scopes={"baseline"})
    assert [r["population"] for r in rows] == ["Treg"]
    assert isinstance(at_baseline.population("Treg").gate, RectangleGate)
    assert isinstance(at_baseline.population("CD3+").gate, autogate.ThresholdGate)
    # A worker then fits the sample-scope gates; the baseline Treg gate is used unchanged.
    later, rows = autogate.fit_strategy(at_baseline, [second])
    assert "Treg" not in [r["population"] for r in rows]
    assert later.population("Treg").gate == at_baseline.population("Treg").gate
    pooled, rows = autogate.fit_strategy(strategy, [first, second])
    single = [autogate.fit_strategy(strategy, [s])[1][0]["n_events"] for s in (first, second)]
    assert rows[0]["n_events"] == sum(single) and rows[0]["fitted_on"] == "bd_21;bd_22"
    assert treg.gate.scope == "sample"
    # Mixed scopes for one subject: CD3+ pooled over both samples, the Treg gate on the baseline alone.
    mixed = dataclasses.replace(locked, populations=tuple(
        dataclasses.replace(p, gate=dataclasses.replace(p.gate, scope="subject")) if p.name == "CD3+" else p
        for p in locked.populations))
    _, rows = autogate.fit_strategy(mixed, [first, second], scopes={"subject", "baseline"}, baseline=0)
    fitted_on = {r["population"]: r["fitted_on"] for r in rows}
    assert fitted_on == {"CD3+": "bd_21;bd_22", "Treg": "bd_21"}
    with pytest.raises(ValueError, match="baseline: index 2"):
        autogate.fit_strategy(mixed, [first, second], baseline=2)
    with pytest.raises(ValueError, match="unknown scope"):
        autogate.fit_strategy(strategy, [first], scopes={"weekly"})


def test_fmo_control_sets_the_cd25_cut(strategy, bd):
    sample, labels = bd
    # An FMO-CD25 tube: the same cells without the CD25 antibody.
    fmo, _ = _sample("bd", seed=8, treg_pct=6.0, cd25_brightness=1e-6)
    text = AUTO_YAML.read_text().replace("{side: above, method: reference, population: CD4- T, percentile: 99}",
                                         "{side: above, method: control, control: fmo:CD25, percentile: 99.5}")
    with_fmo = parse_gates(text, "fmo.yaml")
    fitted, rows = autogate.fit_strategy(with_fmo, [sample], controls={"FMO:CD25": fmo})
    assert rows[-1]["CD25 method"] == "control p99.5"
    # The cut is the 99.5th percentile of CD25 on the control's CD4+ cells, gated by the sample's fitted gates.
    treg = fitted.population("Treg").gate
    gated = fitted.apply(fmo)
    cd25 = gated.values(treg)[gated.masks["CD4+"], 0]
    assert treg.min[0] == pytest.approx(np.percentile(cd25.astype(float), 99.5), rel=1e-6)
    assert rows[-1]["CD25 min"] == pytest.approx(treg.min[0] * 4.5)
    with pytest.raises(GateError, match="population 'Treg': needs the control 'fmo:cd25'"):
        autogate.fit_strategy(with_fmo, [sample])
    # FMO tubes often lack the omitted marker's label: controls are read by detector name.
    unlabelled = dataclasses.replace(fmo, markers=tuple("" if m == "CD25" else m for m in fmo.markers))
    again, _ = autogate.fit_strategy(with_fmo, [sample], controls={"fmo:CD25": unlabelled, "unstained": fmo})
    assert again.population("Treg").gate == treg


def test_missing_marker_names_the_marker_and_the_population(strategy, bd):
    sample, _ = bd
    markers = tuple("" if m == "CD4" else m for m in sample.markers)
    channels = tuple("FL-X" if m == "CD4" else c for c, m in zip(sample.channels, sample.markers, strict=True))
    without = dataclasses.replace(sample, markers=markers, channels=channels)
    with pytest.raises(MarkerError) as err:
        autogate.fit_strategy(strategy, [without])
    text = str(err.value)
    assert "population 'CD4+' needs marker 'CD4'" in text and text.startswith("bd_7.fcs: ") and "\n" not in text


def test_a_fit_without_enough_events_names_the_file_and_population(strategy):
    tiny, _ = _sample("bd", n_events=40, seed=5)
    with pytest.raises(GateError) as err:
        autogate.fit_strategy(strategy, [tiny])
    assert str(err.value) == "bd_5.fcs: population 'Lymphocytes': scatter gate needs at least 50 events, got 40"


def test_reference_population_must_come_first(strategy, bd):
    pops = list(strategy.populations)
    moved = [p for p in pops if p.name != "CD4- T"] + [p for p in pops if p.name == "CD4- T"]
    reordered = dataclasses.replace(strategy, populations=tuple(moved))
    with pytest.raises(GateError, match="reference population 'CD4- T' must be defined before 'CD4 Tconv'"):
        autogate.fit_strategy(reordered, [bd[0]])


def test_gate_drift_against_the_baseline_fit(strategy):
    rows = []
    for day, (seed, brightness) in enumerate([(31, 1.0), (32, 1.0), (33, 1.6)]):
        sample, _ = _sample("bd", seed=seed, cd25_brightness=brightness)
        for row in autogate.fit_strategy(strategy, [sample])[1]:
            rows.append({"sample": f"s{day}", "subject": "A", "timepoint": f"T{day}", "day": 7 * day, **row})
    drift = autogate.gate_drift(rows)
    assert set(drift.columns) >= {"subject", "timepoint", "population", "parameter", "value", "baseline_value",
                                  "drift"}
    base = drift[drift["day"] == 0]
    assert (base["drift"] == 0).all() and len(base) > 10
    cd25 = drift[(drift["parameter"] == "CD25 min")].set_index("timepoint")["drift"]
    # Brighter CD25 staining moves the reference cut up; a repeat tube barely moves it.
    assert cd25["T2"] > 0.1 and abs(cd25["T1"]) < cd25["T2"] / 2
    expected = [r["CD25 min"] for r in rows if r["population"] == "Treg"]
    assert list(cd25) == pytest.approx([e - expected[0] for e in expected])
    with pytest.raises(ValueError, match="lack column"):
        autogate.gate_drift([{"population": "x", "a": 1.0}])


def test_importing_autogate_loads_neither_pandas_nor_scipy():
    # Workers that only fit per-sample gates pay for pandas and scipy when a function needs them.
    code = ("import sys, cytopipe.autogate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'scipy')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_gate_drift_falls_back_to_the_earliest_day_per_subject():
    # A has a flagged baseline (its second visit); B has none and falls back to its earliest day.
    rows = [
        {"subject": "A", "sample": "a0", "day": 0, "baseline": False, "population": "Treg", "cut": 1.0},
        {"subject": "A", "sample": "a1", "day": 7, "baseline": True, "population": "Treg", "cut": 2.0},
        {"subject": "A", "sample": "a2", "day": 14, "baseline": False, "population": "Treg", "cut": 2.5},
        {"subject": "B", "sample": "b0", "day": 3, "baseline": False, "population": "Treg", "cut": 4.0},
        {"subject": "B", "sample": "b1", "day": 10, "baseline": False, "population": "Treg", "cut": 5.0},
    ]
    drift = autogate.gate_drift(rows).set_index("sample")
    assert list(drift.index) == ["a0", "a1", "a2", "b0", "b1"]
    assert drift["baseline_value"].to_dict() == {"a0": 2.0, "a1": 2.0, "a2": 2.0, "b0": 4.0, "b1": 4.0}
    assert drift["drift"].to_dict() == pytest.approx({"a0": -1.0, "a1": 0.0, "a2": 0.5, "b0": 0.0, "b1": 1.0})
    assert drift.loc["b1", "drift_pct"] == pytest.approx(25.0)


def test_sensitivity_moves_the_treg_pct_the_right_way(strategy, bd):
    sample, _ = bd
    fitted, _ = autogate.fit_strategy(strategy, [sample])
    rows = autogate.sensitivity(strategy, sample, fitted=fitted, delta=0.1)
    keys = {(r["population"], r["channel"], r["bound"]) for r in rows}
    assert {("Treg", "CD25", "min"), ("Treg", "FoxP3", "min"), ("CD4+", "CD8", "max")} <= keys
    base = _treg_pct(fitted, sample)
    for r in rows:
        assert r["treg_pct"] == pytest.approx(base)
        if r["population"] == "Treg":
            # Raising a lower cut can only lose Tregs; lowering it can only add.
            assert r["treg_pct_plus"] <= base <= r["treg_pct_minus"]
            assert r["max_change_pp"] > 0
    # Against a plain re-gating of the whole strategy with the FoxP3 cut raised by 0.1 decade.
    foxp3 = next(r for r in rows if r["channel"] == "FoxP3")
    treg = fitted.population("Treg").gate
    raised = dataclasses.replace(treg, min=(treg.min[0], treg.min[1] + 0.1 / 4.5))
    moved = dataclasses.replace(fitted, populations=tuple(
        dataclasses.replace(p, gate=raised) if p.name == "Treg" else p for p in fitted.populations))
    assert foxp3["treg_pct_plus"] == pytest.approx(_treg_pct(moved, sample), abs=1e-9)
    with pytest.raises(ValueError, match="delta must be positive"):
        autogate.sensitivity(strategy, sample, delta=0)


def test_fit_masks_equal_the_engines(strategy, bd):
    """The masks fitting evaluates on the subsample columns (and sensitivity reuses) are the engine's masks."""
    sample = dataclasses.replace(bd[0])
    fitted, _ = autogate.fit_strategy(strategy, [sample], max_events=10_000)
    (entry,) = autogate._SUBSAMPLES[sample]
    masks = {}
    autogate._evaluate(fitted.populations, {p.name: tuple(entry.columns[d] for d in p.gate.dimensions)
                                            for p in fitted.populations}, masks, entry)
    gated = fitted.apply(entry.sample)
    for pop in fitted.populations:
        assert np.array_equal(masks[pop.name], gated.masks[pop.name]), pop.name


def test_sensitivity_reuses_the_fit_columns_and_agrees_without_them(strategy, bd):
    """The fit's subsample columns serve the sensitivity rows of the same sample; a copy of the sample (nothing
    cached) gives the same rows, and the cache lets the sample go."""
    import gc

    sample = dataclasses.replace(bd[0])
    fitted, _ = autogate.fit_strategy(strategy, [sample])
    (entry,) = autogate._SUBSAMPLES[sample]
    computed = dict(entry.columns)
    cached = autogate.sensitivity(strategy, sample, fitted=fitted)
    assert len(autogate._SUBSAMPLES[sample]) == 1
    assert all(entry.columns[key] is values for key, values in computed.items())  # nothing computed again
    assert cached == autogate.sensitivity(strategy, dataclasses.replace(sample), fitted=fitted)
    n_cached = len(autogate._SUBSAMPLES)
    del sample, entry, computed
    gc.collect()
    assert len(autogate._SUBSAMPLES) < n_cached

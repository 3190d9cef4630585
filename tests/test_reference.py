"""Reference populations across visits (drift QC) and the realistic / drifting simulator they are checked on.

Expected values come from the simulator's design (the gains it applied, the spillover it used) and from plain
arithmetic on hand-made rows, never from the functions under test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cytopipe import simulate as sim
from cytopipe.compensate import spillover_from_metadata
from cytopipe.fcs import Sample
from cytopipe.gates import GatingResult
from cytopipe.reference import drift_decades, drift_flags, reference_drift, reference_medians


def _rows(values: dict[str, list[float]]) -> list[dict]:
    days = [0, 7, 14]
    return [{"sample": f"S_{d}", "subject": "S", "timepoint": f"D{d}", "day": d, "baseline": d == 0,
             "references": {k: v[i] for k, v in values.items()}} for i, d in enumerate(days)]


def test_reference_drift_against_baseline_and_its_flags():
    rows = _rows({"CD4 T|CD4": [10_000.0, 12_500.0, 11_000.0], "lymphocytes|FSC-A": [50_000.0, 50_000.0, 38_000.0]})
    drift = reference_drift(rows, 20.0)
    assert list(drift.columns)[-1] == "qc" and len(drift) == 6
    cd4 = drift[drift["parameter"] == "median CD4"].set_index("sample")
    assert cd4["drift_pct"].to_dict() == pytest.approx({"S_0": 0.0, "S_7": 25.0, "S_14": 10.0})
    assert cd4.loc["S_7", "qc"] == "moved +25% against baseline (limit 20%)" and cd4.loc["S_14", "qc"] == ""
    fsc = drift[drift["parameter"] == "median FSC-A"].set_index("sample")
    assert fsc.loc["S_14", "qc"] == "moved -24% against baseline (limit 20%)"
    flags = drift_flags(drift)
    assert flags == {"S_7": "reference drift against baseline > 20%: CD4 on CD4 T +25%",
                     "S_14": "reference drift against baseline > 20%: FSC-A on lymphocytes -24%"}
    # Decades of fluorescence drift only (scatter does not move a fluorescence cut).
    decades = drift_decades(drift)
    assert decades["S_7"] == pytest.approx(math.log10(1.25)) and decades["S_14"] == pytest.approx(math.log10(1.1))
    assert reference_drift(rows, 30.0)["qc"].eq("").all()
    with pytest.raises(ValueError, match="positive percentage"):
        reference_drift(rows, 0)


def test_reference_drift_falls_back_to_the_earliest_visit_and_skips_missing_references():
    rows = _rows({"CD4 T|CD4": [10_000.0, 9_000.0, 8_000.0]})
    for row in rows:
        row["baseline"] = False
    rows[1]["references"]["CD8 T|CD8"] = 5_000.0  # the baseline has no CD8 median: nothing to compare
    drift = reference_drift(pd.DataFrame(rows))
    assert set(drift["parameter"]) == {"median CD4"}
    assert drift["baseline_value"].eq(10_000.0).all()


def test_reference_medians_read_the_masked_raw_detector_values():
    rng = np.random.default_rng(0)
    n = 2_000
    events = np.column_stack([rng.uniform(1, 100, n), rng.uniform(1, 100, n), rng.uniform(1, 100, n),
                              rng.uniform(1, 100, n), rng.uniform(1, 100, n)]).astype(np.float32)
    sample = Sample(events=events, channels=("FSC-A", "SSC-A", "FITC-A", "PerCP-A", "APC-Cy7-A"),
                    markers=("", "", "CD4", "CD8", "CD3"), metadata={}, path="", version="3.1")
    lymph = np.arange(n) < 1800
    t_cells = lymph & (np.arange(n) % 2 == 0)
    cd4 = t_cells & (np.arange(n) % 4 == 0)
    result = GatingResult(masks={"Lymphocytes": lymph, "CD3+": t_cells, "CD4+": cd4},
                          counts={"Lymphocytes": int(lymph.sum()), "CD3+": int(t_cells.sum()), "CD4+": int(cd4.sum())},
                          n_events=n)

    class Strategy:  # the three populations of a hierarchy, by parent
        parents = {"Lymphocytes": None, "CD3+": "Lymphocytes", "CD4+": "CD3+"}

        def population(self, name):
            return type("Pop", (), {"parent": self.parents[name]})()

    medians = reference_medians(sample, result, Strategy(), "CD4+")
    assert medians["CD4 T|CD4"] == pytest.approx(float(np.median(events[cd4, 2])))
    assert medians["CD8 T|CD8"] == pytest.approx(float(np.median(events[t_cells & ~cd4, 3])))
    assert medians["T cells|CD3"] == pytest.approx(float(np.median(events[t_cells, 4])))
    assert medians["lymphocytes|FSC-A"] == pytest.approx(float(np.median(events[lymph, 0])))
    assert reference_medians(sample, result, Strategy(), None) == {}
    result.whole = {0: np.ascontiguousarray(events[:, 0])}  # the gating's contiguous copy of a column, when made
    assert reference_medians(sample, result, Strategy(), "CD4+") == medians
    result.whole = {0: 2 * events[:, 0]}  # read from the copy, not the events
    doubled = reference_medians(sample, result, Strategy(), "CD4+")
    assert doubled["lymphocytes|FSC-A"] == 2 * medians["lymphocytes|FSC-A"]


def test_drifting_visits_state_a_spillover_15_percent_too_small_and_apply_their_gains():
    specs = sim.study_specs(n_events=6_000, realistic=True, drift=True, seed=5)
    assert [s.subject for s, _ in specs][:5] == ["RESP-01"] * 5 and len(specs) == 15
    base_spec, base_rng = specs[0]
    visit_spec, visit_rng = specs[3]
    assert base_spec.gains == () and len(visit_spec.gains) == 8
    assert all(0.75 <= g <= 1.25 for _, g in visit_spec.gains)
    visit = sim.simulate_sample(visit_spec, visit_rng)
    stated = np.asarray(spillover_from_metadata(visit.metadata, visit.channels).matrix)
    g = np.array([dict(visit_spec.gains)[f] for f in sim.FLUOROCHROMES])
    true = np.asarray(sim.STYLES["bd"].spillover) * g[None, :] / g[:, None]
    off = ~np.eye(len(g), dtype=bool)
    np.testing.assert_allclose(stated[off], 0.85 * true[off], rtol=1e-5, atol=1e-7)
    # The same cells without drift: the visit's gain shows as the ratio of CD4 T cells' FITC medians.
    plain_spec, plain_rng = sim.study_specs(n_events=6_000, realistic=True, seed=5)[3]
    plain = sim.simulate_sample(plain_spec, plain_rng)
    np.testing.assert_array_equal(plain.labels, visit.labels)
    cd4 = visit.labels == sim.POPULATIONS.index("CD4 Tconv")
    fitc = visit.channels.index("FITC-A")
    ratio = np.median(visit.events[cd4, fitc]) / np.median(plain.events[cd4, fitc])
    assert ratio == pytest.approx(dict(visit_spec.gains)["FITC"], rel=0.02)
    assert sim.simulate_sample(base_spec, base_rng).metadata["$SPILLOVER"] != sim.STYLES["bd"].spillover_text()


def test_realistic_biology_overlaps_where_real_blood_does():
    spec, rng = sim.study_specs(n_events=40_000, realistic=True)[5]  # NONR-02 baseline, 6 % Tregs
    sample = sim.simulate_sample(spec, rng)
    names = np.asarray(sim.POPULATIONS)[sample.labels]
    assert spec.subject == "NONR-02" and abs(sim.truth_counts(sample.labels)["treg_pct_true"] - 6.0) < 1.0
    pe = sample.events[:, sample.channels.index("PE-A")]
    # CD25 is a continuum: some activated cells are brighter than the median Treg's lower quartile ...
    treg_q25 = np.quantile(pe[names == "Treg"], 0.25)
    assert 0.05 < np.mean(pe[names == "CD4 activated"] > treg_q25) < 0.5
    # ... and FoxP3's dim shoulder (a fifth of the Tregs at 600 against 1,500) puts some of them below half the
    # Treg median, where a Gaussian-like FoxP3+ peak of sdlog 0.35 would hold only 2 %.
    style = sim.STYLES["bd"]
    columns = [sample.channels.index(d) for d in style.detectors]
    compensated = sample.events[:, columns].astype(float) @ np.linalg.inv(np.asarray(style.spillover))
    apc = compensated[:, sim.FLUOROCHROMES.index("APC")]
    tregs = apc[names == "Treg"]
    assert 0.05 < np.mean(tregs < np.median(tregs) / 2) < 0.35
    # FoxP3+ about one decade above the FoxP3- background of conventional CD4 cells.
    ratio = np.median(tregs) / np.median(apc[names == "CD4 Tconv"])
    assert 6 < ratio < 15


def test_the_command_line_writes_the_realistic_drifting_study(tmp_path, capsys):
    assert sim.main(["--out", str(tmp_path), "--realistic", "--drift", "--events", "2000", "--seed", "9"]) == 0
    truth = pd.read_csv(tmp_path / "truth.csv")
    assert list(truth["subject"].unique()) == list(sim.REALISTIC_STUDY) and len(truth) == 15
    assert sorted(p.name for p in tmp_path.glob("*.fcs")) == sorted(truth["file"])
    assert "wrote 15 samples" in capsys.readouterr().out
    # Same seed without --drift: the same cells, so the same truth.
    again = sim.write_study(tmp_path / "plain", n_events=2000, seed=9, realistic=True)
    pd.testing.assert_frame_equal(truth, again)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int32])
def test_median_of_is_numpys_median_bit_for_bit(dtype):
    """The in-place median used for the reference populations returns np.median's value to the last bit (odd and
    even sizes, ties, NaN)."""
    from cytopipe.reference import _median_of

    rng = np.random.default_rng(7)
    # Sizes on both sides of the sampled-band selection (5,000 and 20,000 values) and of its two sample sizes.
    for n in (1, 2, 3, 50, 51, 1000, 1001, 4999, 5000, 5001, 13205, 19999, 20000, 20001, 60001):
        for values in (rng.normal(100, 30, n), rng.integers(0, 4, n), rng.lognormal(5, 2, n) - 40,
                       np.where(rng.random(n) < 0.5, 0.0, -0.0)):
            values = values.astype(dtype)
            expected = np.float64(np.median(values)).tobytes()
            assert np.float64(_median_of(values.copy())).tobytes() == expected, (n, values[:5])
    with_nan = rng.normal(size=101)
    with_nan[7] = np.nan
    if np.dtype(dtype).kind == "f":
        assert np.isnan(_median_of(with_nan.astype(dtype))) and np.isnan(np.median(with_nan.astype(dtype)))

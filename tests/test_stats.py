"""Statistics against independent values (published worked examples, scipy's own implementation, arithmetic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from scipy.stats.contingency import relative_risk

from cytopipe import columns
from cytopipe.errors import ConfigError, SampleSheetError
from cytopipe.stats import (
    BASELINE_COLUMNS,
    baseline_table,
    clinical_correlation,
    combined_difference_interval,
    fold_change_interval,
    gate_sd_from_sensitivity,
    iwg_response,
    newcombe_difference,
    read_clinical,
    read_clinical_table,
    reference_change_value,
    subject_summary,
    t_two_sided_p,
    wilson_interval,
)

# ------------------------------------------------------------------------------------------------ Wilson


def test_wilson_domain_example() -> None:
    low, high = wilson_interval(250, 5000)
    assert (round(100 * low, 2), round(100 * high, 2)) == (4.43, 5.64)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    # Newcombe (1998) Stat Med 17:857, Table I, method 3 (Wilson score without continuity correction).
    [(81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)), (1, 29, (0.0061, 0.1718))],
)
def test_wilson_newcombe_table(k: int, n: int, expected: tuple[float, float]) -> None:
    low, high = wilson_interval(k, n)
    assert (round(low, 4), round(high, 4)) == expected


def test_wilson_vectorised_and_empty() -> None:
    low, high = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    assert low[0] == 0 and high[2] == 1 and low[1] < 0.5 < high[1]
    # Symmetry: the interval of k/n mirrors that of (n-k)/n.
    assert low[1] == pytest.approx(1 - high[1])
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


# ------------------------------------------------------------------------------------------------ Newcombe


@pytest.mark.parametrize(
    ("counts", "expected"),
    # Newcombe (1998) Stat Med 17:873, Table II, method 10 (hybrid score), examples (a)-(f).
    [((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)), ((6, 7, 2, 7), (0.0582, 0.8062)),
     ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)), ((10, 10, 0, 20), (0.6791, 1.0))],
)
def test_newcombe_published_examples(counts: tuple[int, int, int, int], expected: tuple[float, float]) -> None:
    # The published values use the exact quantile (1.95996...); with 1.96, (c) rounds to 0.8063.
    low, high = newcombe_difference(*counts, z=norm.ppf(0.975))
    assert (round(low, 4), round(high, 4)) == expected


def test_newcombe_swap_negates() -> None:
    low, high = newcombe_difference(1800, 20000, 600, 20000)
    low2, high2 = newcombe_difference(600, 20000, 1800, 20000)
    assert (low, high) == pytest.approx((-high2, -low2))
    assert low < 0.06 < high


# ------------------------------------------------------------------------------------------------ fold change


@pytest.mark.parametrize("counts", [(30, 1000, 12, 1100), (1800, 20000, 600, 20000), (5, 40, 9, 35)])
def test_fold_change_matches_scipy_katz(counts: tuple[int, int, int, int]) -> None:
    expected = relative_risk(*counts).confidence_interval(0.95)
    low, high = fold_change_interval(*counts, z=norm.ppf(0.975))
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_fold_change_zero_counts() -> None:
    low, high = fold_change_interval(0, 1000, 30, 1000)
    assert 0 < low < high < 1  # Haldane-corrected: finite, below 1
    assert all(math.isnan(v) for v in fold_change_interval(0, 1000, 0, 1000))
    assert all(math.isnan(v) for v in fold_change_interval(3, 0, 30, 1000))


# ------------------------------------------------------------------------------------------------ RCV, IWG


def test_reference_change_value() -> None:
    assert round(reference_change_value(10, 10, 1.96), 1) == 39.2
    assert round(reference_change_value(10, 10, 1.65), 1) == 33.0
    assert reference_change_value(5, 0, 1.0) == pytest.approx(5 * math.sqrt(2))
    with pytest.raises(ConfigError, match="--cvi"):
        reference_change_value(10, -1)
    with pytest.raises(ConfigError, match="--z"):
        reference_change_value(10, 10, 0)


@pytest.mark.parametrize(
    ("platelets", "baseline", "category"),
    [(85, 36, "response"), (100, 36, "complete response"), (120, 110, "complete response"), (71, 36, "no response"),
     (72, 36, "response"), (29, 10, "no response"), (30, 15, "response"), (float("nan"), 36, ""),
     (50, float("nan"), "")],
)
def test_iwg_response(platelets: float, baseline: float, category: str) -> None:
    assert iwg_response(platelets, baseline) == category


# ------------------------------------------------------------------------------------------------ baseline table


def _treg(rows: list[tuple[str, str, float, int, int]], **extra: list) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["subject", "timepoint", "day", "cd4_events", "treg_events"])
    table.insert(0, "sample", [f"{s}_{t}" for s, t, *_ in rows])
    table["treg_pct"] = 100 * table["treg_events"] / table["cd4_events"]
    table["ci_low"] = table["ci_high"] = np.nan
    for key, values in extra.items():
        table[key] = values
    return table


def test_baseline_columns_and_values() -> None:
    table = baseline_table(_treg([("A", "W3", 21, 20000, 1800), ("A", "D0", 0, 20000, 600)]))
    assert tuple(table.columns[: len(BASELINE_COLUMNS)]) == BASELINE_COLUMNS
    assert list(table["timepoint"]) == ["D0", "W3"]  # sorted by day
    later = table.iloc[1]
    assert later["baseline_pct"] == pytest.approx(3.0) and later["delta_pp"] == pytest.approx(6.0)
    assert later["fold_change"] == pytest.approx(3.0) and later["pct_change"] == pytest.approx(200.0)
    low, high = newcombe_difference(1800, 20000, 600, 20000)
    assert (later["delta_ci_low"], later["delta_ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert (later["ci_low"], later["ci_high"]) == pytest.approx(tuple(100 * v for v in wilson_interval(1800, 20000)))
    assert later["rcv_pct"] == pytest.approx(39.2, abs=0.01)
    assert bool(later["significant"]) and later["direction"] == "rise"
    base = table.iloc[0]
    assert base["is_baseline"] and base["fold_change"] == 1 and math.isnan(base["delta_ci_low"])
    assert not base["significant"] and base["baseline_sample"] == "A_D0"


def test_significance_needs_both_rcv_and_counting_interval() -> None:
    table = baseline_table(_treg([
        ("big", "D0", 0, 20000, 600), ("big", "W1", 7, 20000, 1200),          # +100%, narrow interval
        ("few", "D0", 0, 100, 2), ("few", "W1", 7, 100, 5),                   # +150%, interval includes 0
        ("many", "D0", 0, 1_000_000, 30000), ("many", "W1", 7, 1_000_000, 36000),  # +20% < RCV, excludes 0
    ]))
    later = table[~table["is_baseline"]].set_index("subject")
    assert later.at["big", "significant"]
    assert later.at["few", "pct_change"] > 39.2 and later.at["few", "delta_ci_low"] < 0
    assert not later.at["few", "significant"]
    assert later.at["many", "delta_ci_low"] > 0 and not later.at["many", "significant"]
    # A wider RCV (larger CVs) overrules even the clear rise.
    wide = baseline_table(_treg([("big", "D0", 0, 20000, 600), ("big", "W1", 7, 20000, 1200)]), cva=40, cvi=40)
    assert not wide["significant"].any()
    # A fall is a fall.
    fall = baseline_table(_treg([("s", "D0", 0, 20000, 1200), ("s", "W1", 7, 20000, 400)]))
    assert fall.iloc[1]["direction"] == "fall" and fall.iloc[1]["significant"]


def test_baseline_flag_is_respected() -> None:
    rows = [("A", "screen", -7, 20000, 800), ("A", "D0", 0, 20000, 600), ("A", "W1", 7, 20000, 1200)]
    table = baseline_table(_treg(rows, baseline=["false", "true", "false"]))
    assert list(table["baseline_pct"].round(6)) == [3.0, 3.0, 3.0]
    assert list(table["is_baseline"]) == [False, True, False]
    # Without the column, the earliest day is the baseline.
    assert baseline_table(_treg(rows))["baseline_pct"].iloc[0] == pytest.approx(4.0)


def test_missing_baseline_is_not_replaced() -> None:
    table = baseline_table(_treg([("A", "W1", 7, 20000, 1200), ("A", "W2", 14, 20000, 900)],
                                 baseline=[False, False]))
    assert table["baseline_pct"].isna().all() and not table["significant"].any()
    assert (table["qc_flags"] == "no baseline sample").all()
    assert "No baseline sample" in subject_summary(table)["treg_verdict"].iloc[0]


def test_two_baselines_is_a_sheet_error() -> None:
    rows = [("A", "D0", 0, 20000, 600), ("A", "D1", 1, 20000, 650)]
    with pytest.raises(SampleSheetError, match=r"^treg\.csv: subject 'A' has 2 baseline samples \(A_D0, A_D1\)$"):
        baseline_table(_treg(rows, baseline=["yes", "TRUE"]))
    with pytest.raises(SampleSheetError, match="missing column"):
        baseline_table(_treg(rows).drop(columns=["treg_events"]))


def test_low_event_flags_are_configurable() -> None:
    rows = [("A", "D0", 0, 1500, 60), ("A", "W1", 7, 20000, 1200)]
    table = baseline_table(_treg(rows))
    assert list(table["low_events"]) == [True, False]
    assert table.iloc[0]["qc_flags"] == "Treg gate 60 events < 100; CD4 gate 1,500 events < 2000"
    assert table.iloc[1]["qc_flags"] == "baseline has low events"
    relaxed = baseline_table(_treg(rows), min_treg_events=50, min_cd4_events=1000)
    assert not relaxed["low_events"].any()


def test_ratio_and_absolute_counts() -> None:
    rows = [("A", "D0", 0, 20000, 600), ("A", "W1", 7, 20000, 1200)]
    table = baseline_table(_treg(rows, tcon_events=[19400, 18800], lymphocyte_events=[60000, 50000],
                                 lymphocytes_per_ul=[1500.0, 1000.0]))
    assert list(table["treg_tcon_ratio"]) == pytest.approx([600 / 19400, 1200 / 18800])
    assert list(table["tregs_per_ul"]) == pytest.approx([1500 * 600 / 60000, 1000 * 1200 / 50000])
    by_cd4 = baseline_table(_treg(rows, cd4_per_ul=[800.0, 900.0]))
    assert list(by_cd4["tregs_per_ul"]) == pytest.approx([800 * 0.03, 900 * 0.06])


# ------------------------------------------------------------------------------------------------ clinical


def _clinical(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clinical.csv"
    path.write_text(text)
    return path


def test_read_clinical(tmp_path: Path) -> None:
    path = _clinical(tmp_path, "Subject, Day ,Platelets,note\nITP-01,0,36,start\nITP-01,7,NA,\nITP-02,0,40,x\n")
    table = read_clinical(path)
    assert list(table.columns) == ["subject", "day", "Platelets", "note"]
    assert table["day"].dtype == float and table["Platelets"].dtype == float
    assert math.isnan(table["Platelets"].iloc[1]) and table["note"].iloc[0] == "start"


@pytest.mark.parametrize(
    ("text", "message"),
    [("patient,day,platelets\nA,0,36\n", "needs a 'subject' column"),
     ("subject,platelets\nA,36\n", "needs a 'day' or 'timepoint' column"),
     ("subject,day,platelets\nA,zero,36\n", "row 2: day 'zero' is not a number"),
     ("subject,day,platelets\nA,0,36\nA,0,40\n", "subject 'A' has two rows for day"),
     ("subject,day,platelets\nA,0,36\nA,7,8O\n", "row 3: platelets '8O' is not a number"),
     ("", "cannot read clinical table")],
)
def test_read_clinical_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _clinical(tmp_path, text)
    with pytest.raises(SampleSheetError, match=message) as err:
        read_clinical(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    with pytest.raises(SampleSheetError, match="not found"):
        read_clinical(tmp_path / "absent.csv")


def test_clinical_join_iwg_and_summary(tmp_path: Path) -> None:
    rows = [("ITP-01", "D0", 0, 20000, 600), ("ITP-01", "W1", 7, 20000, 1100), ("ITP-01", "W3", 21, 20000, 1740),
            ("ITP-02", "D0", 0, 20000, 800), ("ITP-02", "W3", 21, 20000, 820)]
    clinical = read_clinical(_clinical(tmp_path, "subject,day,platelets\nITP-01,-3,36\nITP-01,7,41\nITP-01,21,85\n"
                                                 "ITP-02,0,40\nITP-02,21,45\n"))
    table = baseline_table(_treg(rows), clinical=clinical)
    one = table[table["subject"] == "ITP-01"].set_index("timepoint")
    # No count on the baseline day: the latest one before it (day -3) is the baseline.
    assert one.at["W3", "baseline_platelets"] == 36 and one.at["W3", "iwg_response"] == "response"
    assert one.at["W1", "iwg_response"] == "no response" and one.at["D0", "iwg_response"] == ""
    assert one.at["W3", "platelet_fold"] == pytest.approx(85 / 36)
    summary = subject_summary(table).set_index("subject")
    assert summary.at["ITP-01", "treg_verdict"] == ("Tregs rose significantly (x2.9 at W3): change larger than the "
                                                    "assay, counting and gating noise together")
    assert summary.at["ITP-01", "clinical_verdict"] == ("Platelets: response (85 x10^9/L = 2.4x baseline 36 x10^9/L, "
                                                        "at W3)")
    assert summary.at["ITP-02", "treg_verdict"] == ("No significant change (largest x1.0 at W3): not beyond the "
                                                    "assay, counting and gating noise")
    assert summary.at["ITP-02", "clinical_response"] == "no response"


def test_clinical_correlation() -> None:
    table = pd.DataFrame({"subject": ["A"] * 5 + ["B"] * 2, "treg_pct": [1, 2, 3, 4, 5, 1, 2],
                          "platelets": [1, 8, 27, 64, 125, 3, 4]})
    corr = clinical_correlation(table).set_index("subject")
    assert corr.at["A", "spearman_r"] == pytest.approx(1.0)  # monotone
    assert 0.9 < corr.at["A", "pearson_r"] < 1.0  # but not linear
    assert corr.at["A", "n"] == 5 and corr.at["B", "n"] == 2 and math.isnan(corr.at["B", "pearson_r"])
    assert clinical_correlation(table.drop(columns=["platelets"])).empty


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 10, 25, 58])
def test_t_two_sided_p_is_students(df: int) -> None:
    """The closed-form t p-value against scipy's ``t.sf`` (absolute 1e-8: scipy's own error near t = 0 with 1
    degree of freedom is 3e-9; elsewhere they agree to 1e-13) and against the exact forms for 1 and 2 degrees of
    freedom (Cauchy: 1 - 2 atan(t) / pi; 2 df: 1 - t / sqrt(2 + t^2); 1e-14, a few ulp of the arithmetic)."""
    from scipy.stats import t as student

    for t in (0.0, 1e-8, 0.1, 0.7, 1.0, 2.0, 3.5, 10.0, 80.0, 1e4, -2.0):
        ours = t_two_sided_p(t, df)
        assert ours == pytest.approx(2 * student.sf(abs(t), df), abs=1e-8)
        if df == 1:
            assert ours == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-14)
        if df == 2:
            assert ours == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-14)
    assert t_two_sided_p(math.inf, df) == 0.0 and math.isnan(t_two_sided_p(math.nan, df))
    with pytest.raises(ValueError):
        t_two_sided_p(1.0, 0)


def test_clinical_correlation_is_scipys() -> None:
    """Spearman's and Pearson's coefficients and p-values are scipy's (``spearmanr``, ``pearsonr``), ties included:
    coefficients to 1e-12 and p-values to 1e-10 absolute (float64 sums in another order)."""
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(3)
    rows = []
    for subject in range(40):
        n = int(rng.integers(3, 12))
        x = rng.normal(3, 1, n)
        y = 50 + 20 * rng.normal() * x + rng.normal(0, 10, n)
        if subject % 3 == 0:
            x, y = np.round(x), np.round(y, -1)  # ties
        rows += [{"subject": f"S{subject:02d}", "treg_pct": a, "platelets": b} for a, b in zip(x, y, strict=True)]
    table = pd.DataFrame(rows)
    corr = clinical_correlation(table).set_index("subject")
    compared = 0
    for subject, grp in table.groupby("subject"):
        x, y = grp["treg_pct"].to_numpy(), grp["platelets"].to_numpy()
        if len(set(x)) < 2 or len(set(y)) < 2:
            assert math.isnan(corr.at[subject, "spearman_r"])
            continue
        sr, sp = spearmanr(x, y)
        pr, pp = pearsonr(x, y)
        assert corr.at[subject, "spearman_r"] == pytest.approx(sr, abs=1e-12)
        assert corr.at[subject, "spearman_p"] == pytest.approx(sp, abs=1e-10)
        assert corr.at[subject, "pearson_r"] == pytest.approx(pr, abs=1e-12)
        assert corr.at[subject, "pearson_p"] == pytest.approx(pp, abs=1e-10)
        compared += 1
    assert compared >= 30


def test_clinical_join_by_timepoint(tmp_path: Path) -> None:
    rows = [("A", "D0", 0, 20000, 600), ("A", "W4", 28, 20000, 1500)]
    clinical = read_clinical(_clinical(tmp_path, "subject,timepoint,plt_count\nA,D0,20\nA,W4,110\n"))
    table = baseline_table(_treg(rows), clinical=clinical).set_index("timepoint")
    assert table.at["W4", "plt_count"] == 110 and table.at["W4", "iwg_response"] == "complete response"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 5000), st.integers(0, 5000), st.integers(1, 5000))
def test_intervals_contain_their_estimates(k1: int, n1: int, k2: int, n2: int) -> None:
    k1, k2 = min(k1, n1), min(k2, n2)
    p1, p2 = k1 / n1, k2 / n2
    low, high = wilson_interval(k1, n1)
    assert 0 <= low <= p1 <= high <= 1
    d_low, d_high = newcombe_difference(k1, n1, k2, n2)
    assert -1 <= d_low <= p1 - p2 <= d_high <= 1
    if k1 and k2:
        f_low, f_high = fold_change_interval(k1, n1, k2, n2)
        assert f_low <= p1 / p2 * (1 + 1e-12) and p1 / p2 <= f_high * (1 + 1e-12)


# ---------------------------------------------------------------------------------------------- gating noise


def _gated_visit(rng: np.random.Generator, p_treg: float, n: int, repeats: int, cut: float, placement_sd: float
                 ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, float]:
    """``repeats`` tubes of one visit gated by a threshold that lands ``N(0, placement_sd)`` off its nominal cut.

    Marker values (decades): Tregs N(2.3, 0.3), other CD4 cells N(1.2, 0.35), so the cut sits on the flank of both
    and its placement matters. Returns the counts above the placed cut, the cuts, the sensitivity rows the pipeline
    would write (Treg % with the cut moved by -/+ 0.1 decade, measured on the tube itself) and the true Treg % of
    the gate at its nominal cut (the quantity the measurement estimates).
    """
    is_treg = rng.random((repeats, n)) < p_treg
    values = np.where(is_treg, rng.normal(2.3, 0.3, (repeats, n)), rng.normal(1.2, 0.35, (repeats, n)))
    cuts = cut + rng.normal(0.0, placement_sd, repeats)
    k = (values >= cuts[:, None]).sum(axis=1)
    minus = 100.0 * (values >= cuts[:, None] - 0.1).mean(axis=1)
    plus = 100.0 * (values >= cuts[:, None] + 0.1).mean(axis=1)
    sens = pd.DataFrame({"sample": [f"s{i}" for i in range(repeats)], "delta": 0.1, "treg_pct_minus": minus,
                         "treg_pct_plus": plus})
    truth = 100.0 * (p_treg * norm.sf(cut, 2.3, 0.3) + (1 - p_treg) * norm.sf(cut, 1.2, 0.35))
    return k, cuts, sens, truth


def test_combined_interval_covers_the_true_change_95_percent_of_the_time():
    """Coverage of the combined 95 % interval, by simulation: counting noise (binomial tubes) plus gating noise
    (each visit's cut placed 0.05 decade SD off), slopes read off each tube as ``sensitivity.csv`` does."""
    rng = np.random.default_rng(14)
    n, repeats, sd = 4000, 2000, 0.05
    k0, _, sens0, truth0 = _gated_visit(rng, 0.03, n, repeats, 1.9, sd)
    k1, _, sens1, truth1 = _gated_visit(rng, 0.08, n, repeats, 1.9, sd)
    g0 = gate_sd_from_sensitivity(sens0, sd)
    g1 = gate_sd_from_sensitivity(sens1, sd)
    gate0 = np.array([g0[f"s{i}"] for i in range(repeats)]) / 100.0
    gate1 = np.array([g1[f"s{i}"] for i in range(repeats)]) / 100.0
    low, high = combined_difference_interval(k1, n, k0, n, gate1, gate0)
    true_change = (truth1 - truth0) / 100.0
    coverage = np.mean((low <= true_change) & (true_change <= high))
    assert 0.93 <= coverage <= 0.97, coverage
    # Counting noise alone (the Newcombe interval) misses the gate's movement: the gating term is what matters.
    n_low, n_high = newcombe_difference(k1, n, k0, n)
    assert np.mean((n_low <= true_change) & (true_change <= n_high)) < 0.90


def test_combined_interval_without_gating_noise_is_newcombe():
    low, high = combined_difference_interval([60, 10], [1000, 500], [30, 0], [900, 400], [0.0, np.nan], [np.nan, 0])
    n_low, n_high = newcombe_difference([60, 10], [1000, 500], [30, 0], [900, 400])
    np.testing.assert_allclose(low, n_low, rtol=0, atol=1e-15)
    np.testing.assert_allclose(high, n_high, rtol=0, atol=1e-15)
    wide_low, wide_high = combined_difference_interval(60, 1000, 30, 900, 0.003, 0.004)
    assert wide_low < n_low[0] and wide_high > n_high[0]
    # Each side widened by the gating variance in quadrature: z^2 (0.003^2 + 0.004^2) = (1.96 * 0.005)^2.
    d = 60 / 1000 - 30 / 900
    assert wide_high - d == pytest.approx(math.hypot(n_high[0] - d, 1.96 * 0.005), abs=1e-12)


def test_gate_sd_from_sensitivity_is_slope_times_placement_sd():
    sens = pd.DataFrame({"sample": ["a", "a", "b"], "delta": [0.1, 0.1, 0.1],
                         "treg_pct_minus": [5.4, 5.1, 3.0], "treg_pct_plus": [4.6, 4.9, 3.0]})
    sd = gate_sd_from_sensitivity(sens, 0.05)
    # slopes 4 and 1 pp/decade -> sqrt((4 * 0.05)^2 + (1 * 0.05)^2)
    assert sd["a"] == pytest.approx(math.hypot(0.2, 0.05), abs=1e-12)
    assert sd["b"] == 0.0
    drifted = gate_sd_from_sensitivity(sens, 0.05, drift={"a": 0.12})
    assert drifted["a"] == pytest.approx(math.hypot(4, 1) * math.hypot(0.05, 0.12), abs=1e-12)
    with pytest.raises(ConfigError):
        gate_sd_from_sensitivity(sens, -0.1)


def test_gating_sd_decides_significance(tmp_path):
    treg = pd.DataFrame({"sample": ["b", "v"], "subject": ["S", "S"], "timepoint": ["baseline", "W1"],
                         "day": [0, 7], "cd4_events": [20000, 20000], "treg_events": [600, 900],
                         "treg_pct": [3.0, 4.5], "baseline": [True, False]})
    quiet = baseline_table(treg).set_index("timepoint")
    assert quiet.loc["W1", "significant"]  # +50 % > RCV, and counting noise alone excludes 0
    assert quiet.loc["W1", "delta_ci_low_total"] == pytest.approx(quiet.loc["W1", "delta_ci_low"], abs=1e-12)
    noisy = baseline_table(treg.assign(gate_sd_pp=[0.5, 0.6])).set_index("timepoint")
    assert not noisy.loc["W1", "significant"]  # the gates alone could move Treg % by that much
    assert noisy.loc["W1", "delta_ci_low_total"] < 0 < noisy.loc["W1", "delta_ci_low"]
    assert noisy.loc["W1", "gate_sd_pp"] == 0.6 and np.isnan(noisy.loc["baseline", "delta_ci_low_total"])


def test_wilson_of_one_count_is_the_vectorised_interval_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    n = np.concatenate([[1, 2, 3, 7, 10, 20000], rng.integers(1, 10**8, 3000)])
    k = np.concatenate([[0, 2, 1, 7, 0, 1800], [int(rng.integers(0, m + 1)) for m in n[6:]]])
    low, high = wilson_interval(k, n)  # the array path
    for i in range(n.size):
        one = wilson_interval(int(k[i]), int(n[i]))  # the path treg.csv takes
        assert np.array(one).tobytes() == np.array([low[i], high[i]]).tobytes(), (k[i], n[i])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.one_of(st.none(), st.integers(0, 3)),
                          st.booleans()), min_size=1, max_size=12),
       st.booleans())
def test_baseline_rows_are_pandas_groupby_choices(rows, flagged) -> None:
    """Each subject's baseline row: its flagged row (an error for two), or without flags its first earliest day (None
    without days), as a pandas groupby picks them."""
    from cytopipe.stats import _baseline_rows

    treg = pd.DataFrame({"sample": [f"s{i}" for i in range(len(rows))], "subject": [r[0] for r in rows],
                         "day": [np.nan if r[1] is None else float(r[1]) for r in rows]})
    if flagged:
        treg["baseline"] = [("yes" if r[2] else "no") if r[1] == 3 else r[2] for r in rows]  # text flags too
    expected: dict[str, int | None] = {}
    problem = None
    for subject, group in treg.groupby("subject", sort=False):
        if flagged:
            picked = group.index[group["baseline"].isin([True, "yes"]).to_numpy()]
            problem = problem or (subject if len(picked) > 1 else None)
            expected[subject] = int(picked[0]) if len(picked) else None
        else:
            expected[subject] = int(group["day"].idxmin()) if group["day"].notna().any() else None
    if problem is not None:
        with pytest.raises(SampleSheetError, match=f"subject '{problem}' has"):
            _baseline_rows(columns.from_frame(treg), "treg.csv")
    else:
        assert _baseline_rows(columns.from_frame(treg), "treg.csv") == expected


# ---------------------------------------------------------------------------------------------- plain tables


def _with_platelets(tmp_path: Path, text: str) -> pd.DataFrame:
    return read_clinical(_clinical(tmp_path, text))


def test_table_in_table_out_holds_the_frames_cells(tmp_path: Path) -> None:
    """A table given gives a table back with the cells of the DataFrame result (counts int64 there, Int64 here)."""
    treg = _treg([("A", "D0", 0, 20000, 600), ("A", "W1", 7, 20000, 1100), ("B", "D0", 0, 5000, 90)],
                 gate_sd_pp=[0.1, np.nan, 0.2], acquisition_qc=["", None, "flow rate"])
    path = _clinical(tmp_path, "subject,day,platelets,note\nA,0,20,x\nA,7,,\nB,0,150,y\n")
    frame = baseline_table(treg, clinical=read_clinical(path))
    table = baseline_table(columns.from_frame(treg), clinical=read_clinical_table(path))
    assert isinstance(table, dict) and list(table) == list(frame.columns)
    assert frame["treg_events"].dtype == "Int64" and table["treg_events"].dtype == np.int64
    for name, values in columns.from_frame(frame).items():
        assert values.dtype == table[name].dtype, name
        assert values.tolist() == table[name].tolist() or np.array_equal(values, table[name], equal_nan=True), name
    for function in (subject_summary, clinical_correlation):
        pd.testing.assert_frame_equal(columns.to_frame(function(table)), function(frame), check_exact=True)
    assert table["qc_flags"].tolist() == ["", "", "flow rate; Treg gate 90 events < 100"]


def test_nan_days_missing_clinical_rows_and_colliding_names(tmp_path: Path) -> None:
    """A sample without a day is never the baseline, sorts last in its subject and joins no clinical row; a subject
    the clinical table lacks gets missing cells; clinical names that baseline.csv already has get ``_clinical``."""
    treg = _treg([("A", "W2", np.nan, 20000, 900), ("A", "D0", 0, 20000, 600), ("A", "W1", 7, 20000, 700),
                  ("B", "D0", 0, 20000, 600)])
    clinical = _with_platelets(tmp_path, "subject,day,platelets,treg_pct,is_baseline,note\nA,0,20,1.5,yes,first\n"
                                         "A,7,70,2.5,no,\nA,14,90,3,no,late\n")
    table = baseline_table(treg, clinical=clinical)
    assert table["timepoint"].tolist() == ["D0", "W1", "W2", "D0"]
    assert table["is_baseline"].tolist() == [True, False, False, True]
    assert table["platelets"].tolist()[:2] == [20.0, 70.0] and np.isnan(table["platelets"].iloc[2:]).all()
    assert table["treg_pct_clinical"].tolist()[:2] == [1.5, 2.5]  # the clinical value, not the measured one
    assert table["is_baseline_clinical"].tolist()[:2] == ["yes", "no"] and table["note"].tolist()[1] == ""
    assert all(isinstance(v, float) and math.isnan(v) for v in table["note"].tolist()[2:])
    assert table["iwg_response"].tolist() == ["", "response", "", ""]
    assert table["baseline_platelets"].tolist()[:3] == [20.0] * 3 and np.isnan(table["baseline_platelets"].iloc[3])
    names = list(table.columns)
    assert names.index("change_verdict") < names.index("platelets") < names.index("treg_pct_clinical") \
        < names.index("baseline_platelets")


def test_clinical_join_by_timepoint_when_a_day_is_missing(tmp_path: Path) -> None:
    clinical = _with_platelets(tmp_path, "subject,timepoint,day,platelets\nA,D0,0,20\nA,W4,,110\n")
    table = baseline_table(_treg([("A", "D0", 0, 20000, 600), ("A", "W4", 31, 20000, 1500)]), clinical=clinical)
    assert table["platelets"].tolist() == [20.0, 110.0] and table["day"].tolist() == [0.0, 31.0]


def test_baseline_platelets_from_the_latest_earlier_count(tmp_path: Path) -> None:
    """No count at the baseline sample: the latest count on or before its day (not a later one, not a NaN)."""
    clinical = _with_platelets(tmp_path, "subject,day,platelets\nA,-9,12\nA,-2,NA\nA,-5,18\nA,0,\nA,7,60\n")
    table = baseline_table(_treg([("A", "D0", 0, 20000, 600), ("A", "W1", 7, 20000, 700)]), clinical=clinical)
    assert table["baseline_platelets"].tolist() == [18.0, 18.0]
    assert table["platelet_fold"].tolist()[1] == 60 / 18 and table["iwg_response"].tolist() == ["", "response"]


@pytest.mark.parametrize("as_table", [False, True])
def test_duplicate_clinical_keys_are_refused_in_one_line(as_table: bool) -> None:
    """Two clinical rows for one subject and day: the error pandas' many-to-one merge gave (a ValueError)."""
    clinical = pd.DataFrame({"subject": ["A", "A"], "day": [0.0, 0.0], "platelets": [20.0, 30.0]})
    treg = _treg([("A", "D0", 0, 20000, 600)])
    with pytest.raises(ValueError, match="^Merge keys are not unique in right dataset; not a many-to-one merge$"):
        baseline_table(columns.from_frame(treg) if as_table else treg,
                       clinical=columns.from_frame(clinical) if as_table else clinical)


def test_empty_treg_table() -> None:
    treg = _treg([])
    frame = baseline_table(treg)
    assert frame.empty and tuple(frame.columns[: len(BASELINE_COLUMNS)]) == BASELINE_COLUMNS
    table = baseline_table(columns.from_frame(treg))
    assert list(table) == list(frame.columns) and columns.length(table) == 0
    assert subject_summary(frame).empty and subject_summary(table) == {}
    assert clinical_correlation(frame).empty and list(clinical_correlation(table)) == list(clinical_correlation(
        frame).columns)


@pytest.mark.parametrize(
    ("cells", "message"),
    [("36\nA,7,x", "row 3: platelets 'x' is not a number"),
     ("36\nA,7,inf", "row 3: platelets 'inf' is not a finite number"),
     ("36\nA,7,1e999", "row 3: platelets '1e999' is not a number"),  # pandas reads no number there: not infinity
     ("36\nA,7,-Infinity", "row 3: platelets '-Infinity' is not a finite number")],
)
def test_text_in_a_numeric_clinical_column(tmp_path: Path, cells: str, message: str) -> None:
    with pytest.raises(SampleSheetError, match=message):
        read_clinical(_clinical(tmp_path, "subject,day,platelets\nA,0," + cells + "\n"))


def test_clinical_words_for_no_value_and_text_columns(tmp_path: Path) -> None:
    table = read_clinical_table(_clinical(tmp_path, "subject,day,platelets,site,code\nA,0,nd,Bern,x\nA,7, 1e2 ,,NA\n"
                                                    "A,14,-,Basel,\n"))
    assert np.isnan(table["platelets"][[0, 2]]).all() and table["platelets"][1] == 100.0
    assert table["site"].tolist() == ["Bern", "", "Basel"] and table["code"].tolist() == ["x", "NA", ""]
    assert table["day"].dtype == np.float64 and table["subject"].dtype == object


def test_duplicate_clinical_day_message(tmp_path: Path) -> None:
    """The day in the message is shown as written in the file, "7" and "7.0" being one day, with both rows."""
    with pytest.raises(SampleSheetError, match=r"subject 'A' has two rows for day '7.0' \(rows 2 and 3\)$"):
        read_clinical(_clinical(tmp_path, "subject,day,platelets\nA,7,1\nA,7.0,2\n"))


def test_the_run_path_does_not_import_pandas(tmp_path: Path) -> None:
    """Reading the clinical table and every table of ``baseline.csv``, the report and ``gate_sd_pp`` leave pandas
    unimported when given plain tables."""
    import subprocess
    import sys

    path = _clinical(tmp_path, "subject,day,platelets\nA,0,20\nA,7,80\n")
    code = f"""
import sys
import numpy as np
from cytopipe import stats
clinical = stats.read_clinical_table({str(path)!r})
treg = {{"sample": np.array(["a", "b"], dtype=object), "subject": np.array(["A", "A"], dtype=object),
        "timepoint": np.array(["D0", "W1"], dtype=object), "day": np.array([0.0, 7.0]),
        "cd4_events": np.array([20000, 20000]), "treg_events": np.array([600, 1200]), "treg_pct": np.array([3.0, 6.0])}}
table = stats.baseline_table(treg, clinical=clinical)
stats.subject_summary(table)
stats.clinical_correlation(table)
stats.gate_sd_from_sensitivity({{"sample": np.array(["a"], dtype=object), "delta": np.array([0.1]),
                                 "treg_pct_minus": np.array([3.1]), "treg_pct_plus": np.array([2.9])}})
assert table["iwg_response"].tolist() == ["", "response"], table
assert "pandas" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pandas_types_of_clinical_columns_survive_the_join() -> None:
    """A clinical DataFrame with pandas' nullable types keeps them in the result (missing cells <NA>), as its merge
    kept them; a plain table gets numpy types."""
    clinical = pd.DataFrame({"subject": ["A", "A"], "day": [0.0, 7.0], "lymph": [1, 2], "note": ["x", "y"],
                             "flag": [True, False]}).convert_dtypes()
    treg = _treg([("A", "D0", 0, 20000, 600), ("A", "W1", 7, 20000, 900), ("B", "D0", 0, 20000, 600)])
    table = baseline_table(treg, clinical=clinical)
    for name in ("lymph", "note", "flag"):
        assert table[name].dtype == clinical[name].dtype, name
        assert table[name].iloc[:2].tolist() == clinical[name].tolist() and table[name].iloc[2] is pd.NA
    plain = baseline_table(columns.from_frame(treg), clinical=columns.from_frame(clinical))
    assert plain["lymph"].dtype == np.float64 and plain["flag"].tolist()[:2] == [True, False]

"""The whole pipeline on the bundled study, checked against the simulator's per-event truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

import cytopipe

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "sample_fcs" / "study.csv"


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    result = cytopipe.run(STUDY, gates=REPO / "gates" / "treg.yaml", out=out, workers=1, quiet=True)
    return out, result


def test_every_sample_within_half_a_point_of_truth(bundled_run):
    out, result = bundled_run
    assert result.exit_code == 0
    truth = pd.read_csv(REPO / "sample_fcs" / "truth.csv")
    treg = pd.read_csv(out / "treg.csv")
    sheet = pd.read_csv(STUDY)
    treg = treg.merge(sheet[["file"]].assign(sample=sheet["file"].str.replace(".fcs", "", regex=False)), on="sample")
    merged = treg.merge(truth[["file", "treg_pct_true"]], on="file", validate="one_to_one")
    assert len(merged) == len(truth) == 12
    error = (merged["treg_pct"] - merged["treg_pct_true"]).abs()
    assert error.max() < 0.5, merged[["sample", "treg_pct", "treg_pct_true"]].to_string()
    # The API returns the same table it wrote (empty QC text reads back as an empty string, not NaN).
    pd.testing.assert_frame_equal(result.treg.reset_index(drop=True),
                                  pd.read_csv(out / "treg.csv", keep_default_na=False), check_dtype=False)


def test_output_files_and_contract_columns(bundled_run):
    out, _ = bundled_run
    for name in ("populations.csv", "treg.csv", "baseline.csv", "failures.csv", "manifest.json", "report.html"):
        assert (out / name).is_file(), name
    assert list(pd.read_csv(out / "populations.csv").columns[:9]) == [
        "sample", "subject", "timepoint", "day", "population", "parent", "count", "pct_parent", "pct_total"]
    assert list(pd.read_csv(out / "treg.csv").columns[:9]) == [
        "sample", "subject", "timepoint", "day", "cd4_events", "treg_events", "treg_pct", "ci_low", "ci_high"]
    baseline = pd.read_csv(out / "baseline.csv")
    assert list(baseline.columns[:7]) == [
        "subject", "timepoint", "day", "treg_pct", "baseline_pct", "delta_pp", "fold_change"]
    for column in ("delta_ci_low", "delta_ci_high", "fc_ci_low", "fc_ci_high", "rcv_pct", "significant",
                   "low_events"):
        assert column in baseline.columns
    assert list(pd.read_csv(out / "failures.csv").columns) == ["sample", "file", "stage", "reason"]


def test_baseline_comparison_says_responder_rose_and_non_responder_did_not(bundled_run):
    out, _ = bundled_run
    baseline = pd.read_csv(out / "baseline.csv")
    responder = baseline[baseline["subject"] == "ITP-01"].set_index("timepoint")
    flat = baseline[baseline["subject"] == "ITP-02"]
    assert responder.loc["baseline", "fold_change"] == pytest.approx(1.0)
    assert responder.loc["W4", "fold_change"] > 2.5
    assert bool(responder.loc["W4", "significant"])
    assert not flat["significant"].astype(bool).any()


def test_manifest_records_versions_hashes_and_gates(bundled_run):
    out, _ = bundled_run
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert manifest["versions"]["cytopipe"] == cytopipe.__version__
    assert "numpy" in manifest["versions"]
    for fcs in sorted((REPO / "sample_fcs").glob("*.fcs")):
        assert hashlib.sha256(fcs.read_bytes()).hexdigest() in text, fcs.name
    assert (REPO / "gates" / "treg.yaml").read_text() in manifest["gates"]["text"]


def test_report_names_both_subjects(bundled_run):
    out, _ = bundled_run
    html = (out / "report.html").read_text()
    assert "ITP-01" in html and "ITP-02" in html
    assert "http://" not in html and "https://" not in html.replace("https://www.w3.org", "")

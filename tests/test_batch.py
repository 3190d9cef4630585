"""The batch runner: outputs, determinism across worker counts, cache and resume, fault isolation, logs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_pipeline import GATES_YAML, expected_counts, write_sample

from cytopipe.batch import run
from cytopipe.errors import ConfigError, GateError

REPO = Path(__file__).resolve().parents[1]
CSVS = ("populations.csv", "treg.csv", "baseline.csv", "failures.csv")


def make_study(folder: Path, n_files: int = 6, n_events: int = 8_000, subjects: int = 2) -> tuple[Path, Path, dict]:
    """Constructed files + sample sheet + gate file; returns (sheet, gates, {sample: labels})."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = [], {}
    for i in range(n_files):
        subject = f"P{i % subjects + 1}"
        day = 7 * (i // subjects)
        name = f"{subject}_D{day}"
        labels[name] = write_sample(folder / f"{name}.fcs", n=n_events, seed=100 + i,
                                    treg_fraction=0.02 + 0.01 * (i // subjects) * (subject == "P1"))
        rows.append({"file": f"{name}.fcs", "subject": subject, "timepoint": f"W{day // 7}", "day": day,
                     "batch": "B1"})
    sheet = folder / "study.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    gates = folder / "treg.yaml"
    gates.write_text(GATES_YAML)
    return sheet, gates, labels


def quiet_run(**kwargs):
    kwargs.setdefault("quiet", True)
    kwargs.setdefault("stream", io.StringIO())
    kwargs.setdefault("pdf", False)  # Chromium's PDF printing is the report's business, tested there
    return run(**kwargs)


def read_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in CSVS}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def serial(study, tmp_path_factory: pytest.TempPathFactory):
    sheet, gates, _ = study
    out = tmp_path_factory.mktemp("serial")
    return quiet_run(sheet=sheet, gates=gates, out=out, workers=1)


@pytest.mark.slow
def test_report_rendered_again_from_the_folder_is_the_runs_report(serial):
    """The run reads each gating figure as its sample's result arrives; ``cytopipe report DIR`` reads them all
    from plots/ at the end: the same page (but for the time it was generated)."""
    import re

    from cytopipe.report import render_report

    def page() -> str:
        html = (serial.out / "report.html").read_text(encoding="utf-8")
        return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "", html)

    first = page()
    assert first.count('<figure class="scroll"><svg') > len(serial.computed) > 0  # and the time courses
    render_report(serial.out)
    assert page() == first


def test_figures_read_as_results_arrive_skip_a_shared_file(tmp_path):
    """Two samples whose names differ only in unsafe characters write one figure file: the report reads that file
    at the end, as it is then, rather than each sample's version as it arrived."""
    from cytopipe.batch.runner import _Figures
    from cytopipe.pipeline import SampleResult
    from cytopipe.report import inline_svg

    svg = '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><style>x</style>\n<g id="{}"/></svg>'
    figures = _Figures()
    for name, stem in (("a/b", "a_b"), ("a_b", "a_b"), ("c", "c"), ("d", None)):
        path = tmp_path / f"gating_{stem}.svg"
        path.write_text(svg.format(name), encoding="utf-8")
        figures.add(SampleResult(sample=name, file="", plot=str(path) if stem else None))
    assert set(figures.inlined) == {"c"}
    assert figures.inlined["c"] == inline_svg(tmp_path / "gating_c.svg") == '<svg><g id="c"/></svg>'
    figures.add(SampleResult(sample="a/b", file="", plot=str(tmp_path / "gating_a_b.svg")))
    assert set(figures.inlined) == {"c"}


@pytest.mark.slow
def test_outputs_of_a_clean_run(study, serial):
    sheet, gates, labels = study
    out = serial.out
    assert serial.exit_code == 0
    for name in (*CSVS, "manifest.json", "report.html"):
        assert (out / name).is_file(), name
    assert not (out / "gates_fitted.csv").exists()
    # Fixed gates fit nothing, but the reference populations' drift QC is still written.
    drift = pd.read_csv(out / "gate_drift.csv", keep_default_na=False)
    assert set(drift["parameter"]) >= {"median CD4", "median CD3", "median FSC-A"}
    assert (out / "failures.csv").read_text() == "sample,file,stage,reason\n"
    pops = pd.read_csv(out / "populations.csv")
    assert list(pops.columns) == ["sample", "subject", "timepoint", "day", "population", "parent", "count",
                                  "pct_parent", "pct_total"]
    for sample, lab in labels.items():
        got = pops[pops["sample"] == sample].set_index("population")["count"].to_dict()
        assert got == expected_counts(lab)
    treg = pd.read_csv(out / "treg.csv")
    assert list(treg.columns[:9]) == ["sample", "subject", "timepoint", "day", "cd4_events", "treg_events",
                                      "treg_pct", "ci_low", "ci_high"]
    assert "batch" in treg.columns  # extra sheet columns are carried through
    # Sorted by subject, then day.
    assert list(treg["sample"]) == sorted(labels, key=lambda s: (s.split("_")[0], int(s.split("_D")[1])))
    baseline = pd.read_csv(out / "baseline.csv")
    assert {"subject", "timepoint", "day", "treg_pct", "baseline_pct", "delta_pp", "fold_change"} <= set(baseline)
    p1 = baseline[baseline["subject"] == "P1"].sort_values("day")
    assert p1["baseline_pct"].nunique() == 1 and p1["fold_change"].iloc[0] == pytest.approx(1.0)
    manifest = json.loads((out / "manifest.json").read_text())
    hashes = {Path(item["file"]).name: item["sha256"] for item in manifest["inputs"]}
    for fcs in sheet.parent.glob("*.fcs"):
        assert hashes[fcs.name] == hashlib.sha256(fcs.read_bytes()).hexdigest()
    assert manifest["gates"]["text"] == gates.read_text()
    assert manifest["sample_sheet"]["sha256"] == hashlib.sha256(sheet.read_bytes()).hexdigest()
    assert {"cytopipe", "numpy", "pandas", "PyYAML", "Jinja2", "python"} <= set(manifest["versions"])
    assert not {"scipy", "scikit-learn", "matplotlib"} & set(manifest["versions"])  # never imported by a run
    assert len(list((out / "plots").glob("gating_*.svg"))) == len(labels)
    assert sorted(serial.computed) == sorted(labels) and serial.cached == []


@pytest.mark.slow
def test_two_workers_give_byte_identical_csvs(study, serial, tmp_path):
    sheet, gates, _ = study
    parallel = quiet_run(sheet=sheet, gates=gates, out=tmp_path, workers=2)
    assert parallel.exit_code == 0
    assert read_bytes(tmp_path) == read_bytes(serial.out)


def _entry_keys(out: Path) -> list[str]:
    return sorted(line.split(" ")[1] for line in (out / ".cache" / "entries.log").read_text().split("\n")
                  if line.startswith("R "))


def test_pool_workers_store_their_own_results_in_the_cache(study, serial, tmp_path):
    """In a pool run each worker appends its samples' cache entries itself: one whole entry per sample under the
    keys a serial run uses, which a re-run takes every sample from, byte-identically."""
    sheet, gates, _ = study
    fast = {"plots": False, "report": False}
    first = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "pool", workers=2, **fast)
    in_process = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "serial", workers=1, **fast)
    assert _entry_keys(first.out) == _entry_keys(in_process.out) and len(_entry_keys(first.out)) == len(serial.computed)
    again = quiet_run(sheet=sheet, gates=gates, out=first.out, workers=2, **fast)
    assert again.computed == [] and sorted(again.cached) == sorted(first.computed)
    assert read_bytes(again.out) == read_bytes(in_process.out)


def test_rerun_uses_the_cache_and_adding_a_file_computes_only_it(study, tmp_path):
    sheet, gates, _ = study
    folder = tmp_path / "grow"
    fast = {"plots": False, "report": False}
    first = quiet_run(sheet=sheet, gates=gates, out=folder, workers=1, **fast)
    again = quiet_run(sheet=sheet, gates=gates, out=folder, workers=1, **fast)
    assert again.computed == [] and sorted(again.cached) == sorted(first.computed)
    assert read_bytes(folder) == read_bytes(first.out)

    write_sample(sheet.parent / "P3_D0.fcs", n=6_000, seed=999)
    grown = sheet.parent / "grown.csv"
    table = pd.read_csv(sheet)
    table.loc[len(table)] = {"file": "P3_D0.fcs", "subject": "P3", "timepoint": "W0", "day": 0, "batch": "B2"}
    table.to_csv(grown, index=False)
    added = quiet_run(sheet=grown, gates=gates, out=folder, workers=1, **fast)
    assert added.computed == ["P3_D0"]
    fresh = quiet_run(sheet=grown, gates=gates, out=tmp_path / "fresh", workers=1, **fast)
    assert read_bytes(folder) == read_bytes(fresh.out)

    # Other gates: nothing in the cache applies.
    changed = tmp_path / "changed.yaml"
    changed.write_text(GATES_YAML.replace("min: [2.0, 2.0]", "min: [2.2, 2.0]"))
    regated = quiet_run(sheet=grown, gates=changed, out=folder, workers=1, **fast)
    assert sorted(regated.computed) == sorted(fresh.computed)


def test_the_runs_own_files_written_beside_the_report(study, tmp_path):
    """With a report, the tables and manifest.json are written once report.html is (the report renders from the
    manifest's text in memory, while its PDF child may still run), gates_fitted.wsp a sample at a time: the same
    bytes as a run without a report writes, and a file that cannot be written still stops the run with the error
    naming it."""
    sheet, gates, _ = study
    with_report = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "a", workers=1, plots=False)
    without = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "b", workers=1, plots=False, report=False)
    for name in ("populations.csv", "treg.csv", "failures.csv", "gates_fitted.wsp", "manifest.json"):
        assert (with_report.out / name).read_bytes() == (without.out / name).read_bytes(), name
    manifest = json.loads((with_report.out / "manifest.json").read_text())
    html = (with_report.out / "report.html").read_text()
    assert manifest["gates"]["sha256"] in html and manifest["inputs"][0]["sha256"] in html  # its provenance
    blocked = tmp_path / "c"
    (blocked / "manifest.json").mkdir(parents=True)
    with pytest.raises(OSError) as err:
        quiet_run(sheet=sheet, gates=gates, out=blocked, workers=1, plots=False)
    assert str(err.value.filename).endswith("manifest.json")
    assert (blocked / "treg.csv").read_bytes() == (without.out / "treg.csv").read_bytes()


def test_a_corrupt_file_fails_alone(study, serial, tmp_path):
    sheet, gates, labels = study
    folder = tmp_path / "study"
    folder.mkdir()
    for fcs in sheet.parent.glob("*.fcs"):
        data = fcs.read_bytes()
        (folder / fcs.name).write_bytes(data[: len(data) // 2] if fcs.stem == "P2_D7" else data)
    bad_sheet = folder / "study.csv"
    bad_sheet.write_text(sheet.read_text())
    log = io.StringIO()
    result = run(sheet=bad_sheet, gates=gates, out=tmp_path / "out", workers=2, quiet=True, stream=log, pdf=False,
                 plots=False)
    assert result.exit_code == 1
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert failures[["sample", "stage"]].values.tolist() == [["P2_D7", "read"]]
    assert failures["file"].iloc[0] == str(folder / "P2_D7.fcs")
    assert "P2_D7" in log.getvalue() and log.getvalue().count("\n") == 1  # quiet: the error only
    good = pd.read_csv(serial.out / "treg.csv")
    got = pd.read_csv(tmp_path / "out" / "treg.csv")
    pd.testing.assert_frame_equal(got.reset_index(drop=True),
                                  good[good["sample"] != "P2_D7"].reset_index(drop=True))
    assert "P2_D7" in (tmp_path / "out" / "report.html").read_text()


def test_gatingml_gate_file_gives_the_same_counts(study, serial, tmp_path):
    from cytopipe.gatefile import load_strategy
    from cytopipe.gatingml import write_gatingml

    sheet, gates, _ = study
    xml = tmp_path / "treg.xml"
    write_gatingml(load_strategy(gates), xml)
    result = quiet_run(sheet=sheet, gates=xml, out=tmp_path / "out", workers=1, plots=False, treg="treg")
    want = serial.treg[["sample", "cd4_events", "treg_events"]]
    pd.testing.assert_frame_equal(result.treg[["sample", "cd4_events", "treg_events"]], want)


def test_treg_and_parent_options(study, tmp_path):
    sheet, gates, labels = study
    result = quiet_run(sheet=sheet, gates=gates, out=tmp_path, workers=1, plots=False, report=False,
                       treg="CD4+", parent="Singlets")
    for row in result.treg.itertuples():
        want = expected_counts(labels[row.sample])
        assert (row.treg_events, row.cd4_events) == (want["CD4+"], want["Singlets"])


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"workers": 0}, ConfigError, "--workers"),
    ({"scheduler": "localhost:8786"}, ConfigError, "tcp://"),
    ({"treg": "NK"}, GateError, "'NK'"),
    ({"spillover": "no/such/matrix.csv"}, ConfigError, "matrix.csv"),
])
def test_configuration_errors(study, tmp_path, kwargs, error, text):
    sheet, gates, _ = study
    with pytest.raises(error, match=text) as info:
        quiet_run(sheet=sheet, gates=gates, out=tmp_path, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_dask_is_a_config_error(study, tmp_path, monkeypatch):
    sheet, gates, _ = study
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an install without the extra looks like
    with pytest.raises(ConfigError, match=r"pip install cytopipe\[dask\]"):
        quiet_run(sheet=sheet, gates=gates, out=tmp_path, scheduler="tcp://127.0.0.1:1")


def test_log_modes(study, tmp_path):
    sheet, gates, labels = study
    common = {"sheet": sheet, "gates": gates, "workers": 1, "plots": False, "report": False}
    stream = io.StringIO()
    run(out=tmp_path / "json", log_json=True, stream=stream, **common)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    samples = [r for r in records if r["event"] == "sample"]
    assert sorted(r["sample"] for r in samples) == sorted(labels)
    assert samples[-1]["done"] == samples[-1]["total"] == len(labels)
    assert all(r["events"] > 0 and "events_per_s" in r for r in samples)

    stream = io.StringIO()
    run(out=tmp_path / "tty", progress=True, stream=stream, **common)
    bar = stream.getvalue()
    assert "\r" in bar and f"{len(labels)}/{len(labels)} samples" in bar and "events/s" in bar and "ETA" in bar

    stream = io.StringIO()
    run(out=tmp_path / "plain", progress=False, stream=stream, **common)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and sum("] " in line for line in lines) == len(labels)

    stream = io.StringIO()
    run(out=tmp_path / "quiet", quiet=True, stream=stream, **common)
    assert stream.getvalue() == ""


def _cached_samples(out: Path) -> set[str]:
    """The samples of the whole result lines in the cache log (the line being written may be torn)."""
    log = out / ".cache" / "entries.log"
    lines = log.read_text().split("\n")[:-1] if log.is_file() else []
    return {json.loads(line.split(" ", 3)[3])["sample"] for line in lines if line.startswith("R ")}


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "workers"), [(signal.SIGKILL, 1), (signal.SIGINT, 2)])
def test_killed_run_resumes(tmp_path, sig, workers):
    # Enough work that the run cannot finish between the third cached result and the signal: the client takes the
    # workers' first results only after its own imports (the report's modules, pandas), so the results finished
    # meanwhile reach the cache in one burst; the work left after that burst must outlast the signal.
    n_files = 60
    sheet, gates, _ = make_study(tmp_path / "study", n_files=n_files, n_events=150_000, subjects=2)
    out = tmp_path / "killed"
    # A shell that starts a job in the background (as CI may) leaves SIGINT ignored in its children, and Python
    # then installs no KeyboardInterrupt handler: the run is given the handler a terminal user's run has.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from cytopipe.batch import run; "
            f"sys.exit(run(sheet={str(sheet)!r}, gates={str(gates)!r}, out={str(out)!r}, workers={workers}, "
            "quiet=True, pdf=False).exit_code)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_cached_samples(out)) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()!r}"
        # A SIGINT that lands while Python runs a finalizer is reported as "Exception ignored" and lost, so it
        # is repeated as a user presses Ctrl-C again (a SIGKILL needs one).
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    done_before = _cached_samples(out)
    assert 3 <= len(done_before) < n_files
    assert not (out / "treg.csv").exists()  # the killed run never reached the outputs

    resumed = quiet_run(sheet=sheet, gates=gates, out=out, workers=2)
    assert set(resumed.cached) == done_before
    assert set(resumed.computed) == set(resumed.treg["sample"]) - done_before
    clean = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "clean", workers=2)
    assert read_bytes(out) == read_bytes(clean.out)


@pytest.mark.slow
def test_bundled_study_matches_truth(tmp_path):
    sheet, gates = REPO / "sample_fcs" / "study.csv", REPO / "gates" / "treg.yaml"
    truth_file = REPO / "sample_fcs" / "truth.csv"
    for path in (sheet, gates, truth_file):
        assert path.is_file(), f"{path} is part of the repository"
    result = quiet_run(sheet=sheet, gates=gates, out=tmp_path, workers=2)
    assert result.exit_code == 0
    truth = pd.read_csv(truth_file)
    key = "sample" if "sample" in truth.columns else "file"
    truth_col = next(c for c in truth.columns if "pct" in c.lower())
    got = result.treg.copy()
    if key == "file":
        got["file"] = got["sample"] + ".fcs"
        truth["file"] = truth["file"].map(lambda f: Path(f).name)
    merged = got.merge(truth, on=key)
    assert len(merged) == len(result.treg) > 0
    assert (merged["treg_pct"] - merged[truth_col]).abs().max() < 0.5


AUTO_YAML = GATES_YAML.split("  - name: CD3+")[0] + """\
  - name: CD3+
    parent: Singlets
    gate: {type: auto_threshold, channels: [CD3], scope: subject,
           thresholds: [{side: above, method: valley, bounds: [1.0, 3.5]}]}
  - name: CD4+
    parent: CD3+
    gate: {type: auto_threshold, channels: [CD4], scope: baseline,
           thresholds: [{side: above, method: valley, bounds: [1.0, 3.5]}]}
  - name: treg
    parent: CD4+
    gate: {type: auto_threshold, channels: [CD25, FoxP3],
           thresholds: [{side: above, method: valley, bounds: [1.0, 3.5]}, {side: above, method: valley,
                        bounds: [1.0, 3.5]}]}
"""


@pytest.mark.slow
def test_data_driven_scopes(study, tmp_path):
    """subject/baseline gates are fitted once per subject on the client, sample gates in each worker."""
    sheet, _, labels = study
    gates = tmp_path / "auto.yaml"
    gates.write_text(AUTO_YAML)
    common = {"sheet": sheet, "gates": gates, "plots": False, "report": False}
    one = quiet_run(out=tmp_path / "w1", workers=1, **common)
    assert one.exit_code == 0
    # Every valley falls in the empty gap between the constructed dim and bright clusters: truth is recovered.
    for sample, lab in labels.items():
        got = one.populations[one.populations["sample"] == sample].set_index("population")["count"].to_dict()
        assert got == expected_counts(lab)
    fitted = pd.read_csv(tmp_path / "w1" / "gates_fitted.csv", keep_default_na=False)
    shared = fitted[fitted["sample"] == ""]
    assert sorted(zip(shared["subject"], shared["population"], shared["scope"], strict=True)) == [
        ("P1", "CD3+", "subject"), ("P1", "CD4+", "baseline"), ("P2", "CD3+", "subject"), ("P2", "CD4+", "baseline")]
    assert set(shared[shared["scope"] == "subject"]["n_samples"].astype(int)) == {3}
    assert set(shared[shared["scope"] == "baseline"]["n_samples"].astype(int)) == {1}
    per_sample = fitted[fitted["sample"] != ""]
    assert sorted(per_sample["sample"]) == sorted(labels) and set(per_sample["population"]) == {"treg"}
    assert (tmp_path / "w1" / "sensitivity.csv").is_file() and len(one.sensitivity) >= len(labels)
    # Drift of the per-sample gate against each subject's baseline sample (day 0); subject/baseline-scope gates are
    # fitted once per subject and have none.
    drift = pd.read_csv(tmp_path / "w1" / "gate_drift.csv", keep_default_na=False)
    assert list(drift.columns) == ["subject", "sample", "timepoint", "day", "population", "parameter", "value",
                                   "baseline_value", "drift", "drift_pct", "qc"]
    # Reference populations (issue 14 drift QC) share the table; here only the fitted gate's rows are checked.
    drift = drift[~drift["parameter"].str.startswith("median ")].reset_index(drop=True)
    assert set(drift["population"]) == {"treg"} and set(drift["sample"]) == set(labels)
    assert list(drift["drift"]) == pytest.approx(list(drift["value"] - drift["baseline_value"]), abs=1e-8)
    for subject, rows in drift.groupby("subject"):
        base = rows[rows["sample"] == f"{subject}_D0"]
        assert len(base) > 0 and (base["drift"] == 0).all()
        assert list(rows["baseline_value"]) == list(base.set_index("parameter")["value"].reindex(rows["parameter"]))
    gate_rows = one.drift[~one.drift["parameter"].str.startswith("median ")].reset_index(drop=True)
    pd.testing.assert_frame_equal(gate_rows[["subject", "sample", "parameter"]],
                                  drift[["subject", "sample", "parameter"]])
    assert quiet_run(out=tmp_path / "w2", workers=2, **common).exit_code == 0
    for name in (*CSVS, "gates_fitted.csv", "sensitivity.csv", "gate_drift.csv"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_clinical_csv_beside_the_sheet_is_used_by_default(tmp_path):
    sheet, gates, labels = make_study(tmp_path / "study", n_files=4, n_events=4_000)
    table = pd.read_csv(sheet)
    clinical = sheet.parent / "clinical.csv"
    # P1 rises from 20 to 120 (complete response); P2 stays at 25 (no response).
    table.assign(platelets=[20, 25, 120, 25])[["subject", "day", "platelets"]].to_csv(clinical, index=False)
    stream = io.StringIO()
    result = run(sheet=sheet, gates=gates, out=tmp_path / "out", workers=1, plots=False, pdf=False,
                 progress=False, stream=stream)
    assert result.exit_code == 0
    info = [line for line in stream.getvalue().splitlines() if "clinical data:" in line]
    assert len(info) == 1 and str(clinical) in info[0]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["clinical"] == str(clinical.resolve())
    baseline = pd.read_csv(tmp_path / "out" / "baseline.csv", keep_default_na=False)
    later = baseline[baseline["day"] == 7].set_index("subject")
    assert later.loc["P1", "iwg_response"] == "complete response"
    assert later.loc["P2", "iwg_response"] == "no response"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<th>IWG</th>" in html and "complete response" in html

    # Without a clinical.csv beside the sheet there is none, and the manifest says so.
    clinical.unlink()
    plain = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "none", workers=1, plots=False, report=False)
    assert "iwg_response" not in plain.baseline.columns
    assert json.loads((tmp_path / "none" / "manifest.json").read_text())["settings"]["clinical"] is None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked only on Linux")
def test_workers_are_forked_only_without_other_threads(study, serial, tmp_path):
    """A process with other threads gets its workers from a fork server instead; the results are the same."""
    import threading

    from cytopipe.batch.executors import _pool_context

    sheet, gates, _ = study
    if threading.active_count() == 1:  # (another test may have left a thread behind)
        assert _pool_context(False).get_start_method() == "fork"
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert _pool_context(False).get_start_method() == "forkserver"
        threaded = quiet_run(sheet=sheet, gates=gates, out=tmp_path, workers=2)
    finally:
        stop.set()
        other.join()
    assert threaded.exit_code == 0
    assert read_bytes(tmp_path) == read_bytes(serial.out)


def test_plots_modes(study, tmp_path):
    """--plots all draws every sample, none draws nothing (same numbers), flagged only flagged or changed ones."""
    sheet, gates, labels = study
    none = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "none", workers=1, plots="none")
    assert not (tmp_path / "none" / "plots").exists() or not list((tmp_path / "none" / "plots").glob("gating_*"))
    html = (tmp_path / "none" / "report.html").read_text()
    assert 'class="fig' not in html and "Figures drawn for 0 of" in html
    flagged = quiet_run(sheet=sheet, gates=gates, out=tmp_path / "flagged", workers=1, plots="flagged")
    assert flagged.treg.equals(none.treg)
    base = flagged.baseline
    chosen = set(base.loc[(base["qc_flags"].fillna("") != "") | base["significant"].astype(bool), "sample"])
    drawn = {p.stem[len("gating_"):] for p in (tmp_path / "flagged" / "plots").glob("gating_*.svg")}
    assert drawn == chosen and 0 < len(chosen) < len(labels)
    with pytest.raises(ConfigError, match="--plots must be all, none or flagged"):
        quiet_run(sheet=sheet, gates=gates, out=tmp_path / "bad", workers=1, plots="some")


def test_cache_entry_text_without_deep_copy_is_the_deep_copys():
    """The cache encodes a result's fields as they are when it can: the text is the one of
    ``to_dict()`` with NaN as null (with NaN, infinities, tuples and nested lists)."""
    import math

    from cytopipe.batch.cache import _entry_text, _nan_to_none, _result_text
    from cytopipe.pipeline import SampleResult

    plain = SampleResult(sample="s", file="f.fcs", populations=[{"population": "CD4+", "count": 3, "pct": 1.5}],
                         workspace={"gates": [{"vertices": [(1.0, 2.0), (3.0, 4.5)]}]}, timings={"total": 0.25})
    odd = SampleResult(sample="t", file="g.fcs", populations=[{"population": "Treg", "count": 0, "pct": math.nan}],
                       references={"CD4 T|CD4": math.inf}, treg={"treg_pct": math.nan, "note": "NaN"})
    for result in (plain, odd):
        expected = json.dumps(_nan_to_none(result.to_dict()), allow_nan=False)
        assert _result_text(result) == expected
        assert _entry_text(json.loads(expected)) == expected
    assert '"pct": null' in _result_text(odd) and '"note": "NaN"' in _result_text(odd)


def test_marker_check_skips_missing_files_and_names_the_first_file_it_read(study, tmp_path):
    # The check looks for files lazily (the first existing one, then the spread over the sheet only when it lacks a
    # marker): a missing first row is skipped, and the message names the first file read.
    from cytopipe.errors import MarkerError

    sheet, gates, _ = study
    rows = pd.read_csv(sheet)
    rows = pd.concat([pd.DataFrame({"file": ["gone.fcs"], "subject": ["P9"], "timepoint": ["W0"], "day": [0],
                                    "batch": ["B1"]}), rows], ignore_index=True)
    rows["file"] = [str(sheet.parent / f) for f in rows["file"]]
    moved = tmp_path / "study.csv"
    rows.to_csv(moved, index=False)
    typo = tmp_path / "typo.yaml"
    typo.write_text(Path(gates).read_text().replace("CD25", "CD52"))
    assert "CD52" in typo.read_text()
    with pytest.raises(MarkerError) as info:
        quiet_run(sheet=moved, gates=typo, out=tmp_path / "out", workers=1, plots=False, report=False)
    message = str(info.value)
    assert "CD52" in message and f"in {rows['file'][1]}" in message, message
    assert f"none of {min(8, len(rows) - 1)} files checked has it" in message, message
    assert not (tmp_path / "out" / "treg.csv").exists()


def test_report_from_the_runs_tables_is_the_report_from_the_folder(tmp_path):
    """The run renders its report from the tables in memory, taken as a reading of their files gives them;
    ``cytopipe report DIR`` reads the folder: the same baseline.csv, summary, correlation, PDF and page (but for the
    time it was generated), with data-driven gates, clinical data, hostile names and numeric-looking text."""
    import re

    from cytopipe.report import render_report

    sheet = pd.read_csv(REPO / "sample_fcs" / "study.csv", dtype=str).iloc[[0, 1, 3, 6, 7, 9]]
    sheet["file"] = [str(REPO / "sample_fcs" / name) for name in sheet["file"]]
    subjects = {"ITP-01": "=cmd|' /C calc'!A0", "ITP-02": "'=P2 <b>&"}
    sheet["subject"] = sheet["subject"].map(subjects)
    sheet["sample"] = ["@SUM(1+1)", "'=x", "NA", "12", "a,b \"q\"\nc", "-3.5"]
    sheet["note"] = ["-3.5", "12", "", "x", "0.1", "1e3"]
    sheet.to_csv(tmp_path / "study.csv", index=False)
    clinical = pd.read_csv(REPO / "sample_fcs" / "clinical.csv", dtype=str)
    clinical["subject"] = clinical["subject"].map(subjects)
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    out = tmp_path / "out"
    result = quiet_run(sheet=tmp_path / "study.csv", out=out, workers=1, pdf=True)
    assert result.exit_code == 0
    names = ("baseline.csv", "summary.csv", "correlation.csv", "report.pdf")

    def outputs() -> dict[str, bytes]:
        page = re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC", b"", (out / "report.html").read_bytes())
        return {"report.html": page, **{name: (out / name).read_bytes() for name in names}}

    first = outputs()
    assert b"tregs_per_ul" in first["baseline.csv"] and b"sensitivity" not in first["baseline.csv"]
    assert (out / "gates_fitted.csv").is_file() and (out / "sensitivity.csv").is_file()
    render_report(out)
    assert outputs() == first
    written = pd.read_csv(out / "baseline.csv", keep_default_na=False, na_values=[""])
    assert list(result.baseline.columns) == list(written.columns)
    assert result.baseline["treg_pct"].to_numpy() == pytest.approx(written["treg_pct"].to_numpy(), rel=1e-9)


def test_a_worker_killed_mid_run_loses_no_sample(tmp_path):
    # Small files go to the pool in chunks; a worker killed while it gates (as by the OOM killer) breaks the pool,
    # and every task of the unfinished chunks runs again in a fresh pool, one at a time: each sample comes back
    # once, ok. The sheet starts with a small file, then two large ones: when the small file's result arrives,
    # both workers are gating a large file, and one of them is killed.
    import multiprocessing
    import signal

    from cytopipe.batch.executors import _chunks, _file_sizes, _run_pool
    from cytopipe.gatefile import load_strategy
    from cytopipe.pipeline import SampleTask, resolve_treg
    from cytopipe.samplesheet import read_sample_rows

    sheet, gates, labels = make_study(tmp_path, n_files=24, n_events=8_000)
    rows = pd.read_csv(sheet)
    for name in ("P1_big", "P2_big"):
        write_sample(tmp_path / f"{name}.fcs", n=400_000, seed=7)
        labels[name] = None
    big = pd.DataFrame({"file": ["P1_big.fcs", "P2_big.fcs"], "subject": ["P1", "P2"], "timepoint": ["Wx", "Wx"],
                        "day": [99, 99], "batch": ["B1", "B1"]})
    pd.concat([rows[:1], big, rows[1:]], ignore_index=True).to_csv(sheet, index=False)
    strategy = load_strategy(gates)
    treg, parent = resolve_treg(strategy, None, None)
    records, _ = read_sample_rows(sheet)
    tasks = [SampleTask(sample=r["sample"], file=r["file"], subject=r["subject"], timepoint=r["timepoint"],
                        day=r["day"], strategy=strategy, treg=treg, parent=parent) for r in records]
    sizes = _file_sizes(tasks)
    assert [len(chunk) for chunk in _chunks(tasks, sizes, 2)][:3] == [1, 1, 1]
    assert max(len(chunk) for chunk in _chunks(tasks, sizes, 2)) > 1  # the small files go in chunks
    others = {p.pid for p in multiprocessing.active_children()}
    seen, killed = [], []
    for result in _run_pool(tasks, 2):
        seen.append(result)
        if not killed:
            workers = [p for p in multiprocessing.active_children() if p.pid not in others]
            if not workers:
                pytest.skip("the pool's workers are not children of this process (fork server)")
            os.kill(workers[0].pid, signal.SIGKILL)
            killed.append(workers[0].pid)
    assert seen[0].sample == tasks[0].sample
    assert sorted(r.sample for r in seen) == sorted(labels)
    assert all(r.ok for r in seen), [r.failure for r in seen if not r.ok]


def test_the_terminal_bar_is_redrawn_a_few_times_a_second_and_ends_on_the_last_sample():
    from cytopipe.batch.progress import TTY_REDRAW, Progress
    from cytopipe.pipeline import SampleResult

    stream = io.StringIO()
    bar = Progress(300, "tty", stream)
    started = time.perf_counter()
    for i in range(300):
        bar.sample(SampleResult(sample=f"s{i}", file="f.fcs", subject="S", timepoint="T", day=0.0, n_events=10))
    bar.finish()
    seconds = time.perf_counter() - started
    draws = stream.getvalue().split("\r")[1:]
    assert 2 <= len(draws) <= 2 + seconds / TTY_REDRAW, len(draws)
    assert draws[-1].startswith("\x1b[K300/300 samples") and draws[-1].endswith("\n")


_FREED = """
import resource, sys
import numpy as np
from cytopipe.batch.executors import process_one
from cytopipe.pipeline import SampleTask
if sys.argv[1] == "keep":  # the first sample a batch's executor handles sets it up (even a sample that fails)
    assert process_one(SampleTask(sample="x", file="/nonexistent/x.fcs", strategy=None)).failure
np.ones(4 << 20).sum()  # 32 MiB, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(4 << 20).sum()  # the same again, as the next sample's arrays would be
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_batch_worker_keeps_freed_memory_for_the_next_sample() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FREED, mode], capture_output=True, text=True,
                                       env=env, check=True).stdout) for mode in ("keep", "default")}
    # 32 MiB is 8,192 pages (16 huge pages): faulted in again by default, reused when kept.
    assert faults["keep"] < 100 and faults["default"] >= 16, faults


def test_allocator_setting_is_left_to_batch_executors():
    """A program calling process_sample itself keeps its own malloc settings; the executors of a batch (pool and Dask
    workers, a run in this process) set them once. Fresh interpreter: the flag is per process."""
    import subprocess
    import sys

    code = (
        "from cytopipe import pipeline\n"
        "from cytopipe.batch import executors\n"
        "task = pipeline.SampleTask(sample='s', file='/nonexistent.fcs', strategy=None, failure='x', "
        "failure_stage='read')\n"
        "result = pipeline.process_sample(task)\n"
        "assert result.failure is not None\n"
        "print(executors._FREED_MEMORY_KEPT)\n"
        "list(executors._run_in_process([]))\n"
        "print(executors._FREED_MEMORY_KEPT)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_a_worker_whose_parent_died_before_it_started_exits_at_once():
    """A pool worker is told its parent's pid: one that starts after the run was killed (its parent now init) exits
    in its initializer instead of taking init for its parent and living on; one whose parent is alive goes on."""
    code = ("import os, sys\nfrom cytopipe.batch.executors import _die_with_parent\n"
            "_die_with_parent(int(sys.argv[1]))\nprint('alive')\n")
    gone = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10**6)], capture_output=True, text=True,
                          timeout=60)
    assert (gone.returncode, gone.stdout, gone.stderr) == (1, "", "")
    alive = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True,
                           timeout=60)
    assert (alive.returncode, alive.stdout) == (0, "alive\n"), alive.stderr

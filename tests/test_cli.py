"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import cytopipe

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_fcs"
GATES = REPO / "gates" / "treg.yaml"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "cytopipe", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cytopipe: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def write_sheet(folder: Path, files: list[Path], extra: str = "") -> Path:
    rows = [f"{f},S1,{'D0' if i == 0 else f'W{i}'},{7 * i}{extra}" for i, f in enumerate(files)]
    sheet = folder / "study.csv"
    sheet.write_text("file,subject,timepoint,day\n" + "\n".join(rows) + "\n")
    return sheet


def test_help_lists_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "info", "export", "gate", "gates", "report"):
        assert command in proc.stdout


def test_missing_sample_sheet(tmp_path):
    proc = cli("run", tmp_path / "nope.csv", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert one_error_line(proc) == f"cytopipe: error: {tmp_path / 'nope.csv'}: sample sheet not found"
    assert not (tmp_path / "out" / "treg.csv").exists()


def test_sheet_without_required_columns(tmp_path):
    sheet = tmp_path / "study.csv"
    sheet.write_text("file,patient\na.fcs,S1\n")
    proc = cli("run", sheet, "--out", tmp_path / "out")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "study.csv: missing required column(s) 'subject', 'timepoint', 'day'" in line


def test_malformed_gate_yaml(tmp_path):
    gates = tmp_path / "bad.yaml"
    gates.write_text("populations:\n  - name: Lymphocytes\n    gate: {type: polygon, channels: [FSC-A, SSC-A]\n")
    sheet = write_sheet(tmp_path, [SAMPLES / "ITP-01_baseline.fcs"])
    proc = cli("run", sheet, "--gates", gates, "--out", tmp_path / "out")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "bad.yaml" in line and "line" in line


def test_gate_file_with_unknown_parent_suggests_the_right_one(tmp_path):
    text = GATES.read_text().replace("parent: CD3+", "parent: CD3")
    gates = tmp_path / "typo.yaml"
    gates.write_text(text)
    proc = cli("gates", "check", gates)
    assert proc.returncode == 2
    assert "population 'CD4+'" in proc.stderr and "'CD3'" in proc.stderr and "CD3+" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_absent_marker_fails_the_sample_and_names_marker_and_population(tmp_path):
    text = GATES.read_text().replace("channels: [CD25, FoxP3]", "channels: [CD52, FoxP3]")
    gates = tmp_path / "cd52.yaml"
    gates.write_text(text)
    sheet = write_sheet(tmp_path, [SAMPLES / "ITP-01_baseline.fcs"])
    proc = cli("run", sheet, "--gates", gates, "--out", tmp_path / "out", "--workers", "1")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    if proc.returncode == 1:  # reported as a failed sample
        failures = pd.read_csv(tmp_path / "out" / "failures.csv")
        reason = failures.loc[0, "reason"]
    else:
        reason = one_error_line(proc)
    assert "CD52" in reason


def test_corrupt_file_fails_alone_and_batch_finishes(tmp_path):
    corrupt = tmp_path / "corrupt.fcs"
    corrupt.write_bytes((SAMPLES / "ITP-01_W1.fcs").read_bytes()[:5000])
    sheet = write_sheet(tmp_path, [SAMPLES / "ITP-01_baseline.fcs", corrupt, SAMPLES / "ITP-01_W2.fcs"])
    proc = cli("run", sheet, "--out", tmp_path / "out", "--workers", "1", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    treg = pd.read_csv(tmp_path / "out" / "treg.csv")
    assert sorted(treg["sample"]) == ["ITP-01_W2", "ITP-01_baseline"]
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["sample"]) == ["corrupt"]
    assert failures.loc[0, "stage"] == "read"
    assert "\n" not in failures.loc[0, "reason"]


def test_info_on_corrupt_and_missing_files(tmp_path):
    junk = tmp_path / "junk.fcs"
    junk.write_bytes(b"FCS3.1    garbage")
    proc = cli("info", junk)
    assert proc.returncode == 2
    assert "junk.fcs" in one_error_line(proc)
    proc = cli("info", tmp_path / "absent.fcs")
    assert proc.returncode == 2
    assert "absent.fcs" in one_error_line(proc)


def test_info_json_describes_channels_and_markers():
    proc = cli("info", SAMPLES / "ITP-01_baseline.fcs", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    text = json.dumps(info)
    for marker in ("CD3", "CD4", "CD8", "CD25", "CD127", "FoxP3"):
        assert marker in text
    assert "50000" in text and "FCS3.1" in text


def test_gate_writes_per_event_membership(tmp_path):
    out = tmp_path / "events.csv"
    proc = cli("gate", SAMPLES / "ITP-01_baseline.fcs", "--gates", GATES, "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out)
    assert len(table) == 50000
    for population in ("Lymphocytes", "Singlets", "CD3+", "CD4+", "Treg"):
        assert set(table[population].unique()) <= {0, 1}
    treg = pd.read_csv(REPO / "sample_fcs" / "truth.csv").set_index("file").loc["ITP-01_baseline.fcs"]
    assert abs(100 * table["Treg"].sum() / table["CD4+"].sum() - treg["treg_pct_true"]) < 0.5
    # Parents restrict children.
    assert (table["Treg"] <= table["CD4+"]).all() and (table["CD4+"] <= table["CD3+"]).all()


def test_export_population_reads_back(tmp_path):
    out = tmp_path / "treg.fcs"
    proc = cli("export", SAMPLES / "ITP-01_W4.fcs", "--gates", GATES, "--population", "Treg", "--out", out)
    assert proc.returncode == 0, proc.stderr
    exported = cytopipe.read_fcs(out)
    original = cytopipe.read_fcs(SAMPLES / "ITP-01_W4.fcs")
    assert exported.channels == original.channels and exported.markers == original.markers
    assert 1000 < exported.n_events < 2500
    assert exported.metadata.get("$SPILLOVER") == original.metadata.get("$SPILLOVER")


@pytest.mark.slow
def test_default_run_from_repo_root_matches_quick_start(tmp_path):
    proc = cli("run", "--out", tmp_path / "results", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results" / "report.html").is_file()


def test_run_and_report_figure_and_pdf_switches(tmp_path, results_folder, capsys):
    from cytopipe import cli

    parser = cli.build_parser()
    args = parser.parse_args(["run", "--no-plots", "--no-pdf"])
    assert args.plots == "none" and args.no_pdf and not args.no_report
    assert parser.parse_args(["run", "--plots", "flagged"]).plots == "flagged"
    assert parser.parse_args(["run"]).plots == "all"
    assert parser.parse_args(["report", "x", "--no-plots", "--no-pdf"]).no_plots
    out = results_folder(tmp_path)
    assert cli.main(["report", str(out), "--no-pdf", "--no-plots"]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {out / 'report.html'}"
    assert not (out / "plots" / "fold_change_overview.svg").exists()



def test_the_program_loads_numpy_blas_with_one_thread_unless_the_user_sets_a_count():
    # A BLAS thread pool started at import only spins (every computation runs on one thread): the program asks
    # for one thread before numpy loads, and an explicit count in the environment still wins.
    code = ("import sys\nfrom cytopipe.cli import main\nsys.argv = ['cytopipe', 'gates', 'list']\nmain()\n"
            "import threadpoolctl\n"
            "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "OMP_NUM_THREADS")}
    chosen = {**env, "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    counts = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=e,
                             timeout=120, check=True).stdout.splitlines()[-1] for e in (env, chosen)]
    assert counts == ["[1]", "[2]"]


def test_the_program_imports_pandas_without_pyarrow():
    # pandas imports pyarrow when installed (~45 ms per run); cytopipe uses no Arrow data, so the program hides it.
    code = ("import sys\nfrom cytopipe.cli import main\nsys.argv = ['cytopipe', 'gates', 'list']\nmain()\n"
            "import pandas\nprint(sys.modules.get('pyarrow', 'absent'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=True)
    assert done.stdout.splitlines()[-1] == "None"


@pytest.mark.parametrize(("workers", "collects"), [("2", "False"), ("1", "True")])
def test_a_pool_run_of_the_program_does_without_the_garbage_collector(tmp_path, workers, collects):
    # The client of a pool run only imports, waits and writes: no cyclic collections (~40 ms per run). A run that
    # gates in this process keeps them; the workers always collect, over their own objects only.
    code = ("import gc, sys\nfrom cytopipe.cli import main\n"
            f"sys.argv = ['cytopipe', 'run', {str(SAMPLES / 'study.csv')!r}, '--gates', "
            f"{str(REPO / 'gates' / 'treg_fixed.yaml')!r}, '--out', {str(tmp_path / 'out')!r}, '--workers', "
            f"{workers!r}, '--no-plots', '--no-report', '--quiet']\n"
            "code = main()\nprint(code, gc.isenabled())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", collects]
    assert (tmp_path / "out" / "treg.csv").is_file()


def test_a_pool_worker_collects_only_its_own_objects():
    code = ("import gc\ngc.disable()\nfrom cytopipe.batch.executors import _limit_threads\n"
            "before = gc.get_freeze_count()\n_limit_threads()\n"
            "print(gc.isenabled(), before == 0 and gc.get_freeze_count() > 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=True)
    assert done.stdout.split() == ["True", "True"]


_PANDAS_FREE = """\
import sys
from cytopipe.cli import main
sys.argv = ["cytopipe", *sys.argv[1:]]
code = main()
print(code, "pandas" in sys.modules)
"""


@pytest.mark.parametrize("options", [[], ["--no-report"], ["--no-report", "--workers", "1"],
                                     ["--plots", "flagged", "--no-pdf"], ["--no-plots"]],
                         ids=["default", "no-report", "in-process", "plots-flagged", "no-plots"])
def test_run_never_imports_pandas(tmp_path, options):
    """``cytopipe run`` on the bundled study (clinical data, data-driven gates, reference drift, report and PDF)
    writes every table and the report without importing pandas (~0.2 s of CPU); the Python API's DataFrames are
    built on demand."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", _PANDAS_FREE, "run", "--out", str(tmp_path / "out"), "--quiet",
                           *options], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.stdout.split() == ["0", "False"], (proc.stdout, proc.stderr)
    assert (tmp_path / "out" / "baseline.csv").is_file() and (tmp_path / "out" / "gate_drift.csv").is_file()

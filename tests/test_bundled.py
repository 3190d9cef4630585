"""The shipped strategies by name, ``cytopipe gates list/show``, ``cytopipe demo``, and running outside the repository.

The wheel itself (package data, an install outside the repository) is checked in ``tests/test_wheel.py`` and by
``.ci/run``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cytopipe import bundled, gatefile, simulate
from cytopipe.batch import run
from cytopipe.errors import GateError

REPO = Path(__file__).resolve().parents[1]
GATES = REPO / "gates"

OWN_GATES = """name: our lab's own
populations:
  - name: CD3+
    gate: {type: range, channels: [CD3], min: 2.0}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # This checkout's cytopipe, even from a folder outside it.
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "cytopipe", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_every_file_in_gates_is_a_shipped_strategy():
    # In a checkout the strategies are read from gates/ itself: nothing to copy, nothing to forget.
    files = sorted(p.name for p in GATES.iterdir() if p.suffix in bundled.SUFFIXES)
    shipped = bundled.shipped_strategies()
    assert sorted(p.name for p in shipped.values()) == files
    assert {"treg", "treg_cd127", "treg_fixed"} <= set(shipped)
    assert all(path.parent == GATES for path in shipped.values())


def test_every_shipped_strategy_loads_and_names_its_markers():
    summaries = {s.name: s for s in bundled.strategy_summaries()}
    assert set(summaries) == set(bundled.shipped_strategies())
    for summary in summaries.values():
        assert summary.description, f"{summary.path}: give the strategy a name: line, `gates list` shows it"
        assert summary.markers and not any(m.upper().startswith(("FSC", "SSC")) for m in summary.markers)
    assert summaries["treg_cd127"].markers == ("CD3", "CD4", "CD8", "CD25", "CD127")
    assert summaries["treg"].markers == ("CD3", "CD4", "CD8", "CD25", "FoxP3")


def test_a_name_loads_the_shipped_file_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("treg_cd127", "treg_cd127.yaml"):
        assert bundled.find_gate_file(name) == GATES / "treg_cd127.yaml"
        assert gatefile.load_strategy(name).source == (GATES / "treg_cd127.yaml").read_text(encoding="utf-8")
    assert gatefile.check_gates("treg") == []
    assert gatefile.read_gate_text("treg_fixed") == (GATES / "treg_fixed.yaml").read_text(encoding="utf-8")


def test_a_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "treg.yaml").write_text(OWN_GATES)
    (tmp_path / "treg_fixed").write_text(OWN_GATES)
    assert gatefile.load_strategy("treg.yaml").name == "our lab's own"
    assert gatefile.load_strategy("treg_fixed").name == "our lab's own"
    assert gatefile.load_strategy("treg").name != "our lab's own"  # no file 'treg' here: the shipped one
    (tmp_path / "treg_cd127").mkdir()  # e.g. an --out folder: not a gate file, the name still means the strategy
    assert bundled.find_gate_file("treg_cd127") == GATES / "treg_cd127.yaml"


def test_unknown_names_and_missing_paths_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ", ".join(bundled.shipped_strategies())
    with pytest.raises(GateError) as err:
        gatefile.load_strategy("tregg")
    assert str(err.value) == f"tregg: gate file not found (shipped strategies: {names}; see `cytopipe gates list`)"
    # A path with a folder is a file the user meant: not looked up among the names, no list of names.
    missing = os.path.join("gates", "treg.yaml")
    assert gatefile.check_gates(missing) == [f"{missing}: gate file not found"]
    assert bundled.find_gate_file("treg.txt") == "treg.txt"


def test_run_by_name_outside_the_repository_matches_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = [REPO / "sample_fcs" / f for f in ("ITP-01_baseline.fcs", "ITP-01_W4.fcs")]
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("file,subject,timepoint,day\n" + "".join(f"{f},S1,T{d},{d}\n" for d, f in enumerate(files)))
    kwargs = {"sheet": sheet, "workers": 1, "plots": False, "report": False, "stream": io.StringIO(), "quiet": True}
    by_name = run(gates="treg_fixed", out=tmp_path / "a", **kwargs)
    run(gates=GATES / "treg_fixed.yaml", out=tmp_path / "b", **kwargs)
    assert by_name.exit_code == 0 and len(by_name.treg) == 2
    assert (tmp_path / "a" / "treg.csv").read_bytes() == (tmp_path / "b" / "treg.csv").read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["gates"]["path"] == str(GATES / "treg_fixed.yaml")


def test_cli_gates_list_and_show(tmp_path):
    listing = cli("gates", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["name", "description", "markers"]
    assert [line.split()[0] for line in lines[1:]] == list(bundled.shipped_strategies())
    cd127 = next(line for line in lines if line.startswith("treg_cd127 "))
    assert "Treg (auto; CD3+ CD4+ CD25+ CD127low)" in cd127 and cd127.endswith("CD3, CD4, CD8, CD25, CD127")

    show = cli("gates", "show", "treg_cd127", cwd=tmp_path)
    assert show.returncode == 0 and show.stdout == (GATES / "treg_cd127.yaml").read_text(encoding="utf-8")
    missing = cli("gates", "show", "cd127", cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    names = ", ".join(bundled.shipped_strategies())
    assert missing.stderr == (f"cytopipe: error: cd127: gate file not found (shipped strategies: {names}; "
                              "see `cytopipe gates list`)\n")


def test_cli_run_without_a_sheet_outside_the_repository_says_what_to_pass(tmp_path):
    proc = cli("run", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "pass one (cytopipe run SHEET.csv" in proc.stderr and "cytopipe demo DIR" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_cli_demo_writes_the_bundled_study_byte_for_byte(tmp_path):
    proc = cli("demo", "d", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cytopipe run d/study.csv" in proc.stderr.replace(os.sep, "/")
    written = simulate.file_digests(tmp_path / "d")
    assert len(written) == 15 and written == simulate.file_digests(REPO / "sample_fcs")
    (tmp_path / "f").write_text("")
    assert "cytopipe: error: f: not a folder" in cli("demo", "f", cwd=tmp_path).stderr

"""Files without marker names (``--panel``), pre-gated exports (``--pregated``) and ``optional`` populations.

The files are constructed here with known per-event membership: four well-separated clouds (non-lymphocytes,
CD3- lymphocytes, CD4- T cells, CD4+ T cells, and CD25-bright cells among CD4+), written without ``$PnS``. Every
membership the gates give is compared with the construction, not with a previous run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.cli import main
from cytopipe.errors import ConfigError, MarkerError
from cytopipe.fcs import read_fcs, write_fcs
from cytopipe.panel import apply_panel, read_panel

GATES = """\
name: panel test
treg: Treg
parent: CD4+
compensation: none
populations:
  - name: Lymphocytes
    gate: {type: rectangle, channels: [FSC-A, SSC-A], min: [20000, 0], max: [120000, 60000]}
  - name: Singlets
    parent: Lymphocytes
    optional: true
    gate: {type: polygon, channels: [FSC-A, FSC-H], vertices: [[0, 0], [200000, 150000], [200000, 200000], [0, 30000]]}
  - name: CD3+
    parent: Singlets
    gate: {type: range, channels: [CD3], min: 2.0}
  - name: CD4+
    parent: CD3+
    gate: {type: range, channels: [CD4], min: 2.0}
  - name: Treg
    parent: CD4+
    gate: {type: range, channels: [CD25], min: 2.5}
"""
PANEL = "channel,marker,fluorochrome\nFL1,CD3,FITC\nFL2,CD4,PE\nFL3,CD25,APC\n"


def make_events(n: int, seed: int, *, scatter: tuple[str, ...] = ("FSC-A", "FSC-H", "SSC-A")
                ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Events with known membership: 20 % debris (low FSC), then lymphocytes split CD3-/CD4-/CD4+/Treg."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(5, size=n, p=[0.2, 0.2, 0.2, 0.34, 0.06])  # debris, CD3-, CD4- T, Tcon, Treg
    fsc = np.where(kind == 0, rng.normal(8000, 1500, n), rng.normal(60000, 6000, n))
    ssc = rng.normal(20000, 3000, n)
    pos, neg = rng.normal(10000, 1500, n), rng.normal(20, 15, n)
    cd3 = np.where(kind >= 2, pos, neg)
    cd4 = np.where(kind >= 3, rng.normal(10000, 1500, n), rng.normal(20, 15, n))
    cd25 = np.where(kind == 4, rng.normal(20000, 3000, n), rng.normal(20, 15, n))
    columns = {"FSC-A": fsc, "FSC-H": 0.85 * fsc, "SSC-A": ssc, "FL1": cd3, "FL2": cd4, "FL3": cd25}
    names = [*scatter, "FL1", "FL2", "FL3"]
    source = {"FSC-A": "FSC-A", "FSC-H": "FSC-H", "SSC-A": "SSC-A", "ForSc": "FSC-A", "OrthSc": "SSC-A"}
    events = np.column_stack([columns[source.get(c, c)] for c in names]).astype(np.float32)
    truth = {"Lymphocytes": kind >= 1, "CD3+": kind >= 2, "CD4+": kind >= 3, "Treg": kind == 4}
    return events, names, truth


def write(path: Path, n: int = 4000, seed: int = 0, *, rows: np.ndarray | None = None, **kwargs) -> dict:
    events, names, truth = make_events(n, seed, **kwargs)
    if rows is not None:
        events, truth = events[rows(truth)], {k: v[rows(truth)] for k, v in truth.items()}
    write_fcs(path, events, names)  # no $PnS: markers come from the panel
    return truth


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "gates.yaml").write_text(GATES)
    (tmp_path / "panel.csv").write_text(PANEL)
    return {"gates": tmp_path / "gates.yaml", "panel": tmp_path / "panel.csv", "dir": tmp_path}


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cytopipe: error:"), err
    return lines[0]


# ------------------------------------------------------------------------------------------------------------
# panel files


@pytest.mark.parametrize(("text", "expected"), [
    ("channel,name\nFL1,CD3\n", "needs the columns channel,marker; missing marker"),
    ("detector,marker\nFL1,CD3\n", "missing channel"),
    ("channel,marker\nFL1,CD3\nfl1,CD4\n", "row 3: channel 'fl1' is listed twice (first on row 2)"),
    ("channel,marker\nFL1,\n", "row 2: column 'marker' is empty"),
    ("", "panel file is empty"),
    ("channel,marker\n", "no channel rows"),
])
def test_malformed_panel_is_one_line_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_panel(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_panel_sets_markers_and_names_scatter(tmp_path):
    path = tmp_path / "old.fcs"
    write(path, scatter=("ForSc", "OrthSc"))
    (tmp_path / "p.csv").write_text("channel,marker\nForSc,FSC-A\nOrthSc,SSC-A\nFL2,CD4\n")
    sample = apply_panel(read_fcs(path), read_panel(tmp_path / "p.csv"))
    assert sample.markers == ("FSC-A", "SSC-A", "", "CD4", "")
    assert sample.find_channel("FSC-A") == 0 and sample.find_channel("CD4") == 3
    assert sample.events is read_fcs(path).events or sample.events.shape == (4000, 5)


def test_panel_channel_absent_from_file_names_both(tmp_path):
    path = tmp_path / "s.fcs"
    write(path)
    (tmp_path / "p.csv").write_text("channel,marker\nFL9,CD8\n")
    with pytest.raises(MarkerError) as err:
        apply_panel(read_fcs(path), read_panel(tmp_path / "p.csv"))
    text = str(err.value)
    assert str(tmp_path / "p.csv") in text and str(path) in text and "'FL9'" in text


def test_gate_with_panel_matches_construction(files, capsys):
    fcs = files["dir"] / "s.fcs"
    truth = write(fcs)
    out = files["dir"] / "events.csv"
    assert main(["gate", str(fcs), "--gates", str(files["gates"]), "--panel", str(files["panel"]),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out)
    for name in ("Lymphocytes", "CD3+", "CD4+", "Treg"):
        assert np.array_equal(table[name].to_numpy() == 1, truth[name]), name
    # Without the panel the file has no CD3: one line, exit 2.
    assert main(["gate", str(fcs), "--gates", str(files["gates"])]) == 2
    assert "CD3" in error_line(capsys)


def test_scatter_named_by_panel_and_optional_singlets(files, capsys):
    """An old instrument: ForSc/OrthSc and no FSC-H. The panel maps the scatter; Singlets is optional."""
    fcs = files["dir"] / "old.fcs"
    truth = write(fcs, scatter=("ForSc", "OrthSc"))
    panel = files["dir"] / "old_panel.csv"
    panel.write_text(PANEL + "ForSc,FSC-A\nOrthSc,SSC-A\n")
    out = files["dir"] / "events.csv"
    assert main(["gate", str(fcs), "--gates", str(files["gates"]), "--panel", str(panel), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert np.array_equal(table["Singlets"].to_numpy() == 1, truth["Lymphocytes"])
    assert np.array_equal(table["Treg"].to_numpy() == 1, truth["Treg"])


def test_info_and_gates_check_take_the_panel(files, capsys):
    fcs = files["dir"] / "s.fcs"
    write(fcs)
    assert main(["info", str(fcs), "--json", "--panel", str(files["panel"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["marker"] for c in info["channels"]] == ["", "", "", "CD3", "CD4", "CD25"]
    assert main(["gates", "check", str(files["gates"]), "--fcs", str(fcs), "--panel", str(files["panel"])]) == 0
    capsys.readouterr()
    assert main(["gates", "check", str(files["gates"]), "--fcs", str(fcs)]) == 2
    assert "unknown marker 'CD3'" in capsys.readouterr().err
    bad = files["dir"] / "dup.csv"
    bad.write_text("channel,marker\nFL1,CD3\nFL1,CD4\n")
    assert main(["info", str(fcs), "--panel", str(bad)]) == 2
    assert "listed twice" in error_line(capsys)


# ------------------------------------------------------------------------------------------------------------
# pre-gated files


def test_pregated_file_gates_descendants_only(files, capsys):
    fcs = files["dir"] / "cd4.fcs"
    # A FlowJo-style export of CD4+ T cells: scatter of these events would fail no gate, but FL1 (CD3) is
    # deliberately wiped so that applying the CD3 gate above CD4+ would drop every event.
    truth = write(fcs, rows=lambda t: t["CD4+"])
    sample = read_fcs(fcs)
    events = sample.events.copy()
    events[:, 3] = 0.0
    write_fcs(fcs, events, sample.channels)
    out = files["dir"] / "events.csv"
    assert main(["gate", str(fcs), "--gates", str(files["gates"]), "--panel", str(files["panel"]),
                 "--pregated", "CD4+", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["CD4+", "Treg"]
    assert table["CD4+"].all()
    assert np.array_equal(table["Treg"].to_numpy() == 1, truth["Treg"])
    assert main(["gate", str(fcs), "--gates", str(files["gates"]), "--panel", str(files["panel"]),
                 "--out", str(out)]) == 0
    assert not pd.read_csv(out)["Treg"].any()  # the CD3 gate drops everything when not pre-gated


def test_unknown_pregated_population_suggests(files, capsys):
    fcs = files["dir"] / "s.fcs"
    write(fcs)
    for command in (["gate", str(fcs)], ["export", str(fcs), "--population", "Treg", "--out",
                                         str(files["dir"] / "o.fcs")]):
        assert main([*command, "--gates", str(files["gates"]), "--panel", str(files["panel"]),
                     "--pregated", "CD4"]) == 2
        line = error_line(capsys)
        assert "'CD4'" in line and "did you mean 'CD4+'" in line and str(files["gates"]) in line


def test_export_pregated_writes_panel_markers(files, capsys):
    fcs = files["dir"] / "cd3.fcs"
    truth = write(fcs, rows=lambda t: t["CD3+"])
    out = files["dir"] / "treg.fcs"
    assert main(["export", str(fcs), "--gates", str(files["gates"]), "--panel", str(files["panel"]),
                 "--pregated", "CD3+", "--population", "Treg", "--out", str(out)]) == 0
    exported = read_fcs(out)
    assert exported.n_events == int(truth["Treg"].sum())
    assert exported.markers[3:] == ("CD3", "CD4", "CD25")


# ------------------------------------------------------------------------------------------------------------
# the batch: sheet columns, failures alone, manifest


def test_run_with_panel_and_pregated_columns(files, capsys):
    d = files["dir"]
    truths = {
        "full": write(d / "full.fcs", seed=1),
        "cd4": write(d / "cd4.fcs", seed=2, rows=lambda t: t["CD4+"]),
        "old": write(d / "old.fcs", seed=3, scatter=("ForSc", "OrthSc")),
    }
    (d / "old_panel.csv").write_text(PANEL + "ForSc,FSC-A\nOrthSc,SSC-A\n")
    (d / "dup.csv").write_text("channel,marker\nFL1,CD3\nFL1,CD4\n")
    write(d / "typo.fcs", seed=4)
    write(d / "absent.fcs", seed=5)
    (d / "absent_panel.csv").write_text(PANEL + "FL7,CD8\n")
    (d / "study.csv").write_text(
        "sample,file,subject,timepoint,day,panel,pregated\n"
        "full,full.fcs,S1,D0,0,,\n"
        "cd4,cd4.fcs,S1,W1,7,,CD4+\n"
        "old,old.fcs,S2,D0,0,old_panel.csv,\n"
        "typo,typo.fcs,S3,D0,0,dup.csv,\n"
        "absent,absent.fcs,S4,D0,0,absent_panel.csv,\n"
        "unknown,typo.fcs,S5,D0,0,,CD44\n")
    out = d / "results"
    code = main(["run", str(d / "study.csv"), "--gates", str(files["gates"]), "--panel", str(files["panel"]),
                 "--out", str(out), "--workers", "1", "--quiet"])
    assert code == 1
    treg = pd.read_csv(out / "treg.csv").set_index("sample")
    for name, truth in truths.items():
        assert treg.loc[name, "treg_events"] == truth["Treg"].sum(), name
        assert treg.loc[name, "cd4_events"] == truth["CD4+"].sum(), name
    assert "optional population 'Singlets' not gated (no FSC-H)" in treg.loc["old", "acquisition_qc"]
    assert "Singlets" not in str(treg.loc["full", "acquisition_qc"])
    assert "optional population &#39;Singlets&#39; not gated (no FSC-H)" in (out / "report.html").read_text()
    pops = pd.read_csv(out / "populations.csv")
    cd4_rows = pops[pops["sample"] == "cd4"]
    assert list(cd4_rows["population"]) == ["CD4+", "Treg"]
    assert cd4_rows.iloc[0]["count"] == truths["cd4"]["CD4+"].sum() and cd4_rows.iloc[0]["pct_total"] == 100.0
    failures = pd.read_csv(out / "failures.csv").set_index("sample")
    assert set(failures.index) == {"typo", "absent", "unknown"}
    assert "listed twice" in failures.loc["typo", "reason"] and failures.loc["typo", "stage"] == "read"
    assert "FL7" in failures.loc["absent", "reason"] and "absent.fcs" in failures.loc["absent", "reason"]
    assert "'CD44'" in failures.loc["unknown", "reason"] and "did you mean" in failures.loc["unknown", "reason"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["panel"]["channels"] == {"FL1": "CD3", "FL2": "CD4", "FL3": "CD25"}
    inputs = {i["sample"]: i for i in manifest["inputs"]}
    assert inputs["old"]["panel"].endswith("old_panel.csv") and inputs["cd4"]["pregated"] == "CD4+"


def test_run_bad_options_exit_2(files, capsys):
    d = files["dir"]
    write(d / "s.fcs")
    (d / "study.csv").write_text("file,subject,timepoint,day\ns.fcs,S1,D0,0\n")
    (d / "nocols.csv").write_text("chan,mark\nFL1,CD3\n")
    args = ["run", str(d / "study.csv"), "--gates", str(files["gates"]), "--out", str(d / "r"), "--workers", "1"]
    assert main([*args, "--panel", str(d / "nocols.csv")]) == 2
    assert "channel,marker" in error_line(capsys)
    assert main([*args, "--panel", str(files["panel"]), "--pregated", "Tregs"]) == 2
    assert "did you mean 'Treg'" in error_line(capsys)


def test_pregated_with_data_driven_gates(files, capsys):
    """The pre-gated top population has no gate of its own; data-driven children are fitted on all its events."""
    fcs = files["dir"] / "cd4.fcs"
    truth = write(fcs, rows=lambda t: t["CD4+"])
    gates = files["dir"] / "auto.yaml"
    gates.write_text(GATES.replace("gate: {type: range, channels: [CD25], min: 2.5}",
                                   "gate: {type: auto_threshold, channels: [CD25], "
                                   "thresholds: [{side: above, method: valley, bounds: [1.0, 4.0]}]}"))
    out = files["dir"] / "events.csv"
    assert main(["gate", str(fcs), "--gates", str(gates), "--panel", str(files["panel"]), "--pregated", "CD4+",
                 "--out", str(out)]) == 0
    assert np.array_equal(pd.read_csv(out)["Treg"].to_numpy() == 1, truth["Treg"])


def test_gate_with_control_tube_and_panel(files, capsys):
    """--control ROLE=FILE: a control-percentile cut fitted on a control tube read with the same panel."""
    fcs, iso = files["dir"] / "cd4.fcs", files["dir"] / "iso.fcs"
    truth = write(fcs, seed=6, rows=lambda t: t["CD4+"])
    write(iso, seed=7, rows=lambda t: t["CD4+"] & ~t["Treg"])  # the isotype: no CD25-bright events
    gates = files["dir"] / "control.yaml"
    gates.write_text(GATES.replace("gate: {type: range, channels: [CD25], min: 2.5}",
                                   "gate: {type: auto_threshold, channels: [CD25], thresholds: [{side: above, "
                                   "method: control, control: 'isotype:CD25', percentile: 99.5}]}"))
    out = files["dir"] / "events.csv"
    args = ["gate", str(fcs), "--gates", str(gates), "--panel", str(files["panel"]), "--pregated", "CD4+",
            "--out", str(out)]
    assert main([*args, "--control", f"Isotype:CD25={iso}"]) == 0
    treg = pd.read_csv(out)["Treg"].to_numpy() == 1
    assert np.array_equal(treg & truth["Treg"], truth["Treg"])  # every bright event, few isotype-level ones
    # 0.5 % of the negatives expected above the isotype's 99.5th percentile; 2 % bounds its sampling noise
    # (the percentile of ~1,500 control events rests on ~8 tail events).
    assert (treg & ~truth["Treg"]).mean() < 0.02
    assert main(args) == 2  # the control the gate needs is missing: one line
    assert "needs the control 'isotype:cd25'" in error_line(capsys)
    assert main([*args, "--control", f"CD25={iso}"]) == 2
    assert "ROLE=FILE" in error_line(capsys)


def test_cut_without_valley_is_said_in_acquisition_qc(files):
    """A data-driven cut that finds one density mode only (no CD25-bright events here) is flagged, once."""
    d = files["dir"]
    write(d / "none.fcs", seed=8, rows=lambda t: t["CD4+"] & ~t["Treg"])
    sample = read_fcs(d / "none.fcs")
    events = sample.events.copy()
    events[:, 5] = np.random.default_rng(8).lognormal(np.log(300.0), 0.5, sample.n_events)  # one CD25 mode
    write_fcs(d / "none.fcs", events, sample.channels)
    write(d / "some.fcs", seed=9, rows=lambda t: t["CD4+"])
    gates = d / "auto.yaml"
    gates.write_text(GATES.replace("gate: {type: range, channels: [CD25], min: 2.5}",
                                   "gate: {type: auto_threshold, channels: [CD25], "
                                   "thresholds: [{side: above, method: valley, bounds: [1.0, 4.0]}]}"))
    (d / "study.csv").write_text("file,subject,timepoint,day\nnone.fcs,S1,D0,0\nsome.fcs,S2,D0,0\n")
    assert main(["run", str(d / "study.csv"), "--gates", str(gates), "--panel", str(files["panel"]), "--pregated",
                 "CD4+", "--out", str(d / "r"), "--workers", "1", "--quiet", "--no-pdf"]) == 0
    qc = pd.read_csv(d / "r" / "treg.csv", keep_default_na=False).set_index("sample")["acquisition_qc"]
    assert qc["none"].count("population 'Treg': no CD25 valley, cut by negative+k*sd") == 1
    assert "valley" not in qc["some"]

"""The per-sample pipeline against files whose every event's population is known by construction."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.errors import GateError
from cytopipe.pipeline import (
    SampleResult,
    SampleTask,
    event_membership,
    export_population,
    plot_path,
    process_sample,
    resolve_treg,
)

CHANNELS = ("FSC-A", "FSC-H", "SSC-A", "FITC-A", "PE-A", "APC-A", "PE-Cy7-A", "Time")
MARKERS = ("", "", "", "CD3 FITC", "CD4", "FoxP3", "CD25", "")
FLUOR = ("FITC-A", "PE-A", "APC-A", "PE-Cy7-A")
# Spillover (rows = spilling detector): FITC into PE is strong enough that, uncompensated, bright CD3+ CD4-
# cells land above the CD4 cut (2.0 logicle decades ~ 900).
SPILL = np.array([[1.0, 0.20, 0.0, 0.0],
                  [0.01, 1.0, 0.0, 0.05],
                  [0.0, 0.0, 1.0, 0.02],
                  [0.0, 0.0, 0.03, 1.0]])
# label -> (fraction, lymph scatter?, singlet?, CD3, CD4, FoxP3, CD25) with True = bright
LABELS = {
    "debris":  (0.10, False, True, False, False, False, False),
    "doublet": (0.05, True, False, True, True, False, False),
    "cd3neg":  (0.25, True, True, False, False, False, False),
    "cd8":     (0.20, True, True, True, False, False, False),
    "tcon":    (0.36, True, True, True, True, False, False),
    "cd25int": (0.01, True, True, True, True, False, False),
    "treg":    (0.03, True, True, True, True, True, True),
}
GATES_YAML = """\
name: test Treg strategy
transforms:
  logicle: {type: logicle, T: 262144, W: 0.5, M: 4.5, A: 0}
populations:
  - name: Lymphocytes
    gate: {type: rectangle, channels: [FSC-A, SSC-A], min: [30000, 5000], max: [120000, 60000]}
  - name: Singlets
    parent: Lymphocytes
    gate: {type: polygon, channels: [FSC-A, FSC-H],
           vertices: [[20000, 13000], [130000, 85000], [130000, 160000], [20000, 30000]]}
  - name: CD3+
    parent: Singlets
    gate: {type: range, channels: [CD3], min: 2.0}
  - name: CD4+
    parent: CD3+
    gate: {type: range, channels: [CD4], min: 2.0}
  - name: treg
    parent: CD4+
    gate: {type: rectangle, channels: [CD25, FoxP3], min: [2.0, 2.0]}
"""


def spillover_keyword(matrix: np.ndarray = SPILL, channels: tuple[str, ...] = FLUOR) -> str:
    values = ",".join(repr(float(v)) for v in matrix.ravel())
    return f"{len(channels)},{','.join(channels)},{values}"


def make_events(n: int, seed: int, treg_fraction: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Uncompensated events and their labels; bright = 3,000-20,000, dim = -100-300 (compensated units)."""
    rng = np.random.default_rng(seed)
    names = list(LABELS)
    frac = np.array([LABELS[k][0] for k in names])
    frac[names.index("treg")] = treg_fraction
    frac[names.index("tcon")] += 0.03 - treg_fraction
    labels = rng.choice(len(names), size=n, p=frac / frac.sum())
    spec = np.array([LABELS[k][1:] for k in names], dtype=bool)[labels]
    ev = np.empty((n, len(CHANNELS)), dtype=np.float64)
    lymph, singlet = spec[:, 0], spec[:, 1]
    ev[:, 0] = np.where(lymph, rng.uniform(45_000, 90_000, n), rng.uniform(2_000, 20_000, n))
    ev[:, 1] = ev[:, 0] * np.where(singlet, rng.uniform(0.75, 0.85, n), rng.uniform(0.35, 0.45, n))
    ev[:, 2] = np.where(lymph, rng.uniform(10_000, 40_000, n), rng.uniform(500, 3_000, n))
    for j, bright in enumerate(spec[:, 2:].T):
        # CD3 (FITC) bright enough that 20% of it in PE always clears the CD4 cut when left uncompensated.
        # Triangular, not uniform: bounded (labels stay exact) yet single-peaked like real stains.
        low = 8_000 if j == 0 else 3_000
        ev[:, 3 + j] = np.where(bright, rng.triangular(low, (low + 20_000) / 2, 20_000, n),
                                rng.triangular(-100, 50, 300, n))
    ev[:, 7] = np.arange(n) * 0.01
    idx = [CHANNELS.index(c) for c in FLUOR]
    ev[:, idx] = ev[:, idx] @ SPILL
    return ev.astype(np.float32), np.array(names)[labels]


def expected_counts(labels: np.ndarray, compensated: bool = True) -> dict[str, int]:
    """Population counts implied by the labels (with spillover, CD8 T cells look CD4+ uncompensated)."""
    lab = pd.Series(labels).value_counts().to_dict()
    get = lambda *keys: sum(lab.get(k, 0) for k in keys)  # noqa: E731
    cd4 = get("tcon", "cd25int", "treg") + (0 if compensated else get("cd8"))
    return {"Lymphocytes": get("doublet", "cd3neg", "cd8", "tcon", "cd25int", "treg"),
            "Singlets": get("cd3neg", "cd8", "tcon", "cd25int", "treg"),
            "CD3+": get("cd8", "tcon", "cd25int", "treg"), "CD4+": cd4, "treg": get("treg")}


def write_sample(path: Path, n: int = 20_000, seed: int = 0, treg_fraction: float = 0.03,
                 spill_key: str = "$SPILLOVER") -> np.ndarray:
    """Write one constructed FCS file; returns the per-event labels."""
    from cytopipe.fcs import write_fcs

    events, labels = make_events(n, seed, treg_fraction)
    # One instrument: the same $PnR in every file (write_fcs maps per-parameter keywords by $PnN).
    ranges = {key: value for i, name in enumerate(CHANNELS)
              for key, value in ((f"$P{i + 1}N", name), (f"$P{i + 1}R", "262144"))}
    write_fcs(path, events, CHANNELS, MARKERS, {spill_key: spillover_keyword(), "$CYT": "test cytometer",
                                               "PATIENT ID": "P-1", **ranges})
    return labels


@pytest.fixture(scope="module")
def gates_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gates") / "treg.yaml"
    path.write_text(GATES_YAML)
    return path


@pytest.fixture(scope="module")
def strategy(gates_file: Path):
    from cytopipe.gatefile import load_strategy

    return load_strategy(gates_file)


@pytest.fixture(scope="module")
def fcs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("fcs") / "S1.fcs"
    return path, write_sample(path, n=20_000, seed=1)


def task_for(path: Path, strategy, plots_dir: Path | None = None, spillover: Path | None = None) -> SampleTask:
    treg, parent = resolve_treg(strategy)
    return SampleTask(sample=path.stem, file=str(path), strategy=strategy, subject="P-1", timepoint="W0", day=0.0,
                      treg=treg, parent=parent, spillover=str(spillover) if spillover else None,
                      plots_dir=str(plots_dir) if plots_dir else None)


def test_counts_match_construction(fcs, strategy, tmp_path):
    path, labels = fcs
    result = process_sample(task_for(path, strategy, plots_dir=tmp_path / "plots"))
    assert result.ok, result.failure
    want = expected_counts(labels)
    got = {row["population"]: row["count"] for row in result.populations}
    assert got == want
    rows = {row["population"]: row for row in result.populations}
    assert rows["CD4+"]["parent"] == "CD3+"
    assert rows["CD4+"]["pct_parent"] == pytest.approx(100 * want["CD4+"] / want["CD3+"])
    assert rows["Lymphocytes"]["parent"] == ""
    assert rows["treg"]["pct_total"] == pytest.approx(100 * want["treg"] / len(labels))
    treg = result.treg
    assert (treg["cd4_events"], treg["treg_events"]) == (want["CD4+"], want["treg"])
    assert treg["treg_pct"] == pytest.approx(100 * want["treg"] / want["CD4+"])
    assert treg["ci_low"] < treg["treg_pct"] < treg["ci_high"]
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.n_events == len(labels)
    assert result.spillover_source
    assert {"read", "compensate", "gate", "count", "plot", "total"} <= set(result.timings)
    assert result.events_per_s > 0
    svg = Path(result.plot)
    assert svg == plot_path(tmp_path / "plots", "S1") and svg.read_bytes().startswith(b"<?xml")


def test_wilson_interval_of_the_treg_row():
    from cytopipe.gates import GatingResult
    from cytopipe.pipeline import treg_row

    counted = GatingResult(masks={}, counts={"CD4+": 5000, "treg": 250}, n_events=10_000)
    row = treg_row(counted, "treg", "CD4+", {"sample": "x"})
    assert row["treg_pct"] == 5.0
    assert (round(row["ci_low"], 2), round(row["ci_high"], 2)) == (4.43, 5.64)


def test_spillover_from_the_sheet_replaces_the_files_own(fcs, strategy, tmp_path):
    path, labels = fcs
    identity = tmp_path / "identity.csv"
    pd.DataFrame(np.eye(4), columns=list(FLUOR)).to_csv(identity, index=False)
    result = process_sample(task_for(path, strategy, spillover=identity))
    assert result.ok, result.failure
    got = {row["population"]: row["count"] for row in result.populations}
    assert got == expected_counts(labels, compensated=False)


def test_spill_keyword_is_used_when_spillover_is_absent(tmp_path, strategy):
    path = tmp_path / "spill.fcs"
    labels = write_sample(path, n=5_000, seed=2, spill_key="SPILL")
    result = process_sample(task_for(path, strategy))
    assert result.ok, result.failure
    assert {r["population"]: r["count"] for r in result.populations} == expected_counts(labels)


def test_result_pickles_and_round_trips(fcs, strategy):
    path, _ = fcs
    task = task_for(path, strategy)
    assert pickle.loads(pickle.dumps(task)).sample == task.sample
    result = process_sample(task)
    again = SampleResult.from_dict(pickle.loads(pickle.dumps(result.to_dict())))
    assert again == result


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_unreadable_file_fails_at_read(tmp_path, strategy, fcs, damage):
    path = tmp_path / "bad.fcs"
    if damage == "truncated":
        path.write_bytes(fcs[0].read_bytes()[:4000])
    elif damage == "garbage":
        path.write_bytes(b"not an FCS file at all" * 50)
    result = process_sample(task_for(path, strategy))
    assert not result.ok and result.treg is None and result.populations == []
    failure = result.failure
    assert failure["stage"] == "read" and failure["sample"] == "bad" and failure["file"] == str(path)
    assert failure["reason"] and "\n" not in failure["reason"]
    if damage == "missing":  # the reason of the hash (the first thing a worker did with the file before)
        assert result.sha256 == "" and failure["reason"] == f"{path}: No such file or directory"
    else:  # a file that exists keeps its hash in the results, however damaged
        assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert failure["reason"].startswith(f"{path}: ")


def test_missing_marker_fails_at_gate(tmp_path, strategy):
    from cytopipe.fcs import write_fcs

    events, _ = make_events(2_000, 3)
    path = tmp_path / "nocd25.fcs"
    markers = tuple("CD52" if m == "CD25" else m for m in MARKERS)
    write_fcs(path, events, CHANNELS, markers, {"$SPILLOVER": spillover_keyword()})
    result = process_sample(task_for(path, strategy))
    assert result.failure["stage"] == "gate"
    assert "CD25" in result.failure["reason"] and "\n" not in result.failure["reason"]


def test_gates_that_find_no_events_fail_the_sample(tmp_path, strategy):
    from cytopipe.fcs import write_fcs

    events, _ = make_events(3_000, 4)
    events[:, CHANNELS.index("FITC-A")] = 10.0  # no CD3+ cells, so no CD4+ denominator
    path = tmp_path / "empty.fcs"
    write_fcs(path, events, CHANNELS, MARKERS, {"$SPILLOVER": spillover_keyword()})
    result = process_sample(task_for(path, strategy))
    assert result.failure["stage"] == "gate"
    assert "CD4+" in result.failure["reason"]


def test_bad_spillover_file_fails_at_compensate(fcs, strategy, tmp_path):
    bad = tmp_path / "bad_matrix.csv"
    bad.write_text("BV421-A,BV510-A\n1,0\n0,1\n")
    result = process_sample(task_for(fcs[0], strategy, spillover=bad))
    assert result.failure["stage"] == "compensate"


def test_resolve_treg(strategy):
    assert resolve_treg(strategy) == ("treg", "CD4+")
    assert resolve_treg(strategy, treg="CD4+") == ("CD4+", "CD3+")
    assert resolve_treg(strategy, treg="TREG", parent="cd3+") == ("treg", "CD3+")
    with pytest.raises(GateError, match="'NK'"):
        resolve_treg(strategy, treg="NK")
    with pytest.raises(GateError, match="--parent"):
        resolve_treg(strategy, parent="Monocytes")


def test_event_membership_is_per_event_in_file_order(fcs, gates_file):
    path, labels = fcs
    table = event_membership(path, gates_file)
    assert list(table.columns) == ["Lymphocytes", "Singlets", "CD3+", "CD4+", "treg"]
    assert len(table) == len(labels)
    assert set(np.unique(table.to_numpy())) <= {0, 1}
    assert (table["treg"].to_numpy() == (labels == "treg")).all()
    assert (table["CD4+"].to_numpy() == np.isin(labels, ["tcon", "cd25int", "treg"])).all()
    assert table.sum().to_dict() == expected_counts(labels)


def test_export_population_round_trips(fcs, gates_file, tmp_path):
    from cytopipe.fcs import read_fcs

    path, labels = fcs
    out = tmp_path / "treg.fcs"
    n = export_population(path, gates_file, "TREG", out)
    assert n == int((labels == "treg").sum())
    source, exported = read_fcs(path), read_fcs(out)
    assert exported.n_events == n and exported.version == "FCS3.1"
    assert exported.channels == source.channels and exported.markers == source.markers
    np.testing.assert_array_equal(exported.events, source.events[labels == "treg"])
    for key in ("$SPILLOVER", "$CYT", "PATIENT ID"):
        assert exported.metadata[key] == source.metadata[key]
    assert exported.metadata["CYTOPIPE_POPULATION"] == "treg"
    # Gated again with the same strategy and the preserved spillover, every event is still a Treg.
    assert event_membership(out, gates_file)["treg"].all()


def test_export_unknown_population_is_a_gate_error(fcs, gates_file, tmp_path):
    with pytest.raises(GateError, match="Monocytes"):
        export_population(fcs[0], gates_file, "Monocytes", tmp_path / "x.fcs")

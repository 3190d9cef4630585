"""Values as FCS 3.1 and Gating-ML 2.0 define them, through the command line as a user runs it.

``cytopipe gate`` decodes ``$PnE`` log channels (and, for a Gating-ML gate file, divides linear channels by
``$PnG``) and gates on the exact path; the ISAC Gating-ML 2.0 compliance suite (``../shared/data/gatingml2``) must
then agree on every event of all 190 cases. Files without log channels or gains read exactly as stored.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from cytopipe.fcs import read_fcs, top_of_scale, write_fcs
from cytopipe.qc import check_acquisition

ISAC = SHARED_DATA / "gatingml2" / "isac_gatingMLData"
REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cytopipe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


@pytest.mark.slow
def test_cli_gate_reproduces_every_isac_gatingml2_result(shared_data: Path, tmp_path: Path) -> None:
    with (ISAC / "gate_result_index.csv").open(newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert len(cases) == 190
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    passed, wrong = 0, {}
    for case in cases:
        key = (case["fcs_file"], case["gating_ml_file"])
        if key not in tables:
            out = tmp_path / f"gate{len(tables)}.csv"
            done = _cli("gate", str(ISAC / key[0]), "--gates", str(ISAC / key[1]), "--out", str(out), cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            tables[key] = pd.read_csv(out)
        table, gate_id = tables[key], case["gate_id"]
        if gate_id in table:
            got = table[gate_id].to_numpy().astype(bool)
        else:  # flowUtils' implicit complement of a gate referenced with use-as-complement
            got = ~table[gate_id.removeprefix("Not_")].to_numpy().astype(bool)
        expected = np.loadtxt(ISAC / case["result_file"], dtype=np.int8).astype(bool)
        differing = int(np.count_nonzero(got != expected))
        if differing:
            wrong[f"set{case['set']}:{gate_id}"] = differing
        else:
            passed += 1
    assert not wrong, f"{passed}/190 reproduced; events differing: {wrong}"
    assert passed == 190


def test_log_channels_are_decoded_by_default(shared_data: Path) -> None:
    path = ISAC / "FCSFiles" / "data1.fcs"  # FACSCalibur: FL1-H..FL4-H $PnE=4,0, $PnR=1024; $P1G=3.67
    raw, values, gain = read_fcs(path, scale="raw"), read_fcs(path), read_fcs(path, scale="gain", exact=True)
    assert values.scale == "log" and values.events.dtype == np.float32
    fl1 = values.find_channel("FL1-H")
    expected = 10.0 ** (4 * raw.events[:, fl1].astype(np.float64) / 1024)
    np.testing.assert_allclose(values.events[:, fl1], expected, rtol=2 ** -23)  # float32: one rounding
    np.testing.assert_allclose(gain.events[:, fl1], expected, rtol=1e-15)  # exact: scalar C pow, see fcs/scale.py
    fsc = values.find_channel("FSC-H")
    np.testing.assert_array_equal(values.events[:, fsc], raw.events[:, fsc])  # log mode leaves gains alone
    np.testing.assert_array_equal(gain.events[:, fsc], raw.events[:, fsc].astype(np.float64) / 3.67)
    assert top_of_scale(values.metadata, fl1, "log") == 10_000.0
    assert top_of_scale(values.metadata, fsc, "gain") == pytest.approx(1024 / 3.67)
    # QC judges the decoded values against the decoded range: nothing looks corrupt.
    assert check_acquisition(values).corrupt_events == check_acquisition(raw).corrupt_events == 0
    assert check_acquisition(values).margin_pct["FL1-H"] == check_acquisition(raw).margin_pct["FL1-H"]


def test_files_without_log_channels_or_gains_read_as_stored(tmp_path: Path) -> None:
    events = np.random.default_rng(1).normal(1000, 300, size=(500, 3)).astype(np.float32)
    path = tmp_path / "linear.fcs"
    write_fcs(path, events, ["FSC-A", "SSC-A", "FITC-A"])
    for scale in ("log", "gain", "raw"):
        sample = read_fcs(path, scale=scale)
        assert sample.events.dtype == np.float32
        np.testing.assert_array_equal(sample.events, events)


def test_bundled_study_values_are_unchanged() -> None:
    for path in sorted((REPO / "sample_fcs").glob("*.fcs"))[:3]:
        np.testing.assert_array_equal(read_fcs(path).events, read_fcs(path, scale="raw").events)


def test_export_writes_stored_values_and_gate_file_scale_is_recorded(shared_data: Path, tmp_path: Path) -> None:
    path = ISAC / "FCSFiles" / "data1.fcs"
    gates = tmp_path / "gates.yaml"
    gates.write_text("populations:\n  - name: bright\n"
                     "    gate: {type: range, channels: [{channel: FL1-H, transform: linear}], min: 100}\n")
    out = tmp_path / "bright.fcs"
    done = _cli("export", str(path), "--gates", str(gates), "--population", "bright", "--out", str(out),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    raw = read_fcs(path, scale="raw")
    fl1 = raw.find_channel("FL1-H")
    # 100 = 10**(4 * x / 1024) at x = 512: the YAML range is in decoded units, the export holds channel values.
    expected = raw.events[10.0 ** (4 * raw.events[:, fl1].astype(np.float64) / 1024) >= 100]
    np.testing.assert_array_equal(read_fcs(out, scale="raw").events, expected)
    assert read_fcs(out).events[:, fl1].min() >= 100

"""Acquisition QC: corrupt data are caught, real instrument files are not, margins and missing spillover flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.errors import FCSError
from cytopipe.fcs import Sample, read_fcs, write_fcs
from cytopipe.qc import check_acquisition, require_plausible

REPO = Path(__file__).resolve().parents[1]
FCS_SUFFIXES = (".fcs", ".lmd", ".001", ".002", ".003", ".004", ".005", ".b08")


def test_bundled_study_is_clean():
    for path in sorted((REPO / "sample_fcs").glob("*.fcs")):
        qc = check_acquisition(read_fcs(path))
        assert qc.corrupt_events == 0 and qc.spillover and qc.flags() == [], path.name
        require_plausible(read_fcs(path), qc)


def test_text_mangled_treg_file_is_rejected_with_a_reason(shared_data):
    # SOURCES.md: the DATA segment went through a UTF-8 conversion (846,882 EF BF BD sequences); values are garbage.
    path = shared_data / "treg_real" / "labkey_version3_1_spillover" / "version3_1_spillover.fcs"
    sample = read_fcs(path)
    qc = check_acquisition(sample)
    assert qc.corrupt
    with pytest.raises(FCSError) as err:
        require_plausible(sample, qc)
    message = str(err.value)
    assert message.startswith(f"{path}: event data look corrupt: ")
    assert "of 43,750 events" in message and "\n" not in message


def test_no_real_instrument_file_is_called_corrupt(shared_data):
    checked = 0
    for path in sorted(p for p in (shared_data / "instruments").rglob("*") if p.suffix.lower() in FCS_SUFFIXES):
        try:
            sample = read_fcs(path)
        except FCSError:
            continue  # the two genuinely broken files; tested in test_fcs_instruments.py
        assert check_acquisition(sample).corrupt_events == 0, path.name
        checked += 1
    assert checked >= 38


def test_margin_events_and_missing_spillover_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    events = rng.uniform(0, 1000, size=(1000, 4)).astype(np.float32)
    events[:80, 1] = 262143  # 8% of FITC-A at the top of scale
    events[:30, 3] = 262143  # 3% of PE-A: below the 5% flag
    path = tmp_path / "sat.fcs"
    write_fcs(path, events, ["FSC-A", "FITC-A", "SSC-A", "PE-A"], ["", "CD4", "", "CD25"],
              {f"$P{i}R": "262144" for i in range(1, 5)})
    qc = check_acquisition(read_fcs(path))
    assert qc.margin_pct["FITC-A"] == pytest.approx(8.0)
    assert qc.margin_pct["PE-A"] == pytest.approx(3.0)
    assert qc.flags() == ["FITC-A: 8.0% of events at the top of scale", "no spillover matrix in the file"]
    assert not qc.corrupt


def test_a_few_impossible_events_flag_many_fail():
    events = np.full((10_000, 2), 100.0, dtype=np.float32)
    events[:5, 0] = np.nan
    metadata = {"$P1R": "1024", "$P2R": "1024"}
    qc = check_acquisition(Sample("mem.fcs", events, ("FSC-A", "SSC-A"), ("", ""), metadata, "FCS3.1"))
    assert qc.corrupt_events == 5 and not qc.corrupt
    assert "5 events with impossible values" in qc.flags()
    events[:50, 1] = 1e12  # 0.5% of events a million times beyond the range
    qc = check_acquisition(Sample("mem.fcs", events, ("FSC-A", "SSC-A"), ("", ""), metadata, "FCS3.1"))
    assert qc.corrupt and qc.corrupt_events == 50


def test_pipeline_fails_corrupt_file_at_read_and_flags_saturation(shared_data, tmp_path):
    from cytopipe.gatefile import load_strategy
    from cytopipe.pipeline import SampleTask, process_sample
    from cytopipe.stats import baseline_table

    strategy = load_strategy(REPO / "gates" / "treg_fixed.yaml")
    damaged = shared_data / "treg_real" / "labkey_version3_1_spillover" / "version3_1_spillover.fcs"
    result = process_sample(SampleTask(sample="damaged", file=str(damaged), strategy=strategy, treg="Treg",
                                       parent="CD4+"))
    assert result.failure["stage"] == "read"
    assert "event data look corrupt" in result.failure["reason"]

    source = read_fcs(REPO / "sample_fcs" / "ITP-01_W1.fcs")
    events = np.array(source.events)
    fitc = source.channels.index("FITC-A")
    events[: len(events) // 10, fitc] = 262143  # 10% of CD4 FITC at the top of scale
    saturated = tmp_path / "saturated.fcs"
    write_fcs(saturated, events, source.channels, source.markers, source.metadata)
    result = process_sample(SampleTask(sample="sat", file=str(saturated), strategy=strategy, treg="Treg",
                                       parent="CD4+", subject="S", timepoint="D0"))
    assert result.failure is None
    assert result.treg["acquisition_qc"] == "FITC-A: 10.0% of events at the top of scale"
    table = baseline_table(pd.DataFrame([result.treg]))
    assert "FITC-A: 10.0% of events at the top of scale" in table.loc[0, "qc_flags"]


@pytest.mark.parametrize("n", [0, 1, 63, 64, 1000, 4099])
def test_one_pass_counts_what_a_per_channel_scan_counts(n):
    """Corrupt and margin counts equal a plain per-channel scan, whatever the block remainder and the defects."""
    rng = np.random.default_rng(n)
    channels = ("FSC-A", "FSC-W", "FITC-A", "PE-A", "Time", "APC-A")
    events = rng.uniform(-50, 1100, (n, len(channels))).astype(np.float32)
    if n:
        for value in (np.nan, np.inf, -np.inf, 5e6, -5e6):
            events[rng.integers(0, n, max(1, n // 50)), rng.integers(0, len(channels))] = value
        events[rng.integers(0, n, max(1, n // 10)), 3] = 1023  # PE-A at the top of scale
    meta = {f"$P{k + 1}R": "1024" for k in range(len(channels)) if channels[k] != "APC-A"}
    sample = Sample("", events, channels, ("",) * len(channels), meta, "FCS3.1")
    qc = check_acquisition(sample)
    bad = np.zeros(n, dtype=bool)
    margin = {}
    with np.errstate(invalid="ignore"):
        for j, channel in enumerate(channels):
            column = events[:, j].astype(np.float64)
            if channel == "APC-A":  # no $PnR: only non-finite values are impossible
                bad |= ~np.isfinite(column)
                continue
            bad |= ~(np.abs(column) <= 1000 * 1024)
            if channel not in ("FSC-W", "Time") and n:
                margin[channel] = 100.0 * np.count_nonzero(column >= 1023) / n
    assert qc.corrupt_events == int(bad.sum())
    assert qc.margin_pct == pytest.approx(margin)


def test_channel_limits_follow_each_files_keywords():
    events = np.full((100, 2), 900.0, dtype=np.float32)
    events[:10, 1] = 1023  # 10% at the top of a 1024 range, nowhere near the top of a 262144 one
    seen = []
    for prange in ("1024", "262144", "1024"):  # the limits of the first file are remembered, not reused blindly
        sample = Sample("", events, ("FSC-A", "FITC-A"), ("", "CD4"), {"$P1R": "1024", "$P2R": prange}, "FCS3.1")
        seen.append(check_acquisition(sample).margin_pct["FITC-A"])
    assert seen == [pytest.approx(10.0), 0.0, pytest.approx(10.0)]


def test_finite_channels_are_those_without_nan_or_infinity():
    events = np.full((200, 3), 100.0, dtype=np.float32)
    events[7, 1] = np.nan
    events[9, 2] = np.inf
    sample = Sample("", np.asfortranarray(events), ("FSC-A", "FITC-A", "PE-A"), ("", "CD4", "CD8"),
                    {"$P1R": "1024", "$P2R": "1024", "$P3R": "1024"}, "FCS3.1")
    assert check_acquisition(sample).finite == frozenset({0})
    empty = Sample("", np.empty((0, 3), dtype=np.float32), sample.channels, sample.markers, sample.metadata,
                   "FCS3.1")
    assert check_acquisition(empty).finite == frozenset()

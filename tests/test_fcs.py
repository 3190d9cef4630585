"""FCS writer and reader core: layout, keywords, escaping, round trips through FlowIO/FlowKit, channel lookup."""

from __future__ import annotations

import gc
import hashlib
import json
import mmap
import os
import pickle
import re
from pathlib import Path

import flowio
import numpy as np
import pytest

import cytopipe.fcs.read as fcs_read
from cytopipe.errors import FCSError, MarkerError
from cytopipe.fcs import Sample, count_datasets, describe, format_description, read_fcs, write_fcs

CHANNELS = ["FSC-A", "SSC-A", "FITC-A", "PE-A", "APC-A", "Time"]
MARKERS = ["", "", "CD4 FITC", "CD25-PE", "Foxp3 (APC)", ""]


def _events(n: int = 2000, p: int = 6, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.lognormal(6, 1.5, size=(n, p)) - 50).astype(np.float32)


def _header_offsets(path: Path) -> list[int]:
    head = path.read_bytes()[:58]
    return [int(head[10 + 8 * k : 18 + 8 * k].strip() or 0) for k in range(6)]


@pytest.fixture()
def written(tmp_path: Path) -> tuple[Path, np.ndarray]:
    events = _events()
    path = tmp_path / "sample.fcs"
    metadata = {"$CYT": "FACSCanto II", "$SPILLOVER": "2,FITC-A,PE-A,1,0.165,0.0125,1", "PATIENT ID": "S01"}
    metadata |= {"$P3N": "FITC-A", "$P3R": "262144"}  # a per-parameter keyword carried over by channel name
    write_fcs(path, events, CHANNELS, MARKERS, metadata)
    return path, events


def test_round_trip_values_names_and_keywords(written: tuple[Path, np.ndarray]) -> None:
    path, events = written
    sample = read_fcs(path)
    assert sample.version == "FCS3.1"
    assert sample.channels == tuple(CHANNELS)
    assert sample.markers == tuple(MARKERS)
    np.testing.assert_array_equal(sample.events, events)
    assert sample.events.dtype == np.float32 and sample.events.flags.c_contiguous and sample.events.flags.writeable
    assert sample.metadata["$SPILLOVER"] == "2,FITC-A,PE-A,1,0.165,0.0125,1"
    assert sample.metadata["PATIENT ID"] == "S01"
    assert sample.metadata["$CYT"] == "FACSCanto II"
    for key, value in {"$TOT": "2000", "$PAR": "6", "$DATATYPE": "F", "$MODE": "L", "$BYTEORD": "1,2,3,4"}.items():
        assert sample.metadata[key] == value
    for n in range(1, 7):
        assert sample.metadata[f"$P{n}B"] == "32" and sample.metadata[f"$P{n}E"] == "0,0"
        assert int(sample.metadata[f"$P{n}R"]) >= events[:, n - 1].max()
    assert sample.n_events == 2000


def test_header_offsets_point_at_text_and_data(written: tuple[Path, np.ndarray]) -> None:
    path, events = written
    raw = path.read_bytes()
    assert raw[:10] == b"FCS3.1    "
    text_start, text_end, data_start, data_end, ana_start, ana_end = _header_offsets(path)
    assert text_start == 58 and (ana_start, ana_end) == (0, 0)
    assert raw[text_start : text_start + 1] == raw[text_end : text_end + 1]  # TEXT opens and closes on the delimiter
    assert data_start == text_end + 1 and data_end - data_start + 1 == events.nbytes
    sample = read_fcs(path)
    assert (int(sample.metadata["$BEGINDATA"]), int(sample.metadata["$ENDDATA"])) == (data_start, data_end)
    np.testing.assert_array_equal(np.frombuffer(raw[data_start : data_end + 1], "<f4").reshape(events.shape), events)
    assert raw[data_end + 1 :] == b"00000000"  # CRC field


def test_flowio_and_flowkit_read_back_identical_values(written: tuple[Path, np.ndarray]) -> None:
    path, events = written
    flow = flowio.FlowData(str(path))
    assert flow.event_count == 2000 and flow.channel_count == 6
    np.testing.assert_array_equal(np.asarray(flow.as_array(preprocess=False), dtype=np.float32), events)
    assert [flow.channels[i]["pnn"] for i in range(1, 7)] == CHANNELS
    assert flow.text["spillover"] == "2,FITC-A,PE-A,1,0.165,0.0125,1"
    import flowkit  # slow to import; only this test needs it

    kit = flowkit.Sample(str(path), preprocess=False)
    np.testing.assert_array_equal(kit.get_events(source="raw").astype(np.float32), events)
    assert list(kit.pns_labels) == MARKERS
    assert kit.metadata["spillover"] == "2,FITC-A,PE-A,1,0.165,0.0125,1"


def test_delimiter_inside_values_is_escaped(tmp_path: Path) -> None:
    # Every candidate delimiter occurs in some value, so the writer must double the one it picks.
    hostile = "a/b|c\\d!e*f~g\x0ch"
    metadata = {"COMMENT": hostile, "$SRC": "x//y", "$FIL": "plate/well A1.fcs"}
    path = tmp_path / "escaped.fcs"
    write_fcs(path, _events(10, 2), ["FL1", "FL2"], ["CD3/CD4", ""], metadata)
    raw = path.read_bytes()
    delimiter = raw[58:59]
    assert delimiter * 2 in raw[58 : _header_offsets(path)[1]]
    sample = read_fcs(path)
    assert sample.metadata["COMMENT"] == hostile and sample.metadata["$SRC"] == "x//y"
    assert sample.markers == ("CD3/CD4", "")
    flow = flowio.FlowData(str(path))
    assert flow.text["comment"] == hostile


@pytest.mark.slow
def test_offsets_beyond_eight_digits_are_zero_in_header(tmp_path: Path) -> None:
    # 1,562,500 x 16 float32 = 100,000,000 bytes: DATA ends past 99,999,999, so HEADER holds 0 and TEXT rules.
    events = np.zeros((1_562_500, 16), dtype=np.float32)
    events[::1000, 3] = np.arange(1563, dtype=np.float32)
    path = tmp_path / "big.fcs"
    write_fcs(path, events, [f"C{i}" for i in range(16)])
    offsets = _header_offsets(path)
    assert offsets[0] == 58 and offsets[2] > 0 and offsets[3] == 0  # start fits in 8 digits, end does not
    sample = read_fcs(path)
    assert int(sample.metadata["$ENDDATA"]) == int(sample.metadata["$BEGINDATA"]) + events.nbytes - 1
    np.testing.assert_array_equal(sample.events[::1000, 3], events[::1000, 3])
    assert sample.n_events == 1_562_500


def test_write_is_atomic_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "keep.fcs"
    write_fcs(path, _events(5, 2), ["A", "B"])
    before = path.read_bytes()
    with pytest.raises(FCSError, match=r"keep\.fcs: 3 channel names for 2 event columns"):
        write_fcs(path, _events(5, 2), ["A", "B", "C"])
    with pytest.raises(FCSError, match="must be unique"):
        write_fcs(path, _events(5, 2), ["A", "a"])
    with pytest.raises(FCSError, match="2-D"):
        write_fcs(path, np.zeros(5), ["A"])
    with pytest.raises(FCSError, match="version"):
        write_fcs(path, _events(5, 2), ["A", "B"], version="2.0")
    assert path.read_bytes() == before
    with pytest.raises(FCSError, match="cannot write"):
        write_fcs(tmp_path / "missing" / "x.fcs", _events(5, 2), ["A", "B"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.fcs"]  # no temporary file left behind


def test_per_parameter_keywords_follow_channels_when_subsetting(tmp_path: Path) -> None:
    source = {"$P1N": "FSC-A", "$P1R": "262144", "$P2N": "PE-A", "$P2R": "1024", "$P2G": "2.5", "$P2V": "450"}
    path = tmp_path / "subset.fcs"
    write_fcs(path, _events(20, 1), ["PE-A"], ["CD25"], source)
    meta = read_fcs(path).metadata
    kept = (meta["$P1N"], meta["$P1R"], meta["$P1G"], meta["$P1V"], meta["$P1S"])
    assert kept == ("PE-A", "1024", "2.5", "450", "CD25")
    assert "$P2N" not in meta


@pytest.mark.parametrize("mapped", [True, False])
def test_events_are_writable_picklable_and_the_file_untouched(
    written: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch, mapped: bool
) -> None:
    path, events = written
    monkeypatch.setattr(fcs_read, "MAP_THRESHOLD", 0 if mapped else 1 << 40)
    before = path.read_bytes()
    sample = read_fcs(path)
    assert not sample.events.flags.owndata  # a view of the map or of the one read buffer, not a second copy
    root = sample.events
    while isinstance(root.base, np.ndarray):
        root = root.base
    if mapped:
        owner = root.base.obj if isinstance(root.base, memoryview) else root.base
        assert isinstance(owner, mmap.mmap)
    else:
        assert root.flags.owndata and root.dtype == np.uint8 and root.nbytes == sample.events.nbytes
    sample.events[0, 0] = -1.0  # copy-on-write: allowed, and the file is untouched
    assert path.read_bytes() == before
    clone = pickle.loads(pickle.dumps(sample))
    np.testing.assert_array_equal(clone.events, sample.events)
    assert clone.channels == sample.channels and clone.metadata == sample.metadata
    np.testing.assert_array_equal(sample.events[1:], events[1:])


def _open_files(path: Path) -> int:
    """Descriptors of this process open on ``path`` (other tests' objects closing or opening files at the same
    time, e.g. when garbage-collected, must not change the count)."""
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:  # closed between listing and reading
            continue
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count open files")
def test_only_mapped_samples_hold_a_file_open(
    written: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = written
    assert _open_files(path) == 0
    small = [read_fcs(path) for _ in range(5)]
    assert _open_files(path) == 0
    monkeypatch.setattr(fcs_read, "MAP_THRESHOLD", 0)
    mapped = [read_fcs(path) for _ in range(5)]
    assert _open_files(path) == 5  # the map's duplicate descriptor lives as long as the events
    del mapped
    gc.collect()
    assert _open_files(path) == 0 and len(small) == 5


def test_fcs_3_2_per_channel_datatypes_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    events = np.column_stack(
        [rng.normal(5e4, 1e4, 500), rng.integers(0, 1024, 500), rng.normal(0, 1, 500), rng.integers(0, 70000, 500)]
    )
    path = tmp_path / "v32.fcs"
    write_fcs(path, events, ["FSC-A", "Index", "Comp-PE-A", "Time"], version="3.2", datatypes=["F", "I", "D", "I"])
    sample = read_fcs(path)
    assert sample.version == "FCS3.2"
    meta = sample.metadata
    assert meta["$CYT"] == "cytopipe" and meta["$MODE"] == "L" and meta["$DATATYPE"] == "F"
    assert [meta.get(f"$P{n}DATATYPE") for n in range(1, 5)] == [None, "I", "D", "I"]
    assert [meta[f"$P{n}B"] for n in range(1, 5)] == ["32", "16", "64", "32"]
    assert sample.events.dtype == np.float64  # a double channel keeps its precision
    np.testing.assert_array_equal(sample.events[:, 0], events[:, 0].astype(np.float32))
    np.testing.assert_array_equal(sample.events[:, 1], events[:, 1])
    np.testing.assert_array_equal(sample.events[:, 2], events[:, 2])
    np.testing.assert_array_equal(sample.events[:, 3], events[:, 3])
    with pytest.raises(FCSError, match="need version='3.2'"):
        write_fcs(path, events, ["a", "b", "c", "d"], datatypes=["F", "I", "D", "I"])


def test_fcs_3_2_keeps_instrument_and_new_keywords(tmp_path: Path) -> None:
    path = tmp_path / "v32b.fcs"
    metadata = {"$CYT": "Aurora", "$P1TYPE": "Forward_Scatter", "$UNSTAINEDCENTERS": "2,FITC-A,PE-A,10.5,-3"}
    write_fcs(path, _events(50, 2), ["FSC-A", "FITC-A"], metadata=metadata | {"$P1N": "FSC-A"}, version="3.2")
    meta = read_fcs(path).metadata
    assert meta["$CYT"] == "Aurora" and meta["$P1TYPE"] == "Forward_Scatter"
    assert meta["$UNSTAINEDCENTERS"] == "2,FITC-A,PE-A,10.5,-3"
    flow = flowio.FlowData(str(path))
    np.testing.assert_array_equal(np.asarray(flow.as_array(preprocess=False), np.float32), read_fcs(path).events)


# ---- channel lookup -----------------------------------------------------------------------------------------


def _sample(markers: list[str], channels: list[str] | None = None) -> Sample:
    channels = channels or [f"CH{i}-A" for i in range(len(markers))]
    events = np.arange(len(markers) * 3, dtype=np.float32).reshape(3, len(markers))
    return Sample("", events, tuple(channels), tuple(markers), {}, "FCS3.1")


@pytest.mark.parametrize("marker", ["CD4 FITC", "CD4-FITC", "cd4_fitc", "CD4", "FITC/CD4", "CD4(FITC)"])
def test_marker_token_matches(marker: str) -> None:
    sample = _sample(["CD3 APC", "CD45 PerCP", marker, "CD8 PE"])
    assert sample.find_channel("CD4") == 2
    np.testing.assert_array_equal(sample.column("CD4"), sample.events[:, 2])


def test_marker_never_matches_a_longer_name() -> None:
    sample = _sample(["CD45 PerCP", "CD45RA FITC"])
    with pytest.raises(MarkerError, match="no channel or marker 'CD4'; available: CH0-A \\(CD45 PerCP\\)"):
        sample.find_channel("CD4")


def test_marker_case_insensitive_and_pnn_first() -> None:
    sample = _sample(["FOXP3 PE", "CD25 APC", ""], ["PE-A", "APC-A", "FOXP3"])
    assert sample.find_channel("Foxp3") == 2  # exact $PnN beats the marker token
    assert sample.find_channel("pe-a") == 0
    sample = _sample(["Foxp3 PE", "CD25 APC"])
    assert sample.find_channel("FOXP3") == 0 and sample.find_channel("foxp3 pe") == 0


def test_ambiguous_marker_lists_candidates() -> None:
    sample = _sample(["CD4 FITC", "CD4 PE", "CD8"], ["FITC-A", "PE-A", "APC-A"])
    with pytest.raises(MarkerError) as err:
        sample.find_channel("CD4")
    assert str(err.value) == "<in-memory sample>: marker 'CD4' is ambiguous: FITC-A (CD4 FITC), PE-A (CD4 PE)"
    assert sample.find_channel("CD4 PE") == 1  # the full $PnS resolves it


def test_channel_lookups_are_remembered_per_channels_and_markers() -> None:
    markers, channels = ["CD4 FITC", "CD4 PE", "CD8"], ["FITC-A", "PE-A", "APC-A"]
    for _ in range(2):  # the second round is answered from the cache: same answers, same errors
        sample = _sample(markers, channels)
        assert sample.find_channel("CD8") == 2 and sample.find_channel("pe-a") == 1
        with pytest.raises(MarkerError, match="ambiguous"):
            sample.find_channel("CD4")
    other = _sample(["CD4 FITC", "CD25 PE", "CD8"], channels)  # other markers: looked up afresh
    assert other.find_channel("CD4") == 0
    listed = Sample("", other.events, list(channels), list(other.markers), {}, "FCS3.1")  # lists, not tuples
    assert listed.find_channel("CD25") == 1


# ---- reader errors and describe ------------------------------------------------------------------------------


def test_missing_and_non_fcs_files(tmp_path: Path) -> None:
    with pytest.raises(FCSError, match=r"nope\.fcs: no such file"):
        read_fcs(tmp_path / "nope.fcs")
    (tmp_path / "text.fcs").write_bytes(b"hello world, I am not an FCS file but I am longer than the header...")
    with pytest.raises(FCSError, match=r"text\.fcs: not an FCS file: HEADER starts with b'hello '"):
        read_fcs(tmp_path / "text.fcs")
    with pytest.raises(FCSError, match="dataset must be a non-negative integer"):
        read_fcs(tmp_path / "text.fcs", dataset=-1)


def test_truncated_data_is_reported(written: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = written
    cut = tmp_path / "cut.fcs"
    cut.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(FCSError) as err:
        read_fcs(cut)
    message = str(err.value)
    assert message.startswith(f"{cut}: DATA segment is truncated: $TOT=2000 events") and "\n" not in message


def test_dataset_out_of_range(written: tuple[Path, np.ndarray]) -> None:
    path, _ = written
    assert count_datasets(path) == 1
    with pytest.raises(FCSError, match="has 1 data set\\(s\\); data set 1 was requested"):
        read_fcs(path, dataset=1)


def test_describe_is_json_and_complete(written: tuple[Path, np.ndarray]) -> None:
    path, _ = written
    info = describe(read_fcs(path))
    assert json.loads(json.dumps(info)) == info
    assert info["version"] == "FCS3.1" and info["instrument"] == "FACSCanto II" and info["events"] == 2000
    assert info["spillover"] == {"present": True, "keyword": "$SPILLOVER", "detectors": ["FITC-A", "PE-A"]}
    assert info["datasets"] == 1
    assert info["channels"][2] == {"index": 3, "name": "FITC-A", "marker": "CD4 FITC", "range": "262144",
                                   "scale": "linear", "top": 262144.0}
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    text = format_description(info)
    assert "FACSCanto II" in text and "CD4 FITC" in text and "$SPILLOVER over 2 detectors" in text
    assert re.search(r"events:\s+2,000", text)


def test_describe_in_memory_and_broken_spillover() -> None:
    sample = Sample(
        "", np.zeros((4, 2), np.float32), ("FL1", "FL2"), ("CD4", ""), {"SPILL": "2,FL1,FL9,1,0,0,1"}, "FCS3.0"
    )
    info = describe(sample)
    assert info["datasets"] is None and info["sha256"] is None and info["events"] == 4
    assert info["spillover"]["present"] and "detector 'FL9' is not a channel" in info["spillover"]["error"]
    assert "present but unusable" in format_description(info)


# ---- hand-assembled files for layouts the writer does not produce -------------------------------------------


def _assemble(
    keywords: dict[str, str], data: bytes, version: str = "FCS2.0", header_data: bool = True, trailer: bytes = b""
) -> bytes:
    """Bytes of a one-data-set FCS file: HEADER, '/'-delimited TEXT at 58, DATA right after, then ``trailer``."""
    text = ("/" + "/".join(f"{k}/{v}" for k, v in keywords.items()) + "/").encode("latin-1")
    begin = 58 + len(text)
    end = begin + len(data) - 1
    offsets = (58, begin - 1, begin if header_data else 0, end if header_data else 0, 0, 0)
    return f"{version}    ".encode() + b"".join(f"{o:>8}".encode() for o in offsets) + text + data + trailer


def _params(bits: list[int], names: list[str] | None = None, ranges: list[int] | None = None) -> dict[str, str]:
    keywords = {"$PAR": str(len(bits))}
    for n, b in enumerate(bits, start=1):
        keywords[f"$P{n}N"] = names[n - 1] if names else f"FL{n}"
        keywords[f"$P{n}B"] = str(b)
        keywords[f"$P{n}R"] = str(ranges[n - 1] if ranges else 2**b)
    return keywords


def test_big_endian_float_and_double(tmp_path: Path) -> None:
    values = _events(100, 3)
    path = tmp_path / "be.fcs"
    keywords = {"$TOT": "100", "$DATATYPE": "F", "$BYTEORD": "4,3,2,1", "$MODE": "L"} | _params([32, 32, 32])
    path.write_bytes(_assemble(keywords, values.astype(">f4").tobytes()))
    sample = read_fcs(path)
    np.testing.assert_array_equal(sample.events, values)
    assert sample.events.dtype == np.float32 and sample.events.dtype.isnative and sample.events.flags.writeable
    keywords = {"$TOT": "100", "$DATATYPE": "D", "$BYTEORD": "1,2,3,4", "$MODE": "L"} | _params([64, 64, 64])
    path.write_bytes(_assemble(keywords, values.astype("<f8").tobytes()))
    assert read_fcs(path).events.dtype == np.float64
    np.testing.assert_array_equal(read_fcs(path).events, values)


def test_unaligned_float_data_is_copied_aligned(tmp_path: Path) -> None:
    values = _events(50, 2)
    keywords = {"$TOT": "50", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4", "$COM": "x"} | _params([32, 32])
    for pad in range(4):  # TEXT length moves DATA to every alignment
        keywords["$COM"] = "x" * (pad + 1)
        path = tmp_path / f"a{pad}.fcs"
        path.write_bytes(_assemble(keywords, values.tobytes()))
        sample = read_fcs(path)
        np.testing.assert_array_equal(sample.events, values)
        assert sample.events.flags.aligned


def test_packed_nine_bit_and_word_ten_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    values = rng.integers(0, 512, size=(37, 3))
    # A true bit stream, least significant bit first: 37 x 27 bits = 125 bytes (not 37 x 3 x 2 = 222).
    bits = ((values[..., None] >> np.arange(9)) & 1).astype(np.uint8).ravel()
    packed = np.packbits(bits, bitorder="little").tobytes()
    assert len(packed) == 125
    keywords = {"$TOT": "37", "$DATATYPE": "I", "$BYTEORD": "1,2"} | _params([9, 9, 9], ranges=[512] * 3)
    path = tmp_path / "packed.fcs"
    path.write_bytes(_assemble(keywords, packed))
    np.testing.assert_array_equal(read_fcs(path).events, values)
    # Mixed widths: 9 + 12 + 10 = 31 bits per event, so only every 8th event ends on a byte boundary.
    wide = np.column_stack([values[:, 0], values[:, 1] * 7, values[:, 2] * 2])
    stream = np.concatenate([((wide[:, [c]] >> np.arange(w)) & 1) for c, w in enumerate((9, 12, 10))], 1)
    keywords = {"$TOT": "37", "$DATATYPE": "I", "$BYTEORD": "1,2"} | _params([9, 12, 10])
    path.write_bytes(_assemble(keywords, np.packbits(stream.astype(np.uint8).ravel(), bitorder="little").tobytes()))
    np.testing.assert_array_equal(read_fcs(path).events, wide)
    keywords = {"$TOT": "37", "$DATATYPE": "I", "$BYTEORD": "1,2"} | _params([4, 4, 4])
    path.write_bytes(_assemble(keywords, bytes(56)))
    with pytest.raises(FCSError, match="bit-packed values of 4-4 bits are not supported"):
        read_fcs(path)
    # The same values in 16-bit words with junk in the high bits: masked to $PnB = 10 bits.
    keywords = {"$TOT": "37", "$DATATYPE": "I", "$BYTEORD": "1,2"} | _params([10, 10, 10], ranges=[1024] * 3)
    path.write_bytes(_assemble(keywords, (values | 0xF000).astype("<u2").tobytes()))
    np.testing.assert_array_equal(read_fcs(path).events, values)


def test_range_bit_mask_and_mixed_widths(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    low = rng.integers(0, 1024, 64)
    wide = rng.integers(0, 2**31, 64)
    record = np.dtype([("a", ">u2"), ("b", ">u4"), ("c", ">u2")])
    data = np.zeros(64, dtype=record)
    data["a"], data["b"], data["c"] = low | 0x4000, wide, low  # bit 14 set above $P1R=1000 -> masked (1023)
    keywords = {"$TOT": "64", "$DATATYPE": "I", "$BYTEORD": "4,3,2,1"} | _params(
        [16, 32, 16], ranges=[1000, 2**32, 65536]
    )
    path = tmp_path / "mixed.fcs"
    path.write_bytes(_assemble(keywords, data.tobytes(), version="FCS3.0"))
    events = read_fcs(path).events
    np.testing.assert_array_equal(events[:, 0], low)
    np.testing.assert_array_equal(events[:, 1], wide.astype(np.float32))
    np.testing.assert_array_equal(events[:, 2], low)


def test_duplicate_names_get_suffixes_and_keep_markers(tmp_path: Path) -> None:
    keywords = {"$TOT": "2", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4"} | _params([32, 32, 32], ["FL1", "FL1", "fl1"])
    keywords |= {"$P1S": "CD3", "$P2S": "CD4", "$P3S": "CD8"}
    path = tmp_path / "dup.fcs"
    path.write_bytes(_assemble(keywords, _events(2, 3).tobytes()))
    sample = read_fcs(path)
    assert sample.channels == ("FL1", "FL1_2", "fl1_3") and sample.markers == ("CD3", "CD4", "CD8")
    assert sample.find_channel("CD4") == 1 and sample.find_channel("FL1_2") == 1


def test_missing_datatype_and_histogram_mode(tmp_path: Path) -> None:
    path = tmp_path / "nodt.fcs"
    path.write_bytes(_assemble({"$TOT": "2", "$BYTEORD": "1,2"} | _params([16]), b"\0" * 4))
    with pytest.raises(FCSError, match=r"nodt\.fcs: required keyword \$DATATYPE is missing"):
        read_fcs(path)
    path.write_bytes(
        _assemble({"$TOT": "2", "$DATATYPE": "I", "$MODE": "C", "$BYTEORD": "1,2"} | _params([16]), b"\0" * 4)
    )
    with pytest.raises(FCSError, match=r"\$MODE=C \(histogram data\) is not supported"):
        read_fcs(path)


def test_fcs2_without_tot_and_text_only_offsets(tmp_path: Path) -> None:
    values = np.arange(30, dtype=np.uint16).reshape(10, 3)
    path = tmp_path / "notot.fcs"
    path.write_bytes(_assemble({"$DATATYPE": "I", "$BYTEORD": "1,2"} | _params([16] * 3), values.tobytes()))
    np.testing.assert_array_equal(read_fcs(path).events, values)  # $TOT is optional in FCS 2.0
    # HEADER offsets 0 with $BEGINDATA/$ENDDATA as the only location (how files > 99,999,999 bytes do it);
    # fixed-width values so that filling them in does not move DATA.
    body = {"$TOT": "10", "$DATATYPE": "I", "$BYTEORD": "1,2", "$BEGINDATA": "000000", "$ENDDATA": "000000"}
    body |= _params([16] * 3)
    begin = len(_assemble(body, b"", version="FCS3.0", header_data=False))
    body |= {"$BEGINDATA": f"{begin:06d}", "$ENDDATA": f"{begin + values.nbytes - 1:06d}"}
    path.write_bytes(_assemble(body, values.tobytes(), version="FCS3.0", header_data=False))
    assert read_fcs(path).metadata["$BEGINDATA"] == f"{begin:06d}"
    np.testing.assert_array_equal(read_fcs(path).events, values)


def test_nextdata_chain(tmp_path: Path) -> None:
    first = _assemble({"$TOT": "3", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4", "$NEXTDATA": "0"} | _params([32]), b"")
    one = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    two = np.array([[7.0], [8.0]], dtype=np.float32)
    second = _assemble({"$TOT": "2", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4"} | _params([32]), two.tobytes())
    for _ in range(3):  # $NEXTDATA's own digits change the first data set's length: iterate to a fixed point
        keywords = {"$TOT": "3", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4", "$NEXTDATA": str(len(first))}
        first = _assemble(keywords | _params([32]), one.tobytes())
    path = tmp_path / "two.fcs"
    path.write_bytes(first + second)
    assert read_fcs(path).metadata["$NEXTDATA"] == str(len(first))  # points exactly at the second HEADER
    assert count_datasets(path) == 2
    np.testing.assert_array_equal(read_fcs(path).events, one)
    np.testing.assert_array_equal(read_fcs(path, dataset=1).events, two)


def test_supplemental_text_is_merged(tmp_path: Path) -> None:
    values = _events(4, 1)
    stext = b"|$CYT|Supplemental|EXTRA|yes|"
    keywords = {"$TOT": "4", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4", "$BEGINSTEXT": "0000", "$ENDSTEXT": "0000"}
    keywords |= _params([32])
    start = len(_assemble(keywords, values.tobytes(), version="FCS3.0"))
    keywords |= {"$BEGINSTEXT": f"{start:04d}", "$ENDSTEXT": f"{start + len(stext) - 1:04d}"}
    path = tmp_path / "stext.fcs"
    path.write_bytes(_assemble(keywords, values.tobytes(), version="FCS3.0", trailer=stext))
    sample = read_fcs(path)
    assert sample.metadata["EXTRA"] == "yes" and sample.metadata["$CYT"] == "Supplemental"
    np.testing.assert_array_equal(sample.events, values)


def test_empty_population_round_trip(tmp_path: Path) -> None:
    # An export of an empty population: no DATA segment, offsets 0 in HEADER and TEXT.
    path = tmp_path / "empty.fcs"
    write_fcs(path, np.zeros((0, 3), np.float32), ["FSC-A", "FITC-A", "PE-A"], ["", "CD4", "CD25"])
    sample = read_fcs(path)
    assert sample.events.shape == (0, 3) and sample.markers == ("", "CD4", "CD25")
    assert (sample.metadata["$BEGINDATA"], sample.metadata["$ENDDATA"], sample.metadata["$TOT"]) == ("0", "0", "0")
    assert _header_offsets(path)[2:4] == [0, 0]


def test_repr_is_short(written: tuple[Path, np.ndarray]) -> None:
    path, _ = written
    assert repr(read_fcs(path)) == f"Sample('{path}', FCS3.1, 2000 events x 6 channels)"


def _same_sample(a: Sample, b: Sample) -> None:
    assert a.events.dtype == b.events.dtype and a.events.shape == b.events.shape
    assert a.events.tobytes() == b.events.tobytes()
    assert (a.channels, a.markers, a.metadata, a.version, a.scale) == (b.channels, b.markers, b.metadata, b.version,
                                                                       b.scale)


@pytest.mark.parametrize("pad", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("datatypes", [None, ["F", "I", "D", "F", "I", "F"]])
def test_read_fcs_sha256_is_read_fcs_and_file_sha256_from_one_read(tmp_path: Path, pad: int, datatypes) -> None:
    """The worker's read gives the same sample as read_fcs and the same digest as file_sha256, whatever the
    alignment of DATA (keyword lengths shift it), for float, mixed integer/double and every decoding; the events
    are aligned, writable and own no map."""
    from cytopipe.fcs import file_sha256, read_fcs_sha256

    path = tmp_path / "s.fcs"
    events = np.abs(_events(n=3000))
    write_fcs(path, events, CHANNELS, MARKERS, {"PAD": "x" * (pad + 1)}, version="3.2" if datatypes else "3.1",
              datatypes=datatypes)
    for scale in ("log", "gain", "raw"):
        for exact in (False, True):
            sample, digest = read_fcs_sha256(path, scale=scale, exact=exact)
            _same_sample(sample, read_fcs(path, scale=scale, exact=exact))
            assert digest == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
            assert sample.events.flags.aligned and sample.events.flags.writeable
    before = path.read_bytes()
    sample.events[0, 0] = -1.0
    assert path.read_bytes() == before


def test_read_fcs_sha256_fails_like_read_fcs(tmp_path: Path) -> None:
    from cytopipe.fcs import read_fcs_sha256

    path = tmp_path / "cut.fcs"
    write_fcs(path, _events(n=500), CHANNELS, MARKERS)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FCSError) as expected:
        read_fcs(path)
    with pytest.raises(FCSError) as got:
        read_fcs_sha256(path)
    assert str(got.value) == str(expected.value)
    with pytest.raises(FCSError, match="no such file"):
        read_fcs_sha256(tmp_path / "missing.fcs")


def test_read_fcs_sha256_on_the_reference_files(shared_data: Path) -> None:
    """Every instrument file of the shared data (integer widths, big-endian, bit-packed, several data sets)."""
    from cytopipe.fcs import file_sha256, read_fcs_sha256

    files = sorted(p for p in (shared_data / "instruments").rglob("*") if p.suffix.lower() in (".fcs", ".lmd"))
    assert files
    for path in files:
        try:
            expected = read_fcs(path)
        except FCSError as err:
            with pytest.raises(FCSError, match=re.escape(str(err))):
                read_fcs_sha256(path)
            continue
        sample, digest = read_fcs_sha256(path)
        _same_sample(sample, expected)
        assert digest == file_sha256(path)


@pytest.mark.parametrize("delimiter", [b"/", b"|", b"\x0c", b"\xa7"])
def test_text_tokens_decode_as_utf8_each_or_latin1_each(delimiter: bytes) -> None:
    from cytopipe.fcs.text import _File, _parse_text

    d = delimiter
    pairs = [(b"$FIL", "tübe 7.fcs".encode()), (b"$P1S", b"CD4 FITC"),
             (b"NOTE", b"a" + d + d + b"b"), (b"$OP", "Ærø".encode("latin-1")), (b"$SRC", "µ-β".encode())]
    for keep in ([0, 1, 2, 4], [0, 1, 2, 3, 4]):  # all UTF-8; one latin-1 value among UTF-8 ones
        raw = d + d.join(k + d + v for k, v in (pairs[i] for i in keep)) + d
        fcs = _File(__file__)
        try:
            parsed = _parse_text(fcs, raw, "TEXT")
        finally:
            fcs.close()

        def token(value: bytes) -> str:
            value = value.replace(d + d, d)
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return value.decode("latin-1")

        assert parsed == {token(k).upper(): token(v) for k, v in (pairs[i] for i in keep)}


@pytest.mark.parametrize(("datatype", "byteord", "stored"), [("F", "4,3,2,1", ">f4"), ("F", "1,2,3,4", "<f4"),
                                                              ("D", "4,3,2,1", ">f8")])
def test_read_fcs_sha256_gives_float_events_in_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       datatype: str, byteord: str, stored: str) -> None:
    """The worker's read of float data: column-major events with read_fcs's values bit for bit (byte-swapped,
    NaN payloads and signed zeros kept), over many pieces of events and any alignment of DATA, and the digest of
    every byte of the file, including what follows DATA."""
    from cytopipe.fcs import read_fcs_sha256

    monkeypatch.setattr(fcs_read, "_PIECE", 4096)  # 4096 // 4 bytes per piece: many pieces of 42 or 21 events
    values = _events(1001, 3).astype(stored)
    values[5, 1] = -0.0
    values.view(f"{stored[0]}u{stored[2]}")[7, 2] = 0x7FA00001 if stored[2] == "4" else 0x7FF4000000000001  # sNaN
    bits = 32 if datatype == "F" else 64
    for pad in range(3):
        keywords = {"$TOT": "1001", "$DATATYPE": datatype, "$BYTEORD": byteord, "$MODE": "L",
                    "$COM": "x" * (pad + 1)} | _params([bits] * 3)
        path = tmp_path / f"c{pad}.fcs"
        path.write_bytes(_assemble(keywords, values.tobytes(), trailer=b"ANALYSIS" * 700))
        sample, digest = read_fcs_sha256(path)
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
        assert sample.events.flags.f_contiguous and sample.events.dtype.isnative and sample.events.flags.writeable
        native = values.astype(values.dtype.newbyteorder("="))
        assert sample.events.tobytes() == read_fcs(path).events.tobytes() == native.tobytes()

"""Every real instrument file in ``shared/data/instruments`` against the FlowIO/fcsparser readouts.

Where both reference parsers read a file and agree, cytopipe must agree with them (event and channel counts,
names, first rows, FlowIO's column sums). Where they disagree or fail, the test states cytopipe's policy and the
evidence for it (the FCS standard, or a second copy of the same events in the same file).
"""

from __future__ import annotations

import json
from functools import cache, partial
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from cytopipe.errors import FCSError
from cytopipe.fcs import count_datasets, read_fcs
from cytopipe.fcs.text import _File, _read_header_and_text

INSTRUMENTS = SHARED_DATA / "instruments"
# The reference readouts are channel values as stored: compare with cytopipe's raw reading.
read_raw = partial(read_fcs, scale="raw")
_READOUTS = INSTRUMENTS / "reference_readouts.json"
ALL_FILES = [e["file"] for e in json.loads(_READOUTS.read_text())["files"]] if _READOUTS.is_file() else []
# Files where the two reference parsers disagree or fail; each has its own test below.
POLICY = {
    "flowio/fcs_files/data_start_offset_discrepancy_example.fcs",
    "cytoflow_instruments/Beckman Coulter - Cyan.fcs",
    "cytoflow_instruments/Beckman Coulter - Cytomics FC500.LMD",
    "cytoflow_instruments/Partec - CyFlow v2.9.fcs",
    "fcsparser/corrupted/corrupted.fcs",
    "fcsparser/cytek-nl-2000/sample_header.fcs",
}


@cache
def _readouts(root: Path) -> dict[str, dict]:
    return {e["file"]: e for e in json.loads((root / "instruments/reference_readouts.json").read_text())["files"]}


def _utf8(text: str) -> str:
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


def test_all_42_files_are_listed(shared_data: Path) -> None:
    assert len(_readouts(shared_data)) == 42
    assert POLICY <= set(_readouts(shared_data))


@pytest.mark.parametrize("name", [f for f in ALL_FILES if f not in POLICY])
def test_matches_reference_parsers(shared_data: Path, name: str) -> None:
    ref = _readouts(shared_data)[name]
    sample = read_raw(shared_data / "instruments" / name)
    flowio_ref, fcsparser_ref = ref.get("flowio") or {}, ref.get("fcsparser") or {}
    oracles = [r for r in (flowio_ref, fcsparser_ref) if r.get("first_rows") is not None]
    assert oracles, "every file outside POLICY is read by at least one reference parser"
    if len(oracles) == 2:
        assert ref["parsers_agree_on_first_rows"], "files where the parsers disagree belong in POLICY"
    for oracle in oracles:
        assert sample.n_events == oracle["events"] and len(sample.channels) == oracle["channels"]
        # Events are float32 by contract: integers above 2**24 (32-bit MoFlo data) equal the reference rounded.
        np.testing.assert_array_equal(sample.events[:2], np.array(oracle["first_rows"]).astype(np.float32))
    if flowio_ref.get("column_sums") is not None:
        sums = np.asarray(flowio_ref["column_sums"])
        exact = sample.events.max(axis=0) < 2**24
        got = sample.events.sum(axis=0, dtype=np.float64)
        np.testing.assert_array_equal(got[exact], sums[exact])
        np.testing.assert_allclose(got[~exact], sums[~exact], rtol=1e-7)
    # TEXT values are UTF-8 (FCS 3.1 section 3.2.4); the readouts decoded some as Latin-1 ("Fluor\u00e2\u0084\u00a2").
    # A missing optional $PnN (FCS 2.0) is named P<n>.
    names = [_utf8(n) if n else f"P{i}" for i, n in enumerate(ref["PnN"], start=1)]
    assert sample.channels == tuple(names)
    assert sample.markers == tuple(_utf8(m or "").strip() for m in ref["PnS"])
    assert sample.version == ref["header_version"]
    assert sample.metadata.get("$CYT", "") == (ref["CYT"] or "")
    assert sample.events.flags.c_contiguous and sample.events.flags.writeable
    assert sample.events.dtype == np.float32
    if flowio_ref.get("n_data_sets"):
        assert count_datasets(sample.path) == flowio_ref["n_data_sets"]
        for k, n in enumerate(flowio_ref.get("events_per_data_set") or []):
            assert read_raw(sample.path, dataset=k).n_events == n


def test_start_offset_discrepancy_uses_text_offsets(shared_data: Path) -> None:
    # HEADER says DATA starts at byte 5555, inside TEXT (bytes 74-6080): segments never overlap (FCS 3.1
    # section 3.1), so the HEADER value is impossible and $BEGINDATA=6081 is used. FlowIO agrees; fcsparser
    # trusts the HEADER and returns TEXT bytes as events (12332 = 0x302C = the characters ",0" of a $SPILL value).
    name = "flowio/fcs_files/data_start_offset_discrepancy_example.fcs"
    ref = _readouts(shared_data)[name]
    path = shared_data / "instruments" / name
    segments, _ = _read_header_and_text(_File(path), 0)
    assert segments.header_data[0] == 5555 and segments.text == (74, 6080) and segments.data[0] == 6081
    sample = read_raw(path)
    np.testing.assert_array_equal(sample.events[:2], ref["flowio"]["first_rows"])
    assert ref["fcsparser"]["first_rows"][0][0] == int.from_bytes(b",0", "little")
    assert path.read_bytes()[5555:5557] == b",0"
    np.testing.assert_allclose(sample.events.sum(axis=0, dtype=np.float64), ref["flowio"]["column_sums"])


def test_cyan_uses_header_offsets(shared_data: Path) -> None:
    # HEADER (2284-141219) and $BEGINDATA/$ENDDATA (2330-141265) both give a segment of exactly $TOT x 24 bytes.
    # The HEADER is the primary record of segment offsets (FCS 3.1 section 3.2), so it wins; the data confirm
    # it: with HEADER offsets every Pulse Width ($P3) value stays below $P3R=512, while the TEXT offsets
    # (FlowIO's choice) start 46 bytes = 23 values later and shift every column by one.
    name = "cytoflow_instruments/Beckman Coulter - Cyan.fcs"
    ref = _readouts(shared_data)[name]
    sample = read_raw(shared_data / "instruments" / name)
    assert sample.metadata["$P3R"] == "512" and sample.events[:, 2].max() < 512
    np.testing.assert_array_equal(sample.events[:2], ref["fcsparser"]["first_rows"])
    # FlowIO's rows are ours read from one value before event 3: its column j holds our column j - 1.
    shifted = np.array(ref["flowio"]["first_rows"])
    np.testing.assert_array_equal(shifted[:, 1:], sample.events[2:4, :-1])
    assert shifted[0, 0] == sample.events[1, -1]
    assert sample.n_events == ref["fcsparser"]["events"] == 5789


def test_ten_bit_lmd_is_stored_in_16_bit_words(shared_data: Path) -> None:
    # $PnB=10 for all 4 parameters of the FCS 2.0 data set. The DATA segment holds 216,577 bytes = $TOT x 4 x 2
    # (+1 off-by-one), not the 135,360 bytes of a packed bit stream, so each value sits in a 16-bit word and is
    # masked to 10 bits. The FCS 3.0 data set in the same file holds the same events at 20-bit resolution:
    # floor(FS / 1024) reproduces the 10-bit values for every event. fcsparser reads a bit stream and is wrong.
    path = shared_data / "instruments/cytoflow_instruments/Beckman Coulter - Cytomics FC500.LMD"
    assert count_datasets(path) == 2
    ten_bit = read_raw(path)
    full = read_raw(path, dataset=1)
    assert ten_bit.version == "FCS2.0" and full.version == "FCS3.0"
    assert ten_bit.n_events == full.n_events == 27072
    assert ten_bit.events.max() <= 1023
    np.testing.assert_array_equal(np.floor(full.events[:, :2].astype(np.float64) / 1024), ten_bit.events[:, :2])
    ref = _readouts(shared_data)["cytoflow_instruments/Beckman Coulter - Cytomics FC500.LMD"]
    assert ref["fcsparser"]["events"] == ten_bit.n_events
    assert not np.array_equal(ref["fcsparser"]["first_rows"], ten_bit.events[:2])


def test_partec_keywords_padded_with_spaces(shared_data: Path) -> None:
    # Both parsers fail with "no $DATATYPE": the keyword is present but preceded by 214 spaces of padding.
    # Keyword names are ASCII without spaces (FCS 3.1 section 3.2.7), so surrounding blanks are stripped.
    # $ENDDATA=586934 equals the file size (one past the last byte): the usual off-by-one, tolerated.
    path = shared_data / "instruments/cytoflow_instruments/Partec - CyFlow v2.9.fcs"
    sample = read_raw(path)
    assert sample.metadata["$DATATYPE"] == "I"
    assert sample.events.shape == (72989, 4) and sample.channels == ("FSC", "SSC", "FL_Green", "Time")
    assert sample.events.max(axis=0).tolist() <= [32767.0] * 4 and sample.events.min() >= 0
    # The layout is right: $TOT x 4 x 2 bytes run exactly from $BEGINDATA to the end of the file.
    assert int(sample.metadata["$ENDDATA"]) == path.stat().st_size
    assert path.stat().st_size - int(sample.metadata["$BEGINDATA"]) == 72989 * 4 * 2


def test_corrupt_and_header_only_files_are_rejected(shared_data: Path) -> None:
    corrupt = shared_data / "instruments/fcsparser/corrupted/corrupted.fcs"
    with pytest.raises(FCSError) as err:
        read_raw(corrupt)
    assert str(err.value) == f"{corrupt}: not an FCS file: 10 bytes is shorter than the 58-byte HEADER"
    header_only = shared_data / "instruments/fcsparser/cytek-nl-2000/sample_header.fcs"
    with pytest.raises(FCSError) as err:
        read_raw(header_only)
    assert str(err.value) == (
        f"{header_only}: DATA segment is missing: it should start at byte 5912 but the file ends at byte 3931 "
        "(a header-only or truncated file)"
    )


def test_multiple_data_sets_and_bit_masks(shared_data: Path) -> None:
    coulter = shared_data / "instruments/flowio/fcs_files/coulter.lmd"  # FlowIO fails on this file
    assert count_datasets(coulter) == 2
    first, second = read_raw(coulter), read_raw(coulter, dataset=1)
    assert (first.version, second.version) == ("FCS2.0", "FCS3.0") and first.n_events == second.n_events == 18110
    with pytest.raises(FCSError, match="has 2 data set"):
        read_raw(coulter, dataset=2)
    # System II: bits D10-D15 carry other information; $PnR=1024 masks them off (FCS 3.1 section 3.3.4).
    path = shared_data / "instruments/cytoflow_instruments/System II listmode with extra info in bits D10-D15.LMD"
    system2 = read_raw(path)
    assert system2.events.max() <= 1023
    segments, meta = _read_header_and_text(_File(path), 0)
    words = np.frombuffer(path.read_bytes(), "<u2", count=system2.events.size, offset=segments.data[0])
    assert meta["$BYTEORD"] == "1,2" and words.max() > 1023  # the high bits really are set in the file
    np.testing.assert_array_equal(system2.events.ravel(), words & 1023)


def test_twenty_four_bit_integers(shared_data: Path) -> None:
    # FlowIO cannot read 24-bit data; fcsparser can, and cytopipe must match it on the whole first rows.
    name = "fcsparser/Cytek_xP5/Cytek_xP5.fcs"
    sample = read_raw(shared_data / "instruments" / name)
    assert sample.metadata["$P1B"] == "24" and sample.events.max() < 2**24
    np.testing.assert_array_equal(sample.events[:2], _readouts(shared_data)[name]["fcsparser"]["first_rows"])


def test_scaled_values_match_flowio_truth(shared_data: Path) -> None:
    # data1.fcs (FCS 2.0, 10-bit log channels, $P1G=3.67, $P2G=8) preprocessed as flowCore/FlowIO do;
    # float64 because float32 cannot hold 10**(4*x/1024) exactly and FlowIO's truth is exact.
    data1 = read_fcs(shared_data / "gatingml2/isac_gatingMLData/FCSFiles/data1.fcs", scale=True)
    truth = np.load(shared_data / "instruments/flowio/truth/data1_preprocessed.npy")
    assert data1.events.dtype == np.float64
    # numpy's pow rounds differently across releases (2.3.5 and 2.4.6 move 2,330 of 106,936 values by up to
    # 1.1e-13, about 1e-16 relative): equal to within 1e-12 relative, 100x that and far below float32 resolution.
    np.testing.assert_allclose(data1.events, truth, rtol=1e-12, atol=0)
    raw = read_raw(shared_data / "gatingml2/isac_gatingMLData/FCSFiles/data1.fcs")
    np.testing.assert_array_equal(
        raw.events, np.load(shared_data / "instruments/flowio/truth/data1_original_events.npy")
    )
    # Accuri C6 Plus: linear channels without $PnG; FlowIO also multiplies Time by $TIMESTEP, which the
    # flowCore "linearize-with-PnG-scaling" convention (and cytopipe) does not.
    accuri = read_fcs(shared_data / "instruments/flowio/fcs_files/B01 KC-A-W---91-US.fcs", scale=True)
    truth = np.load(shared_data / "instruments/flowio/truth/B01 KC-A-W---91-US_preprocessed_events.npy")
    time = accuri.find_channel("Time")
    others = [i for i in range(len(accuri.channels)) if i != time]
    np.testing.assert_array_equal(accuri.events[:, others], truth[:, others])
    step = float(accuri.metadata["$TIMESTEP"])
    np.testing.assert_allclose(accuri.events[:, time] * step, truth[:, time], rtol=1e-12)


@pytest.mark.parametrize(
    "name",
    [
        "flowkit/test_comp_example.fcs",  # BD LSR II, big-endian float, SPILL, off-by-one DATA offset
        "flowio/fcs_files/B01 KC-A-W---91-US.fcs",  # Accuri, big-endian int32, $SPILLOVER
        "fcsparser/cyflow_cube_8/cyflow_cube_8.fcs",  # 8/16/32-bit integers
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_exported_population_reads_back_identically_everywhere(shared_data: Path, tmp_path: Path, name: str) -> None:
    import flowio
    import flowkit

    from cytopipe.compensate import compensate, spillover_from_metadata
    from cytopipe.fcs import write_fcs

    source = read_raw(shared_data / "instruments" / name)
    population = source.events[::3]  # any subset of events, as `cytopipe export` writes
    out = tmp_path / "population.fcs"
    write_fcs(out, population, source.channels, source.markers, source.metadata)
    ours = read_raw(out)
    np.testing.assert_array_equal(ours.events, population)
    assert ours.channels == source.channels and ours.markers == source.markers
    kept = {k: v for k, v in source.metadata.items() if not k.startswith(("$BEGIN", "$END", "$TOT", "$P"))}
    for key in ("$BYTEORD", "$DATATYPE", "$MODE", "$NEXTDATA"):
        kept.pop(key, None)
    assert {k: ours.metadata[k] for k in kept if k in ours.metadata} == {k: v for k, v in kept.items() if v.strip()}
    for n in range(1, len(source.channels) + 1):  # per-parameter keywords travel with their channel
        assert ours.metadata[f"$P{n}R"] == source.metadata[f"$P{n}R"]
        assert ours.metadata.get(f"$P{n}V") == source.metadata.get(f"$P{n}V")
    flow = flowio.FlowData(str(out))
    np.testing.assert_array_equal(np.asarray(flow.as_array(preprocess=False), np.float32), population)
    spill = spillover_from_metadata(ours.metadata, ours.channels, path=str(out))
    assert (spill is None) == (name.startswith("fcsparser/cyflow"))  # the kept keyword is found again
    # FlowKit treats every non-scatter, non-time channel as fluorescent unless told otherwise ("Width").
    others = [
        c for c in ours.channels if spill and c not in spill.channels and not c.startswith(("FSC", "SSC", "Time"))
    ]
    kit = flowkit.Sample(str(out), preprocess=False, null_channel_list=others or None)
    np.testing.assert_array_equal(kit.get_events(source="raw").astype(np.float32), population)
    if spill is not None:
        kit.apply_compensation(kit.metadata[spill.source.lower().lstrip("$")])
        theirs = kit.get_events(source="comp")
        np.testing.assert_allclose(compensate(ours.events, ours.channels, spill), theirs, rtol=1e-5, atol=0.05)


def test_flowjo_nine_bit_streams_are_least_significant_bit_first(shared_data: Path) -> None:
    # The 16 LabKey/FlowJo tutorial files (FCS 2.0, "FlowJo 2.0", 1993): $PnB=9 and a DATA segment of 56,250 bytes
    # for 10,000 x 5 values = 50,000 x 9 / 8, so the values form a bit stream, not 16-bit words (100,000 bytes).
    # FCS 2.0 does not say in which bit order. Least significant bit first gives forward/side scatter correlated
    # as in any blood sample (r = 0.58-0.69) and a lymphocyte peak; most significant first, decoded independently
    # below, gives noise (|r| < 0.05). FlowIO cannot read these files; fcsparser agrees at most on the first value.
    folder = shared_data / "flowjo/labkey_flowjo_advanced_tutorial/fcs"
    readouts = {e["file"]: e for e in json.loads((shared_data / "flowjo/reference_readouts.json").read_text())["files"]}
    files = sorted(folder.glob("*.fcs"))
    assert len(files) == 16
    for path in files:
        sample = read_raw(path)
        assert sample.events.shape == (10000, 5) and sample.events.min() >= 0 and sample.events.max() <= 511
        assert np.corrcoef(sample.events[:, 0], sample.events[:, 1])[0, 1] > 0.5
        segments, _ = _read_header_and_text(_File(path), 0)
        assert segments.data[1] - segments.data[0] + 1 == 56_250
        raw = np.frombuffer(path.read_bytes(), np.uint8, count=56_250, offset=segments.data[0])
        msb_first = (np.unpackbits(raw).reshape(-1, 9) @ (1 << np.arange(8, -1, -1))).reshape(-1, 5)
        assert abs(np.corrcoef(msb_first[:, 0], msb_first[:, 1])[0, 1]) < 0.05
        ref = readouts[f"labkey_flowjo_advanced_tutorial/fcs/{path.name}"]
        assert ref["fcsparser"]["events"] == 10000 and "error" in ref["flowio"]
    scaled = read_fcs(files[0], scale=True)  # $P1G=2.5 on the linear ForSc; $PnE="3.84, 0.2" (with a space)
    raw_events = read_raw(files[0]).events.astype(np.float64)
    np.testing.assert_allclose(scaled.events[:, 0], raw_events[:, 0] / 2.5)
    np.testing.assert_allclose(scaled.events[:, 1], 10 ** (3.84 * raw_events[:, 1] / 512) * 0.2)


def test_other_shared_files_match_reference_parsers(shared_data: Path) -> None:
    # The FlowJo workspace data and the real Treg-panel file (whose DATA was mangled by a text conversion, so its
    # values are garbage but still must be decoded exactly as the reference parsers do).
    checked = 0
    for folder in ("flowjo", "treg_real"):
        for ref in json.loads((shared_data / folder / "reference_readouts.json").read_text())["files"]:
            if not ref.get("parsers_agree_on_first_rows"):
                continue  # the LabKey 9-bit files: see the test above
            sample = read_raw(shared_data / folder / ref["file"])
            expected = np.array(ref["flowio"]["first_rows"], dtype=np.float32)
            np.testing.assert_array_equal(sample.events[:2], expected)
            assert sample.n_events == ref["flowio"]["events"] and sample.channels == tuple(ref["PnN"])
            sums = np.array(ref["flowio"]["column_sums"], dtype=np.float64)
            np.testing.assert_allclose(sample.events.sum(axis=0, dtype=np.float64), sums, rtol=1e-7)
            checked += 1
    assert checked == 4


def test_the_workers_hashed_read_gives_read_fcs_values_on_every_real_file(shared_data: Path) -> None:
    """A pool worker reads each file with read_fcs_sha256 (float data column-major, each piece hashed while it is
    transposed): on every real FCS file that read_fcs reads, from every instrument and layout, the same dtype,
    shape, channels and bytes as read_fcs, and the SHA-256 of the whole file. Bytes, not a tolerance: the worker
    must gate exactly the values every other command decodes."""
    import hashlib

    from cytopipe.fcs import read_fcs_sha256

    files = sorted(p for p in shared_data.rglob("*") if p.suffix.lower() in (".fcs", ".lmd") and p.is_file())
    compared = columns = 0
    for path in files:
        try:
            expected = read_fcs(path)
        except FCSError:
            continue  # refused by read_fcs (corrupt files): test_corrupt_and_header_only_files_are_rejected
        sample, digest = read_fcs_sha256(path)
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), path
        assert sample.channels == expected.channels, path
        assert (sample.events.dtype, sample.events.shape) == (expected.events.dtype, expected.events.shape), path
        assert np.ascontiguousarray(sample.events).tobytes() == np.ascontiguousarray(expected.events).tobytes(), path
        compared += 1
        columns += bool(sample.events.flags.f_contiguous and not sample.events.flags.c_contiguous)
    # The shared folder holds over a hundred readable files, most of them float data (the column-major path).
    assert compared >= 100 and columns >= 50, (compared, columns)

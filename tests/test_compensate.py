"""Spillover parsing (keywords and files) and compensation, against a hand-built case and FlowKit/flowutils."""

from __future__ import annotations

from pathlib import Path

import flowkit
import flowutils.compensate
import numpy as np
import pytest

from cytopipe.compensate import Spillover, compensate, read_spillover_file, spillover_from_metadata
from cytopipe.errors import FCSError, MarkerError
from cytopipe.fcs import read_fcs

CHANNELS = ("FSC-A", "FITC-A", "PE-A", "PerCP-A", "Time")
DETECTORS = ("FITC-A", "PE-A", "PerCP-A")
# Realistic values (DOMAIN.md): FITC->PE 0.165, PE->FITC 0.0125, PE->PerCP 0.2.
S = np.array([[1.0, 0.165, 0.02], [0.0125, 1.0, 0.2], [0.0, 0.03, 1.0]])


def _spill_keyword(names: tuple[str, ...], matrix: np.ndarray) -> str:
    return ",".join([str(len(names)), *names, *(repr(float(v)) for v in matrix.ravel())])


def _mixed(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pure single-fluorochrome signals mixed through S; scatter and time untouched."""
    rng = np.random.default_rng(seed)
    n = 5000
    true = np.zeros((n, 5))
    true[:, 0] = rng.normal(50_000, 8_000, n)
    true[:, 1:4] = rng.lognormal(6, 1.2, (n, 3)) * (rng.random((n, 3)) < 0.5)
    true[:, 4] = np.arange(n) * 0.1
    raw = true.copy()
    raw[:, 1:4] = true[:, 1:4] @ S
    return true, raw.astype(np.float32)


def test_hand_built_mixture_is_recovered() -> None:
    true, raw = _mixed()
    spill = spillover_from_metadata({"$SPILLOVER": _spill_keyword(DETECTORS, S)}, CHANNELS)
    assert spill is not None and spill.source == "$SPILLOVER" and spill.channels == DETECTORS
    comp = compensate(raw, CHANNELS, spill)
    assert comp.dtype == np.float32 and comp.flags.c_contiguous
    np.testing.assert_allclose(comp[:, 1:4], true[:, 1:4], rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(comp[:, [0, 4]], raw[:, [0, 4]])  # non-spillover columns copied unchanged
    assert not np.allclose(raw[:, 1:4], true[:, 1:4], rtol=1e-2)  # so the test fails without compensation


def test_matrix_order_differs_from_column_order() -> None:
    true, raw = _mixed(1)
    order = [2, 0, 1]  # PerCP, FITC, PE
    names = tuple(DETECTORS[i] for i in order)
    spill = Spillover(names, S[np.ix_(order, order)], "test")
    np.testing.assert_allclose(compensate(raw, CHANNELS, spill)[:, 1:4], true[:, 1:4], rtol=1e-5, atol=1e-2)


def test_in_place_and_float64() -> None:
    true, raw = _mixed(2)
    spill = Spillover(DETECTORS, S, "test")
    expected = compensate(raw, CHANNELS, spill)
    work = raw.copy()
    assert compensate(work, CHANNELS, spill, out=work) is work
    np.testing.assert_array_equal(work, expected)
    comp64 = compensate(raw.astype(np.float64), CHANNELS, spill)
    assert comp64.dtype == np.float64
    np.testing.assert_allclose(comp64[:, 1:4], true[:, 1:4], rtol=1e-6, atol=1e-3)
    assert spill.inverse is spill.inverse  # computed once


def test_missing_detector_raises_marker_error() -> None:
    spill = Spillover(("FITC-A", "APC-A"), np.eye(2), "file:panel.csv")
    with pytest.raises(MarkerError, match=r"file:panel\.csv: detector 'APC-A' is not a channel"):
        compensate(np.zeros((3, 5), np.float32), CHANNELS, spill)


@pytest.mark.parametrize("keyword", ["$SPILLOVER", "SPILL", "$SPILL"])
def test_every_spillover_keyword(keyword: str) -> None:
    spill = spillover_from_metadata({keyword: _spill_keyword(DETECTORS, S)}, CHANNELS)
    assert spill is not None and spill.source == keyword
    np.testing.assert_array_equal(spill.matrix, S)


def test_names_by_index_and_case() -> None:
    value = _spill_keyword(("2", "pe-a", "PerCP-A"), S)
    spill = spillover_from_metadata({"SPILL": value}, CHANNELS)
    assert spill is not None and spill.channels == DETECTORS


def test_comp_keyword_is_a_compensation_matrix() -> None:
    # FCS 2.0 $COMP holds inv(S); reading it must give S back, and compensating must undo the mixture.
    compmatrix = np.linalg.inv(S)
    spill = spillover_from_metadata({"$COMP": _spill_keyword(DETECTORS, compmatrix)}, CHANNELS)
    assert spill is not None and spill.source == "$COMP (inverted)"
    np.testing.assert_allclose(spill.matrix, S, atol=1e-12)
    # Without names, an n equal to $PAR means one row per parameter.
    full = np.eye(5)
    full[1:4, 1:4] = compmatrix
    unnamed = ",".join(["5", *(str(v) for v in full.ravel())])
    spill = spillover_from_metadata({"$COMP": unnamed}, CHANNELS)
    assert spill is not None and spill.channels == CHANNELS
    np.testing.assert_allclose(spill.matrix[1:4, 1:4], S, atol=1e-12)


def test_no_spillover_and_non_matrix_keywords() -> None:
    assert spillover_from_metadata({"$CYT": "FACSCalibur"}, CHANNELS) is None
    # FlowJo writes COMP=<name of the compensation> and identity SPILL when none was set; neither is an error.
    assert spillover_from_metadata({"COMP": "Unstained Cells", "$COMP": "none"}, CHANNELS) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3,FITC-A,PE-A,PerCP-A,1,0,0,0,1,0,0,0", "expected 3 names and 9 values after the size, found 11 fields"),
        ("2,FITC-A,APC-A,1,0,0,1", "detector 'APC-A' is not a channel of the sample"),
        ("2,FITC-A,PE-A,1,x,0,1", "matrix value 'x' is not a number"),
        ("2,FITC-A,FITC-A,1,0,0,1", "appears twice"),
        ("2,FITC-A,PE-A,1,nan,0,1", "non-finite values"),
    ],
)
def test_malformed_keyword_names_the_file(value: str, message: str) -> None:
    with pytest.raises(FCSError) as err:
        spillover_from_metadata({"SPILL": value, "$FIL": "tube7.fcs"}, CHANNELS)
    assert str(err.value).startswith("tube7.fcs: SPILL: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_singular_matrix_is_refused() -> None:
    spill = Spillover(("FITC-A", "PE-A"), np.array([[1.0, 1.0], [1.0, 1.0]]), "SPILL")
    with pytest.raises(FCSError, match="singular"):
        compensate(np.zeros((2, 5), np.float32), CHANNELS, spill)


# ---- files -----------------------------------------------------------------------------------------------------


def test_flowjo_text_matrix(shared_data: Path) -> None:
    spill = read_spillover_file(shared_data / "instruments/flowcore/compdata/compmatrix")
    assert spill.channels == ("FL1-H", "FL2-H", "FL3-H", "FL4-H")
    np.testing.assert_array_equal(spill.matrix[0], [1, 0.24, 0.032, 1.13e-3])
    np.testing.assert_array_equal(spill.matrix[:, 3], [1.13e-3, 2.74e-3, 0.21, 1])
    # flowCore's own estimate from the single-stain controls (R write.table, row names) is close to FlowJo's.
    ref = read_spillover_file(shared_data / "instruments/flowcore/compdata/compref")
    assert ref.channels == spill.channels
    np.testing.assert_allclose(ref.matrix, spill.matrix, atol=0.025)
    assert ref.matrix[0, 1] == pytest.approx(0.242022277630705)


def test_csv_with_row_names_in_another_order(tmp_path: Path) -> None:
    path = tmp_path / "spill.csv"
    path.write_text(
        ",FITC-A,PE-A,PerCP-A\nPE-A,0.0125,1,0.2\nFITC-A,1,0.165,0.02\nPerCP-A,0,0.03,1\n", encoding="utf-8"
    )
    spill = read_spillover_file(path, CHANNELS)
    assert spill.channels == DETECTORS and spill.source == f"file:{path}"
    np.testing.assert_array_equal(spill.matrix, S)
    with pytest.raises(FCSError, match=r"spill\.csv: detector 'PerCP-A' is not a channel"):
        read_spillover_file(path, ("FITC-A", "PE-A"))
    bad = tmp_path / "bad.csv"
    bad.write_text("FITC-A,PE-A\n1,0.1\n", encoding="utf-8")
    with pytest.raises(FCSError, match=r"bad\.csv: no square spillover matrix"):
        read_spillover_file(bad)
    with pytest.raises(FCSError, match="cannot read spillover file"):
        read_spillover_file(tmp_path / "absent.csv")


@pytest.mark.filterwarnings("ignore:FCS file test_comp_example.fcs reported incorrect data offset")
def test_against_flowkit_on_a_real_file(shared_data: Path) -> None:
    fcs = shared_data / "instruments/flowkit/test_comp_example.fcs"
    csv = shared_data / "instruments/flowkit/comp_complete_example.csv"
    sample = read_fcs(fcs)
    spill = read_spillover_file(csv, sample.channels)
    assert len(spill.channels) == 14
    ours = compensate(sample.events, sample.channels, spill)
    kit = flowkit.Sample(str(fcs), ignore_offset_error=True, preprocess=False)
    kit.apply_compensation(str(csv))
    theirs = kit.get_events(source="comp")
    np.testing.assert_array_equal(kit.get_events(source="raw").astype(np.float32), sample.events)
    np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=0.05)


def test_against_flowutils_with_the_files_own_keyword(shared_data: Path) -> None:
    sample = read_fcs(shared_data / "instruments/flowio/fcs_files/B01 KC-A-W---91-US.fcs")
    spill = spillover_from_metadata(sample.metadata, sample.channels, path=sample.path)
    assert spill is not None and spill.source == "$SPILLOVER" and len(spill.channels) == 8
    index = [sample.channels.index(c) for c in spill.channels]
    theirs = flowutils.compensate.compensate(sample.events.astype(np.float64), spill.matrix, index)
    ours = compensate(sample.events, sample.channels, spill)
    scale = np.abs(theirs).max(axis=0) + 1
    assert np.max(np.abs(ours - theirs) / scale) < 1e-6


def test_beckman_dfc_pairs(shared_data: Path) -> None:
    sample = read_fcs(shared_data / "instruments/fcsparser/fake_bitmask_error/fcs1_cleaned.lmd")
    spill = spillover_from_metadata(sample.metadata, sample.channels)
    assert spill is not None and spill.source == "$DFCiTOj"
    assert spill.channels == ("FL1 INT LOG", "FL2 INT LOG", "FL3 INT LOG", "FL4 INT LOG", "FL5 INT LOG")
    # $DFC1TO2 = 13.4 (% of FL1 in FL2), $DFC2TO3 = 44.8, $DFC4TO5 = 9.9
    assert spill.matrix[0, 1] == pytest.approx(0.134) and spill.matrix[1, 2] == pytest.approx(0.448)
    assert spill.matrix[3, 4] == pytest.approx(0.099) and np.all(np.diag(spill.matrix) == 1)
    gallios = read_fcs(shared_data / "instruments/cytoflow_instruments/Beckman Coulter - Gallios.LMD")
    assert spillover_from_metadata(gallios.metadata, gallios.channels) is None  # all $DFC are 0.0


def test_columns_between_detectors_are_untouched_even_next_to_inf() -> None:
    _, raw = _mixed(3)
    raw[0, 1] = np.inf  # a saturated/garbage FITC value must not leak NaN (0 * inf) into PE, which is not in S
    spill = Spillover(("PerCP-A", "FITC-A"), np.array([[1.0, 0.01], [0.02, 1.0]]), "test")
    comp = compensate(raw, CHANNELS, spill)
    np.testing.assert_array_equal(comp[:, [0, 2, 4]], raw[:, [0, 2, 4]])
    expected = raw[1:, [3, 1]].astype(np.float64) @ np.linalg.inv(spill.matrix)
    np.testing.assert_allclose(comp[1:, [3, 1]], expected, rtol=1e-5, atol=1e-2)
    work = raw.copy()
    compensate(work, CHANNELS, spill, out=work)
    np.testing.assert_array_equal(work[:, 2], raw[:, 2])


def test_a_keyword_is_parsed_once_and_a_malformed_one_fails_every_time() -> None:
    value = "2,FITC-A,PE-A,1,0.1,0.02,1"
    first = spillover_from_metadata({"$SPILLOVER": value, "$FIL": "a.fcs"}, CHANNELS)
    again = spillover_from_metadata({"$SPILLOVER": value, "$FIL": "b.fcs"}, CHANNELS)
    assert again is first and not first.matrix.flags.writeable
    assert spillover_from_metadata({"$SPILLOVER": value}, (*CHANNELS, "Time")) is not first  # other channels
    for name in ("a.fcs", "b.fcs"):
        with pytest.raises(FCSError, match=f"^{name}: SPILL: .*not a number"):
            spillover_from_metadata({"SPILL": "2,FITC-A,PE-A,1,x,0,1", "$FIL": name}, CHANNELS)

"""Gating-ML 2.0 compliance: every expected per-event result of the ISAC suite and FlowKit's single-gate files.

The oracle is ``../shared/data/gatingml2`` (see its SOURCES.md). Each case must agree on every event; there is no
tolerance. Data are read as the oracle assumes (flowCore "linearize-with-PnG-scaling" = ``read_fcs(scale=True)``)
and gated in exact (float64) mode. ``Not_<gate>`` ids are flowUtils' implicit complements of ``<gate>``.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from cytopipe.fcs import read_fcs
from cytopipe.gates import GatingResult
from cytopipe.gatingml import read_gatingml

ISAC = SHARED_DATA / "gatingml2" / "isac_gatingMLData"
FLOWKIT = SHARED_DATA / "gatingml2" / "flowkit_gate_ref"


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


ISAC_CASES = _rows(ISAC / "gate_result_index.csv")
FLOWKIT_CASES = _rows(FLOWKIT / "flowkit_gate_index.csv")


@cache
def _gated(fcs: Path, xml: Path, exact: bool = True) -> GatingResult:
    return read_gatingml(xml).apply(read_fcs(fcs, scale=True), exact=exact)


def _expected(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.int8).astype(bool)


def _membership(result: GatingResult, gate_id: str) -> np.ndarray:
    if gate_id not in result.masks and gate_id.startswith("Not_"):
        return ~result.masks[gate_id[len("Not_"):]]
    return result.masks[gate_id]


def _assert_same(got: np.ndarray, expected: np.ndarray, label: str) -> None:
    assert got.shape == expected.shape, f"{label}: {got.shape[0]} events, expected {expected.shape[0]}"
    wrong = np.flatnonzero(got != expected)
    assert wrong.size == 0, (
        f"{label}: {wrong.size} events differ (in gate {int(got.sum())}, expected {int(expected.sum())}; "
        f"first event indices {wrong[:5].tolist()})"
    )


def test_suite_is_complete(shared_data: Path) -> None:
    """The index lists the whole suite: 190 ISAC cases over 5 gate files and 51 FlowKit single-gate cases."""
    assert len(ISAC_CASES) == 190
    assert {row["gating_ml_file"] for row in ISAC_CASES} == {f"Gating-MLFiles/gates{k}.xml" for k in range(1, 6)}
    assert len(FLOWKIT_CASES) == 51


@pytest.mark.parametrize("case", ISAC_CASES, ids=[f"set{r['set']}-{r['gate_id']}" for r in ISAC_CASES])
def test_isac_case(shared_data: Path, case: dict[str, str]) -> None:
    result = _gated(ISAC / case["fcs_file"], ISAC / case["gating_ml_file"])
    expected = _expected(ISAC / case["result_file"])
    assert int(expected.sum()) == int(case["n_in_gate"])
    _assert_same(_membership(result, case["gate_id"]), expected, case["gate_id"])


@pytest.mark.parametrize("case", FLOWKIT_CASES, ids=[f"{r['flowkit_xml'][:-4]}-{r['gate_id']}" for r in FLOWKIT_CASES])
def test_flowkit_single_gate_file(shared_data: Path, case: dict[str, str]) -> None:
    result = _gated(ISAC / "FCSFiles" / "data1.fcs", FLOWKIT / "gml" / case["flowkit_xml"])
    expected = _expected(shared_data / "gatingml2" / case["expected_result_location"])
    _assert_same(result.masks[case["gate_id"]], expected, case["gate_id"])


def test_flowkit_all_gates_file_matches_single_files(shared_data: Path) -> None:
    """``gml_all_gates.xml`` (every gate in one hierarchy) agrees with the single-gate references."""
    result = _gated(ISAC / "FCSFiles" / "data1.fcs", FLOWKIT / "gml" / "gml_all_gates.xml")
    checked = 0
    for case in FLOWKIT_CASES:
        if case["gate_id"] in result.masks and case["flowkit_xml"] != "gml_matrix_poly4_gate.xml":
            expected = _expected(shared_data / "gatingml2" / case["expected_result_location"])
            _assert_same(result.masks[case["gate_id"]], expected, case["gate_id"])
            checked += 1
    assert checked >= 40


def test_fast_float32_mode_also_passes_the_suite(shared_data: Path) -> None:
    """The default (float32, table logicle) mode: not guaranteed exact on boundaries in general, but on this suite
    it agrees on every event too, which guards the fast path against regressions on real data."""
    wrong = {}
    for case in ISAC_CASES:
        result = _gated(ISAC / case["fcs_file"], ISAC / case["gating_ml_file"], exact=False)
        got = _membership(result, case["gate_id"])
        differing = int(np.count_nonzero(got != _expected(ISAC / case["result_file"])))
        if differing:
            wrong[case["gate_id"]] = differing
    assert not wrong

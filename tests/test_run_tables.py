"""The run's result tables as plain columns (cytopipe.columns) against the pandas code they replace: gate drift,
reference drift, the joins and sorts of the batch tables, and :class:`RunResult`'s DataFrames built on access.

The oracles are pandas itself (``DataFrame.join``, ``sort_values``, ``concat``) and, for :func:`gate_drift`, the
DataFrame implementation it had before (a melt, a groupby and a merge), kept here verbatim.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytopipe import columns
from cytopipe.autogate import gate_drift
from cytopipe.batch.runner import RunResult
from cytopipe.batch.tables import _concat, _join, _per_sample, _sort_rows
from cytopipe.reference import DRIFT_COLUMNS, drift_decades, drift_flags, reference_drift

_IDENTITY = {"sample", "subject", "timepoint", "day", "baseline", "population", "type", "scope", "fitted_on",
             "n_samples", "n_events"}


def _pandas_gate_drift(fitted_rows) -> pd.DataFrame:
    """``gate_drift`` as it was written with pandas (the oracle)."""
    table = pd.DataFrame(list(fitted_rows) if not isinstance(fitted_rows, pd.DataFrame) else fitted_rows)
    names = ["subject", "sample", "timepoint", "day", "population", "parameter", "value", "baseline_value",
             "drift", "drift_pct"]
    if table.empty:
        return pd.DataFrame(columns=names)
    table = table[pd.to_numeric(table["day"], errors="coerce").notna()].copy()
    table["day"] = table["day"].astype(float)
    for col in ("sample", "timepoint"):
        if col not in table.columns:
            table[col] = ""
    params = [c for c in table.columns if c not in _IDENTITY and pd.api.types.is_numeric_dtype(table[c])]
    ids = ["subject", "sample", "timepoint", "day", "population"]
    if "baseline" in table.columns:
        ids.append("baseline")
    long = table.melt(id_vars=ids, value_vars=params, var_name="parameter", value_name="value")
    long = long.dropna(subset=["value"])
    earliest = long["day"] == long.groupby("subject")["day"].transform("min")
    if "baseline" in long.columns:
        flagged = long["baseline"].astype(bool)
        base = long[flagged | (earliest & ~flagged.groupby(long["subject"]).transform("any"))]
    else:
        base = long[earliest]
    base = base.groupby(["subject", "population", "parameter"], as_index=False)["value"].first()
    out = long.merge(base.rename(columns={"value": "baseline_value"}), on=["subject", "population", "parameter"])
    out["drift"] = out["value"] - out["baseline_value"]
    scale = out["baseline_value"].abs().where(out["baseline_value"].abs() > 0)
    out["drift_pct"] = 100.0 * out["drift"] / scale
    order = {n: i for i, n in enumerate(dict.fromkeys(table["population"]))}
    out["_order"] = out["population"].map(order)
    out = out.sort_values(["subject", "day", "sample", "_order", "parameter"], kind="mergesort")
    return out[names].reset_index(drop=True)


_DAY = st.sampled_from([0, 7, 14, 3.5, math.nan, "", None, "7", " 14", "nan", "x", "1e1"])
_VALUE = st.one_of(st.sampled_from([math.nan, 0.0, -0.0, 1.5, -2.25, 1e-9, 3.0]), st.floats(-1e6, 1e6))


@st.composite
def _fitted_rows(draw) -> list[dict]:
    """``gates_fitted.csv``-like rows: subject-scope rows without a day, per-sample rows, gaps and NaN."""
    rows = []
    with_baseline = draw(st.booleans())
    for _ in range(draw(st.integers(0, 12))):
        row = {"sample": draw(st.sampled_from(["s1", "s2", "s3", ""])), "subject": draw(st.sampled_from("AB")),
               "timepoint": draw(st.sampled_from(["T0", "T1", ""])), "day": draw(_DAY),
               "population": draw(st.sampled_from(["CD3+", "Treg", "Lymphocytes"])), "type": "auto",
               "n_events": draw(st.integers(0, 5))}
        for name in draw(st.lists(st.sampled_from(["CD3 min", "CD25 min", "FoxP3 max"]), max_size=3, unique=True)):
            row[name] = draw(_VALUE)
        if draw(st.booleans()):
            row["CD3 method"] = "valley"
        if with_baseline:
            row["baseline"] = draw(st.booleans())
        rows.append(row)
    return rows


def _names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row))


@given(_fitted_rows())
@settings(max_examples=200, deadline=None)
def test_gate_drift_is_the_pandas_computation(rows):
    expected = _pandas_gate_drift(rows)
    got = gate_drift(rows)  # rows in: a DataFrame, as before
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    table = gate_drift(columns.from_rows(rows, _names(rows)))  # a table in: a table
    assert isinstance(table, dict)
    pd.testing.assert_frame_equal(columns.to_frame(table), expected, check_exact=True)
    pd.testing.assert_frame_equal(gate_drift(pd.DataFrame(rows)), expected, check_exact=True)


def test_gate_drift_of_integer_parameters_and_of_rows_without_days():
    rows = [{"subject": "A", "sample": "a0", "day": 0, "population": "P", "count": 4},
            {"subject": "A", "sample": "a1", "day": 7, "population": "P", "count": 6},
            {"subject": "A", "sample": "", "day": "", "population": "Q", "count": 9}]
    pd.testing.assert_frame_equal(gate_drift(rows), _pandas_gate_drift(rows), check_exact=True)
    assert gate_drift(rows)["drift"].tolist() == [0, 2]
    only_shared = [row for row in rows if row["day"] == ""]
    assert columns.length(gate_drift(columns.from_rows(only_shared, _names(only_shared)))) == 0
    assert list(gate_drift([])) == list(_pandas_gate_drift([]))


def _reference_rows() -> list[dict]:
    """Visits of two subjects, days out of order, one day missing, a subject without a flagged baseline."""
    refs = [{"CD4 T|CD4": 100.0, "lymphocytes|FSC-A": 50.0}, {"CD4 T|CD4": 130.0, "lymphocytes|FSC-A": 52.0},
            {"CD4 T|CD4": 90.0}, {"CD4 T|CD4": 200.0, "CD8 T|CD8": 10.0}, {"CD4 T|CD4": 150.0, "CD8 T|CD8": 30.0}]
    return [{"sample": "b2", "subject": "B", "timepoint": "W2", "day": 14.0, "baseline": False, "references": refs[4]},
            {"sample": "a1", "subject": "A", "timepoint": "W1", "day": 7.0, "baseline": False, "references": refs[1]},
            {"sample": "a0", "subject": "A", "timepoint": "W0", "day": 0.0, "baseline": True, "references": refs[0]},
            {"sample": "ax", "subject": "A", "timepoint": "?", "day": math.nan, "baseline": False,
             "references": refs[2]},
            {"sample": "b0", "subject": "B", "timepoint": "W0", "day": 3.0, "baseline": False, "references": refs[3]}]


def test_reference_drift_orders_missing_days_last_as_pandas_sorts_them():
    rows = _reference_rows()
    frame = reference_drift(rows, 20.0)
    table = reference_drift(columns.from_rows(rows, list(rows[0])), 20.0)
    assert isinstance(frame, pd.DataFrame) and isinstance(table, dict)
    pd.testing.assert_frame_equal(columns.to_frame(table), frame, check_exact=True)
    pd.testing.assert_frame_equal(reference_drift(pd.DataFrame(rows), 20.0), frame, check_exact=True)
    # The visits of each subject as pandas sorts them (missing day last); B falls back to its earliest day (b0).
    order = pd.DataFrame(rows).sort_values(["subject", "day", "sample"], kind="mergesort")["sample"].tolist()
    assert list(dict.fromkeys(frame["sample"])) == order == ["a0", "a1", "ax", "b0", "b2"]
    assert frame.loc[frame["sample"] == "b2", "baseline_value"].tolist() == [200.0, 10.0]
    assert frame.loc[frame["sample"] == "b2", "drift_pct"].tolist() == pytest.approx([-25.0, 200.0])
    # Flags and decades read the same from the table and the frame.
    assert drift_flags(table) == drift_flags(frame) == {
        "a1": "reference drift against baseline > 20%: CD4 on CD4 T +30%",
        "b2": "reference drift against baseline > 20%: CD4 on CD4 T -25%, CD8 on CD8 T +200%"}
    decades = drift_decades(table)
    assert decades == drift_decades(frame)
    assert decades["b2"] == pytest.approx(math.log10(3.0)) and decades["a1"] == pytest.approx(math.log10(1.3))
    assert "a0" in decades and decades["a0"] == 0.0


def test_reference_drift_of_no_rows_is_empty_with_its_columns():
    empty = reference_drift(columns.from_rows([], ["sample", "subject", "timepoint", "day", "baseline",
                                                   "references"]))
    assert list(empty) == list(DRIFT_COLUMNS) and columns.length(empty) == 0
    pd.testing.assert_frame_equal(reference_drift([]), pd.DataFrame(columns=list(DRIFT_COLUMNS)))
    assert drift_flags(empty) == drift_flags({}) == drift_flags(None) == {}
    assert drift_decades(empty) == drift_decades({}) == {}


def _sheet() -> dict[str, np.ndarray]:
    return columns.from_rows([{"sample": "s1", "subject": "A", "day": 0.0, "baseline": True, "batch": "x"},
                              {"sample": "s2", "subject": "B", "day": 7.0, "baseline": False, "batch": "y"}],
                             ["sample", "subject", "day", "baseline", "batch"])


@pytest.mark.parametrize("samples", [["s2", "s1"], ["s2", "gone", "s1"], ["gone"], []])
def test_join_is_pandas_join_with_and_without_missing_samples(samples):
    sheet = _sheet()
    left = columns.from_rows([{"sample": s, "n": i} for i, s in enumerate(samples)], ["sample", "n"])
    names = ["baseline", "day", "batch", "subject"]
    got = columns.to_frame(_join(left, sheet, "sample", names))
    expected = columns.to_frame(left).join(columns.to_frame(sheet).set_index("sample")[names], on="sample")
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_exact=True)


def test_sort_rows_puts_missing_days_and_unknown_populations_last():
    rows = [{"subject": "B", "day": 7.0, "sample": "b", "population": "Treg"},
            {"subject": "A", "day": math.nan, "sample": "a", "population": "CD3+"},
            {"subject": "A", "day": 0.0, "sample": "c", "population": "other"},
            {"subject": "A", "day": 0.0, "sample": "c", "population": "CD3+"},
            {"subject": None, "day": 0.0, "sample": "d", "population": "Treg"}]
    names = ["subject", "day", "sample", "population"]
    order = ["CD3+", "Treg"]
    got = columns.to_frame(_sort_rows(columns.from_rows(rows, names), names, order))
    frame = pd.DataFrame(rows, columns=names)
    frame["_order"] = frame["population"].map({n: i for i, n in enumerate(order)})
    expected = frame.sort_values(["subject", "day", "sample", "_order"], kind="mergesort")[names]
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_exact=True)
    assert got["sample"].tolist() == ["c", "c", "a", "b", "d"]


@pytest.mark.parametrize("kinds", [("float", "int"), ("int", "int"), ("bool", "float"), ("text", "float"),
                                   ("bool", "bool"), ("text", "int")])
def test_concat_types_columns_as_pandas_concat(kinds):
    cells = {"float": [1.5, math.nan], "int": [3, 4], "bool": [True, False], "text": ["a", None]}
    parts = [{"x": columns.column(cells[kind]), "y": columns.column(["p", "q"])} for kind in kinds]
    got = columns.to_frame(_concat(parts))
    expected = pd.concat([columns.to_frame(part) for part in parts], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


class _Result:
    def __init__(self, sample: str, subject: str, day: float, fitted: list[dict]) -> None:
        self.sample, self.subject, self.day, self.fitted = sample, subject, day, fitted


def test_per_sample_rows_after_the_shared_fits_are_pandas_concat_of_both():
    shared = [{"sample": "", "subject": "A", "timepoint": "", "day": "", "population": "CD3+", "n_samples": 3,
               "CD3 min": 1.5}]
    results = [_Result("a1", "A", 7.0, [{"sample": "a1", "subject": "A", "timepoint": "W1", "day": 7.0,
                                         "population": "Treg", "n_samples": 1, "CD25 min": 2.0, "ok": True}]),
               _Result("a0", "A", 0.0, [{"sample": "a0", "subject": "A", "timepoint": "W0", "day": 0.0,
                                         "population": "Treg", "n_samples": 1, "CD25 min": 2.5, "ok": False}]),
               _Result("b0", "B", 0.0, [])]
    got = _per_sample(results, "fitted", shared)
    per_sample = pd.DataFrame([row for r in sorted(results, key=lambda r: (r.subject, r.day, r.sample))
                               for row in r.fitted])
    expected = pd.concat([pd.DataFrame(shared), per_sample], ignore_index=True)
    pd.testing.assert_frame_equal(columns.to_frame(got), expected, check_exact=True)
    assert got["sample"].tolist() == ["", "a0", "a1"]
    # Nothing fitted: a table without columns (pandas.DataFrame([]) before), so no gates_fitted.csv.
    assert _per_sample([_Result("b0", "B", 0.0, [])], "fitted") == {}


def test_run_result_builds_each_dataframe_once_on_first_access(tmp_path: Path):
    treg = columns.from_rows([{"sample": "s", "treg_pct": 5.0}], ["sample", "treg_pct"])
    baseline = columns.from_rows([{"sample": "s", "treg_events": 12, "cd4_events": 300, "ci_low": 1.0}],
                                 ["sample", "treg_events", "cd4_events", "ci_low"])
    empty = columns.from_rows([], ["sample", "file", "stage", "reason"])
    result = RunResult(populations=treg, treg=treg, baseline=baseline, failures=empty, fitted={}, sensitivity={},
                       drift={}, exit_code=0, out=tmp_path)
    assert result.tables["treg"] is treg and not result._frames  # nothing built yet
    frame = result.treg
    assert isinstance(frame, pd.DataFrame) and result.treg is frame and frame["treg_pct"].tolist() == [5.0]
    # baseline.csv's counts as pandas' nullable integers, as stats.baseline_table returns them.
    assert str(result.baseline["treg_events"].dtype) == "Int64" and result.baseline["ci_low"].dtype == float
    # Tables without columns are the empty DataFrame the run returned for them.
    pd.testing.assert_frame_equal(result.fitted, pd.DataFrame())
    assert list(result.failures.columns) == ["sample", "file", "stage", "reason"] and result.failures.empty
    result.drift = pd.DataFrame({"a": [1]})  # set: taken as it is
    assert result.drift["a"].tolist() == [1]


def test_manifest_versions_are_those_importlib_metadata_finds():
    from importlib import metadata

    from cytopipe.batch.tables import _DEPENDENCIES, _metadata_version, _versions

    versions = _versions()
    for name in _DEPENDENCIES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            assert name not in versions
            continue
        assert versions[name] == expected
    assert _metadata_version("/nonexistent/METADATA") is None


def test_metadata_version_reads_the_header_only(tmp_path: Path):
    from cytopipe.batch.tables import _metadata_version

    path = tmp_path / "METADATA"
    path.write_text("Metadata-Version: 2.1\nName: x\nVersion: 1.2.3rc1 \n\nVersion: 9\n", encoding="utf-8")
    assert _metadata_version(str(path)) == "1.2.3rc1"
    path.write_text("Metadata-Version: 2.1\nName: x\n\nVersion: 9\n", encoding="utf-8")
    assert _metadata_version(str(path)) is None  # a Version in the body is not the package's

"""Plain-column result tables (cytopipe.columns) against pandas, which they stand in for on the run's path: the same
dtypes and values from the same rows, the same row order from a sort, the same CSV bytes."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytopipe import columns
from cytopipe.outputs import to_csv

_TEXT = st.text(alphabet=st.sampled_from(list("ab=+-@ \t\r\n,\"'1.é")), max_size=5)
_CELL = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_infinity=True),
                  st.sampled_from([math.nan, 0.1, -0.0, 1e-300, 123456789012.5]), _TEXT)


def _kind_columns(kind: str) -> st.SearchStrategy:
    """Cells of one kind, as a column of a result table holds them (with some missing)."""
    cells = {"float": st.one_of(st.floats(allow_nan=True), st.none()), "int": st.integers(-10**9, 10**9),
             "bool": st.booleans(), "text": st.one_of(_TEXT, st.none()), "mixed": _CELL}[kind]
    return st.lists(cells, min_size=0, max_size=8)


@given(st.lists(st.sampled_from(["float", "int", "bool", "text", "mixed"]), min_size=1, max_size=4), st.data())
@settings(max_examples=150, deadline=None)
def test_rows_become_the_columns_pandas_builds_from_them(kinds, data):
    n = data.draw(st.integers(0, 6))
    names = [f"c{i}" for i in range(len(kinds))]
    rows = [{} for _ in range(n)]
    for name, kind in zip(names, kinds, strict=True):
        values = data.draw(st.lists(_kind_columns(kind).map(lambda v: v[0] if v else None), min_size=n, max_size=n))
        for row, value in zip(rows, values, strict=True):
            if data.draw(st.integers(0, 9)):  # now and then a row lacks the cell
                row[name] = value
    table = columns.from_rows(rows, names)
    frame = pd.DataFrame(rows, columns=names)
    assert list(table) == names
    for name in names:
        assert table[name].dtype == frame[name].dtype, (name, [row.get(name) for row in rows])
    pd.testing.assert_frame_equal(columns.to_frame(table), frame)
    assert _csv(table) == _csv(frame)  # the DataFrame writer: pandas' bytes, "\r" cells quoted (test_outputs)


def _csv(table) -> str:
    handle = io.StringIO()
    to_csv(table, handle)
    return handle.getvalue()


@given(st.lists(st.tuples(st.sampled_from(["b", "a", "=x", "", None]), st.sampled_from([0.0, 7.0, -1.5, math.nan]),
                          st.sampled_from(["s2", "s1", "s10"])), max_size=12))
@settings(max_examples=150, deadline=None)
def test_a_sort_orders_rows_as_pandas_mergesort(rows):
    frame = pd.DataFrame(rows, columns=["subject", "day", "sample"])
    table = columns.from_frame(frame)
    got = columns.to_frame(columns.sorted_by(table, ["subject", "day", "sample"]))
    want = frame.sort_values(["subject", "day", "sample"], kind="mergesort").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)


def test_a_frame_round_trips_with_pandas_nullable_types_made_plain():
    frame = pd.DataFrame({"n": pd.array([1, 2], dtype="Int64"), "m": pd.array([1, None], dtype="Int64"),
                          "s": pd.array(["a", None], dtype="string"), "f": [0.5, math.nan], "b": [True, False]})
    table = columns.from_frame(frame)
    assert table["n"].dtype == np.int64 and table["m"].dtype == np.float64 and math.isnan(table["m"][1])
    assert table["s"].dtype == object and table["s"].tolist() == ["a", None]
    assert _csv(table) == _csv(frame)
    with pytest.raises(ValueError, match="same name"):
        columns.from_frame(pd.DataFrame([[1, 2]], columns=["a", "a"]))


def test_take_select_and_length():
    table = columns.from_rows([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": None}], ["a", "b"])
    assert columns.length(table) == 3 and columns.length({}) == 0
    assert columns.take(table, [2, 0])["a"].tolist() == [3, 1]
    assert list(columns.select(table, ["b", "a"])) == ["b", "a"]
    with pytest.raises(KeyError):
        columns.select(table, ["c"])


@pytest.mark.parametrize("values", [[3, 4], [True, False], [0.5, math.nan], ["x", None]])
@pytest.mark.parametrize("keys", [["b", "a", "b"], ["a", "zz", "b"], []])
def test_take_or_missing_gives_a_pandas_left_join(values, keys):
    right = pd.DataFrame({"key": ["a", "b"], "value": values})
    want = pd.DataFrame({"key": keys}).join(right.set_index("key"), on="key")["value"]
    at = np.array([{"a": 0, "b": 1}.get(key, -1) for key in keys], dtype=np.intp)
    got = columns.take_or_missing(columns.from_frame(right)["value"], at)
    assert got.dtype == want.dtype
    assert [None if columns.is_missing(v) else v for v in got.tolist()] == \
        [None if columns.is_missing(v) else v for v in want.tolist()]

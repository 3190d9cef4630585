"""CSV tables: cytopipe's writer gives the bytes of pandas' ``to_csv`` with the fixed float format."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cytopipe.outputs import FLOAT_FORMAT, safe_table, to_csv


def _pandas_text(table: pd.DataFrame) -> str:
    """The reference: pandas' own writer on the neutralised table."""
    handle = io.StringIO()
    safe_table(table).to_csv(handle, index=False, lineterminator="\n", float_format=FLOAT_FORMAT)
    return handle.getvalue()


def _text(table: pd.DataFrame) -> str:
    handle = io.StringIO()
    to_csv(table, handle)
    return handle.getvalue()


def _every_type(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    floats = rng.normal(scale=10.0 ** rng.integers(-12, 12, n), size=n)
    floats[rng.random(n) < 0.2] = np.nan
    floats[:4] = [-0.0, np.inf, -np.inf, 1e-300][: min(4, n)]
    hostile = ["=cmd|' /C calc'!A0", "-3.5", "+x", "@SUM(1)", "\tTab", "a,b", 'q"x', "line\nbreak", "", " lead",
               "µ CD25", None, np.nan, pd.NA, "1e5", "-inf"]
    return pd.DataFrame({
        "float": floats,
        "float32": floats.astype(np.float32),
        "int": rng.integers(-10**12, 10**12, n),
        "uint8": rng.integers(0, 255, n).astype(np.uint8),
        "bool": rng.random(n) < 0.5,
        "text": [hostile[i % len(hostile)] for i in range(n)],
        "mixed": [[1, 2.5, np.float64(0.1), True, None, "=s", np.int64(3), np.nan][i % 8] for i in range(n)],
        "Int64": pd.array([None if i % 7 == 0 else int(v) for i, v in enumerate(rng.integers(0, 10**6, n))],
                          dtype="Int64"),
        "boolean": pd.array([None if i % 5 == 0 else bool(i % 2) for i in range(n)], dtype="boolean"),
        "=header": ["x"] * n,
    })


@pytest.mark.parametrize("n", [0, 1, 17, 45_001])
def test_csv_text_is_pandas_to_csv_of_the_neutralised_table(n):
    table = _every_type(n)
    assert _text(table) == _pandas_text(table)


@pytest.mark.parametrize("table", [
    pd.DataFrame(),
    pd.DataFrame({"nullable float": pd.array([0.1, None, 3.0], dtype="Float64")}),
    pd.DataFrame({"string": pd.array(["=a", None, "b"], dtype="string")}),
    pd.DataFrame({"when": pd.to_datetime(["2020-01-01", None])}),
    pd.DataFrame({"category": pd.Categorical(["a", "=b"])}),
], ids=["empty", "Float64", "string", "datetime", "category"])
def test_other_column_types_are_left_to_pandas(table):
    assert _text(table) == _pandas_text(table)


def test_a_formula_in_a_cell_or_header_is_neutralised():
    text = _text(pd.DataFrame({"=h": ["=1+1", "-2", "ok"], "v": [1.0, np.nan, 2.5]}))
    assert text == "'=h,v\n'=1+1,1\n-2,\nok,2.5\n"


def test_a_carriage_return_in_a_cell_or_header_is_quoted_and_reads_back():
    """csv quotes only its line terminator's characters: a bare \\r would split the row for pandas and
    spreadsheets. Rows with one are quoted; the others are written exactly as before."""
    import csv

    table = pd.DataFrame({"sample": ["ok", "a\rb", "c\r\nd", "=x\r", "last"], "treg\rpct": [1.5, 2.0, 3.0, 4.0, 5.0],
                          "n": [1, 2, 3, 4, 5]})
    handle = io.StringIO()
    to_csv(table, handle)
    text = handle.getvalue()
    assert text.startswith('"treg\rpct"'.join(["sample,", ",n\nok,1.5,1\n"]))
    assert text.endswith("\nlast,5,5\n") and "\r\n" not in text.replace('c\r\nd', "")
    back = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert list(back.columns) == ["sample", "treg\rpct", "n"]
    assert back["sample"].tolist() == ["ok", "a\rb", "c\r\nd", "'=x\r", "last"]
    assert list(csv.reader(io.StringIO(text, newline="")))[2] == ["a\rb", "2", "2"]

"""cytopipe.numeric reads text cells as numbers exactly as pandas.to_numeric(errors="coerce") does: the same verdict
(every non-empty cell a number or not), dtype and bits, against pandas itself."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytopipe.numeric import numbers, parse
from cytopipe.outputs import FLOAT_FORMAT

PIECES = ["0", "\n", "1", "2", "5", "9", "00", "123", "4567", "99999999", "1234567890123456789", "18446744073709551615",
          "9223372036854775807", "9223372036854775808", ".", "e", "E", "-", "+", " ", "\t", "\v", "\x1c", "inf",
          "Infinity", "nan", "NA", "x", "e-", "e+", "308", "309", "324", "400", "616", "617", "1_0", "\x00", "é",
          "１"]


def _pandas(cells: list[str]) -> np.ndarray | None:
    """pandas' reading: to_numeric of the cells (empty ones NaN), None when a non-empty cell is no number."""
    values = pd.to_numeric(np.array([c if c != "" else np.nan for c in cells], dtype=object), errors="coerce")
    return values if int(pd.notna(values).sum()) == sum(c != "" for c in cells) else None


def _same(cells: list[str]) -> None:
    ours, theirs = numbers(cells), _pandas(cells)
    assert (ours is None) == (theirs is None), (cells, ours, theirs)
    if ours is not None:
        assert ours.dtype == theirs.dtype, (cells, ours, theirs)
        assert ours.tobytes() == np.asarray(theirs).tobytes(), (cells, ours, theirs)  # bit for bit, -0.0 included


_SAFE = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join).filter(
    # pandas' own parser overflows a C int on exponents of 9+ digits (undefined there): not compared
    lambda s: not re.search(r"[eE][+-]?[0-9]{9,}", s.split("\x00")[0]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(_SAFE, st.just("")), max_size=4))
def test_cells_built_from_number_pieces_read_as_pandas_reads_them(cells: list[str]) -> None:
    _same(cells)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(
    st.floats(allow_nan=False).map(lambda v: FLOAT_FORMAT % v),  # as cytopipe writes floats
    st.floats(allow_nan=False).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.just("")), max_size=5))
def test_written_numbers_read_as_pandas_reads_them(cells: list[str]) -> None:
    _same(cells)


@pytest.mark.parametrize("cells", [
    [], [""], ["", ""], ["1", "2"], ["1", ""], ["1", "2.5"], [" 1", "2 "], ["-0"], ["-0", "1.5"], ["-0", ""],
    ["18446744073709551615"], ["-1", "18446744073709551615"], ["18446744073709551616"], ["-9223372036854775809"],
    ["1e400"], ["-9.9e308"], ["1e-400"], ["1.7976931348623157e308"], ["4.9e-324"], ["0.00000000000000000000000001234"],
    ["inf", "-Infinity", "+INF"], [" inf"], ["nan"], ["NA"], ["1e"], ["1e+"], ["1.e5"], [".5"], ["."], ["1\x00"],
    ["2.5\x00x"], ["１"], ["True"], ["12345678901234567.5"], ["9007199254740993", "0.5"], ["1\n2"], ["1\n", "2"],
    ["1", "\n2"], ["-0", "7"], ["0.000123456789", "", "12"]])
def test_edge_cells_read_as_pandas_reads_them(cells: list[str]) -> None:
    _same(cells)


def test_parse_gives_the_integer_of_an_integer_cell() -> None:
    assert parse("12") == (12.0, 12) and parse(" +7 ") == (7.0, 7) and parse("2.5") == (2.5, None)
    assert parse("1e3") == (1000.0, None) and parse("abc") is None and parse("nan") is None
    assert parse("-inf") == (-np.inf, None)

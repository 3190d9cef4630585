"""Result tables as plain columns: what ``cytopipe run`` computes and writes without importing pandas.

A table is a ``dict`` from column name to a numpy array, all of one length, in column order: the rows of
``populations.csv``, ``treg.csv``, ``baseline.csv`` and the other result tables. Each column has one of four dtypes,
the ones pandas gives the same data:

* ``float64`` -- numbers, missing ones NaN;
* ``int64`` -- counts;
* ``bool`` -- flags;
* ``object`` -- text and anything else; a missing cell is ``None`` (or NaN).

Why not a pandas DataFrame: importing pandas costs ~0.2 s of CPU, more than a run spends on everything it does
after the last sample (tables, workspace, report): ~12 % of a default run of 500 files on 2 cores and ~17 % of one of
6 x 1M events without figures. The run's tables are small (a row per sample or per population) and are only built
from rows, sorted, joined by sample and written, which plain arrays do as fast. The Python API still returns
DataFrames (:func:`to_frame`); :func:`from_frame` takes one in.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Table", "as_table", "column", "from_frame", "from_rows", "is_frame", "is_missing", "length", "objects",
           "records", "select", "sorted_by", "take", "take_or_missing", "to_frame"]

#: A result table: column name -> equal-length numpy array (float64, int64, bool or object).
Table = dict[str, np.ndarray]


def is_missing(value: Any) -> bool:
    """Whether a cell is missing: ``None`` or a float NaN (as :func:`pandas.isna` of a plain Python value)."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


_FLOATS = {float, int, type(None)}  # exact types whose mixture with a float is a float64 column


def objects(values: Iterable[Any]) -> np.ndarray:
    """An ``object`` column holding ``values`` as they are (numpy would otherwise make a 2-D array of sequences or
    guess a dtype)."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def column(values: Sequence[Any]) -> np.ndarray:
    """One column from its values, with the dtype :class:`pandas.DataFrame` infers for them.

    Parameters
    ----------
    values : sequence
        The cells, top to bottom.

    Returns
    -------
    numpy.ndarray
        ``bool`` when every value is a bool; ``int64`` when every value is an integer (not a bool) that fits;
        ``float64`` when every value is a number, ``None`` or NaN and at least one is a float or missing (missing
        ones become NaN; all missing stays ``object``); ``object`` otherwise (text, mixtures), holding the values
        as they are. Empty: ``object``.
    """
    kinds = set(map(type, values))  # the plain Python types decide without a look at each value
    if kinds <= _FLOATS and kinds & {float}:
        return np.array([np.nan if value is None else value for value in values] if type(None) in kinds else values,
                        dtype=np.float64)
    if kinds == {str} or kinds == {str, type(None)}:
        return objects(values)
    seen = set()
    for value in values:
        if value is None:
            seen.add("n")
        elif isinstance(value, (bool, np.bool_)):
            seen.add("b")
        elif isinstance(value, (int, np.integer)):
            seen.add("i")
        elif isinstance(value, (float, np.floating)):
            seen.add("f")
        else:
            seen.add("o")
            break
    if seen == {"b"}:
        return np.array(values, dtype=bool)
    if seen == {"i"}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    elif seen and seen <= {"i", "f", "n"} and seen != {"n"}:
        return np.array([np.nan if value is None else value for value in values], dtype=np.float64)
    return objects(values)


def from_rows(rows: Iterable[Mapping[str, Any]], names: Sequence[str] | None = None) -> Table:
    """A table from rows (one mapping per row), as ``pandas.DataFrame(rows, columns=names)`` builds it.

    Parameters
    ----------
    rows : iterable of mapping
        Each row's cells by column name; a name a row lacks is a missing cell (NaN).
    names : sequence of str, optional
        The columns to keep, in order (names no row has are columns of missing cells). Default: every name of the
        rows, in the order they first appear (as ``pandas.DataFrame(rows)``).

    Returns
    -------
    Table
    """
    rows = list(rows)
    if names is None:
        names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: column([row.get(name, math.nan) for row in rows]) for name in names}


def records(table: Table) -> list[dict[str, Any]]:
    """The rows of a table as dicts of plain Python values (``DataFrame.to_dict("records")``)."""
    names = list(table)
    return [dict(zip(names, cells, strict=True)) for cells in zip(*(v.tolist() for v in table.values()), strict=True)]


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a pandas DataFrame (pandas is not imported to find out: without it, none can be)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


def as_table(data: Table | pd.DataFrame) -> Table:
    """A table of a table (a shallow copy) or of a DataFrame (its columns, the index left out)."""
    return dict(data) if isinstance(data, dict) else from_frame(data)


def length(table: Table) -> int:
    """Number of rows (0 for a table without columns)."""
    return len(next(iter(table.values()))) if table else 0


def take(table: Table, rows: Sequence[int] | np.ndarray) -> Table:
    """The rows at positions ``rows``, in that order."""
    index = np.asarray(rows, dtype=np.intp)
    return {name: values[index] for name, values in table.items()}


def take_or_missing(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values[at]`` with a missing cell (NaN) where ``at`` is -1, in the dtype a pandas left join gives: when a
    cell is missing, integers become floats and every other column (flags, text) objects."""
    found = at >= 0
    if found.all():
        return values[at]
    taken = values[np.maximum(at, 0)]
    taken = taken.astype(float) if taken.dtype.kind in "iuf" else taken.astype(object)
    taken[~found] = np.nan
    return taken


def select(table: Table, names: Sequence[str]) -> Table:
    """The columns ``names``, in that order (a :class:`KeyError` names the first one missing)."""
    return {name: table[name] for name in names}


def sorted_by(table: Table, keys: Sequence[str]) -> Table:
    """The rows sorted by the columns ``keys`` (first key first), as ``DataFrame.sort_values(keys,
    kind="mergesort")`` sorts them: stable, ascending, missing cells (NaN, None) last in each key."""
    n = length(table)
    if n < 2 or not keys:
        return dict(table)
    order = np.arange(n)
    for key in reversed(keys):  # stable sorts from the last key to the first: a lexicographic sort
        values = table[key]
        if values.dtype.kind in "iubf":  # numbers: numpy's stable sort orders them as Python's sort does
            missing = np.isnan(values[order]) if values.dtype.kind == "f" else np.zeros(n, dtype=bool)
            present = order[~missing]
            order = np.concatenate([present[np.argsort(values[present], kind="stable")], order[missing]])
            continue
        cells = values.tolist()
        gone = [is_missing(value) for value in cells]
        kept = [i for i in order.tolist() if not gone[i]]
        kept.sort(key=cells.__getitem__)
        order = np.asarray(kept + [i for i in order.tolist() if gone[i]], dtype=np.intp)
    return take(table, order)


def to_frame(table: Table) -> pd.DataFrame:
    """The table as a pandas DataFrame (same columns, order and dtypes; a default index)."""
    import pandas as pd

    frame = pd.DataFrame({i: values for i, values in enumerate(table.values())}, index=pd.RangeIndex(length(table)))
    frame.columns = list(table)
    return frame


def from_frame(frame: pd.DataFrame) -> Table:
    """A DataFrame as a table: numpy columns as they are; pandas' nullable integers as ``int64`` (``float64``
    when one is missing), its nullable booleans and text types as ``object`` (missing cells ``None``)."""
    if len(set(frame.columns)) != frame.shape[1]:
        raise ValueError(f"columns with the same name: {list(frame.columns)}")
    table: Table = {}
    for k, name in enumerate(frame.columns):
        series = frame.iloc[:, k]
        dtype = series.dtype
        if isinstance(dtype, np.dtype):
            table[name] = series.to_numpy()
            continue
        missing = series.isna().to_numpy()
        if dtype.kind in "iu":
            table[name] = (series.to_numpy(dtype=np.float64, na_value=np.nan) if missing.any()
                           else series.to_numpy(dtype=np.int64))
        else:
            table[name] = column([None if gone else value
                                  for value, gone in zip(series.astype(object).tolist(), missing, strict=True)])
            if table[name].dtype != object:
                table[name] = table[name].astype(object)
    return table

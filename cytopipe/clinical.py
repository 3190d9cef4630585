"""The clinical table (platelets, blood counts) read as plain columns, as pandas read it, without pandas.

``cytopipe run`` reads the clinical table before its workers start and joins it into ``baseline.csv``; neither
step imports pandas (~0.2 s of CPU in every run). The readings are pandas' own, so ``baseline.csv`` and the report
do not depend on which code read the file: :func:`read_clinical_table` parses the CSV with :mod:`csv` (as
:func:`cytopipe.samplesheet.read_sample_rows` does) when it is a plain table, and only otherwise with
:func:`pandas.read_csv`; both go through the same checks, and numbers are read from the cells as
``pandas.to_numeric`` reads them (:func:`cytopipe.numeric.to_numeric`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cytopipe import columns
from cytopipe.errors import SampleSheetError
from cytopipe.numeric import to_numeric
from cytopipe.samplesheet import plain_csv_rows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["read_clinical", "read_clinical_table"]

#: Words that mean "no value" in a numeric clinical column (besides an empty cell).
_NOT_MEASURED = frozenset(("na", "nan", "n/a", "nd", "-"))
_KEYS = ("subject", "day", "timepoint")


# ---------------------------------------------------------------------------------------------- the CSV file


def read_clinical(path: str | Path) -> pd.DataFrame:
    """Read a clinical table (CSV) keyed by subject and day or timepoint.

    Parameters
    ----------
    path : str or pathlib.Path
        CSV with a ``subject`` column, a ``day`` and/or ``timepoint`` column (names case-insensitive) and any
        further columns, e.g. ``platelets`` (x10^9/L) or ``lymphocytes_per_ul``.

    Returns
    -------
    pandas.DataFrame
        ``subject`` and ``timepoint`` as strings, ``day`` as float, value columns numeric when every non-empty
        value is a number (otherwise kept as text). :func:`read_clinical_table` gives the same columns as a
        plain table.

    Raises
    ------
    SampleSheetError
        When the file is missing or unreadable, a key column is absent, a day or a value is not a number in a
        numeric column, or a subject has two rows for the same day/timepoint.
    """
    return columns.to_frame(read_clinical_table(path))


def read_clinical_table(path: str | Path) -> columns.Table:
    """:func:`read_clinical` as a plain table (:mod:`cytopipe.columns`), without pandas for a plain CSV file.

    Raises
    ------
    SampleSheetError
        As :func:`read_clinical`.
    """
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"{path}: clinical table not found")
    header, rows = plain_csv_rows(path, as_pandas=True) or _parse_with_pandas(path)
    names = [str(name).strip() for name in header]
    lower: dict[str, str] = {}
    for name in names:
        if name.lower() in lower or re.fullmatch(r".+\.[0-9]+", name) and name.rsplit(".", 1)[0].lower() in lower:
            raise SampleSheetError(f"{path}: columns {lower.get(name.lower(), name.rsplit('.', 1)[0])!r} and "
                                   f"{name!r} name the same column; keep one")
        lower[name.lower()] = name
    if "subject" not in lower:
        raise SampleSheetError(f"{path}: clinical table needs a 'subject' column (found: {', '.join(names)})")
    if "day" not in lower and "timepoint" not in lower:
        raise SampleSheetError(f"{path}: clinical table needs a 'day' or 'timepoint' column besides 'subject'")
    canonical = {lower[k]: k for k in _KEYS if k in lower}
    names = [canonical.get(name, name) for name in names]
    cells = {name: [cell.strip() if isinstance(cell, str) else cell for cell in column]
             for name, column in zip(names, zip(*rows, strict=True) if rows else [()] * len(names), strict=True)}
    if not rows:
        raise SampleSheetError(f"{path}: clinical table has no rows")
    table: columns.Table = {name: columns.objects(column) for name, column in cells.items()}
    if "" in cells["subject"]:
        raise SampleSheetError(f"{path}: row {cells['subject'].index('') + 2}: subject is empty")
    if "day" in cells:
        text = cells["day"]
        day = to_numeric([None if cell == "" else cell for cell in text]).astype(float)
        for row, (value, cell) in enumerate(zip(day.tolist(), text, strict=True)):
            if value != value and cell != "":
                raise SampleSheetError(f"{path}: row {row + 2}: day {cell!r} is not a number")
        table["day"] = day
    key = "day" if "day" in table and not np.isnan(table["day"]).any() else "timepoint"
    if key == "timepoint" and "timepoint" not in table:
        raise SampleSheetError(f"{path}: clinical table has rows without a day and no 'timepoint' column")
    seen: dict[tuple[Any, Any], int] = {}
    for row, pair in enumerate(zip(table["subject"].tolist(), table[key].tolist(), strict=True)):
        pair = tuple(None if columns.is_missing(v) else v for v in pair)  # duplicated() pairs NaN with NaN
        if pair in seen:
            shown = cells[key][row]  # as written ("7" and "7.0" are one day)
            raise SampleSheetError(f"{path}: subject {table['subject'][row]!r} has two rows for {key} {shown!r} "
                                   f"(rows {seen[pair] + 2} and {row + 2})")
        seen[pair] = row
    for name in names:
        if name not in _KEYS:
            _numeric_column(path, table, name, cells[name])
    return table


def _numeric_column(path: Path, table: columns.Table, name: str, text: list[Any]) -> None:
    """Make a value column numeric when it holds a number; refuse text among numbers (words for "not measured"
    aside) and infinite values."""
    values = to_numeric([None if cell == "" else cell for cell in text]).astype(float)
    finite = values.tolist()
    if not any(v == v for v in finite):
        return
    for row, (value, cell) in enumerate(zip(finite, text, strict=True)):
        if value != value and cell != "" and not (isinstance(cell, str) and cell.lower() in _NOT_MEASURED):
            raise SampleSheetError(f"{path}: row {row + 2}: {name} {cell!r} is not a number")
    for row, value in enumerate(finite):
        if math.isinf(value):
            raise SampleSheetError(f"{path}: row {row + 2}: {name} {text[row]!r} is not a finite number")
    table[name] = values


def _parse_with_pandas(path: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a CSV file :mod:`csv` does not read as a plain table (repeated or unnamed columns, ragged
    rows...), as :func:`pandas.read_csv` reads it (missing cells NaN); its parse errors become one line."""
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise SampleSheetError(f"{path}: cannot read clinical table as CSV: {err}") from None
    if not isinstance(table.index, pd.RangeIndex):  # every row longer than the header: an index of the extra cells
        raise SampleSheetError(f"{path}: the rows have more cells than the header has names "
                               f"({table.shape[1]}); a column name is missing or a row has extra commas")
    return [str(name) for name in table.columns], table.to_numpy(dtype=object).tolist()

"""The study design: which file is which subject at which timepoint.

A sample sheet is a CSV file with one row per FCS file. Required columns are ``file`` (relative to the sheet),
``subject``, ``timepoint`` and ``day``. Optional columns:

``sample``
    A unique name for the sample (default: the file name without extension).
``baseline``
    ``true``/``false``; at most one baseline per subject (default: each subject's earliest day).
``role``
    ``sample`` (default), ``fmo:<marker>`` (fluorescence-minus-one control), ``isotype:<marker>`` or ``unstained``.
``spillover``
    A spillover matrix file (relative to the sheet) that replaces the file's own ``$SPILLOVER`` for that row.
``panel``
    A panel CSV (``channel,marker``, relative to the sheet) that sets the row's markers; wins over ``--panel``.
``pregated``
    The population every event of the row's file is in (a FlowJo export); wins over ``--pregated``.

Any other column is carried through to the outputs unchanged.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SampleSheetError

if TYPE_CHECKING:
    import pandas as pd

REQUIRED = ("file", "subject", "timepoint", "day")
#: Optional columns with a meaning (the others are carried through to the outputs).
KNOWN = ("sample", "baseline", "role", "spillover", "panel", "pregated")
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f", ""}
_ROLE = ROLE_PATTERN = re.compile(r"^(sample|unstained|(fmo|isotype):\S.*)$", re.IGNORECASE)


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read and validate a sample sheet.

    Parameters
    ----------
    path
        The CSV file.

    Returns
    -------
    pandas.DataFrame
        One row per sample, in sheet order, with columns ``sample, file, subject, timepoint, day, baseline, role,
        spillover, panel, pregated`` followed by the sheet's extra columns. ``file``, ``spillover`` and ``panel``
        are absolute paths ('' when not given); ``pregated`` is a population name or ''; ``day`` is
        a float; ``baseline`` is a bool with exactly one ``True`` per subject among ``role == "sample"`` rows.

    Raises
    ------
    SampleSheetError
        Missing file or required column, an empty sheet, a non-numeric day, a duplicate sample name, an unknown
        role, a bad ``baseline`` value or two baselines for one subject. The message names the sheet and the row.
    """
    return sheet_frame(*read_sample_rows(path))


def sheet_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The :func:`read_sample_sheet` table of :func:`read_sample_rows`' records."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def read_sample_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`read_sample_sheet` as plain records (one dict per row) and the column order, without pandas.

    A sheet that Python's :mod:`csv` reads as a plain table (a unique, non-empty name per column, every row as
    many cells as the header, UTF-8) is read without importing pandas (~0.3 s: the batch runner reads the sheet
    before its workers start); any other sheet is parsed by :func:`pandas.read_csv`. Both parsings go through the
    same checks, so readings and error messages do not depend on the parser.

    Raises
    ------
    SampleSheetError
        As :func:`read_sample_sheet`.
    """
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"{path}: sample sheet not found")
    header, cells = plain_csv_rows(path) or _parse_with_pandas(path)
    return _sheet_rows(path, header, cells)


def _sheet_rows(path: Path, header: list[str], cells: list[list[Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Validate a parsed sheet (header and rows of cells, from :mod:`csv` or pandas): records and column order."""
    columns = [str(c).strip() for c in header]
    _check_column_names(path, columns)
    lower = {c.lower(): c for c in columns}
    canonical = {lower[k]: k for k in (*REQUIRED, *KNOWN) if k in lower}
    columns = [canonical.get(c, c) for c in columns]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise SampleSheetError(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(a sample sheet needs {', '.join(REQUIRED)}; found {', '.join(columns) or 'none'})"
        )
    records = [dict(zip(columns, (v.strip() if isinstance(v, str) else v for v in row), strict=True))
               for row in cells]
    records = [rec for rec in records if not all(rec[c] == "" for c in REQUIRED)]
    if not records:
        raise SampleSheetError(f"{path}: the sample sheet has no rows")
    base = str(path.resolve().parent)
    extra = [c for c in columns if c not in (*REQUIRED, *KNOWN)]
    rows = []
    for i, rec in enumerate(records):
        rows.append({**_row(path, base, i, rec), **{c: rec[c] for c in extra}})
    seen: set[str] = set()
    for row in rows:
        if row["sample"] in seen:
            raise SampleSheetError(f"{path}: sample name {row['sample']!r} appears more than once "
                                   "(add a 'sample' column with unique names)")
        seen.add(row["sample"])
    _assign_baselines(rows, path)
    return rows, [*_ROW_COLUMNS, *extra]


_ROW_COLUMNS = ("sample", "file", "subject", "timepoint", "day", "baseline", "role", "spillover", "panel", "pregated")


def plain_csv_rows(path: Path, *, as_pandas: bool = False) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of a CSV file that :mod:`csv` reads as a plain table (UTF-8, a unique non-empty name per
    column, every row as long as the header; blank lines skipped); ``None`` for anything else (left to pandas).

    ``as_pandas``: also leave to pandas what :mod:`csv` would read otherwise than :func:`pandas.read_csv`: bare CR
    line ends (pandas reads the header twice), a line of spaces alone, an unterminated quote (the clinical table,
    whose reading must be pandas' own).
    """
    import csv
    import io

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None
    if "\x00" in text or (as_pandas and "\r" in text.replace("\r\n", "")):
        return None
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=as_pandas)
                if row]
    except csv.Error:
        return None
    if not rows or (as_pandas and any(len(row) == 1 and not row[0].strip() for row in rows)):
        return None
    header = rows[0]
    if any(not name for name in header) or len(set(header)) != len(header) or \
            any(len(row) != len(header) for row in rows[1:]):
        return None
    return header, rows[1:]


def _row(path: Path, base: str, i: int, rec: dict[str, Any]) -> dict[str, Any]:
    """One validated sheet row (``i`` counts the rows kept, as the messages number them)."""
    where = f"{path}: row {i + 2}"  # +1 for the header, +1 for 1-based numbering
    for col in ("file", "subject", "timepoint"):
        if not rec[col]:
            raise SampleSheetError(f"{where}: column '{col}' is empty")
    try:
        day = float(rec["day"])
    except ValueError:
        raise SampleSheetError(f"{where}: day {rec['day']!r} is not a number") from None
    if not math.isfinite(day):
        raise SampleSheetError(f"{where}: day {rec['day']!r} is not a finite number")
    role = rec.get("role", "") or "sample"
    if not _ROLE.match(role):
        raise SampleSheetError(
            f"{where}: role {role!r} is not one of sample, unstained, fmo:<marker>, isotype:<marker>")
    flag = (rec.get("baseline", "") or "").lower()
    if flag not in _TRUE | _FALSE:
        raise SampleSheetError(f"{where}: baseline {rec['baseline']!r} is not true or false")
    spill = rec.get("spillover", "") or ""
    panel = rec.get("panel", "") or ""
    return {
        "sample": rec.get("sample", "") or Path(rec["file"]).stem,
        "file": _resolved(base, rec["file"]),
        "subject": rec["subject"],
        "timepoint": rec["timepoint"],
        "day": day,
        "baseline": flag in _TRUE,
        "role": _normalise_role(role),
        "spillover": _resolved(base, spill) if spill else "",
        "panel": _resolved(base, panel) if panel else "",
        "pregated": rec.get("pregated", "") or "",
    }


def _resolved(base: str, name: str) -> str:
    """``str((Path(base) / name).resolve())`` for the resolved folder ``base``.

    A plain file name that is not a symbolic link is ``base/name`` as it is: one ``lstat`` instead of one per folder
    on the path, for each row of the sheet before the first sample can start (~10 ms on 500 rows).
    """
    if name not in (".", "..") and not any(sep and sep in name for sep in (os.sep, os.altsep, ":")):
        joined = os.path.join(base, name)
        if not os.path.islink(joined):
            return joined
    return str((Path(base) / name).resolve())


def _assign_baselines(rows: list[dict[str, Any]], path: Path) -> None:
    """Mark one baseline per subject: the row flagged ``baseline`` or else the subject's earliest day (the first
    such row); control tubes are never baselines."""
    by_subject: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if row["role"] == "sample":
            by_subject.setdefault(row["subject"], []).append(row)
    for subject, group in by_subject.items():
        flagged = [row for row in group if row["baseline"]]
        if len(flagged) > 1:
            names = ", ".join(row["sample"] for row in flagged)
            raise SampleSheetError(f"{path}: subject {subject!r} has {len(flagged)} baselines ({names}); mark one")
        if not flagged:
            min(group, key=lambda row: row["day"])["baseline"] = True  # the first of the earliest day
    for row in rows:
        if row["role"] != "sample":
            row["baseline"] = False


def _parse_with_pandas(path: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a sheet :func:`plain_csv_rows` leaves out (unnamed or repeated columns, ragged rows...),
    as :func:`pandas.read_csv` reads it; its parse errors become one line."""
    import pandas as pd

    try:
        sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SampleSheetError(f"{path}: not a readable CSV file ({first})") from None
    if not isinstance(sheet.index, pd.RangeIndex):  # every row longer than the header: an index of the extra cells
        raise SampleSheetError(f"{path}: the rows have more cells than the header has names "
                               f"({sheet.shape[1]}); a column name is missing or a row has extra commas")
    return [str(c) for c in sheet.columns], sheet.to_numpy(dtype=object).tolist()


def _output_columns() -> frozenset[str]:
    """Columns cytopipe writes into treg.csv and baseline.csv, where the sheet's extra columns also go."""
    from .pipeline import TREG_COLUMNS
    from .stats import _EXTRA_COLUMNS, BASELINE_COLUMNS

    return frozenset({*TREG_COLUMNS, *BASELINE_COLUMNS, *_EXTRA_COLUMNS, "acquisition_qc", "gate_sd_pp",
                      "treg_tcon_ratio", "tregs_per_ul", "tcon_events", "lymphocyte_events", "baseline_platelets",
                      "platelet_fold", "iwg_response"})


def _check_column_names(path: Path, columns: list[str]) -> None:
    """Refuse headers that would collide: the same name twice (in any case) or the name of an output column."""
    known = {*REQUIRED, "sample", "baseline", "role", "spillover"}
    seen: dict[str, str] = {}
    for column in columns:
        key = column.casefold()
        if key in seen:
            raise SampleSheetError(f"{path}: columns {seen[key]!r} and {column!r} name the same column; keep one")
        if re.fullmatch(r".+\.[0-9]+", column) and column.rsplit(".", 1)[0].casefold() in seen:
            raise SampleSheetError(f"{path}: column {column.rsplit('.', 1)[0]!r} appears more than once; keep one")
        seen[key] = column
        if key not in known and key in _output_columns():
            raise SampleSheetError(f"{path}: column {column!r} has the name of a column cytopipe writes to "
                                   "treg.csv/baseline.csv; rename it (e.g. 'sheet_" + column + "')")


def _normalise_role(role: str) -> str:
    """``FMO:CD25`` -> ``fmo:CD25``: the kind is case-insensitive, the marker is kept as written."""
    kind, sep, marker = role.partition(":")
    return kind.lower() + sep + marker

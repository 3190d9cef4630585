"""The report: one self-contained ``report.html`` (and a PDF of it) from a results folder.

:func:`render_report` reads only stored results (``treg.csv`` and friends), so a lab can change CVa/CVi/Z or add
clinical data and re-render without re-gating (``cytopipe report RESULTS_DIR``). The HTML opens from a USB stick:
CSS inline, figures inlined as SVG (densities as small embedded PNG rasters), no external URL and no JavaScript.
The template is ``templates/report.html.j2``. Jinja2 autoescaping is on, so every string that came from FCS
keywords, sample sheets, clinical tables or gate files is shown, never run (the figures are SVG written by
:mod:`cytopipe.svg` with the same escaping).

It scales to large studies: summary, QC and subjects come first; each subject's gating figures sit in a closed
``<details>`` the browser lays out only when opened; fitted gates and threshold sensitivity are shown per sample.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
from markupsafe import Markup, escape

from cytopipe import __version__, columns, forked
from cytopipe.columns import Table
from cytopipe.errors import ConfigError
from cytopipe.numeric import numbers
from cytopipe.outputs import FLOAT_FORMAT, atomic_open, atomic_write, neutralise, restore, write_csv
from cytopipe.pipeline import plot_path, safe_stem
from cytopipe.plots import figure_file_text, figure_id, fold_change_overview, time_courses
from cytopipe.printer import Printer, find_chromium
from cytopipe.stats import (
    BASELINE_COLUMNS,
    baseline_table,
    clinical_correlation,
    platelet_column,
    read_clinical_table,
    reference_change_value,
    subject_summary,
)
from cytopipe.svg import template_cache

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["find_chromium", "inline_svg", "render_from_tables", "render_report", "write_pdf"]

log = logging.getLogger(__name__)

_TEXT_COLUMNS = ("sample", "subject", "timepoint", "population", "parent", "file", "stage", "reason")
# Columns baseline_table computes itself; anything else in baseline.csv came from the clinical table.
_COMPUTED = set(BASELINE_COLUMNS) | {
    "sample", "is_baseline", "baseline_sample", "treg_events", "cd4_events", "ci_low", "ci_high", "pct_change",
    "direction", "qc_flags", "treg_tcon_ratio", "tregs_per_ul", "baseline_platelets", "platelet_fold",
    "iwg_response", "tcon_events", "lymphocyte_events", "gate_sd_pp", "delta_ci_low_total", "delta_ci_high_total",
    "change_verdict",
}
#: Samples above which the gating figures of every subject start closed (a few subjects stay open below it).
_OPEN_GATING_SAMPLES = 24


# ---------------------------------------------------------------------------------------------- file helpers


def _read_table(path: Path) -> Table:
    """A results CSV with identity columns kept as text (a subject called "NA" stays "NA"), as a table.

    Its cells are those of ``pandas.read_csv(path, dtype=str, keep_default_na=False)``: read by :mod:`csv` when the
    file is exactly what a CSV writer writes of them (as cytopipe writes its tables: :func:`_plain_rows`), by pandas
    otherwise (a file edited by hand: other line ends, repeated or missing names, ragged rows...).
    """
    plain = _plain_rows(path)
    if plain is not None:
        header, rows = plain
        names = _unique([restore(name) for name in header])
        return {name: _typed_cells(name, [row[k] for row in rows]) for k, name in enumerate(names)}
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read results table: {err}") from None
    return _typed(table)


def _plain_rows(path: Path) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of a CSV file that :mod:`csv` writes back to the same text (UTF-8, ``\\n`` line ends,
    minimal quoting), with a unique non-empty name per column and every row as long as the header: a file both
    :mod:`csv` and pandas read one way. None for any other file."""
    import csv

    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        return None
    if not rows or "\x00" in text or text.startswith("\ufeff"):
        return None
    header = rows[0]
    if any(not name for name in header) or len(set(header)) != len(header) \
            or any(len(row) != len(header) for row in rows) \
            or (len(header) == 1 and any(not row[0].strip() for row in rows)):
        return None  # (a one-column row of an empty or blank cell: a blank line, which pandas skips)
    again = io.StringIO()
    csv.writer(again, lineterminator="\n").writerows(rows)
    return (header, rows[1:]) if again.getvalue() == text else None


def _as_read(table: Table) -> Table:
    """The table :func:`_read_table` reads from the file :func:`cytopipe.outputs.write_csv` writes of ``table``,
    without the file: each cell as the text written (floats as :data:`cytopipe.outputs.FLOAT_FORMAT`, missing
    values empty), then typed as :func:`_read_table` types it. A run's report thus computes from exactly the numbers
    a later ``cytopipe report`` reads from the folder.

    Typed column by column on plain lists (:func:`_typed_cells`). Names written alike (``"=a"`` and ``"'=a"`` are
    both written ``"'=a"``) are told apart as pandas reads them (:func:`_unique`: ``"=a"``, ``"=a.1"``).
    """
    written = [neutralise(str(name)) for name in table]
    names = [restore(name) for name in _unique(written)]
    typed = []
    for name, values in zip(names, table.values(), strict=True):
        if values.dtype == np.int64 and len(values) and name not in _TEXT_COLUMNS and name != "baseline":
            typed.append(values.copy())  # written as integers, read back as the same integers
        else:
            typed.append(_typed_cells(name, _written(values), values.dtype.kind != "f"))
    return dict(zip(names, typed, strict=True))


def _unique(names: list[str]) -> list[str]:
    """Repeated names told apart as :func:`pandas.read_csv` tells a header's repeats apart: ``a``, ``a.1``,
    ``a.2``... (a name taken already is passed over)."""
    if len(set(names)) == len(names):
        return names
    counts: dict[str, int] = {}
    out = []
    for name in names:
        count = counts.get(name, 0)
        while count > 0:
            counts[name] = count + 1
            name = f"{name}.{count}"
            count = counts.get(name, 0)
        out.append(name)
        counts[name] = count + 1
    return out


def _written(values: np.ndarray) -> list[str]:
    """The cells :func:`cytopipe.outputs.write_csv` writes for a column, as a reading gives them back (neutralised
    formulas are restored by the typing, like a reading's)."""
    if values.dtype.kind == "f":
        return [FLOAT_FORMAT % v if v == v else "" for v in values.tolist()]
    if values.dtype.kind in "iub":
        return [str(v) for v in values.tolist()]
    return ["" if columns.is_missing(v) else str(v) for v in values.tolist()]


def _typed_cells(name: str, cells: list[str], quoted: bool = True) -> np.ndarray:
    """One column of a results table from its cells as read (text): formula-neutralised cells restored, a column of
    numbers (every non-empty cell one, as :func:`pandas.to_numeric` reads them: :func:`cytopipe.numeric.numbers`)
    as numbers, identity columns as text (``quoted=False``: no cell starts with a quote)."""
    if quoted and "'" in "".join(cells):  # restore() leaves a cell alone unless it starts with a quote
        cells = [restore(cell) for cell in cells]
    if name not in _TEXT_COLUMNS and name != "baseline":
        typed = numbers(cells)
        if typed is not None:
            return typed
    return columns.objects(cells)


def _typed(table: pd.DataFrame) -> Table:
    """A results table read as text, typed column by column (:func:`_typed_cells`), its names restored (two that
    restore alike told apart: :func:`_unique`)."""
    names = _unique([restore(str(c)) for c in table.columns])
    return {name: _typed_cells(name, table.iloc[:, k].tolist()) for k, name in enumerate(names)}


def _safe_stem(name: str) -> str:
    """A file-name-safe stem (the rule of :func:`cytopipe.pipeline.plot_path` for gating plots)."""
    return safe_stem(name)


def inline_svg(path: str | os.PathLike) -> Markup | None:
    """An SVG file written by :func:`cytopipe.plots.save_figure`, for inlining in ``report.html``.

    Parameters
    ----------
    path : str or os.PathLike
        The SVG file.

    Returns
    -------
    markupsafe.Markup or None
        The ``<svg>`` element without the XML declaration, the SVG namespace and the figure style sheet (the
        report carries it once); ``None`` when the file cannot be read or holds no ``<svg>``.
    """
    try:
        with open(path, "rb") as handle:  # bytes, decoded once: cheaper than a text-mode read
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _inline(text)


def _figure_inline(fig: Any, path: Path, files: list[tuple[Path, str]]) -> Markup | None:
    """A figure as :func:`inline_svg` reads the file :func:`cytopipe.plots.save_figure` writes to ``path`` (from
    its text, not from the file); ``(path, text)`` is added to ``files``, for :func:`_write_files`."""
    text = figure_file_text(fig, path)
    files.append((path, text))
    return _inline(text)


def _html_parts(context: dict[str, Any], files: list[tuple[Path, str]]) -> None:
    """Add to a report context (:func:`_context`) what only the HTML shows, while a child lays the PDF out: each
    figure inlined as its file's text (the files to write added to ``files`` as ``(path, text)``; ids unique in the
    page: one rendering per figure) and the cells of the QC tables."""
    if context["overview_figure"] is not None:
        context["overview"] = _figure_inline(context["overview_figure"], context["overview_file"], files)
    for section in context["sections"]:
        if section["figure"] is not None:
            section["image"] = _figure_inline(section["figure"], section["figure_file"], files)
    for table in context["qc_tables"]:
        table.update(_table(table["frame"]))


def _write_files(files: list[tuple[Path, str]]) -> None:
    """Write each ``(path, text)`` atomically, as UTF-8."""
    for path, text in files:
        atomic_write(path, text.encode("utf-8"))


def _inline(text: str) -> Markup | None:
    """:func:`inline_svg` of an SVG file's text (line ends as a text-mode read gives them)."""
    if "\r" in text:  # as a text-mode read: "\r\n" and "\r" (in user text) become "\n"
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = text.find("<svg")
    if start < 0:
        return None
    # HTML knows inline SVG: the namespace (an http:// URI that only names it) is dropped, and so is the figure
    # style sheet, which the report carries once (hundreds of copies slow a browser's style resolution down).
    text = text[start:].replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)
    style = text.find("<style>")
    end = text.find("</style>", style + 7, style + 4007) if style >= 0 else -1
    if end >= 0:
        text = text[:style] + text[end + 8:].lstrip("\n")
    return Markup(text)


# ---------------------------------------------------------------------------------------------- formatting


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x: Any, digits: int = 2) -> str:
    return f"{float(x):.{digits}f}" if _finite(x) else "–"


def _int(x: Any) -> str:
    return f"{int(round(float(x))):,}" if _finite(x) else "–"


def _interval(value: Any, low: Any, high: Any, digits: int = 2, sign: bool = False) -> str:
    if not _finite(value):
        return "–"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = fmt.format(float(value))
    if _finite(low) and _finite(high):
        text += f" [{fmt.format(float(low))}, {fmt.format(float(high))}]"
    return text


def _cell(x: Any) -> str:
    """Generic table cell: numbers compactly, NaN as a dash, everything else as text (escaped by Jinja)."""
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    if isinstance(x, float | np.floating):
        return "–" if not math.isfinite(x) else f"{x:.4g}"
    return "" if x is None else str(x)


def _table(table: Table) -> dict[str, Any]:
    """A table's header, its rows of display cells (:func:`_cell`) and their HTML (:func:`_body`)."""
    cells = [_cells(values) for values in table.values()]
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else [[] for _ in range(columns.length(table))]
    return {"columns": [str(c) for c in table], "rows": rows, "body": _body(rows)}


def _cells(values: np.ndarray) -> list[str]:
    """:func:`_cell` of each value of a column, a column of numbers at once (a QC table has 33,000 cells)."""
    kind = values.dtype.kind
    if kind == "f":
        return ["–" if not math.isfinite(x) else f"{x:.4g}" for x in values.tolist()]
    if kind in ("i", "u"):
        return [f"{x:,}" for x in values.tolist()]
    if kind == "b":
        return ["yes" if x else "no" for x in values.tolist()]
    cells = values.tolist()
    if all(cell.__class__ is str for cell in cells):  # text: each cell is its own _cell (half of a QC table's cells)
        return cells
    return [_cell(v) for v in cells]


def _body(rows: list[list[str]]) -> Markup:
    """``<tr><td>cell</td>...</tr>`` of every row, each cell escaped as the template's ``{{ v }}`` escapes it.

    The cells are escaped in one call, joined by two control characters that no cell holds (checked), instead of
    one call per cell: a 3,000-row QC table has 33,000 cells.
    """
    joined = "\x1e".join("\x1f".join(row) for row in rows)
    if rows and all(rows) and joined.count("\x1e") == len(rows) - 1 \
            and joined.count("\x1f") == sum(len(row) - 1 for row in rows):  # no cell holds a separator
        text = str(escape(joined)).replace("\x1f", "</td><td>").replace("\x1e", "</td></tr><tr><td>")
        return Markup(f"<tr><td>{text}</td></tr>")
    return Markup("".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows))


# ---------------------------------------------------------------------------------------------- provenance


def _provenance_blocks(manifest: Any, title: str = "") -> list[dict[str, Any]]:
    """Flatten a manifest into blocks the template can show: key/value lists, tables and preformatted text."""
    blocks: list[dict[str, Any]] = []
    if isinstance(manifest, dict):
        pairs = []
        for key, value in manifest.items():
            name = f"{title}.{key}" if title else str(key)
            if isinstance(value, dict | list) and value and not _is_scalar_list(value):
                blocks.extend(_provenance_blocks(value, name))
            elif isinstance(value, str) and "\n" in value:
                blocks.append({"kind": "pre", "title": name, "text": value})
            else:
                pairs.append((str(key), ", ".join(map(str, value)) if isinstance(value, list) else _cell(value)))
        if pairs:
            blocks.insert(0, {"kind": "pairs", "title": title or "run", "pairs": pairs})
    elif isinstance(manifest, list) and all(isinstance(v, dict) for v in manifest):
        blocks.append({"kind": "table", "title": title, **_table(columns.from_rows(manifest))})
    else:
        blocks.append({"kind": "pairs", "title": title, "pairs": [(title, _cell(manifest))]})
    return blocks


def _is_scalar_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, dict | list) for v in value)


# ---------------------------------------------------------------------------------------------- PDF


def write_pdf(html_path: str | os.PathLike, pdf_path: str | os.PathLike, *, timeout: float = 180.0,
              printer: Printer | None = None) -> Path | None:
    """Print an HTML file to PDF with headless Chromium; log a warning and return None when that is not possible.

    Parameters
    ----------
    html_path : str or os.PathLike
        The HTML file.
    pdf_path : str or os.PathLike
        The PDF to write (atomically).
    timeout : float
        Seconds before Chromium is given up.
    printer : cytopipe.printer.Printer, optional
        A Chromium started earlier (a batch run starts it while its workers gate); default: start one now.

    Returns
    -------
    pathlib.Path or None
        ``pdf_path`` when written.
    """
    from cytopipe.printer import Printer, PrinterError

    pdf_path = Path(pdf_path)
    own = printer is None
    if own:
        chromium = find_chromium()
        if chromium is None:
            log.warning("chromium not found: %s not written (install Debian's chromium to get the PDF)", pdf_path)
            return None
    try:
        if own:
            printer = Printer(chromium)
        assert printer is not None
        atomic_write(pdf_path, printer.print_pdf(html_path, timeout=timeout))
    except PrinterError as err:
        log.warning("chromium failed: %s not written (%s)", pdf_path, err)
        return None
    finally:
        if own and printer is not None:
            printer.close()
    return pdf_path


def _report_pdf(results: Path, template: jinja2.Template, context: dict[str, Any], engine: str,
                printer: Printer | None) -> Path | None:
    """Write ``report.pdf``: natively (:mod:`cytopipe.pdf`; characters outside WinAnsi become ``<U+XXXX>`` codes,
    named in the PDF) or printed by Chromium (``engine="chromium"``). A warning and None when it cannot be
    written."""
    target = results / "report.pdf"
    if engine == "chromium":
        printable = results / ".report-print.html"  # summary, QC and subjects, without the gating section
        atomic_write(printable, template.render(**context, for_print=True))
        try:
            return write_pdf(printable, target, printer=printer)
        finally:
            printable.unlink(missing_ok=True)
    return _native_pdf_written(target, *_native_pdf(target, context))


def _native_pdf(target: Path, context: dict[str, Any]) -> tuple[list[str], str | None]:
    """Write ``report.pdf`` with :mod:`cytopipe.pdf` (no logging: this may run in a forked child).

    Returns
    -------
    tuple
        The characters written as ``<U+XXXX>`` codes, and why the file could not be written (None when it was).
    """
    from cytopipe.pdf import render_pdf

    data, replaced = render_pdf(context)
    try:
        atomic_write(target, data)
    except OSError as err:
        return replaced, str(err)
    return replaced, None


def _native_pdf_written(target: Path, replaced: list[str], error: str | None) -> Path | None:
    """Log what :func:`_native_pdf` reported; ``target`` when it was written."""
    if replaced:
        log.warning("%s: characters the PDF's standard font cannot show (%s) are written as <U+XXXX> codes "
                    "(report.html shows them; 'cytopipe report --pdf-engine chromium' prints them with Chromium)",
                    target, ", ".join(f"U+{ord(c):04X}" for c in replaced))
    if error is not None:
        log.warning("%s not written (%s)", target, error)
        return None
    return target


# ---------------------------------------------------------------------------------------------- render


def _load_clinical(clinical: str | os.PathLike | pd.DataFrame | Table | None, results: Path,
                   manifest: dict[str, Any]) -> tuple[Table | None, str]:
    """The clinical table: as given, else the one the run used (``manifest.json``), else ``clinical.csv``."""
    if isinstance(clinical, dict):
        return clinical, "given as a table"
    if clinical is not None and not isinstance(clinical, str | os.PathLike):  # a DataFrame
        return columns.from_frame(clinical), "given as a table"
    if clinical is not None:
        return read_clinical_table(clinical), str(clinical)
    recorded = (manifest.get("settings") or {}).get("clinical") if isinstance(manifest, dict) else None
    for candidate in (recorded, results / "clinical.csv"):
        if candidate and Path(candidate).is_file():
            return read_clinical_table(candidate), str(candidate)
    return None, ""


def _lymphocyte_rows(populations: Table) -> Table:
    """The rows of the lymphocyte gate (``Lymphocytes`` or ``Lymphs``, any case) in ``populations.csv``."""
    rows = [i for i, name in enumerate(populations["population"].tolist())
            if str(name).lower() in ("lymphocytes", "lymphs")]
    return columns.take(populations, rows)


def _lymphocyte_events(treg: Table, populations: Table | None) -> Table:
    """Join the lymphocyte gate's count (for absolute Tregs/uL) when populations.csv has a Lymphocytes row."""
    if populations is None or "lymphocyte_events" in treg or "population" not in populations:
        return treg
    lym = _lymphocyte_rows(populations)
    counts = dict(zip(lym["sample"].tolist(), lym["count"].tolist(), strict=True))
    if not columns.length(lym) or len(counts) < columns.length(lym):  # none, or a sample with two lymphocyte gates
        return treg
    # A left join on the sample, as a lookup (pandas' Series.map of the dict: NaN where a sample has none).
    samples = treg["sample"].tolist()
    joined = columns.column([counts.get(s, math.nan) for s in samples]) if samples \
        else columns.column(list(counts.values()))[:0]  # no rows: the counts' type, as pandas' map keeps it
    return {**treg, "lymphocyte_events": joined}


def render_report(
    results_dir: str | os.PathLike,
    *,
    clinical: str | os.PathLike | pd.DataFrame | None = None,
    cva: float = 10.0,
    cvi: float = 10.0,
    z: float = 1.96,
    pdf: bool = True,
    plots: bool = True,
    min_treg_events: int = 100,
    min_cd4_events: int = 2000,
    printer: Printer | None = None,
    pdf_engine: str = "native",
    figures: dict[str, Markup] | None = None,
) -> Path:
    """Render ``report.html`` (and ``report.pdf``) from a results folder.

    Parameters
    ----------
    results_dir : str or os.PathLike
        A folder written by ``cytopipe run``: ``treg.csv`` (required), ``populations.csv``, ``failures.csv``,
        ``manifest.json``, ``gates_fitted.csv``, ``sensitivity.csv``, ``gate_drift.csv`` and
        ``plots/gating_<sample>.svg`` when present.
    clinical : path or pandas.DataFrame, optional
        Clinical table (see :func:`cytopipe.stats.read_clinical`). Default: the file recorded in
        ``manifest.json`` by the run, else ``clinical.csv`` in the results folder, else none.
    cva, cvi, z : float
        Reference change value settings (percent, percent, normal quantile).
    pdf : bool
        Also write ``report.pdf`` (a warning, not an error, when it cannot be written). The PDF holds the
        summary, QC and subjects; the per-sample gating stays in the HTML.
    plots : bool
        Draw the time-course and overview figures (``False``: tables only; gating figures already in
        ``plots/`` are still shown).
    min_treg_events, min_cd4_events : int
        Low-event flag thresholds.
    printer : cytopipe.printer.Printer, optional
        A Chromium already started for ``pdf_engine="chromium"`` (see :func:`write_pdf`).
    pdf_engine : {"native", "chromium"}
        ``native`` (default): written by :mod:`cytopipe.pdf` in tens of milliseconds, no browser, byte-identical
        for the same results; characters outside WinAnsiEncoding (CJK, emoji, right-to-left scripts) are written
        as ``<U+XXXX>`` codes and named in a notice in the PDF. ``chromium``: the print rendering of the HTML by
        headless Chromium (names in any script the machine has fonts for; about a second; dated).
    figures : dict, optional
        Sample -> its gating figure as :func:`inline_svg` read ``plots/gating_<sample>.svg``, prepared earlier (a
        batch run reads each figure as its sample's result arrives, while the workers gate); the other samples'
        figures are read here. The report is the same either way.

    Returns
    -------
    pathlib.Path
        The path of ``report.html``.

    Raises
    ------
    ConfigError
        When the folder or ``treg.csv`` is missing or unreadable, or a setting is invalid.
    SampleSheetError
        When the clinical table is malformed.

    Notes
    -----
    Also rewrites, atomically, ``baseline.csv`` (with the given settings), ``summary.csv`` (one row per subject),
    ``correlation.csv`` (with clinical data) and the figures ``plots/timecourse_<subject>.svg`` and
    ``plots/fold_change_overview.svg``. A ``report.pdf`` or ``correlation.csv`` left by an earlier rendering
    that this one does not replace is removed, so the folder never mixes two renderings.
    """
    results = Path(results_dir)
    if not results.is_dir():
        raise ConfigError(f"{results}: results folder not found")
    treg_path = results / "treg.csv"
    if not treg_path.is_file():
        raise ConfigError(f"{treg_path}: not found (run 'cytopipe run' first to write the results)")
    tables = {name: _read_table(results / f"{name}.csv") for name in ("treg", *_OPTIONAL)
              if name == "treg" or (results / f"{name}.csv").is_file()}
    return _render(results, tables, clinical=clinical, cva=cva, cvi=cvi, z=z, pdf=pdf, plots=plots,
                   min_treg_events=min_treg_events, min_cd4_events=min_cd4_events, printer=printer,
                   pdf_engine=pdf_engine, figures=figures)[0]


def render_from_tables(results_dir: str | os.PathLike, tables: dict[str, Table] | dict[str, pd.DataFrame],
                       **options: Any) -> dict[str, Table] | dict[str, pd.DataFrame]:
    """:func:`render_report` of the tables a run has just written, from memory instead of reading them back.

    Parameters
    ----------
    results_dir : str or os.PathLike
        The results folder (``manifest.json`` and the gating figures are read from it; the report's files are
        written into it).
    tables : dict of str to Table or to pandas.DataFrame
        By file stem, each table (:mod:`cytopipe.columns`; or each a DataFrame) as written to ``<stem>.csv`` in
        ``results_dir`` (``treg``, and those of ``populations``, ``failures``, ``gates_fitted``, ``sensitivity``,
        ``gate_drift`` that were written). Each is taken as a reading of its file would give it (:func:`_as_read`),
        so the report and ``baseline.csv`` are the bytes ``cytopipe report`` writes from the folder.
    **options
        The keyword arguments of :func:`render_report`, and: ``manifest``, the folder's ``manifest.json`` as
        :func:`json.loads` reads it, when the file is not written yet (default: read from the folder);
        ``meanwhile``, a function this process calls once ``report.html`` is written, while the child laying out the
        PDF still runs (a run writes its own files then).

    Returns
    -------
    dict of str to Table or to pandas.DataFrame
        The tables written: ``baseline`` (``baseline.csv``), ``summary`` and ``correlation`` (empty without
        clinical data; ``correlation.csv`` is then not written); DataFrames (as
        :func:`cytopipe.stats.baseline_table` returns them) when ``tables`` holds DataFrames.
    """
    results = Path(results_dir)
    frames = any(not isinstance(table, dict) for table in tables.values())
    plain = {name: columns.as_table(table) for name, table in tables.items()}
    populations = plain.get("populations")
    if populations is not None and "population" in populations:
        # The report uses only the lymphocyte gate's rows (a neutralised name is never one of them).
        plain["populations"] = _lymphocyte_rows(populations)
    return _render(results, {name: _as_read(table) for name, table in plain.items()}, frames=frames, **options)[1]


_OPTIONAL = ("populations", "failures", "gates_fitted", "sensitivity", "gate_drift")


def _render(results: Path, tables: dict[str, Table], *,
            clinical: str | os.PathLike | pd.DataFrame | Table | None = None, cva: float = 10.0, cvi: float = 10.0,
            z: float = 1.96, pdf: bool = True, plots: bool = True, min_treg_events: int = 100,
            min_cd4_events: int = 2000, printer: Printer | None = None, pdf_engine: str = "native",
            figures: dict[str, Markup] | None = None, manifest: dict | None = None,
            meanwhile: Callable[[], Any] | None = None, frames: bool = False) -> tuple[Path, dict[str, Any]]:
    """:func:`render_report` of tables as :func:`_read_table` reads them: ``report.html`` and the tables written
    (``baseline``, ``summary``, ``correlation``; with ``frames``, as the DataFrames :mod:`cytopipe.stats` returns
    for DataFrames).

    ``manifest``: the folder's ``manifest.json`` as read (default: read from the folder). ``meanwhile``: called
    once the HTML is written, while the PDF child may still run.
    """
    treg_path = results / "treg.csv"
    if pdf_engine not in ("native", "chromium"):
        raise ConfigError(f"pdf_engine must be 'native' or 'chromium', not {pdf_engine!r}")
    rcv = reference_change_value(cva, cvi, z)
    treg = tables["treg"]
    for column in ("day", "cd4_events", "treg_events", "treg_pct"):
        filled = [cell for cell in treg[column].tolist() if cell != ""] if column in treg \
            and treg[column].dtype == object else []
        if filled:
            bad = filled[0]
            raise ConfigError(f"{treg_path}: column {column!r} holds {str(bad)[:40]!r}, not a number (the file is "
                              "not a treg.csv written by cytopipe run)")
    optional = {name: tables.get(name) for name in _OPTIONAL}
    manifest_path = results / "manifest.json"
    if manifest is None and manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{manifest_path}: not valid JSON: {err}") from None
    manifest = manifest if manifest is not None else {}
    clinical_table, clinical_source = _load_clinical(clinical, results, manifest)

    if "tcon_events" not in treg and {"cd4_events", "treg_events"} <= set(treg):
        # Tcon = CD4 events outside the Treg gate (the batch runner's definition).
        treg = {**treg, "tcon_events": treg["cd4_events"] - treg["treg_events"]}
    treg = _lymphocyte_events(treg, optional["populations"])
    computed_with = {"cva": cva, "cvi": cvi, "z": z, "min_treg_events": min_treg_events,
                     "min_cd4_events": min_cd4_events, "source": str(treg_path)}
    if frames:  # the DataFrames stats returns for DataFrames (nullable Int64 counts), for a caller that gave them
        given = baseline_table(columns.to_frame(treg), **computed_with,
                               clinical=None if clinical_table is None else columns.to_frame(clinical_table))
        returned = {"baseline": given, "summary": subject_summary(given), "correlation": clinical_correlation(given)}
        table, summary, correlation = (columns.from_frame(returned[name]) for name in returned)
    else:
        table = baseline_table(treg, **computed_with, clinical=clinical_table)
        summary, correlation = subject_summary(table), clinical_correlation(table)
        returned = {"baseline": table, "summary": summary, "correlation": correlation}

    (results / "plots").mkdir(exist_ok=True)
    context = _context(results, table, summary, correlation, clinical_table, clinical_source, optional, manifest,
                       settings={"cva": cva, "cvi": cvi, "z": z, "rcv": rcv, "min_treg": min_treg_events,
                                 "min_cd4": min_cd4_events}, draw=plots, figures=figures)
    template = _environment().get_template("report.html.j2")
    out = results / "report.html"
    # The native PDF is laid out and written by a forked child, and the figure files by another (creating files
    # costs ~0.5 ms each in the kernel after a run wrote hundreds), while this process prepares and writes the
    # HTML and the tables (a run's workers are idle by then); without children (other threads run), by this
    # process after.
    child = forked.start(lambda: _native_pdf(results / "report.pdf", context)) if pdf and pdf_engine == "native" \
        else None
    files: list[tuple[Path, str]] = []  # the figures
    _html_parts(context, files)
    writer = forked.start(lambda: _write_files(files)) if files else None
    try:
        write_csv(table, results / "baseline.csv")
        write_csv(summary, results / "summary.csv")
        if columns.length(correlation):
            write_csv(correlation, results / "correlation.csv")
        else:
            (results / "correlation.csv").unlink(missing_ok=True)  # from an earlier rendering with clinical data
        with atomic_open(out, "w") as handle:  # streamed: no 17 MB page held in memory for 500 samples
            handle.writelines(template.generate(**context, for_print=False))
        if meanwhile is not None:
            meanwhile()
    finally:
        written_files = writer is not None and writer.result()[0]
        done = child.result() if child is not None else (False, None)  # both children waited for, whatever fails
        if not written_files:
            _write_files(files)  # here, so that a failure raises its error here
    if done[0]:
        written = _native_pdf_written(results / "report.pdf", *done[1])
    else:
        written = _report_pdf(results, template, context, pdf_engine, printer) if pdf else None
    # A PDF from an earlier rendering would disagree with this HTML: replace it or remove it.
    if not written and (results / "report.pdf").is_file():
        (results / "report.pdf").unlink()
        log.warning("removed %s from an earlier rendering (it no longer matches report.html)", results / "report.pdf")
    return out, returned


def _subject_stems(subjects: list[str]) -> dict[str, str]:
    stems: dict[str, str] = {}
    used: set[str] = set()
    for subject in subjects:
        stem = _safe_stem(subject)
        # Two subjects that differ only in unsafe characters must not overwrite each other's figure.
        while stem in used:
            stem += "_"
        used.add(stem)
        stems[subject] = stem
    return stems


def _context(results: Path, table: Table, summary: Table, correlation: Table, clinical: Table | None,
             clinical_source: str, optional: dict[str, Table | None], manifest: dict[str, Any],
             settings: dict[str, float], draw: bool = True, figures: dict[str, Markup] | None = None
             ) -> dict[str, Any]:
    """The report's context: all :mod:`cytopipe.pdf` needs; :func:`_html_parts` adds what only the HTML shows."""
    plt_col = platelet_column(list(table))
    clinical_cols = [c for c in table if c not in _COMPUTED]
    subjects = [str(s) for s in summary["subject"].tolist()] if columns.length(summary) else []
    stems = _subject_stems(subjects)
    n_rows = columns.length(table)

    overview_figure = None
    courses: dict[str, Any] = {}
    if draw and n_rows:
        overview_figure = fold_change_overview(table)
        courses = time_courses(table, clinical)  # every subject from one grouping of the table

    records = columns.records(table)  # once: per-subject selections of the table cost more
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_subject.setdefault(str(record["subject"]), []).append(record)
    correlations: dict[str, dict[str, Any]] = {}
    for record in columns.records(correlation):  # each subject's first row
        correlations.setdefault(record["subject"], record)
    summary_rows, sections = [], []
    for index, row in enumerate(columns.records(summary)):
        subject = str(row["subject"])
        anchor = f"subject-{index + 1}"
        c = correlations.get(subject)
        corr_text = ""
        if c is not None and int(c["n"]) < 3:
            corr_text = f"Treg % vs {c['variable']}: too few paired values (n = {int(c['n'])})"
        elif c is not None:
            corr_text = (f"Treg % vs {c['variable']}: Spearman rho {_num(c['spearman_r'])} "
                         f"(p {_num(c['spearman_p'], 3)}), Pearson r {_num(c['pearson_r'])} "
                         f"(p {_num(c['pearson_p'], 3)}), n = {int(c['n'])}")
        peak = ""
        if _finite(row["peak_fold_change"]):
            fold = _interval(row["peak_fold_change"], row["peak_fc_ci_low"], row["peak_fc_ci_high"])
            peak = f"x{fold} at {row['peak_timepoint']}"
        summary_rows.append({"anchor": anchor, "subject": subject, "baseline": _num(row["baseline_pct"]),
                             "peak": peak or "–", "significant": "yes" if row["significant"] else "no",
                             "direction": row["direction"], "verdict": row["treg_verdict"],
                             "clinical": row["clinical_verdict"], "correlation": corr_text})
        rows = by_subject.get(subject, [])
        sections.append({
            "anchor": anchor, "subject": subject, "verdict": row["treg_verdict"], "clinical": row["clinical_verdict"],
            "correlation": corr_text, "image": None, "figure": courses.get(subject) if draw else None,
            "figure_file": results / "plots" / f"timecourse_{stems[subject]}.svg",
            "clinical_columns": clinical_cols,
            "rows": [_timepoint_row(r, clinical_cols) for r in rows],
            "any_flags": any(str(r["qc_flags"]) != "" for r in rows),
        })

    failures = optional["failures"]
    fitted = _per_sample(optional["gates_fitted"], _fitted_rows)
    sensitivity = _per_sample(optional["sensitivity"], _sensitivity_rows)
    figures = figures or {}
    samples = [_sample_entry(results, r["sample"], r["subject"], r["timepoint"], r["qc_flags"], r["cd4_events"],
                             r["treg_events"], fitted, sensitivity, figures) for r in records]
    for f in (columns.records(failures) if failures is not None else []):
        entry = _sample_entry(results, f["sample"], "", "", f"failed at {f['stage']}: {f['reason']}", None, None,
                              {}, {}, {})
        entry["failed"] = True
        samples.append(entry)
    gating: dict[str, dict[str, Any]] = {}
    for entry in samples:
        group = gating.setdefault(entry["subject"], {"subject": entry["subject"], "anchor": f"g{len(gating) + 1}",
                                                     "samples": [], "n_flagged": 0})
        group["samples"].append(entry)
        group["n_flagged"] += bool(entry["flags"])
    few = len(samples) <= _OPEN_GATING_SAMPLES
    for group in gating.values():
        group["open"] = few

    qc_tables = []
    drift = optional["gate_drift"]
    if drift is not None and columns.length(drift):
        qc_tables.append({"title": "Gate drift against baseline (gate_drift.csv)", "n_rows": columns.length(drift),
                          "frame": drift})  # its cells: _html_parts

    return {
        "title": "cytopipe report: Tregs against baseline",
        "results": str(results.resolve()),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "settings": settings,
        "summary": summary_rows,
        "overview": None,  # _html_parts
        "overview_file": results / "plots" / "fold_change_overview.svg",
        "overview_figure": overview_figure,  # the descriptions, for the PDF (cytopipe.pdf)
        "overview_rows": int((~table["is_baseline"].astype(bool)).sum()) if n_rows else 0,
        "sections": sections,
        "platelet_column": plt_col or "",
        "clinical_source": clinical_source,
        "has_clinical": clinical is not None,
        "samples": samples,
        "gating": list(gating.values()),
        "flagged": [s for s in samples if s["flags"] and not s["failed"]],
        "n_samples": len(samples),
        "n_drawn": sum(1 for s in samples if s["svg"] is not None),
        "n_failed": sum(1 for s in samples if s["failed"]),
        "n_flagged": sum(1 for s in samples if s["flags"] and not s["failed"]),
        "n_low": int(table["low_events"].sum()) if n_rows else 0,
        "failures": _table(columns.select(failures, ["sample", "file", "stage", "reason"])) if failures is not None
        and columns.length(failures) and {"sample", "file", "stage", "reason"} <= set(failures) else None,
        "qc_tables": qc_tables,
        "has_manifest": bool(manifest),
        "provenance": [{"kind": "pairs", "title": "this rendering", "pairs": [
            ("cytopipe", __version__), ("CVa %", _cell(settings["cva"])), ("CVi %", _cell(settings["cvi"])),
            ("Z", _cell(settings["z"])), ("RCV %", f"{settings['rcv']:.2f}"),
            ("low events", f"Treg < {settings['min_treg']}, CD4 < {settings['min_cd4']}"),
            ("clinical table", clinical_source or "none")]}]
        + (_provenance_blocks(manifest) if manifest else []),
    }


_IDENTITY = ("sample", "subject", "timepoint", "day", "population", "type", "scope", "fitted_on", "n_samples",
             "n_events")


def _per_sample(table: Table | None, rows_of: Any) -> dict[str, list[dict[str, str]]]:
    """Sample -> its display rows of a per-sample table (``gates_fitted.csv``, ``sensitivity.csv``)."""
    if table is None or not columns.length(table) or "sample" not in table:
        return {}
    names = [str(c) for c in table]
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in columns.records(table):
        groups.setdefault(str(record["sample"]), []).append(record)
    return {sample: rows_of(records, names) for sample, records in groups.items()}


def _fitted_rows(group: list[dict[str, Any]], columns: list[str]) -> list[dict[str, str]]:
    """One row per fitted gate: the population and its non-empty parameters (the long form of the wide CSV)."""
    params = [c for c in columns if c not in _IDENTITY]
    out = []
    for r in group:
        values = [f"{c} {_cell(r[c])}" for c in params if r[c] != "" and not (isinstance(r[c], float)
                                                                              and not math.isfinite(r[c]))]
        kind = f" ({r['type']}, fitted on {r['fitted_on']})" if "type" in r and "fitted_on" in r else ""
        out.append({"population": f"{r.get('population', '')}{kind}", "params": "; ".join(values) or "–"})
    return out


def _sensitivity_rows(group: list[dict[str, Any]], columns: list[str]) -> list[dict[str, str]]:
    return [{"what": f"{r.get('population', '')}: {r.get('channel', '')} {r.get('bound', '')}",
             "threshold": _cell(r.get("threshold")), "delta": _cell(r.get("delta")),
             "change": _cell(r.get("max_change_pp"))} for r in group]


def _timepoint_row(r: dict[str, Any], clinical_cols: list[str]) -> dict[str, Any]:
    return {
        "timepoint": str(r["timepoint"]),
        "day": f"{r['day']:g}" if _finite(r["day"]) else "–",
        "sample": str(r["sample"]),
        "baseline": bool(r["is_baseline"]),
        "cd4": _int(r["cd4_events"]),
        "treg_events": _int(r["treg_events"]),
        "treg": _interval(r["treg_pct"], r["ci_low"], r["ci_high"]),
        "delta": "baseline" if r["is_baseline"] else _interval(r["delta_pp"], r["delta_ci_low"], r["delta_ci_high"],
                                                               sign=True),
        "delta_total": None if "delta_ci_low_total" not in r else "baseline" if r["is_baseline"] else _interval(
            r["delta_pp"], r["delta_ci_low_total"], r["delta_ci_high_total"], sign=True)
        + (f" (gating SD {float(r['gate_sd_pp']):.2f})" if _finite(r.get("gate_sd_pp")) else ""),
        "fold": "1" if r["is_baseline"] else _interval(r["fold_change"], r["fc_ci_low"], r["fc_ci_high"]),
        "change": "" if r["is_baseline"] else f"{float(r['pct_change']):+.0f}%" if _finite(r["pct_change"]) else "–",
        "significant": "" if r["is_baseline"] else ("yes (" + str(r["direction"]) + ")" if r["significant"] else "no")
        + (f": {r['change_verdict']}" if r.get("change_verdict") else ""),
        "ratio": _num(r.get("treg_tcon_ratio"), 3) if "treg_tcon_ratio" in r else None,
        "per_ul": _num(r.get("tregs_per_ul"), 1) if "tregs_per_ul" in r else None,
        "clinical": [_cell(r.get(c)) for c in clinical_cols],
        "iwg": str(r.get("iwg_response", "") or ""),
        "flags": str(r["qc_flags"] or ""),
        "low": bool(r["low_events"]),
    }


def _sample_entry(results: Path, sample: Any, subject: Any, timepoint: Any, flags: Any, cd4: Any, treg: Any,
                  fitted: dict[str, list[dict[str, str]]], sensitivity: dict[str, list[dict[str, str]]],
                  figures: dict[str, Markup]) -> dict[str, Any]:
    svg = figures.get(str(sample))
    if svg is None:
        plot = plot_path(results / "plots", str(sample))
        svg = inline_svg(plot) if plot.is_file() else None
    return {"sample": str(sample), "subject": str(subject), "timepoint": str(timepoint), "flags": str(flags or ""),
            "cd4": _int(cd4), "treg": _int(treg), "failed": False, "anchor": figure_id(str(sample)),
            "svg": svg, "fitted": fitted.get(str(sample), []),
            "sensitivity": sensitivity.get(str(sample), [])}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("cytopipe", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              bytecode_cache=template_cache())

"""The report: one self-contained ``report.html`` (and a PDF of it) from a results folder.

:func:`render_report` reads only stored results (``treg.csv`` and friends), so a lab can change CVa/CVi/Z or add
clinical data and re-render without re-gating (``cytopipe report RESULTS_DIR``). The HTML opens from a USB stick:
CSS inline, figures embedded as base64 ``data:`` URIs, no external URL and no JavaScript. Jinja2 autoescaping is
on, so every string that came from FCS keywords, sample sheets, clinical tables or gate files is shown, never run.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from cytopipe import __version__
from cytopipe.errors import ConfigError
from cytopipe.outputs import atomic_write, write_csv
from cytopipe.pipeline import plot_path
from cytopipe.plots import fold_change_overview, save_figure, time_course
from cytopipe.stats import (
    BASELINE_COLUMNS,
    baseline_table,
    clinical_correlation,
    platelet_column,
    read_clinical,
    reference_change_value,
    subject_summary,
)

__all__ = ["find_chromium", "render_report", "write_pdf"]

log = logging.getLogger(__name__)

_TEXT_COLUMNS = ("sample", "subject", "timepoint", "population", "parent", "file", "stage", "reason")
# Columns baseline_table computes itself; anything else in baseline.csv came from the clinical table.
_COMPUTED = set(BASELINE_COLUMNS) | {
    "sample", "is_baseline", "baseline_sample", "treg_events", "cd4_events", "ci_low", "ci_high", "pct_change",
    "direction", "qc_flags", "treg_tcon_ratio", "tregs_per_ul", "baseline_platelets", "platelet_fold",
    "iwg_response", "tcon_events", "lymphocyte_events",
}


# ---------------------------------------------------------------------------------------------- file helpers


def _read_table(path: Path) -> pd.DataFrame:
    """A results CSV with identity columns kept as text (a subject called "NA" stays "NA")."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read results table: {err}") from None
    for col in table.columns:
        if col in _TEXT_COLUMNS or col == "baseline":
            continue
        numbers = pd.to_numeric(table[col].where(table[col] != ""), errors="coerce")
        if numbers.notna().sum() == (table[col] != "").sum():
            table[col] = numbers
    return table


def _safe_stem(name: str) -> str:
    """A file-name-safe stem (the rule of :func:`cytopipe.pipeline.plot_path` for gating plots)."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(name)) or "sample"


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


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


def _table(frame: pd.DataFrame) -> dict[str, Any]:
    return {"columns": [str(c) for c in frame.columns],
            "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False, name=None)]}


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
        blocks.append({"kind": "table", "title": title, **_table(pd.DataFrame(manifest))})
    else:
        blocks.append({"kind": "pairs", "title": title, "pairs": [(title, _cell(manifest))]})
    return blocks


def _is_scalar_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, dict | list) for v in value)


# ---------------------------------------------------------------------------------------------- PDF


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``CYTOPIPE_CHROMIUM`` first), or None."""
    override = os.environ.get("CYTOPIPE_CHROMIUM")
    if override:
        return shutil.which(override)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_pdf(html_path: str | os.PathLike, pdf_path: str | os.PathLike, *, timeout: float = 180.0) -> Path | None:
    """Print an HTML file to PDF with headless Chromium; log a warning and return None when that is not possible.

    Parameters
    ----------
    html_path : str or os.PathLike
        The HTML file.
    pdf_path : str or os.PathLike
        The PDF to write (atomically).
    timeout : float
        Seconds before Chromium is given up.

    Returns
    -------
    pathlib.Path or None
        ``pdf_path`` when written.
    """
    chromium = find_chromium()
    pdf_path = Path(pdf_path)
    if chromium is None:
        log.warning("chromium not found: %s not written (install Debian's chromium to get the PDF)", pdf_path)
        return None
    with tempfile.TemporaryDirectory(prefix="cytopipe-chromium-") as profile:
        tmp = Path(profile) / "report.pdf"
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--no-default-browser-check", "--no-pdf-header-footer",
                   f"--user-data-dir={profile}", f"--print-to-pdf={tmp}", Path(html_path).resolve().as_uri()]
        try:
            subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("chromium failed: %s not written (%s)", pdf_path, err)
            return None
        if not tmp.is_file() or not tmp.read_bytes()[:5] == b"%PDF-":
            log.warning("chromium wrote no PDF: %s not written", pdf_path)
            return None
        atomic_write(pdf_path, tmp.read_bytes())
    return pdf_path


# ---------------------------------------------------------------------------------------------- render


def _load_clinical(clinical: str | os.PathLike | pd.DataFrame | None, results: Path,
                   manifest: dict[str, Any]) -> tuple[pd.DataFrame | None, str]:
    """The clinical table: as given, else the one the run used (``manifest.json``), else ``clinical.csv``."""
    if isinstance(clinical, pd.DataFrame):
        return clinical, "given as a table"
    if clinical is not None:
        return read_clinical(clinical), str(clinical)
    recorded = (manifest.get("settings") or {}).get("clinical") if isinstance(manifest, dict) else None
    for candidate in (recorded, results / "clinical.csv"):
        if candidate and Path(candidate).is_file():
            return read_clinical(candidate), str(candidate)
    return None, ""


def _lymphocyte_events(treg: pd.DataFrame, populations: pd.DataFrame | None) -> pd.DataFrame:
    """Join the lymphocyte gate's count (for absolute Tregs/uL) when populations.csv has a Lymphocytes row."""
    if populations is None or "lymphocyte_events" in treg or "population" not in populations:
        return treg
    lym = populations[populations["population"].astype(str).str.lower().isin(("lymphocytes", "lymphs"))]
    if lym.empty or lym["sample"].duplicated().any():
        return treg
    return treg.merge(lym[["sample", "count"]].rename(columns={"count": "lymphocyte_events"}), on="sample",
                      how="left")


def render_report(
    results_dir: str | os.PathLike,
    *,
    clinical: str | os.PathLike | pd.DataFrame | None = None,
    cva: float = 10.0,
    cvi: float = 10.0,
    z: float = 1.96,
    pdf: bool = True,
    min_treg_events: int = 100,
    min_cd4_events: int = 2000,
) -> Path:
    """Render ``report.html`` (and ``report.pdf``) from a results folder.

    Parameters
    ----------
    results_dir : str or os.PathLike
        A folder written by ``cytopipe run``: ``treg.csv`` (required), ``populations.csv``, ``failures.csv``,
        ``manifest.json``, ``gates_fitted.csv``, ``sensitivity.csv`` and ``plots/gating_<sample>.png`` when present.
    clinical : path or pandas.DataFrame, optional
        Clinical table (see :func:`cytopipe.stats.read_clinical`). Default: the file recorded in
        ``manifest.json`` by the run, else ``clinical.csv`` in the results folder, else none.
    cva, cvi, z : float
        Reference change value settings (percent, percent, normal quantile).
    pdf : bool
        Also print ``report.pdf`` with headless Chromium (a warning, not an error, when Chromium is absent).
    min_treg_events, min_cd4_events : int
        Low-event flag thresholds.

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
    ``correlation.csv`` (with clinical data) and the figures ``plots/timecourse_<subject>.png/.svg`` and
    ``plots/fold_change_overview.png/.svg``. A ``report.pdf`` or ``correlation.csv`` left by an earlier rendering
    that this one does not replace is removed, so the folder never mixes two renderings.
    """
    results = Path(results_dir)
    if not results.is_dir():
        raise ConfigError(f"{results}: results folder not found")
    treg_path = results / "treg.csv"
    if not treg_path.is_file():
        raise ConfigError(f"{treg_path}: not found (run 'cytopipe run' first to write the results)")
    rcv = reference_change_value(cva, cvi, z)
    treg = _read_table(treg_path)
    optional = {name: _read_table(results / f"{name}.csv") if (results / f"{name}.csv").is_file() else None
                for name in ("populations", "failures", "gates_fitted", "sensitivity")}
    manifest: dict[str, Any] = {}
    manifest_path = results / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{manifest_path}: not valid JSON: {err}") from None
    clinical_table, clinical_source = _load_clinical(clinical, results, manifest)

    if "tcon_events" not in treg and {"cd4_events", "treg_events"} <= set(treg.columns):
        # Tcon = CD4 events outside the Treg gate (the batch runner's definition).
        treg = treg.assign(tcon_events=treg["cd4_events"] - treg["treg_events"])
    treg = _lymphocyte_events(treg, optional["populations"])
    table = baseline_table(treg, cva=cva, cvi=cvi, z=z, min_treg_events=min_treg_events,
                           min_cd4_events=min_cd4_events, clinical=clinical_table, source=str(treg_path))
    summary = subject_summary(table)
    correlation = clinical_correlation(table)

    write_csv(table, results / "baseline.csv")
    write_csv(summary, results / "summary.csv")
    if len(correlation):
        write_csv(correlation, results / "correlation.csv")
    else:
        (results / "correlation.csv").unlink(missing_ok=True)  # from an earlier rendering with clinical data

    plots = results / "plots"
    plots.mkdir(exist_ok=True)
    context = _context(results, table, summary, correlation, clinical_table, clinical_source, optional, manifest,
                       settings={"cva": cva, "cvi": cvi, "z": z, "rcv": rcv, "min_treg": min_treg_events,
                                 "min_cd4": min_cd4_events})
    html = _environment().from_string(_TEMPLATE).render(**context)
    out = results / "report.html"
    atomic_write(out, html)
    # A PDF from an earlier rendering would disagree with this HTML: replace it or remove it.
    if not (pdf and write_pdf(out, results / "report.pdf")) and (results / "report.pdf").exists():
        (results / "report.pdf").unlink()
        log.warning("removed %s from an earlier rendering (it no longer matches report.html)", results / "report.pdf")
    return out


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


def _context(results: Path, table: pd.DataFrame, summary: pd.DataFrame, correlation: pd.DataFrame,
             clinical: pd.DataFrame | None, clinical_source: str, optional: dict[str, pd.DataFrame | None],
             manifest: dict[str, Any], settings: dict[str, float]) -> dict[str, Any]:
    plt_col = platelet_column(list(table.columns))
    clinical_cols = [c for c in table.columns if c not in _COMPUTED]
    subjects = [str(s) for s in summary["subject"]] if len(summary) else []
    stems = _subject_stems(subjects)

    overview = None
    if len(table):
        overview = save_figure(fold_change_overview(table), results / "plots" / "fold_change_overview")[0]

    summary_rows, sections = [], []
    for index, row in enumerate(summary.itertuples(index=False)):
        subject = str(row.subject)
        anchor = f"subject-{index + 1}"
        corr = correlation[correlation["subject"] == subject] if len(correlation) else correlation
        corr_text = ""
        if len(corr) and int(corr.iloc[0]["n"]) < 3:
            corr_text = f"Treg % vs {corr.iloc[0]['variable']}: too few paired values (n = {int(corr.iloc[0]['n'])})"
        elif len(corr):
            c = corr.iloc[0]
            corr_text = (f"Treg % vs {c['variable']}: Spearman rho {_num(c['spearman_r'])} "
                         f"(p {_num(c['spearman_p'], 3)}), Pearson r {_num(c['pearson_r'])} "
                         f"(p {_num(c['pearson_p'], 3)}), n = {int(c['n'])}")
        peak = ""
        if _finite(row.peak_fold_change):
            fold = _interval(row.peak_fold_change, row.peak_fc_ci_low, row.peak_fc_ci_high)
            peak = f"x{fold} at {row.peak_timepoint}"
        summary_rows.append({"anchor": anchor, "subject": subject, "baseline": _num(row.baseline_pct),
                             "peak": peak or "–", "significant": "yes" if row.significant else "no",
                             "direction": row.direction, "verdict": row.treg_verdict,
                             "clinical": row.clinical_verdict, "correlation": corr_text})
        rows = table[table["subject"] == subject]
        # Embed the PNG just written rather than drawing the figure a third time.
        png = save_figure(time_course(table, subject, clinical), results / "plots" / f"timecourse_{stems[subject]}")[0]
        sections.append({
            "anchor": anchor, "subject": subject, "verdict": row.treg_verdict, "clinical": row.clinical_verdict,
            "correlation": corr_text, "image": _png_data_uri(png),
            "clinical_columns": clinical_cols,
            "rows": [_timepoint_row(r, clinical_cols) for r in rows.to_dict("records")],
            "any_flags": bool((rows["qc_flags"].astype(str) != "").any()),
        })

    samples = []
    failures = optional["failures"]
    failed = set(failures["sample"].astype(str)) if failures is not None and len(failures) else set()
    for r in table.to_dict("records"):
        samples.append(_sample_entry(results, r["sample"], r["subject"], r["timepoint"], r["qc_flags"],
                                     r["cd4_events"], r["treg_events"]))
    for f in (failures.to_dict("records") if failures is not None else []):
        entry = _sample_entry(results, f["sample"], "", "", f"failed at {f['stage']}: {f['reason']}", None, None)
        entry["failed"] = True
        samples.append(entry)

    extra_tables = []
    for name, title in (("gates_fitted", "Fitted data-driven gates (gates_fitted.csv)"),
                        ("sensitivity", "Sensitivity of Treg % to threshold shifts (sensitivity.csv)")):
        frame = optional[name]
        if frame is not None and len(frame):
            extra_tables.append({"title": title, **_table(frame)})

    return {
        "title": "cytopipe report: Tregs against baseline",
        "results": str(results.resolve()),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "settings": settings,
        "summary": summary_rows,
        "overview": _png_data_uri(overview) if overview is not None else None,
        "sections": sections,
        "platelet_column": plt_col or "",
        "clinical_source": clinical_source,
        "has_clinical": clinical is not None,
        "samples": samples,
        "n_failed": len(failed),
        "n_low": int(table["low_events"].sum()) if len(table) else 0,
        "failures": _table(failures[["sample", "file", "stage", "reason"]]) if failures is not None
        and len(failures) and {"sample", "file", "stage", "reason"} <= set(failures.columns) else None,
        "extra_tables": extra_tables,
        "has_manifest": bool(manifest),
        "provenance": [{"kind": "pairs", "title": "this rendering", "pairs": [
            ("cytopipe", __version__), ("CVa %", _cell(settings["cva"])), ("CVi %", _cell(settings["cvi"])),
            ("Z", _cell(settings["z"])), ("RCV %", f"{settings['rcv']:.2f}"),
            ("low events", f"Treg < {settings['min_treg']}, CD4 < {settings['min_cd4']}"),
            ("clinical table", clinical_source or "none")]}]
        + (_provenance_blocks(manifest) if manifest else []),
    }


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
        "fold": "1" if r["is_baseline"] else _interval(r["fold_change"], r["fc_ci_low"], r["fc_ci_high"]),
        "change": "" if r["is_baseline"] else f"{float(r['pct_change']):+.0f}%" if _finite(r["pct_change"]) else "–",
        "significant": "" if r["is_baseline"] else ("yes (" + str(r["direction"]) + ")" if r["significant"] else "no"),
        "ratio": _num(r.get("treg_tcon_ratio"), 3) if "treg_tcon_ratio" in r else None,
        "per_ul": _num(r.get("tregs_per_ul"), 1) if "tregs_per_ul" in r else None,
        "clinical": [_cell(r.get(c)) for c in clinical_cols],
        "iwg": str(r.get("iwg_response", "") or ""),
        "flags": str(r["qc_flags"] or ""),
        "low": bool(r["low_events"]),
    }


def _sample_entry(results: Path, sample: Any, subject: Any, timepoint: Any, flags: Any, cd4: Any,
                  treg: Any) -> dict[str, Any]:
    plot = plot_path(results / "plots", str(sample))
    return {"sample": str(sample), "subject": str(subject), "timepoint": str(timepoint), "flags": str(flags or ""),
            "cd4": _int(cd4), "treg": _int(treg), "failed": False,
            "image": _png_data_uri(plot) if plot.is_file() else None}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  :root { --ink: #1d2330; --muted: #5b6475; --line: #d9dde5; --accent: #0072B2; --bad: #b3261e; --warn: #8a5a00;
          --good: #1b6e3c; --bg-soft: #f5f7fa; }
  * { box-sizing: border-box; }
  body { font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink);
         max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; }
  h1 { font-size: 24px; margin: 0 0 4px; }
  h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--accent); }
  h3 { font-size: 16px; margin: 26px 0 6px; }
  .meta { color: var(--muted); font-size: 12.5px; margin: 0 0 16px; }
  nav { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
        font-size: 13px; }
  nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
  table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; font-size: 12.5px; }
  th, td { border-bottom: 1px solid var(--line); padding: 4px 7px; text-align: left; vertical-align: top; }
  th { background: var(--bg-soft); font-weight: 600; }
  .wide { overflow-x: auto; }
  table.timepoints { font-size: 11.5px; }
  table.timepoints th, table.timepoints td { padding: 4px 5px; }
  .nowrap { white-space: nowrap; }
  table.timepoints .meta { font-size: inherit; }
  th.qc, td.qc { min-width: 150px; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.num { white-space: nowrap; }
  tr.base td { background: #fafbfd; color: var(--muted); }
  .yes { color: var(--good); font-weight: 600; }
  .no { color: var(--muted); }
  .flag { color: var(--warn); }
  .failed { color: var(--bad); font-weight: 600; }
  .verdict { font-weight: 600; }
  .clinical { color: #7a4f00; }
  figure { margin: 8px 0 16px; }
  figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
  figcaption { color: var(--muted); font-size: 12px; }
  pre { background: var(--bg-soft); border: 1px solid var(--line); padding: 8px 10px; font-size: 11.5px;
        white-space: pre-wrap; word-break: break-all; }
  .box { background: var(--bg-soft); border-left: 4px solid var(--accent); padding: 8px 12px; font-size: 13px; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 12.5px; margin: 6px 0 12px; }
  dt { color: var(--muted); } dd { margin: 0; word-break: break-all; }
  section.subject, .sample { break-inside: avoid-page; }
  @media print { body { max-width: none; padding: 0; font-size: 11px; } nav { display: none; }
                 .wide { overflow: visible; } table.timepoints { font-size: 8px; }
                 table.timepoints td.num { white-space: normal; }
                 h2 { break-before: page; } h2.first { break-before: auto; } }
  @page { size: A4; margin: 14mm 12mm; }
</style>
</head>
<body>
<header>
<h1>{{ title }}</h1>
<p class="meta">Results folder <code>{{ results }}</code> &middot; rendered {{ generated }} by cytopipe {{ version }}
 &middot; RCV {{ "%.1f"|format(settings.rcv) }}% (CVa {{ settings.cva }}%, CVi {{ settings.cvi }}%, Z {{ settings.z }})
 &middot; low-event flags: Treg gate &lt; {{ settings.min_treg }} or CD4 &lt; {{ settings.min_cd4 }} events</p>
<nav><a href="#summary">Summary</a><a href="#subjects">Subjects</a><a href="#samples">Gating and QC</a>
<a href="#methods">Methods</a><a href="#provenance">Provenance</a></nav>
</header>

<h2 id="summary" class="first">Summary</h2>
<p class="box">For each subject: did Tregs (% of CD4+ T cells) change against baseline, and is the change real?
A change counts as <b>significant</b> when it is larger than the reference change value
({{ "%.1f"|format(settings.rcv) }}%) <b>and</b> the counting interval of the difference excludes zero.
{% if has_clinical %}Platelet response by the ITP International Working Group thresholds (complete response
&ge; 100 x10<sup>9</sup>/L; response &ge; 30 and at least twice baseline).{% else %}No clinical table was given
(<code>--clinical FILE</code> adds platelets and the IWG response).{% endif %}</p>
{% if summary %}
<table>
<thead><tr><th>Subject</th><th class="num">Baseline Treg %</th><th>Largest change: fold [interval]</th>
<th>Significant</th><th>Tregs</th><th>Clinical response</th></tr></thead>
<tbody>
{% for s in summary %}
<tr><td><a href="#{{ s.anchor }}">{{ s.subject }}</a></td><td class="num">{{ s.baseline }}</td><td>{{ s.peak }}</td>
<td class="{{ s.significant }}">{{ s.significant }}{% if s.significant == "yes" %} ({{ s.direction }}){% endif %}</td>
<td class="verdict">{{ s.verdict }}</td><td class="clinical">{{ s.clinical }}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="failed">No sample produced a Treg percentage.</p>
{% endif %}
{% if n_failed or n_low %}
<p class="flag">QC: {{ n_failed }} sample(s) failed, {{ n_low }} sample(s) flagged for low event counts; see
<a href="#samples">Gating and QC</a>.</p>
{% endif %}
{% if overview %}
<figure><img src="{{ overview }}" alt="Fold change of Treg % against baseline, all subjects">
<figcaption>Fold change against baseline per timepoint with its Katz interval; filled = significant; grey band =
within the RCV.</figcaption></figure>
{% endif %}

<h2 id="subjects">Subjects</h2>
{% for sec in sections %}
<section class="subject" id="{{ sec.anchor }}">
<h3>{{ sec.subject }}</h3>
<p><span class="verdict">{{ sec.verdict }}.</span> <span class="clinical">{{ sec.clinical }}.</span>
{% if sec.correlation %}<br><span class="meta">{{ sec.correlation }}</span>{% endif %}</p>
<figure><img src="{{ sec.image }}" alt="Treg % over time for {{ sec.subject }}">
<figcaption>Treg % of CD4 with its Wilson interval (band); dashed line = baseline, grey band = changes within the
RCV; stars = significant changes; open circles = low event counts{% if has_clinical %}; squares = platelets (right
axis){% endif %}.</figcaption></figure>
<div class="wide"><table class="timepoints">
<thead><tr><th>Timepoint</th><th class="num">Treg % [interval]</th>
<th class="num">&Delta; pp [interval]</th><th class="num">Fold [interval]</th><th class="num">Change</th>
<th>Significant</th><th class="num">Treg / CD4 events</th>
{% if sec.rows and sec.rows[0].ratio is not none %}<th class="num">Treg:Tcon</th>{% endif %}
{% if sec.rows and sec.rows[0].per_ul is not none %}<th class="num">Tregs/&micro;L</th>{% endif %}
{% for c in sec.clinical_columns %}<th class="num">{{ c }}</th>{% endfor %}
{% if has_clinical %}<th>IWG</th>{% endif %}{% if sec.any_flags %}<th class="qc">QC</th>{% endif %}</tr></thead>
<tbody>
{% for r in sec.rows %}
<tr{% if r.baseline %} class="base"{% endif %}><td title="sample {{ r.sample }}" class="nowrap">{{ r.timepoint }}
<span class="meta">d{{ r.day }}</span></td><td class="num">{{ r.treg }}</td><td class="num">{{ r.delta }}</td>
<td class="num">{{ r.fold }}</td><td class="num">{{ r.change }}</td>
<td class="{{ 'yes' if r.significant.startswith('yes') else 'no' }}">{{ r.significant }}</td>
<td class="num">{{ r.treg_events }} / {{ r.cd4 }}</td>
{% if r.ratio is not none %}<td class="num">{{ r.ratio }}</td>{% endif %}
{% if r.per_ul is not none %}<td class="num">{{ r.per_ul }}</td>{% endif %}
{% for v in r.clinical %}<td class="num">{{ v }}</td>{% endfor %}
{% if has_clinical %}<td class="nowrap">{{ r.iwg }}</td>{% endif %}
{% if sec.any_flags %}<td class="flag qc">{{ r.flags }}</td>{% endif %}</tr>
{% endfor %}
</tbody>
</table></div>
</section>
{% endfor %}

<h2 id="samples">Gating and QC per sample</h2>
{% if failures %}
<h3>Failed samples</h3>
<table><thead><tr>{% for c in failures.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in failures.rows %}<tr>{% for v in row %}<td class="failed">{{ v }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
{% endif %}
<table>
<thead><tr><th>Sample</th><th>Subject</th><th>Timepoint</th><th class="num">CD4 events</th>
<th class="num">Treg events</th><th>QC flags</th></tr></thead>
<tbody>
{% for s in samples %}
<tr><td>{{ s.sample }}</td><td>{{ s.subject }}</td><td>{{ s.timepoint }}</td><td class="num">{{ s.cd4 }}</td>
<td class="num">{{ s.treg }}</td><td class="{{ 'failed' if s.failed else 'flag' }}">{{ s.flags or "ok" }}</td></tr>
{% endfor %}
</tbody>
</table>
{% for s in samples if s.image %}
<div class="sample">
<h3>{{ s.sample }}{% if s.subject %} &middot; {{ s.subject }} {{ s.timepoint }}{% endif %}</h3>
<figure><img src="{{ s.image }}" alt="Gating of {{ s.sample }}">
<figcaption>Each panel: the parent population's events (log-colour density) with the gate drawn; last panel:
Treg events (red) back-gated onto scatter.{% if s.flags %} <span class="flag">QC: {{ s.flags }}</span>{% endif %}
</figcaption></figure>
</div>
{% endfor %}
{% for t in extra_tables %}
<h3>{{ t.title }}</h3>
<table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% endfor %}

<h2 id="methods">Methods</h2>
<ul>
<li>Treg % = Treg events / CD4 events &times; 100, with a Wilson score interval (Z = {{ settings.z }}).</li>
<li>Change against the subject's baseline sample in percentage points, with Newcombe's hybrid score interval
(Newcombe 1998, method 10), and as a fold change with the Katz log interval.</li>
<li>Reference change value RCV = &radic;2 &middot; Z &middot; &radic;(CVa&sup2; + CVi&sup2;) =
{{ "%.1f"|format(settings.rcv) }}%. Significant = |relative change| &gt; RCV and the Newcombe interval excludes 0.</li>
<li>Low events: Treg gate &lt; {{ settings.min_treg }} or CD4 &lt; {{ settings.min_cd4 }} events are flagged, not
dropped (a Poisson CV of 10% at 100 events).</li>
{% if has_clinical %}<li>Clinical data from <code>{{ clinical_source }}</code>. IWG platelet categories use the
count thresholds only (Rodeghiero 2009), on single measurements; correlations of Treg % with
{{ platelet_column or "platelets" }} per subject (Spearman and Pearson, n paired samples).</li>{% endif %}
<li>Every column of <code>baseline.csv</code> is documented in <code>docs/report.md</code>.</li>
</ul>

<h2 id="provenance">Provenance</h2>
{% if not has_manifest %}<p class="flag">No manifest.json in the results folder.</p>{% endif %}
{% for b in provenance %}
<h3>{{ b.title }}</h3>
{% if b.kind == "pairs" %}
<dl>{% for k, v in b.pairs %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
{% elif b.kind == "pre" %}
<pre>{{ b.text }}</pre>
{% else %}
<table><thead><tr>{% for c in b.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in b.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% endif %}
{% endfor %}
</body>
</html>
"""

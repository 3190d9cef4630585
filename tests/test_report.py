"""report.html from a results folder written by hand: content, escaping, self-containment, atomic outputs."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cytopipe.columns import from_frame
from cytopipe.errors import ConfigError, SampleSheetError
from cytopipe.report import render_report

XSS = "<script>alert(1)</script>"  # a subject name of the results folder (conftest.REPORT_STUDY)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, results_folder: Callable[..., Path]) -> tuple[Path, str]:
    tmp_path = tmp_path_factory.mktemp("report")
    out = results_folder(tmp_path)
    html_path = render_report(out, clinical=tmp_path / "clinical.csv", pdf=False)
    return out, html_path.read_text(encoding="utf-8")


def test_report_escapes_user_strings(rendered: tuple[Path, str], report_study: dict) -> None:
    assert XSS in report_study
    _, html = rendered
    parser = _Collector()
    parser.feed(html)
    assert "script" not in parser.tags
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS in "".join(parser.text)  # shown as text
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html  # gate file text escaped
    assert "&lt;DATA&gt;" in html  # failure reason escaped


def test_report_is_self_contained(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    parser = _Collector()
    parser.feed(html)
    assert parser.urls, "expected embedded rasters and in-page links"
    for url in parser.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url
    assert "link" not in parser.tags and "iframe" not in parser.tags and "img" not in parser.tags
    assert not re.search(r"url\((?!#)", html)  # only in-page references (clip paths)
    for uri in re.findall(r'href="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"
    # Figures are inline SVG: overview + 3 time courses + 1 gating figure.
    assert parser.tags.count("svg") == 5
    assert html.count('class="fig overview"') == 1 and html.count('class="fig timecourse"') == 3
    assert html.count('class="fig gating"') == 1
    assert "&lt;i&gt;Lymphocytes&lt;/i&gt;" in html and "<i>Lymphocytes" not in html  # names in figures escaped
    # One style sheet for every figure (not one per inlined SVG), with text of at least 10 px.
    assert html.count("<style>") == 1 and ".fig .tick { font-size: 10px;" in html
    assert min(float(v) for v in re.findall(r"\.fig [^{]*\{[^}]*font-size:\s*([0-9.]+)px", html)) >= 10
    ids = re.findall(r' id="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids must be unique in the page"


def test_report_scales_to_large_studies(tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    """Summary, QC and subjects come first; gating figures sit in closed per-subject sections when there are many
    samples; fitted gates are shown per sample (no 33-column table); the PDF leaves the gating to the HTML."""
    from cytopipe import report

    out = results_folder(tmp_path)
    html = render_report(out, pdf=False).read_text(encoding="utf-8")
    assert '<details class="subject-gating" id="gating-g1" open>' in html  # a small study: open
    assert "gates_fitted.csv" not in html or "<th>population</th>" not in html
    assert "CD25high" in html and "threshold 2.61" in html  # the fitted gate shown with its sample
    order = [html.index(f'id="{a}"') for a in ("summary", "qc", "subjects", "gating", "methods")]
    assert order == sorted(order)
    assert ".screen-only { display: none; }" in html and '<section class="screen-only">' in html
    original = report._OPEN_GATING_SAMPLES
    try:
        report._OPEN_GATING_SAMPLES = 3
        html = render_report(out, pdf=False).read_text(encoding="utf-8")
    finally:
        report._OPEN_GATING_SAMPLES = original
    assert 'class="subject-gating"' in html and not re.search(r'class="subject-gating"[^>]* open>', html)


def test_report_qc_cells(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    # "ok" is not a warning; flagged and failed samples are listed on the first screen, under QC.
    assert '<td class="ok">ok</td>' in html and '<td class="flag">ok</td>' not in html
    qc = html[html.index('id="qc"'):html.index('id="subjects"')]
    assert "Treg gate 60 events &lt; 100" in qc and "truncated file" in qc


def test_report_content_order_and_verdicts(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    positions = [html.index(f'id="{a}"') for a in ("summary", "subjects", "gating", "methods", "provenance")]
    assert positions == sorted(positions)
    summary = html[positions[0]:positions[1]]
    assert "Tregs rose significantly (x2.9 at W3)" in summary
    assert "No significant change" in summary
    assert "Platelets: response (85 x10^9/L = 2.4x baseline 36 x10^9/L, at W3)" in summary
    assert "Platelets: complete response" not in summary
    for subject in ("ITP-01", "ITP-02", "&lt;script&gt;alert(1)&lt;/script&gt;"):
        assert subject in summary
    assert "truncated file" in html and "ab" * 32 in html and "cd" * 32 in html
    assert "Fitted gate" in html
    assert "Treg gate 60 events &lt; 100" in html and "CD4 gate 1,500 events &lt; 2000" in html


def test_report_rewrites_tables_and_figures(rendered: tuple[Path, str], report_study: dict) -> None:
    out, _ = rendered
    baseline = pd.read_csv(out / "baseline.csv", keep_default_na=False, na_values=[""])
    assert list(baseline.columns[:14]) == ["subject", "timepoint", "day", "treg_pct", "baseline_pct", "delta_pp",
                                           "fold_change", "delta_ci_low", "delta_ci_high", "fc_ci_low",
                                           "fc_ci_high", "rcv_pct", "significant", "low_events"]
    row = baseline[(baseline["subject"] == "ITP-01") & (baseline["timepoint"] == "W3")].iloc[0]
    assert row["iwg_response"] == "response" and bool(row["significant"])
    # Absolute count: lymphocytes/uL x Treg events / lymphocyte-gate events (populations.csv).
    assert row["tregs_per_ul"] == pytest.approx(1500 * 1700 / (19500 * 3))
    assert row["treg_tcon_ratio"] == pytest.approx(1700 / (19500 - 1700))
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["subject"]) == set(report_study)
    assert (out / "correlation.csv").is_file()
    for stem in ("fold_change_overview", "timecourse_ITP-01", "timecourse__script_alert_1___script_"):
        assert (out / "plots" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_report_inlines_the_figure_files_it_writes(rendered: tuple[Path, str]) -> None:
    """Each time-course and overview figure is drawn once: the report inlines the SVG file it wrote (without the
    namespace and the style sheet, which the page carries once), and every element id stays unique in the page."""
    out, html = rendered
    figures = [out / "plots" / "fold_change_overview.svg", *sorted((out / "plots").glob("timecourse_*.svg"))]
    assert len(figures) >= 3
    for path in figures:
        text = path.read_text(encoding="utf-8")
        inline = text[text.index("<svg"):].replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)
        head, _, rest = inline.partition("<style>")
        inline = head + rest.split("</style>", 1)[1].lstrip("\n")
        assert html.count(inline) == 1, path.name
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert ids and len(ids) == len(set(ids))


def test_rcv_settings_change_the_call(tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    out = results_folder(tmp_path)
    render_report(out, clinical=tmp_path / "clinical.csv", pdf=False, cva=60.0, cvi=60.0)
    baseline = pd.read_csv(out / "baseline.csv")
    # RCV = sqrt(2) * 1.96 * sqrt(2) * 60 = 235%: a 2.9-fold rise (+193%) is no longer significant.
    assert baseline["rcv_pct"].iloc[0] == pytest.approx(235.2)
    assert not baseline["significant"].any()
    assert "No significant change" in (out / "report.html").read_text()


def test_clinical_from_manifest_and_without(tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    out = results_folder(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"] = {"clinical": str(tmp_path / "clinical.csv")}
    (out / "manifest.json").write_text(json.dumps(manifest))
    html = render_report(out, pdf=False).read_text()
    assert "Platelets: response" in html
    (tmp_path / "clinical.csv").unlink()
    (out / "report.pdf").write_bytes(b"%PDF-1.4 from an earlier rendering")
    html = render_report(out, pdf=False).read_text()
    assert "Platelets: no clinical data" in html and "Tregs rose significantly" in html
    # Nothing from the earlier rendering with clinical data survives.
    assert not (out / "correlation.csv").exists() and not (out / "report.pdf").exists()
    assert "iwg_response" not in pd.read_csv(out / "baseline.csv").columns


def test_report_errors(tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError, match="results folder not found"):
        render_report(tmp_path / "nope", pdf=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"treg\.csv: not found"):
        render_report(tmp_path / "empty", pdf=False)
    out = results_folder(tmp_path)
    bad = tmp_path / "bad_clinical.csv"
    bad.write_text("patient,day,platelets\nITP-01,0,36\n")
    with pytest.raises(SampleSheetError, match="bad_clinical.csv: clinical table needs a 'subject' column"):
        render_report(out, clinical=bad, pdf=False)
    with pytest.raises(ConfigError, match="--cva"):
        render_report(out, cva=-1, pdf=False)


def test_report_edge_cases(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    header = "sample,subject,timepoint,day,cd4_events,treg_events,treg_pct,ci_low,ci_high,baseline\n"
    (out / "treg.csv").write_text(header)
    (out / "failures.csv").write_text("sample,file,stage,reason\nS1,S1.fcs,read,not an FCS file\n")
    html = render_report(out, pdf=False).read_text()
    assert "No sample produced a Treg percentage." in html and "not an FCS file" in html
    # Subject ids that pandas would turn into NaN or numbers stay text; a baseline without CD4 events is reported.
    (out / "treg.csv").write_text(header + "A0,007,D0,0,20000,600,3.0,,,True\n"
                                           "B0,NA,D0,0,0,0,,,,True\nB1,NA,W1,7,20000,500,2.5,,,False\n")
    html = render_report(out, pdf=False).read_text()
    summary = pd.read_csv(out / "summary.csv", dtype={"subject": str}, keep_default_na=False)
    assert list(summary["subject"]) == ["007", "NA"]
    assert list(summary["treg_verdict"]) == ["Baseline only: no later timepoint",
                                             "Change not assessable (baseline Treg % is missing)"]
    assert "<h3>007</h3>" in html and "<h3>NA</h3>" in html


def test_gating_noise_columns_are_shown(tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    out = results_folder(tmp_path)
    treg = pd.read_csv(out / "treg.csv")
    treg["gate_sd_pp"] = 0.25
    treg.to_csv(out / "treg.csv", index=False)
    html = render_report(out, pdf=False).read_text(encoding="utf-8")
    baseline = pd.read_csv(out / "baseline.csv")
    assert {"gate_sd_pp", "delta_ci_low_total", "delta_ci_high_total"} <= set(baseline.columns)
    assert "&Delta; pp [interval incl. gating]" in html and "(gating SD 0.25)" in html
    assert "<th class=\"num\">gate_sd_pp" not in html  # not mistaken for a clinical column


def test_tables_taken_from_memory_are_the_tables_read_from_their_files(tmp_path: Path) -> None:
    """_as_read (a run's tables, for its report) gives what _read_table reads from write_csv's file: floats at
    the file's 10 digits, neutralised formulas restored, numeric text as numbers, identity columns as text."""
    import numpy as np

    from cytopipe.outputs import write_csv
    from cytopipe.report import _as_read, _read_table

    frame = pd.DataFrame({
        "sample": ["=cmd|' /C calc'!A0", "'=x", "NA", "12", 'a,b "q"\nnext'],
        "subject": ["-3.5", "@SUM(1)", "", "x\r\ny", "\tz"],
        "day": [0.0, 7.0, np.nan, np.inf, -0.0],
        "treg_pct": [0.1 + 0.2, 1e-300, 123456.789012345, 2 / 3, -np.inf],
        "count": [1, 2, 3, 4, 5],
        "flag": [True, False, True, True, False],
        "events": pd.array([1, None, 3, 4, 5], dtype="Int64"),
        "mixed": ["1", 2, 3.25, None, True],
        "note": ["1", "2.5", "", "1e3", "-4"],
        "=evil": ["'+x", "+x", "-", "-1", "'"],
        "baseline": [True, False, False, True, False],
        "nothing": [np.nan] * 5,
        "empty": [""] * 5,
    })
    for rows in (frame, frame.iloc[:0]):
        write_csv(rows, tmp_path / "t.csv")
        _same_tables(_as_read(from_frame(rows)), _read_table(tmp_path / "t.csv"))
    assert _as_read(from_frame(frame))["treg_pct"][2] == 123456.789  # the file's digits, not the frame's


def test_tables_whose_column_names_read_back_alike_are_read_as_their_files(tmp_path: Path) -> None:
    """Column names that read back alike (a sheet's extra columns "=a" and "'=a" are both written "'=a"): the
    table taken from memory is the one read from its file (pandas renames the repeat "=a.1"), and a hand-made
    header restoring to one name twice is read (no TypeError traceback)."""
    import numpy as np

    from cytopipe.outputs import write_csv
    from cytopipe.report import _as_read, _read_table

    frame = pd.DataFrame({"sample": ["=cmd", "'=x", "NA"], "'=a": [1.5, np.nan, 2.0], "=a": ["1", "", "x"],
                          "n": [1, 2, 3]})
    for rows in (frame, frame.iloc[:0]):
        write_csv(rows, tmp_path / "t.csv")
        _same_tables(_as_read(from_frame(rows)), _read_table(tmp_path / "t.csv"))
    assert list(_as_read(from_frame(frame))) == ["sample", "=a", "=a.1", "n"]
    # A hand-made header whose names restore alike: told apart as pandas tells repeats apart (a table's names are
    # unique), the repeat "=a.1".
    (tmp_path / "hand.csv").write_text("sample,'=a,=a,=a.1\nx,1,y,z\n", encoding="utf-8")
    read = _read_table(tmp_path / "hand.csv")
    assert list(read) == ["sample", "=a", "=a.1", "=a.1.1"]
    assert [values[0] for values in read.values()] == ["x", 1, "y", "z"]


def _same_tables(ours: dict, theirs: dict) -> None:
    """Two tables with the same names in order, dtypes and cells (NaN equal to NaN)."""
    import numpy as np

    assert list(ours) == list(theirs)
    for name in ours:
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        if a.dtype.kind == "f":
            assert a.tobytes() == b.tobytes(), name
        else:
            assert np.array_equal(a, b) if a.dtype != object else a.tolist() == b.tolist(), name


def test_table_bodies_escaped_at_once_are_the_templates_cells() -> None:
    """_body escapes a whole table in one call; it writes what the template's loop of ``<td>{{ v }}</td>`` wrote,
    also for hostile text, rows holding its separator characters and empty rows or tables."""
    import jinja2

    from cytopipe.report import _body

    loop = jinja2.Environment(autoescape=True).from_string(
        "{% for row in rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}")
    hostile = [[XSS, "a & b", "'q' \"d\"", ""], ["x\ny", "=1+1", "<", ">"]]
    for rows in (hostile, [*hostile, ["\x1e", "\x1f"]], [*hostile, []], [], [[]]):
        assert str(_body(rows)) == loop.render(rows=rows)


def test_table_cells_formatted_by_column_are_each_cells_format() -> None:
    """_table formats a column of numbers at once; every cell is what _cell gives it alone."""
    import numpy as np

    from cytopipe.report import _cell, _table

    plain = from_frame(pd.DataFrame({
        "f": [1234.5678, np.nan, -np.inf, 1e-7], "i": [1, 1000, -12345, 0], "b": [True, False, True, False],
        "e": pd.array([1, None, 3, 4], dtype="Int64"), "o": ["x", 2.5, None, True],
        "u": np.array([1, 2, 3, 2**40], dtype=np.uint64), "t": ["a", "<b>", "", "d"]}))
    table = _table(plain)
    assert table["rows"] == [[_cell(v) for v in row] for row in zip(*(c.tolist() for c in plain.values()), strict=True)]
    assert table["rows"][0][:3] == ["1235", "1", "yes"] and table["rows"][2][1] == "-12,345"
    assert table["rows"][1][3] == "–" and table["rows"][3][5] == f"{2**40:,}"
    assert _table({})["rows"] == [] and _table({"x": np.zeros(0)})["rows"] == []


def test_report_of_tables_or_dataframes_is_the_report_of_the_folder(tmp_path: Path,
                                                                    results_folder: Callable[..., Path]) -> None:
    """render_from_tables of plain tables and of DataFrames writes the bytes render_report writes from the folder
    (baseline.csv, summary.csv, correlation.csv, report.html apart from its time), and returns the type given: tables
    for tables, for DataFrames the DataFrames stats returns (nullable Int64 counts)."""
    import numpy as np

    from cytopipe.outputs import write_csv
    from cytopipe.report import render_from_tables

    out = results_folder(tmp_path, clinical=True)
    clinical = tmp_path / "clinical.csv"
    stems = ("treg", "populations", "failures", "gates_fitted")
    frames = {stem: pd.read_csv(out / f"{stem}.csv", keep_default_na=False, na_values=[""]) for stem in stems}
    for stem, frame in frames.items():  # the files as a run writes its tables
        write_csv(frame, out / f"{stem}.csv")
    written = ("baseline.csv", "summary.csv", "correlation.csv", "report.html")

    def outputs() -> dict[str, bytes]:
        return {name: re.sub(rb"rendered [0-9: -]+UTC", b"", (out / name).read_bytes()) for name in written}

    render_report(out, clinical=clinical, pdf=False)
    expected = outputs()
    as_frames = render_from_tables(out, frames, clinical=clinical, pdf=False)
    assert outputs() == expected
    as_tables = render_from_tables(out, {stem: from_frame(f) for stem, f in frames.items()}, clinical=clinical,
                                   pdf=False)
    assert outputs() == expected
    assert all(isinstance(t, pd.DataFrame) for t in as_frames.values())
    assert all(isinstance(t, dict) for t in as_tables.values())
    assert str(as_frames["baseline"]["treg_events"].dtype) == "Int64"  # as stats.baseline_table returns it
    for name in ("baseline", "summary", "correlation"):
        _same_tables(as_tables[name], from_frame(as_frames[name]))
    assert np.isfinite(as_tables["correlation"]["spearman_r"]).any()


def test_provenance_tables_are_those_of_pandas_records() -> None:
    """A manifest's list of records is shown as pandas.DataFrame(records) types it: columns in order of first
    appearance, a missing key NaN (a count column with one missing is a float column), mixtures as text."""
    from cytopipe.report import _provenance_blocks, _table

    records = [{"sample": "a", "events": 10, "ok": True, "tags": ["x", "y"], "sha": None},
               {"events": 20, "sample": "=b", "extra": 1.5, "ok": False},
               {"sample": "c", "ok": None, "events": None, "nested": {"k": 1}}]
    for rows in (records, records[:1], [{"only": 1}, {}]):
        (block,) = _provenance_blocks({"inputs": rows})
        expected = _table(from_frame(pd.DataFrame(rows)))
        assert block["kind"] == "table" and block["title"] == "inputs"
        assert (block["columns"], block["rows"], str(block["body"])) == \
            (expected["columns"], expected["rows"], str(expected["body"]))


def test_lymphocyte_counts_are_joined_as_pandas_maps_them() -> None:
    """The lymphocyte gate's count joined by sample: integers when every sample has one, floats with NaN when one
    has none, the counts' type for no rows; no join for a sample with two lymphocyte gates."""
    import numpy as np

    from cytopipe.report import _lymphocyte_events

    populations = from_frame(pd.DataFrame({"sample": ["a", "b", "a", "c"], "population": ["Lymphocytes", "LYMPHS",
                                                                                         "CD4", "T cells"],
                                           "count": [100, 200, 50, 7]}))
    for samples in (["a", "b"], ["b", "x", "a"], []):
        treg = {"sample": np.array(samples, dtype=object)}
        joined = _lymphocyte_events(treg, populations)["lymphocyte_events"]
        expected = pd.Series(samples, dtype=object).map({"a": 100, "b": 200}).to_numpy()
        assert joined.dtype == expected.dtype and np.array_equal(joined, expected, equal_nan=joined.dtype.kind == "f")
    twice = {name: np.concatenate([values, values[:1]]) for name, values in populations.items()}
    assert "lymphocyte_events" not in _lymphocyte_events({"sample": np.array(["a"], dtype=object)}, twice)


def test_a_run_s_report_renders_without_pandas(tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    """render_from_tables of plain tables (text cells, as a CSV reader gives them) with clinical data, figures and
    the native PDF, in a process where pandas cannot be imported: what a run's report does."""
    import subprocess
    import sys

    out = results_folder(tmp_path, clinical=True)
    code = f"""
import csv, sys
from pathlib import Path
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ImportError("pandas imported")
sys.meta_path.insert(0, Blocked())
from cytopipe.columns import from_rows
from cytopipe.report import render_from_tables
out = Path({str(out)!r})
tables = {{}}
for stem in ("treg", "populations", "failures", "gates_fitted"):
    with open(out / f"{{stem}}.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        tables[stem] = from_rows(list(reader), reader.fieldnames)
written = render_from_tables(out, tables, clinical=out.parent / "clinical.csv")
assert isinstance(written["baseline"], dict) and len(written["correlation"]["subject"]) == 3
assert "pandas" not in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])  # this checkout's cytopipe
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "timecourse" in html and (out / "report.pdf").stat().st_size > 1000
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


_CELL_TEXT = st.text(st.sampled_from(list("ab ,\"'\n\r\t=-+@1.5eNA\u00e9\u202e")), max_size=6)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("ab ,\"'\n=.1")), min_size=1, max_size=4), min_size=1, max_size=4,
                unique=True),
       st.lists(st.lists(st.one_of(_CELL_TEXT, st.floats(allow_nan=True), st.integers(-10**6, 10**6)), min_size=4,
                         max_size=4), max_size=5))
def test_results_files_read_by_csv_are_read_as_pandas_reads_them(names: list[str], rows: list[list[object]]) -> None:
    """A results file cytopipe writes (hostile text: quotes, commas, line ends, formulas) is read without pandas
    into the cells pandas.read_csv(dtype=str, keep_default_na=False) reads, typed alike."""
    import tempfile

    from cytopipe.outputs import write_csv
    from cytopipe.report import _plain_rows, _read_table, _typed

    frame = pd.DataFrame([row[: len(names)] for row in rows], columns=names) if rows else pd.DataFrame(columns=names)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        write_csv(frame, path)
        try:
            expected = _typed(pd.read_csv(path, dtype=str, keep_default_na=False))
        except pd.errors.EmptyDataError:  # a blank header line only
            with pytest.raises(ConfigError, match="cannot read results table"):
                _read_table(path)
            return
        _same_tables(_read_table(path), expected)
        blank = len(names) == 1 and any(not str(v).strip() or v != v for v in [names[0], *frame.iloc[:, 0]])
        if b"\r" not in path.read_bytes() and not blank:
            assert _plain_rows(path) is not None  # read without pandas


def test_results_files_edited_by_hand_are_read_by_pandas(tmp_path: Path) -> None:
    """Files that are not what a CSV writer writes (CRLF, a BOM, blank lines, ragged or unnamed columns) are left
    to pandas, whose reading they get."""
    from cytopipe.report import _plain_rows, _read_table, _typed

    for text in ("a,b\r\n1,x\r\n", "\ufeffa,b\n1,x\n", "a,b\n\n1,x\n", "a,b\n1\n", "a,\n1,2\n", "a\n\n1\n",
                 'a,b\n"1",x\n', "a,b\n1,x"):
        path = tmp_path / "t.csv"
        path.write_bytes(text.encode("utf-8"))
        assert _plain_rows(path) is None, text
        _same_tables(_read_table(path), _typed(pd.read_csv(path, dtype=str, keep_default_na=False)))
    path.write_text("a,b\n1,x\n", encoding="utf-8")
    assert _plain_rows(path) == (["a", "b"], [["1", "x"]])

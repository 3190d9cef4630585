"""report.pdf written natively (cytopipe.pdf): a valid PDF whose text poppler extracts, escaped, byte-reproducible.

poppler's ``pdftotext``/``pdftoppm`` read the files (an independent PDF parser); the tests skip without them unless
``CI`` or ``CYTOPIPE_REQUIRE_SHARED`` is set (CI installs poppler-utils).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import unicodedata
import zlib
from collections.abc import Callable
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cytopipe.pdf import Document, Text
from cytopipe.pdf.document import _SUPERSCRIPTS, _TYPOGRAPHIC, font_width, literal, wrap
from cytopipe.pdf.figure import draw_figure
from cytopipe.report import render_report

XSS = "<script>alert(1)</script>"
_TYPOGRAPHIC_KEYS = [chr(code) for code in _TYPOGRAPHIC]
HOSTILE = "P(1)\\x) 患者 😀 שלום\x07"  # PDF string delimiters, CJK, emoji, right-to-left, a control character


def _poppler(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        flags = (os.environ.get("CYTOPIPE_REQUIRE_SHARED", ""), os.environ.get("CI", ""))
        message = f"{tool} is not installed (Debian package poppler-utils; .ci/run installs it)"
        if any(flag not in ("", "0", "false", "no") for flag in flags):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _text(pdf: Path, *options: str) -> str:
    """The PDF's text by pdftotext; poppler must not complain about the file (stderr empty)."""
    done = subprocess.run([_poppler("pdftotext"), *options, str(pdf), "-"], capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.decode("utf-8")


def _outline(pdf: Path) -> list[tuple[int, str]]:
    """The PDF's bookmarks as (level, title), read by poppler's pdftohtml."""
    import xml.etree.ElementTree as ET

    done = subprocess.run([_poppler("pdftohtml"), "-xml", "-stdout", "-i", "-q", str(pdf)], capture_output=True,
                          timeout=60, check=True)
    root = ET.fromstring(done.stdout)
    found: list[tuple[int, str]] = []

    def walk(node: ET.Element, level: int) -> None:
        for child in node:
            if child.tag == "item":
                found.append((level, child.text or ""))
            elif child.tag == "outline":
                walk(child, level + 1)

    for top in root.findall("outline"):
        walk(top, 1)
    return found


@pytest.fixture
def no_chromium(monkeypatch: pytest.MonkeyPatch) -> None:
    """The native PDF needs no browser: make sure none is found."""
    monkeypatch.setenv("CYTOPIPE_CHROMIUM", "no-such-browser-cytopipe")


def test_pdf_holds_every_subject_and_the_summary(tmp_path: Path, results_folder: Callable[..., Path],
                                                 report_study: dict, no_chromium: None) -> None:
    out = results_folder(tmp_path)
    render_report(out, clinical=tmp_path / "clinical.csv", pdf=True)
    pdf = out / "report.pdf"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-1.4\n") and data.rstrip().endswith(b"%%EOF")
    text = _text(pdf)
    flat = " ".join(text.split())
    for subject in report_study:
        assert text.count(subject) >= 3, subject  # summary row, overview label, subject heading, figure title
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    for row in summary.itertuples(index=False):
        assert f"{row.baseline_pct:.2f}" in flat
        assert f"x{row.peak_fold_change:.2f} [{row.peak_fc_ci_low:.2f}, {row.peak_fc_ci_high:.2f}] at " \
               f"{row.peak_timepoint}" in flat
        assert " ".join(str(row.treg_verdict).split()) in flat
    baseline = pd.read_csv(out / "baseline.csv", keep_default_na=False)
    for row in baseline.itertuples(index=False):  # every timepoint's Treg % with its interval
        assert f"{row.treg_pct:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]" in flat
    # QC: counts, the failed sample with its (escaped in HTML, plain here) reason, the flagged samples.
    assert "10 sample(s): 1 failed, 2 with a QC flag" in flat
    assert "truncated file <DATA> segment" in flat and f"{XSS}_D0" in flat
    # Figures are text too (title, ticks, timepoint labels); the per-sample gating stays in the HTML.
    assert "ITP-01: Treg % of CD4 against baseline" in flat and "d42" in flat
    assert "Fold change of Treg % of CD4, all subjects" in flat
    assert "Gating per sample" in flat and "Gating of" not in flat and "<i>Lymphocytes</i>" not in flat
    info = subprocess.run([_poppler("pdfinfo"), str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Pages:\s+[2-9]", info) and re.search(r"Page size:\s+595.28 x 841.89 pts \(A4\)", info)
    assert "CreationDate" not in info  # no date: the same results give the same bytes
    # Bookmarks: the sections, and each subject under "Subjects".
    outline = _outline(pdf)
    assert [t for level, t in outline if level == 1] == ["Summary", "QC", "Subjects", "Methods", "Provenance"]
    assert [t for level, t in outline if level == 2 and t in report_study] == sorted(report_study)


def test_pdf_bytes_are_reproducible(tmp_path: Path, results_folder: Callable[..., Path], no_chromium: None) -> None:
    out = results_folder(tmp_path)
    render_report(out, clinical=tmp_path / "clinical.csv", pdf=True)
    first = (out / "report.pdf").read_bytes()
    render_report(out, clinical=tmp_path / "clinical.csv", pdf=True)
    assert (out / "report.pdf").read_bytes() == first
    render_report(out, clinical=tmp_path / "clinical.csv", pdf=True, cva=12.0)  # a setting shown in the PDF
    assert (out / "report.pdf").read_bytes() != first


def _content(pdf: bytes) -> bytes:
    """Every content stream of a PDF written by cytopipe.pdf, inflated."""
    streams = re.findall(rb"<< /Length \d+ /Filter /FlateDecode >>\nstream\n(.*?)\nendstream", pdf, re.S)
    return b"\n".join(zlib.decompress(s) for s in streams)


def test_hostile_names_are_escaped_and_never_dropped(tmp_path: Path, results_folder: Callable[..., Path],
                                                     no_chromium: None) -> None:
    out = results_folder(tmp_path)
    treg = pd.read_csv(out / "treg.csv", keep_default_na=False)
    treg["subject"] = treg["subject"].replace({"ITP-02": HOSTILE})
    treg.to_csv(out / "treg.csv", index=False)
    render_report(out, pdf=True)
    data = (out / "report.pdf").read_bytes()
    content = _content(data)
    # ( ) and \ of the name are escaped inside the PDF string; the string still ends where it should.
    assert rb"(P\(1\)\\x\) <U+60A3><U+8005>" in content
    flat = " ".join(_text(out / "report.pdf").split())
    # What the standard font cannot show is written as code points, named in a notice under the title.
    shown = "P(1)\\x) <U+60A3><U+8005> <U+1F600> <U+05E9><U+05DC><U+05D5><U+05DD><U+0007>"
    assert shown in flat
    assert "U+0007, U+05D5, U+05DC, U+05DD, U+05E9, U+60A3, U+8005, U+1F600" in flat
    assert "written as their Unicode code points" in flat
    # The bookmarks are Unicode text strings: there the name is written as it is (its control character as a code).
    assert (2, "P(1)\\x) 患者 😀 שלום<U+0007>") in _outline(out / "report.pdf")
    assert XSS in flat


def test_literal_escaping_and_text_cleaning() -> None:
    assert literal("a(b)c\\d") == b"(a\\(b\\)c\\\\d)"
    text = Text()
    assert text.clean("x10⁹/L −10³ ≥ 5") == "x10^9/L -10^3 >= 5"
    assert text.clean("10³", superscripts=True) == "10³" and not text.replaced
    assert text.clean("a\nb\x00c") == "a<U+000A>b<U+0000>c" and text.replaced == {"\n", "\x00"}
    assert text.clean("Müller µL ±5 – x") == "Müller µL ±5 – x"  # WinAnsi holds these
    assert literal(text.clean("Müller")) == b"(M\xfcller)"
    # Line breaking: at spaces, inside a word only when it is wider than the line.
    lines = wrap("aaaa bbbb " + "c" * 40, 60.0, "F1", 10.0)
    assert lines == ["aaaa bbbb", "c" * 12, "c" * 12, "c" * 12, "c" * 4]
    assert all(font_width(line, "F1", 10.0) <= 60.0 for line in lines)


def test_figures_are_drawn_with_their_rasters(tmp_path: Path) -> None:
    """A gating figure (density raster, gate path, texts) drawn on a page: poppler shows its colours."""
    from conftest import one_gate_scatter

    from cytopipe.plots import gating_hierarchy

    strategy, result = one_gate_scatter("Lymphocytes", 4000)
    figure = gating_hierarchy(result, strategy, "S1")
    assert figure.panels[0].image  # the density is an embedded PNG
    doc = Document()
    draw_figure(doc.add_page(), Text(), figure, 30.0, 30.0, 1.0)
    pdf = tmp_path / "figure.pdf"
    pdf.write_bytes(doc.tobytes())
    assert b"/Subtype /Image" in pdf.read_bytes() and b"/Indexed /DeviceRGB" in pdf.read_bytes()
    assert "Lymphocytes" in _text(pdf)
    subprocess.run([_poppler("pdftoppm"), "-r", "72", "-png", "-singlefile", str(pdf), str(tmp_path / "page")],
                   check=True, capture_output=True, timeout=60)
    pixels = (mpimg.imread(tmp_path / "page.png")[..., :3] * 255).astype(int)
    viridis_green = (np.abs(pixels - np.array([0x21, 0x91, 0x8C])).sum(axis=-1) < 60).sum()
    gate_red = (np.abs(pixels - np.array([0xC8, 0x10, 0x2E])).sum(axis=-1) < 60).sum()
    assert viridis_green > 50, "density raster not drawn"
    assert gate_red > 50, "gate outline not drawn"


def test_back_gated_events_are_drawn_over_the_grey_density(tmp_path: Path) -> None:
    """The back-gating panel's red population is a second image over the grey density (Panel.overlay): the PDF
    draws both, as a browser does."""
    from cytopipe.fcs import Sample
    from cytopipe.gates import Dimension, GatingStrategy, Population, RectangleGate
    from cytopipe.plots import gating_hierarchy

    rng = np.random.default_rng(5)
    events = rng.normal(50000, 9000, (6000, 2)).astype(np.float32)
    scatter = (Dimension("FSC-A"), Dimension("SSC-A"))
    pops = (Population("Lymphocytes", RectangleGate("Lymphocytes", scatter, min=(30000, 30000), max=(70000, 70000))),
            Population("Treg", RectangleGate("Treg", scatter, min=(55000, 55000), max=(70000, 70000)), "Lymphocytes"))
    strategy = GatingStrategy(pops, treg="Treg", compensation="none")
    result = strategy.apply(Sample("", events, ("FSC-A", "SSC-A"), ("", ""), {}, "FCS3.1"))
    figure = gating_hierarchy(result, strategy, "S1")
    back = figure.panels[-1]
    assert back.title[0] == "Back-gating: Treg" and back.overlay
    doc = Document()
    draw_figure(doc.add_page(), Text(), figure, 30.0, 30.0, 0.5)
    pdf = tmp_path / "figure.pdf"
    pdf.write_bytes(doc.tobytes())
    subprocess.run([_poppler("pdftoppm"), "-r", "72", "-png", "-singlefile", str(pdf), str(tmp_path / "page")],
                   check=True, capture_output=True, timeout=60)
    pixels = (mpimg.imread(tmp_path / "page.png")[..., :3] * 255).astype(int)
    left, top, size = round(30 + 0.5 * back.x), round(30 + 0.5 * back.y), round(0.5 * back.width)
    box = pixels[top + 2:top + size - 2, left + 2:left + size - 2]  # inside the panel's frame (1 pt = 1 px)
    red = (box[..., 0] > box[..., 2] + 60).sum()
    grey = ((np.abs(box[..., 0] - box[..., 2]) < 8) & (box[..., 0] < 230)).sum()
    assert red > 20, "back-gated events not drawn"
    assert grey > 20, "grey density not drawn"


def test_pdf_write_failure_is_a_warning(tmp_path: Path, results_folder: Callable[..., Path],
                                        caplog: pytest.LogCaptureFixture, no_chromium: None) -> None:
    out = results_folder(tmp_path, clinical=False)
    (out / "report.pdf").mkdir()  # cannot be replaced by a file
    with caplog.at_level(logging.WARNING, logger="cytopipe.report"):
        html = render_report(out, pdf=True)
    assert html.is_file() and "report.pdf not written" in caplog.text
    (out / "report.pdf").rmdir()
    render_report(out, pdf=True)
    assert (out / "report.pdf").is_file()
    render_report(out, pdf=False)  # a PDF from an earlier rendering does not survive one without it
    assert not (out / "report.pdf").exists()


def test_report_command_names_the_pdf_it_wrote(tmp_path: Path, results_folder: Callable[..., Path],
                                               capsys: pytest.CaptureFixture, no_chromium: None) -> None:
    from cytopipe.cli import main

    out = results_folder(tmp_path)
    assert main(["report", str(out), "--clinical", str(tmp_path / "clinical.csv")]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {out / 'report.html'} and {out / 'report.pdf'}"
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example("≥ x10⁹ −1 e\u0301 患者😀 \u202eevil")
@given(st.text(alphabet=st.one_of(st.sampled_from("()\\<>&;%/[]{}\r\n\t\x00\x07\x1b"),
                                  st.characters(codec="utf-8")), min_size=1, max_size=40))
def test_any_text_is_escaped_and_read_back(tmp_path: Path, value: str) -> None:
    """Whatever a name holds, the PDF stays valid and poppler reads back exactly what the page shows."""
    text = Text()
    shown = text.clean(value)
    doc = Document()
    page = doc.add_page()
    for i, line in enumerate(wrap(shown, 500.0, "F1", 10.0)):  # on the page (poppler reads no further)
        page.text(40, 60 + 12 * i, line, 10)
    pdf = tmp_path / "any.pdf"
    pdf.write_bytes(doc.tobytes())
    assert "".join(_text(pdf).split()) == "".join(shown.split())
    # Nothing dropped: every character (composed, NFC) is shown, spelled (≥ as >=, ⁹ as ^9), or listed as
    # replaced and shown as its code point.
    spelled = set(_TYPOGRAPHIC_KEYS) | set(_SUPERSCRIPTS)
    for char in unicodedata.normalize("NFC", value):
        assert char in shown or char in spelled or (char in text.replaced and f"<U+{ord(char):04X}>" in shown)


def test_pdf_laid_out_in_a_forked_child_is_the_one_laid_out_here(tmp_path: Path, results_folder: Callable[..., Path],
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The report forks children to write the PDF and the figure files while it writes the HTML: same bytes and the
    same warning (logged here) as without children, also when they die."""
    import threading

    from cytopipe import forked

    if threading.active_count() != 1:
        pytest.skip("another thread runs in this test process: no child is forked")
    out = results_folder(tmp_path)
    treg = pd.read_csv(out / "treg.csv", keep_default_na=False)
    treg["subject"] = treg["subject"].replace({"ITP-02": HOSTILE})
    treg.to_csv(out / "treg.csv", index=False)
    children = []
    start = forked.start

    def counted(work: Callable[[], object]) -> forked.Child | None:
        children.append(start(work))
        return children[-1]

    def dying(work: Callable[[], object]) -> forked.Child | None:
        return start(lambda: os._exit(1))

    runs = {}
    for how, fork in (("child", counted), ("here", lambda work: None), ("dead child", dying)):
        monkeypatch.setattr(forked, "start", fork)
        (out / "report.pdf").unlink(missing_ok=True)
        for figure in (out / "plots").glob("timecourse_*.svg"):
            figure.unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cytopipe.report"):
            render_report(out, pdf=True)
        figures = {f.name: f.read_bytes() for f in sorted((out / "plots").glob("timecourse_*.svg"))}
        runs[how] = ((out / "report.pdf").read_bytes(), [r.getMessage() for r in caplog.records], figures)
    assert len(children) == 2 and None not in children
    assert len(runs["child"][2]) == 3  # a time course per subject
    assert runs["child"] == runs["here"] == runs["dead child"]
    assert "U+60A3" in runs["child"][1][0]

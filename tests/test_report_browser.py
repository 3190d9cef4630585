"""The report in a real browser: headless Chromium loads it with no console message and shows every subject.

The report has no JavaScript and no external resource, so *any* console message (an error, a blocked or missing
resource, a CSP complaint) is a failure. Chromium logs console messages to stderr with ``--enable-logging=stderr``
as ``...:CONSOLE:<line>] "message", source: ...``; a self-check proves this detector sees a broken page.
Skips when Chromium is absent, unless ``CYTOPIPE_REQUIRE_SHARED`` or ``CI`` is set (CI installs it).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from cytopipe.report import find_chromium, render_report

pytestmark = pytest.mark.slow


def _require() -> bool:
    flags = (os.environ.get("CYTOPIPE_REQUIRE_SHARED", ""), os.environ.get("CI", ""))
    return any(flag not in ("", "0", "false", "no") for flag in flags)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "chromium is not installed (Debian package 'chromium'; .ci/run installs it)"
        if _require():
            pytest.fail(message + " and CI/CYTOPIPE_REQUIRE_SHARED demands it")
        pytest.skip(message)
    return path


def _load(chromium: str, url: str, profile: Path) -> tuple[str, list[str]]:
    """Serialised DOM after load, and every console message Chromium logged."""
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if re.search(r":CONSOLE(\(\d+\))?[:\]]", line)]
    return done.stdout, console


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.h3: list[str] = []
        self.text: list[str] = []
        self._in_h3 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_h3 = tag == "h3"

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._in_h3 = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_h3:
            self.h3.append(data.strip())


def test_detector_sees_console_errors(chromium: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); undefinedFunction();</script>")
    _, console = _load(chromium, broken.as_uri(), tmp_path / "profile")
    assert any("boom" in line for line in console), console
    assert any("undefinedFunction" in line for line in console), console


def test_report_loads_cleanly_and_shows_every_subject(chromium: str, tmp_path: Path,
                                                      results_folder: Callable[..., Path], report_study: dict) -> None:
    out = results_folder(tmp_path)
    html = render_report(out, clinical=tmp_path / "clinical.csv", pdf=False)
    dom, console = _load(chromium, html.resolve().as_uri(), tmp_path / "profile")
    assert console == []
    parsed = _Dom()
    parsed.feed(dom)
    assert "script" not in parsed.tags
    assert parsed.tags.count("svg") == 5 and parsed.tags.count("img") == 0
    text = "".join(parsed.text)
    for subject in report_study:
        assert subject in parsed.h3, f"no section heading for {subject!r}"
        assert subject in text
    assert "Tregs rose significantly" in text


def test_embedded_figures_are_drawn(chromium: str, tmp_path: Path, results_folder: Callable[..., Path]) -> None:
    out = results_folder(tmp_path)
    html = render_report(out, clinical=tmp_path / "clinical.csv", pdf=False)
    shot = tmp_path / "shot.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400", f"--screenshot={shot}",
               html.resolve().as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    pixels = (mpimg.imread(shot)[..., :3] * 255).astype(int)
    # The platelet/ITP-01 orange (#E69F00) is used only inside the figures, not by the page's CSS.
    orange = (np.abs(pixels - np.array([0xE6, 0x9F, 0x00])).sum(axis=-1) < 40).sum()
    assert orange > 200, "embedded figures were not drawn"


def test_pdf_engine_chromium_prints_the_html(chromium: str, tmp_path: Path,
                                            results_folder: Callable[..., Path]) -> None:
    """``--pdf-engine chromium``: the print rendering of the HTML (names in any script the machine has fonts for)."""
    out = results_folder(tmp_path)
    render_report(out, clinical=tmp_path / "clinical.csv", pdf=True, pdf_engine="chromium")
    pdf = out / "report.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-" and b"/Producer (cytopipe" not in pdf.read_bytes()  # by Chromium
    pdftotext = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=False)
    if pdftotext.returncode == 0:
        assert "ITP-01" in pdftotext.stdout and "<script>alert(1)</script>" in pdftotext.stdout
        # Summary, QC and subjects are printed; the per-sample gating stays in the HTML.
        assert "Gating of" not in pdftotext.stdout and "Gating per sample" in pdftotext.stdout


def test_printer_prints_and_leaves_no_process(chromium: str, tmp_path: Path,
                                              results_folder: Callable[..., Path]) -> None:
    from cytopipe.printer import Printer

    out = results_folder(tmp_path)
    html = render_report(out, clinical=tmp_path / "clinical.csv", pdf=False)
    printer = Printer(chromium)
    first, second = printer.print_pdf(html), printer.print_pdf(html)  # one Chromium, several jobs
    process = printer._process
    printer.close()
    assert first[:5] == second[:5] == b"%PDF-"
    assert process.poll() is not None and not Path(printer._profile).exists()

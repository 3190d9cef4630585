"""report.pdf engines compared on one results folder: native (cytopipe.pdf), reportlab's canvas, headless Chromium.

Usage::

    python benchmarks/pdf_engines.py RESULTS_DIR [--rounds 5] [--no-chromium] [--no-reportlab]

reportlab is not a cytopipe dependency: ``pip install reportlab`` for its column. RESULTS_DIR is a folder written by
``cytopipe run`` (for example ``python -m cytopipe run --out /tmp/r``). The
report context is computed once (one ``render_report`` call, with the native engine); then, in interleaved rounds:

* ``native``: :func:`cytopipe.pdf.render_pdf` (layout, figures, compressed file) and the atomic write;
* ``reportlab``: the same layout and figures drawn through a reportlab ``Canvas`` (text through its text objects,
  boxes and lines through its calls, the figures' path operators appended as they are) and saved: a lower bound
  of a reportlab implementation's cost (figure paths built with its ``beginPath`` objects would cost more);
* ``chromium``: the previous engine, :func:`cytopipe.report.write_pdf` of the print rendering (start Chromium,
  print, stop), its CPU including Chromium's processes;
* ``chr-print``: the same with Chromium started before the clock (as runs started it while their workers gated):
  wall = print only; CPU = Chromium's whole life (start-up included), counted when it exits.

Import times are measured in fresh interpreters that imported ``cytopipe.report`` first (its marginal cost in a
run). Prints medians (wall and CPU) and the ratios to ``native``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _context(results: Path) -> dict[str, Any]:
    """The report context render_report hands the PDF writer (captured from one rendering)."""
    import cytopipe.pdf as pdf
    from cytopipe import forked
    from cytopipe.report import render_report

    captured: dict[str, Any] = {}
    original, fork = pdf.render_pdf, forked.start

    def capture(ctx: dict[str, Any]) -> tuple[bytes, list[str]]:
        captured.update(ctx)
        return original(ctx)

    pdf.render_pdf = capture  # type: ignore[assignment]
    forked.start = lambda work: None  # type: ignore[assignment]  # the PDF laid out in this process, not a child
    try:
        render_report(results, pdf=True)
    finally:
        pdf.render_pdf, forked.start = original, fork  # type: ignore[assignment]
    return captured


class _ReportlabPage:
    """The :class:`cytopipe.pdf.document.Page` interface drawn on a reportlab canvas (top-down coordinates)."""

    def __init__(self, canvas: Any, height: float) -> None:
        self.c = canvas
        self.c._code.append(f"1 0 0 -1 0 {height:.2f} cm 1 j")

    @staticmethod
    def _rgb(colour: str) -> tuple[float, float, float] | None:
        from cytopipe.pdf.document import rgb

        return rgb(colour)

    def fill(self, colour: str) -> None:
        value = self._rgb(colour)
        if value:
            self.c.setFillColorRGB(*value)

    def stroke(self, colour: str) -> None:
        value = self._rgb(colour)
        if value:
            self.c.setStrokeColorRGB(*value)

    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None:
        self.fill(fill)
        self.c.rect(x, y, w, h, stroke=0, fill=1)

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 0.5) -> None:
        self.stroke(colour)
        self.c.setLineWidth(width)
        self.c.line(x1, y1, x2, y2)

    def text(self, x: float, y: float, text: str, size: float, font: str = "F1", colour: str = "#1d2330",
             anchor: str = "start", rotate: int = 0, rise: float = 0.0, offset: float = 0.0) -> float:
        name = "Helvetica" if font == "F1" else "Helvetica-Bold"
        width = self.c.stringWidth(text, name, size)
        along = offset - {"middle": width / 2, "end": width}.get(anchor, 0.0)
        matrix = {0: (1, 0, 0, -1, x + along, y - rise), -90: (0, -1, -1, 0, x - rise, y - along),
                  90: (0, 1, 1, 0, x + rise, y + along)}[rotate]
        t = self.c.beginText()
        t.setTextTransform(*matrix)
        t.setFont(name, size)
        value = self._rgb(colour)
        if value:
            t.setFillColorRGB(*value)
        t.textOut(text)
        self.c.drawText(t)
        return width

    def raw(self, op: str) -> None:
        self.c._code.append(op)

    def alpha(self, fill: float = 1.0, stroke: float = 1.0) -> None:
        self.c.setFillAlpha(fill)
        self.c.setStrokeAlpha(stroke)

    def image(self, png: bytes, x: float, y: float, w: float, h: float) -> None:
        raise NotImplementedError("the report PDF's figures hold no raster")


def _reportlab(ctx: dict[str, Any], target: Path) -> None:
    from reportlab.pdfgen.canvas import Canvas

    from cytopipe.pdf import layout

    canvas = Canvas(str(target), pagesize=(595.276, 841.89), invariant=1, pageCompression=1)

    class Doc:  # the Document interface layout_report uses, on the canvas
        width, height = 595.276, 841.89

        def __init__(self, title: str = "", producer: str = "") -> None:
            self.pages: list[_ReportlabPage] = []

        def bookmark(self, title: str, level: int, y: float) -> None:
            key = f"b{id(title)}{y}"
            canvas.bookmarkHorizontal(key, 0, self.height - y)
            canvas.addOutlineEntry(title, key, level=level - 1)

        def add_page(self) -> _ReportlabPage:
            if self.pages:
                canvas.showPage()
            page = _ReportlabPage(canvas, self.height)
            self.pages.append(page)
            return page

    original = layout.Document
    layout.Document = Doc  # type: ignore[misc,assignment]
    try:
        layout.layout_report(ctx)
    finally:
        layout.Document = original  # type: ignore[misc]
    canvas.showPage()
    canvas.save()


def _native(ctx: dict[str, Any], target: Path) -> None:
    from cytopipe.outputs import atomic_write
    from cytopipe.pdf import document, render_pdf

    for measured in document._MEASURED.values():  # cold caches, as in a run's one rendering
        measured.clear()
    document._colour_op.cache_clear()

    atomic_write(target, render_pdf(ctx)[0])


def _chromium(results: Path, ctx: dict[str, Any], target: Path, printer: Any = None) -> None:
    from cytopipe.report import _environment, write_pdf

    printable = results / ".bench-print.html"
    printable.write_text(_environment().get_template("report.html.j2").render(**ctx, for_print=True),
                         encoding="utf-8")
    try:
        if write_pdf(printable, target, printer=printer) is None:
            raise RuntimeError("chromium did not print")
    finally:
        printable.unlink()


def _started() -> Any:
    """A Chromium started before the clock (as the runs before the native writer started it while gating)."""
    from cytopipe.printer import Printer, find_chromium

    return Printer(find_chromium() or "chromium")


def _import_ms(module: str, rounds: int) -> tuple[float, float]:
    # Marginal cost in a run: cytopipe.report (numpy, pandas, jinja2, cytopipe.svg) is already imported.
    code = (f"import time, cytopipe.report; w = time.perf_counter(); c = time.process_time(); import {module}; "
            "print((time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3)")
    walls, cpus = [], []
    # Bytecode cached as in an installed package (a first, unmeasured import writes it to a private prefix).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env)
        for _ in range(rounds):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=env).stdout.split()
            walls.append(float(out[0]))
            cpus.append(float(out[1]))
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-chromium", action="store_true")
    parser.add_argument("--no-reportlab", action="store_true")
    args = parser.parse_args(argv)
    results = Path(args.results)
    ctx = _context(results)
    engines: dict[str, Any] = {"native": lambda t: _native(ctx, t)}
    if not args.no_reportlab:
        try:
            import reportlab  # noqa: F401  (a comparison only: not a cytopipe dependency)
        except ImportError:
            print("reportlab is not installed (pip install reportlab): its column is left out", file=sys.stderr)
            args.no_reportlab = True
        else:
            engines["reportlab"] = lambda t: _reportlab(ctx, t)
    if not args.no_chromium:
        engines["chromium"] = lambda t: _chromium(results, ctx, t)
        engines["chr-print"] = lambda t, printer: _chromium(results, ctx, t, printer)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, engine in engines.items():
                target = Path(tmp) / f"{name}.pdf"
                printer = _started() if name == "chr-print" else None
                if printer is not None:
                    time.sleep(2.0)  # a run gates for seconds while Chromium starts: let it finish starting
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall, cpu = time.perf_counter(), time.process_time()
                engine(target, printer) if printer is not None else engine(target)
                elapsed = time.perf_counter() - wall
                if printer is not None:  # its start-up is not timed; its CPU is counted once it exits
                    printer.close()
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                child = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
                times[name].append((elapsed, time.process_time() - cpu + child))
                sizes[name] = target.stat().st_size
    print(f"{results}: {len(ctx['sections'])} subjects, {ctx['n_samples']} samples; medians of {args.rounds} "
          "interleaved rounds (CPU includes child processes)")
    native_wall = statistics.median(w for w, _ in times["native"])
    native_cpu = statistics.median(c for _, c in times["native"])
    print(f"{'engine':<10} {'wall ms':>9} {'CPU ms':>9} {'wall x':>7} {'CPU x':>7} {'KB':>8}")
    for name, values in times.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:<10} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {wall / native_wall:7.1f} {cpu / native_cpu:7.1f} "
              f"{sizes[name] / 1024:8.0f}")
    for module in ["cytopipe.pdf"] + ([] if args.no_reportlab else ["reportlab.pdfgen.canvas"]):
        wall, cpu = _import_ms(module, args.rounds)
        print(f"import {module}: {wall:.1f} ms wall, {cpu:.1f} ms CPU (fresh interpreter, median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

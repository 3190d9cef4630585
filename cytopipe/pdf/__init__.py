"""``report.pdf`` written natively: the report's summary, QC and subjects as a PDF 1.4 file, in tens of ms.

The PDF is laid out directly from the report context and the figure descriptions (:mod:`cytopipe.svg`), with no
browser: :mod:`cytopipe.pdf.document` writes the file (standard Helvetica fonts with WinAnsiEncoding and their AFM
widths, zlib-compressed content streams, indexed PNG rasters as image XObjects), :mod:`cytopipe.pdf.figure` draws
figures as vector operators like the SVG template, :mod:`cytopipe.pdf.layout` flows headings, text, tables and
figures over A4 pages.

Why hand-written rather than a library: measured with ``benchmarks/pdf_engines.py`` (the same report context,
medians of 5-7 interleaved rounds on 2 shared cores, CPU including child processes; imports in a fresh interpreter
that already imported :mod:`cytopipe.report`, bytecode cached):

==============================================  ===============  ==================  ===================  =========
                                                this package     reportlab 5.1       Chromium (before)    fpdf2
==============================================  ===============  ==================  ===================  =========
import (marginal), CPU                          2.5-2.9 ms       23-29 ms            a process            270 ms
bundled study, 2 subjects / 12 samples, wall    6-11 ms (7 CPU)  35-45 ms (27 CPU)   1.2-1.4 s (0.5 CPU)  --
84 subjects / 500 samples (90 pages), wall      101-147 ms       440-610 ms          3.6-4.0 s            --
  (CPU)                                         (85-90 ms)       (410-430 ms)        (0.82-0.85 s)
==============================================  ===============  ==================  ===================  =========

Chromium's column is start + print + stop; printing alone, with Chromium started seconds earlier (as runs did while
their workers gated), took 0.40-0.43 s and 2.9-3.3 s wall. The reportlab column draws the same layout through its canvas
(text objects, rectangles, lines; the figures' path operators appended as they are), a lower bound of a reportlab
implementation. The run's budget for the PDF is a few tens of milliseconds: fpdf2's import alone is ten times that,
reportlab's import is most of it and its calls cost 4-5x these for the same page content.

Text outside WinAnsiEncoding (CJK, emoji, right-to-left scripts, control characters) is never dropped: it is written
as ``<U+XXXX>`` codes with a notice under the title naming them (:func:`render_pdf` returns them; report.html shows
them as written; ``cytopipe report --pdf-engine chromium`` prints the HTML with Chromium instead, which shows them
when the machine has fonts for them, and drops or boxes them when it has not: on this machine, without CJK fonts,
Chromium's PDF lost a CJK character from its text). Embedding a font that covers every script (CJK alone is tens of
MB) would cost far more than the run's budget.

The output has no date (no ``/CreationDate``, no rendering time in the text): the same results give identical bytes.
"""

from __future__ import annotations

from typing import Any

from cytopipe.pdf.document import Document, Text
from cytopipe.pdf.layout import layout_report

__all__ = ["Document", "Text", "layout_report", "render_pdf"]


def render_pdf(ctx: dict[str, Any]) -> tuple[bytes, list[str]]:
    """The report PDF of a report context, and the characters the standard fonts could not show.

    Parameters
    ----------
    ctx : dict
        :func:`cytopipe.report._context`'s result, with the figure descriptions.

    Returns
    -------
    bytes
        The PDF file.
    list of str
        Characters written as ``<U+XXXX>`` codes (sorted; empty for Latin-1 names), named in a notice in the PDF.
    """
    text = Text()
    doc = layout_report(ctx, text)
    if text.replaced:  # lay out again with the notice under the title (rare: hostile or non-Latin names)
        replaced = sorted(text.replaced)
        doc = layout_report(ctx, Text(), replaced)
        return doc.tobytes(), replaced
    return doc.tobytes(), []

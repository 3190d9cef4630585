"""``report.pdf`` written natively: the report's summary, QC and subjects as a PDF 1.4 file, in tens of ms.

The PDF is laid out directly from the report context and the figure descriptions (:mod:`cytopipe.svg`), with no
browser: :mod:`cytopipe.pdf.document` writes the file (standard Helvetica fonts with WinAnsiEncoding and their AFM
widths, zlib-compressed content streams, indexed PNG rasters as image XObjects), :mod:`cytopipe.pdf.figure` draws
figures as vector operators like the SVG template, :mod:`cytopipe.pdf.layout` flows headings, text, tables and
figures over A4 pages.

Why hand-written rather than a library (measured on this machine, 2 shared cores, medians of 5 runs; CPU times):

=========================================  =================  ==================  =====================
                                           this package       reportlab 5.1       fpdf2 2.8.9
=========================================  =================  ==================  =====================
import                                     ~2 ms              39-51 ms (canvas)   315-395 ms
render, bundled study (3 subjects)         see README         see README          not measured
render, 100 subjects / 500 samples         see README         see README          not measured
=========================================  =================  ==================  =====================

The run's budget for the whole PDF is a few tens of milliseconds, so the import alone rules fpdf2 out and costs
reportlab most of it; the operators written are the same (benchmarks/pdf_engines.py draws the same layout through
reportlab's canvas for the comparison).

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

"""The report's PDF laid out from the report context (:func:`cytopipe.report._context`): A4, flowing text and tables.

Content, in the order of the print rendering of ``templates/report.html.j2``: title and provenance line, the
summary table (and the fold-change overview when it fits a page), QC (counts, failed samples, flagged samples),
per subject its verdict, time-course figure and timepoint table, then methods and the run's settings. The
per-sample gating stays in ``report.html``. Tables wrap their cells and repeat their header on each page; a subject
starts a new page when its figure and table would otherwise be split.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cytopipe.pdf.document import Document, Page, Text, font_width, wrap
from cytopipe.pdf.figure import draw_figure

__all__ = ["layout_report"]

MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 34.0, 40.0, 44.0
INK, MUTED, LINE, SOFT, ACCENT = "#1d2330", "#5b6475", "#d9dde5", "#f5f7fa", "#0072B2"
GOOD, WARN, BAD, CLINICAL = "#1b6e3c", "#8a5a00", "#b3261e", "#7a4f00"
#: Pixels of a figure per point: figures of 660 px fill the text width.
_MAX_FIGURE_SCALE = 0.8
#: Above this many timepoints the overview figure is left to the HTML (it would not fit a page).
_OVERVIEW_ROWS = 40


@dataclass
class Cell:
    """A table cell: cleaned text, font, colour and alignment."""

    text: str
    font: str = "F1"
    colour: str = INK
    right: bool = False


@dataclass
class Table:
    """Rows of cells with a header row; ``shade[i]`` paints row i's background."""

    header: list[Cell]
    rows: list[list[Cell]]
    size: float = 7.5
    shade: list[str] = field(default_factory=list)


class Writer:
    """The flowing layout: a cursor on the current page, a new page when something does not fit."""

    def __init__(self, doc: Document, text: Text) -> None:
        self.doc, self.t = doc, text
        self.width = doc.width - 2 * MARGIN_X
        self.bottom = doc.height - MARGIN_BOTTOM
        self.page: Page = doc.add_page()
        self.y = MARGIN_TOP

    def new_page(self) -> None:
        self.page = self.doc.add_page()
        self.y = MARGIN_TOP

    def room(self, height: float) -> bool:
        return self.y + height <= self.bottom

    def ensure(self, height: float) -> None:
        if not self.room(height) and self.y > MARGIN_TOP:
            self.new_page()

    # ------------------------------------------------------------------------------------------ text

    def para(self, value: Any, size: float = 9.0, font: str = "F1", colour: str = INK, gap: float = 4.0,
             indent: float = 0.0, clean: bool = True) -> None:
        text = self.t.clean(value) if clean else str(value)
        lead = size * 1.3
        for line in wrap(text, self.width - indent, font, size):
            self.ensure(lead)
            self.page.text(MARGIN_X + indent, self.y + size, line, size, font, colour)
            self.y += lead
        self.y += gap

    def heading(self, value: str, level: int, bookmark: bool = True) -> None:
        size = {1: 17.0, 2: 13.5, 3: 11.0}[level]
        if level == 2 and self.y > MARGIN_TOP + 0.55 * (self.bottom - MARGIN_TOP):
            self.new_page()  # a section starts in the upper half of a page
        elif level == 2 and self.y > MARGIN_TOP:
            self.y += 10
        self.ensure(size * 3)
        self.y += 4 if level == 3 else 0
        if level > 1 and bookmark:
            self.doc.bookmark(_visible(value), level - 1, self.y)
        self.page.text(MARGIN_X, self.y + size, self.t.clean(value), size, "F2")
        self.y += size * 1.35
        if level == 2:
            self.page.line(MARGIN_X, self.y, MARGIN_X + self.width, self.y, ACCENT, 1.5)
            self.y += 6
        else:
            self.y += 2

    def box(self, lines: Sequence[str], size: float = 8.5) -> None:
        """A shaded note with an accent bar (cleaned text, one paragraph per item)."""
        lead = size * 1.3
        wrapped = [line for item in lines for line in wrap(item, self.width - 16, "F1", size)]
        height = len(wrapped) * lead + 8
        self.ensure(min(height, self.bottom - MARGIN_TOP))
        top = self.y
        self.page.rect(MARGIN_X, top, self.width, height, SOFT)
        self.page.rect(MARGIN_X, top, 3, height, ACCENT)
        self.y += 4
        for line in wrapped:
            self.page.text(MARGIN_X + 10, self.y + size, line, size)
            self.y += lead
        self.y = top + height + 6

    # ------------------------------------------------------------------------------------------ tables

    def _column_widths(self, table: Table, pad: float) -> list[float] | None:
        """Column widths at the table's font size, like a browser's automatic table layout; None when the longest
        words of the body cells do not fit the width at that size (the caller tries a smaller font)."""
        n, size = len(table.header), table.size

        def longest_word(cell: Cell) -> float:
            return _longest_word(cell.text, cell.font) * size + 2 * pad

        natural = [max(font_width(r[i].text, r[i].font, size) for r in [table.header, *table.rows]) + 2 * pad
                   for i in range(n)]
        floor = [max((longest_word(r[i]) for r in table.rows), default=2 * pad) for i in range(n)]
        if sum(floor) > self.width:
            return None if size > 5.0 else [w * self.width / sum(floor) for w in floor]
        with_header = [max(f, longest_word(h)) for f, h in zip(floor, table.header, strict=True)]
        if sum(with_header) <= self.width:  # headers break between words only, when there is room for that
            floor = with_header
        if sum(natural) <= self.width:  # everything on one line: share the spare width like an HTML table
            extra = self.width - sum(natural)
            return [w + extra * w / sum(natural) for w in natural]
        # Columns narrower than a fair share keep their natural width; the others share the rest in proportion
        # to their natural width, never below their floor.
        widths: dict[int, float] = {}
        left = sorted(range(n), key=natural.__getitem__)
        while left and natural[left[0]] <= (self.width - sum(widths.values())) / len(left):
            widths[left[0]] = natural[left[0]]
            left.pop(0)
        rest = self.width - sum(widths.values())
        if rest >= sum(floor[i] for i in left):
            want = sum(natural[i] - floor[i] for i in left) or 1.0
            extra = rest - sum(floor[i] for i in left)
            for i in left:
                widths[i] = floor[i] + extra * (natural[i] - floor[i]) / want
            return [widths[i] for i in range(n)]
        want = sum(natural[i] - floor[i] for i in range(n)) or 1.0  # every column from its floor
        extra = self.width - sum(floor)
        return [floor[i] + extra * (natural[i] - floor[i]) / want for i in range(n)]

    def measure(self, table: Table) -> dict[str, Any]:
        """Column widths, wrapped lines and row heights of a table (``height``: all of it on one page)."""
        pad = 3.0
        widths = self._column_widths(table, pad)
        while widths is None:  # a wide table: a smaller font rather than numbers broken across lines
            table.size -= 0.5
            widths = self._column_widths(table, pad)
        size = table.size
        lead = size * 1.25

        def lines_of(row: list[Cell]) -> list[list[str]]:
            return [wrap(c.text, w - 2 * pad, c.font, size) for c, w in zip(row, widths, strict=True)]

        head = lines_of(table.header)
        rows = [lines_of(row) for row in table.rows]
        heights = [max(map(len, lines)) * lead + 2 * pad for lines in [head, *rows]]
        return {"widths": widths, "head": head, "rows": rows, "heights": heights, "pad": pad, "lead": lead,
                "height": sum(heights) + 8}

    def table(self, table: Table, measured: dict[str, Any] | None = None) -> None:
        m = measured or self.measure(table)
        pad, lead, size, widths = m["pad"], m["lead"], table.size, m["widths"]
        head, head_h = m["head"], m["heights"][0]

        def draw_row(row: list[Cell], lines: list[list[str]], height: float, shade: str) -> None:
            if shade:
                self.page.rect(MARGIN_X, self.y, self.width, height, shade)
            x = MARGIN_X
            for cell, cell_lines, w in zip(row, lines, widths, strict=True):
                for k, line in enumerate(cell_lines):
                    at = x + w - pad if cell.right else x + pad
                    self.page.text(at, self.y + pad + size * 0.82 + k * lead, line, size, cell.font, cell.colour,
                                   "end" if cell.right else "start")
                x += w
            self.y += height
            self.page.line(MARGIN_X, self.y, MARGIN_X + self.width, self.y, LINE, 0.5)

        self.ensure(head_h + lead + 2 * pad)
        draw_row(table.header, head, head_h, SOFT)
        for i, (row, lines, height) in enumerate(zip(table.rows, m["rows"], m["heights"][1:], strict=True)):
            if not self.room(height):
                self.new_page()
                draw_row(table.header, head, head_h, SOFT)
            draw_row(row, lines, height, table.shade[i] if i < len(table.shade) else "")
        self.y += 8

    def figure(self, figure: Any, caption: str) -> None:
        scale = min(_MAX_FIGURE_SCALE, self.width / figure.width, (self.bottom - MARGIN_TOP - 30) / figure.height)
        height = figure.height * scale
        self.ensure(height + 24)
        draw_figure(self.page, self.t, figure, MARGIN_X, self.y, scale)
        self.y += height + 4
        self.para(caption, size=7.5, colour=MUTED, gap=6)


@functools.lru_cache(maxsize=65536)
def _longest_word(text: str, font: str) -> float:
    """Width of the widest word of a cell's text at 1 pt (cells repeat across a report's tables)."""
    return max((font_width(w, font, 1.0) for w in text.split(" ")), default=0.0)


# ---------------------------------------------------------------------------------------------- the report


def _visible(value: Any) -> str:
    """A bookmark title: any printable Unicode as is (bookmarks are UTF-16), control characters as codes."""
    return "".join(c if c.isprintable() else f"<U+{ord(c):04X}>" for c in str(value))


def _c(text: Text, value: Any, **style: Any) -> Cell:
    return Cell(text.clean(value), **style)


def _header(text: Text, names: Sequence[str | tuple[str, bool]]) -> list[Cell]:
    return [Cell(text.clean(n[0] if isinstance(n, tuple) else n), "F2", INK, isinstance(n, tuple) and n[1])
            for n in names]


def _summary(w: Writer, ctx: dict[str, Any]) -> None:
    t = w.t
    s = ctx["settings"]
    w.heading("Summary", 2)
    clinical = ("Platelet response by the ITP International Working Group thresholds (complete response >= 100 "
                "x10^9/L; response >= 30 and at least twice baseline)." if ctx["has_clinical"] else
                "No clinical table was given (--clinical FILE adds platelets and the IWG response).")
    w.box([f"For each subject: did Tregs (% of CD4+ T cells) change against baseline, and is the change real? A "
           f"change counts as significant when it is larger than the reference change value ({s['rcv']:.1f}%) and "
           "the interval of the difference excludes zero, an interval that holds the counting noise and the gating "
           "noise (how far the fitted gates could move the Treg %) together. A visit whose reference populations "
           "(CD4, CD8, CD3, scatter) moved against baseline is named in its QC flags. " + clinical])
    if not ctx["summary"]:
        w.para("No sample produced a Treg percentage.", font="F2", colour=BAD)
    else:
        rows = []
        for r in ctx["summary"]:
            sig = r["significant"] + (f" ({r['direction']})" if r["significant"] == "yes" else "")
            rows.append([_c(t, r["subject"]), _c(t, r["baseline"], right=True), _c(t, r["peak"]),
                         _c(t, sig, font="F2" if r["significant"] == "yes" else "F1",
                            colour=GOOD if r["significant"] == "yes" else MUTED),
                         _c(t, r["verdict"], font="F2"), _c(t, r["clinical"], colour=CLINICAL)])
        w.table(Table(_header(t, ["Subject", ("Baseline Treg %", True), "Largest change: fold [interval]",
                                  "Significant", "Tregs", "Clinical response"]), rows, size=8.0))
    figure = ctx.get("overview_figure")
    if figure is not None and ctx["overview_rows"] <= _OVERVIEW_ROWS:
        w.figure(figure, "Fold change against baseline per timepoint with its Katz interval; filled = significant; "
                         "grey band = within the RCV.")
    elif figure is not None:
        w.para(f"The fold-change overview of all subjects ({ctx['overview_rows']} timepoints) is in report.html.",
               size=8.0, colour=MUTED)


def _qc(w: Writer, ctx: dict[str, Any]) -> None:
    t = w.t
    w.heading("QC", 2)
    passed = " Every sample passed QC." if not ctx["n_failed"] and not ctx["n_flagged"] else ""
    w.para(f"{ctx['n_samples']} sample(s): {ctx['n_failed']} failed, {ctx['n_flagged']} with a QC flag "
           f"({ctx['n_low']} for low event counts).{passed} The table of all samples and each sample's gating are "
           "in report.html (section \"Gating per sample\").")
    failures = ctx["failures"]
    if failures:
        w.heading("Failed samples", 3)
        w.table(Table(_header(t, failures["columns"]),
                      [[_c(t, v, font="F2", colour=BAD) for v in row] for row in failures["rows"]]))
    if ctx["flagged"]:
        w.heading(f"Samples with a QC flag ({len(ctx['flagged'])})", 3)
        w.table(Table(_header(t, ["Sample", "Subject", "Timepoint", ("Treg / CD4 events", True), "QC flags"]),
                      [[_c(t, s["sample"]), _c(t, s["subject"]), _c(t, s["timepoint"]),
                        _c(t, f"{s['treg']} / {s['cd4']}", right=True), _c(t, s["flags"], colour=WARN)]
                       for s in ctx["flagged"]]))
    for q in ctx["qc_tables"]:
        w.para(f"{q['title']}: {q['n_rows']} rows, in report.html.", size=8.0, colour=MUTED)


def _timepoints(t: Text, ctx: dict[str, Any], sec: dict[str, Any]) -> Table:
    rows = sec["rows"]
    first = rows[0] if rows else {}
    names: list[str | tuple[str, bool]] = [
        "Timepoint", ("Treg % [interval]", True), ("Diff. pp [interval]", True)]
    if first.get("delta_total") is not None:
        names.append(("Diff. pp [interval incl. gating]", True))
    names += [("Fold [interval]", True), ("Change", True), "Significant", ("Treg / CD4 events", True)]
    if first.get("ratio") is not None:
        names.append(("Treg:Tcon", True))
    if first.get("per_ul") is not None:
        names.append(("Tregs/µL", True))
    names += [(f"{c} (x10^9/L)" if c == ctx["platelet_column"] else c, True) for c in sec["clinical_columns"]]
    if ctx["has_clinical"]:
        names.append("IWG")
    if sec["any_flags"]:
        names.append("QC")
    body, shade = [], []
    for r in rows:
        colour = MUTED if r["baseline"] else INK
        sig = r["significant"].startswith("yes")
        cells = [_c(t, f"{r['timepoint']} d{r['day']}", colour=colour), _c(t, r["treg"], colour=colour, right=True),
                 _c(t, r["delta"], colour=colour, right=True)]
        if first.get("delta_total") is not None:
            cells.append(_c(t, r["delta_total"], colour=colour, right=True))
        cells += [_c(t, r["fold"], colour=colour, right=True), _c(t, r["change"], colour=colour, right=True),
                  _c(t, r["significant"], font="F2" if sig else "F1", colour=GOOD if sig else MUTED),
                  _c(t, f"{r['treg_events']} / {r['cd4']}", colour=colour, right=True)]
        if first.get("ratio") is not None:
            cells.append(_c(t, r["ratio"], colour=colour, right=True))
        if first.get("per_ul") is not None:
            cells.append(_c(t, r["per_ul"], colour=colour, right=True))
        cells += [_c(t, v, colour=colour, right=True) for v in r["clinical"]]
        if ctx["has_clinical"]:
            cells.append(_c(t, r["iwg"], colour=colour))
        if sec["any_flags"]:
            cells.append(_c(t, r["flags"], colour=WARN))
        body.append(cells)
        shade.append("#fafbfd" if r["baseline"] else "")
    return Table(_header(t, names), body, size=6.5, shade=shade)


def _subjects(w: Writer, ctx: dict[str, Any]) -> None:
    t = w.t
    w.heading("Subjects", 2)
    caption = ("Treg % of CD4 with its Wilson interval (band); dashed line = baseline, grey band = changes within the "
               "RCV; red diamonds = significant changes; open circles = low event counts"
               + ("; squares = platelets (right axis, x10^9/L)." if ctx["has_clinical"] else "."))
    for sec in ctx["sections"]:
        figure = sec.get("figure")
        table = _timepoints(t, ctx, sec)
        measured = w.measure(table)
        scale = min(_MAX_FIGURE_SCALE, w.width / figure.width) if figure is not None else 0.0
        need = 60 + (figure.height * scale + 30 if figure is not None else 0)
        if not w.room(need + measured["height"]) and need + measured["height"] < w.bottom - MARGIN_TOP:
            w.new_page()  # the subject on one page
        w.heading(sec["subject"], 3)
        w.para(f"{sec['verdict']}. {sec['clinical']}.", size=8.5, font="F2", gap=1)
        if sec["correlation"]:
            w.para(sec["correlation"], size=8.0, colour=MUTED, gap=1)
        w.y += 3
        if figure is not None:
            w.figure(figure, caption)
        w.table(table, measured)


def _closing(w: Writer, ctx: dict[str, Any]) -> None:
    s = ctx["settings"]
    w.para("The gating figures of every sample, the fitted gate parameters and their sensitivity are in report.html "
           "(section \"Gating per sample\"), with the full provenance (sample sheet, gate file, inputs).", size=8.5,
           colour=MUTED)
    w.heading("Methods", 2)
    items = [f"Treg % = Treg events / CD4 events x 100, with a Wilson score interval (Z = {s['z']}).",
             "Change against the subject's baseline sample in percentage points, with Newcombe's hybrid score "
             "interval (Newcombe 1998, method 10), and as a fold change with the Katz log interval.",
             f"Reference change value RCV = sqrt(2) · Z · sqrt(CVa² + CVi²) = {s['rcv']:.1f}%. Significant = "
             "|relative change| > RCV and the Newcombe interval excludes 0.",
             f"Low events: Treg gate < {s['min_treg']} or CD4 < {s['min_cd4']} events are flagged, not dropped (a "
             "Poisson CV of 10% at 100 events)."]
    if ctx["has_clinical"]:
        items.append(f"Clinical data from {ctx['clinical_source']}. IWG platelet categories use the count thresholds "
                     "only (Rodeghiero 2009), on single measurements; correlations of Treg % with "
                     f"{ctx['platelet_column'] or 'platelets'} per subject (Spearman and Pearson, n paired samples).")
    items.append("Every column of baseline.csv is documented in docs/report.md.")
    for item in items:
        w.para("· " + w.t.clean(item), size=8.5, clean=False, gap=2)
    w.heading("Provenance", 2)
    if not ctx["has_manifest"]:
        w.para("No manifest.json in the results folder.", colour=WARN)
    for block in ctx["provenance"]:
        if block["kind"] != "pairs":
            continue
        w.heading(block["title"], 3, bookmark=False)
        w.table(Table([Cell("setting", "F2"), Cell("value", "F2")],
                      [[_c(w.t, k, colour=MUTED), _c(w.t, v)] for k, v in block["pairs"]], size=7.5))


def layout_report(ctx: dict[str, Any], text: Text | None = None, replaced: Sequence[str] = ()) -> Document:
    """Lay the report out (see the module docstring).

    Parameters
    ----------
    ctx : dict
        The report context of :func:`cytopipe.report._context` with the figure descriptions (``overview_figure``
        and each section's ``figure``).
    text : cytopipe.pdf.document.Text, optional
        The text cleaner (its ``replaced`` set tells which characters the fonts could not show).
    replaced : sequence of str
        Characters shown as ``<U+XXXX>`` codes (found by an earlier layout): a notice under the title names them.

    Returns
    -------
    cytopipe.pdf.document.Document
        The laid-out document (:meth:`~cytopipe.pdf.document.Document.tobytes` writes it).
    """
    t = text or Text()
    doc = Document(title=t.clean(ctx["title"]), producer=f"cytopipe {ctx['version']}")
    w = Writer(doc, t)
    w.heading(ctx["title"], 1)
    s = ctx["settings"]
    w.para(f"Results folder {ctx['results']} · cytopipe {ctx['version']} · RCV {s['rcv']:.1f}% (CVa {s['cva']}%, CVi "
           f"{s['cvi']}%, Z {s['z']}) · low-event flags: Treg gate < {s['min_treg']} or CD4 < {s['min_cd4']} events "
           "· no rendering time (the same results give the same PDF; report.html has it)", size=8.0, colour=MUTED,
           gap=6)
    if replaced:
        codes = ", ".join(f"U+{ord(c):04X}" for c in sorted(replaced))
        w.box([f"Some names hold characters the PDF's standard font cannot show ({codes}); they are written as "
               "their Unicode code points, <U+XXXX>. report.html shows them as written."])
    _summary(w, ctx)
    _qc(w, ctx)
    _subjects(w, ctx)
    _closing(w, ctx)
    pages = len(doc.pages)
    for i, page in enumerate(doc.pages, start=1):
        page.text(doc.width - MARGIN_X, doc.height - 20, f"cytopipe report · page {i} of {pages}", 7.0, "F1", MUTED,
                  "end")
    return doc

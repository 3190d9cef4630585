"""Figures: per-subject time course, all-subject fold-change overview, per-sample gating hierarchy.

Every figure is a :class:`matplotlib.figure.Figure` built without :mod:`matplotlib.pyplot` (no global figure
registry, safe in worker processes, nothing to close) in one style (:data:`STYLE`: a small sans-serif font, no top
and right spines, the colour-blind-safe Okabe-Ito palette). :func:`save_figure` writes PNG and SVG atomically.

Text that comes from users (subject, timepoint, sample and population names) is drawn literally: a ``$`` never
switches matplotlib into mathtext.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from cytopipe.outputs import atomic_open
from cytopipe.stats import platelet_column

__all__ = ["STYLE", "fold_change_overview", "gating_hierarchy", "save_figure", "time_course"]

#: Okabe & Ito (2008) colour-blind-safe palette.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_TREG, _PLATELET, _SIGNIFICANT, _GATE = PALETTE[0], PALETTE[1], PALETTE[3], "#C8102E"

#: Matplotlib settings shared by every cytopipe figure.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.8,
    "axes.grid": True,
    "grid.color": "#DDDDDD",
    "grid.linewidth": 0.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
    "image.cmap": "viridis",
    "svg.fonttype": "none",
    "svg.hashsalt": "cytopipe",
}
_DPI = 150
#: Gating plots are wide rows of small panels for checking gates on screen: a lower resolution halves the pixels
#: to draw and compress.
_GATING_DPI = 110
#: zlib level of PNG files: level 1 compresses figures of flat colour almost as well as the default (6) in a
#: fraction of the time.
_PNG_COMPRESSION = 1
#: At most this many events are binned per density panel (an even stride through the parent's events): a
#: log-coloured 2-D histogram of 200,000 events looks like that of all of them.
_MAX_PLOT_EVENTS = 200_000
#: Back-gated events drawn as dots (an even stride when there are more).
_MAX_BACKGATE_DOTS = 20_000
_BINS = 128


def _plain(text: object) -> str:
    """User text drawn literally: escape the ``$`` that would start mathtext."""
    return str(text).replace("$", r"\$")


def _new_figure(width: float, height: float, layout: str | None = "constrained", dpi: float = _DPI) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height), layout=layout, dpi=dpi)


def save_figure(fig: Figure, path: str | os.PathLike, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write a figure atomically (see :func:`cytopipe.outputs.atomic_open`).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or os.PathLike
        Path without suffix (``plots/timecourse_ITP-01`` writes ``.png`` and ``.svg``), or with a ``.png``,
        ``.svg`` or ``.pdf`` suffix to write exactly that one file.
    formats : sequence of str
        Formats written when ``path`` has no recognised suffix.

    Returns
    -------
    list of pathlib.Path
        The files written.

    Notes
    -----
    PNG files are rendered at the figure's own resolution (``Figure.dpi``: 150 for every cytopipe figure but the
    gating plots, 110) and compressed at zlib level 1.
    """
    path = Path(path)
    if path.suffix.lower() in (".png", ".svg", ".pdf"):
        targets = [path]
    else:
        targets = [path.with_name(f"{path.name}.{fmt}") for fmt in formats]
    written = []
    with matplotlib.rc_context(STYLE):
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fmt = target.suffix.lstrip(".").lower()
            # No timestamps in the files: the same results give byte-identical figures.
            metadata = {"Date": None} if fmt in ("svg", "pdf") else {}
            extra = {"pil_kwargs": {"compress_level": _PNG_COMPRESSION}} if fmt == "png" else {}
            with atomic_open(target, "wb") as handle:
                fig.savefig(handle, format=fmt, dpi="figure", metadata=metadata, **extra)
            written.append(target)
    return written


# ---------------------------------------------------------------------------------------------- time course


def _subject_rows(table: pd.DataFrame, subject: str) -> pd.DataFrame:
    rows = table[table["subject"].astype(str) == str(subject)].sort_values("day", kind="stable")
    if rows.empty:
        raise ValueError(f"subject {subject!r} is not in the baseline table")
    return rows


def _platelets(table_rows: pd.DataFrame, clinical: pd.DataFrame | None, subject: str) -> pd.DataFrame | None:
    """Platelet series (day, value) of a subject: all clinical rows when given, else the joined column."""
    if clinical is not None and "day" in clinical:
        col = platelet_column(list(clinical.columns))
        if col is not None:
            rows = clinical[clinical["subject"].astype(str) == str(subject)]
            series = pd.DataFrame({"day": rows["day"].astype(float), "value": pd.to_numeric(rows[col], "coerce")})
            series = series.dropna().sort_values("day")
            return series if len(series) else None
    col = platelet_column(list(table_rows.columns))
    if col is None:
        return None
    series = pd.DataFrame({"day": table_rows["day"].astype(float), "value": pd.to_numeric(table_rows[col], "coerce")})
    series = series.dropna()
    return series if len(series) else None


def time_course(baseline_df: pd.DataFrame, subject: str, clinical: pd.DataFrame | None = None) -> Figure:
    """Treg % of CD4 over days for one subject, with platelets on a second axis.

    Parameters
    ----------
    baseline_df : pandas.DataFrame
        A :func:`cytopipe.stats.baseline_table` result.
    subject : str
        The subject to draw.
    clinical : pandas.DataFrame, optional
        A :func:`cytopipe.stats.read_clinical` table; its platelet counts (all days, also those without a blood
        draw for cytometry) are drawn on the right axis. Without it, a platelet column joined into
        ``baseline_df`` is used.

    Returns
    -------
    matplotlib.figure.Figure
        Treg % (line and points) with the Wilson interval as a band, the baseline as a dashed line with the
        band of changes smaller than the RCV around it, significant changes marked with a star, low-event samples
        as open circles; platelets as squares on the right axis with the IWG complete-response line at 100.

    Raises
    ------
    ValueError
        When the subject is not in the table.
    """
    rows = _subject_rows(baseline_df, subject)
    day = rows["day"].to_numpy(dtype=float)
    pct = rows["treg_pct"].to_numpy(dtype=float)
    # Fixed margins (inches) rather than constrained layout: a third of the report's rendering time otherwise.
    width, height = 6.4, 3.8
    fig = _new_figure(width, height, layout=None)
    fig.subplots_adjust(left=0.65 / width, right=1 - 0.75 / width, top=1 - 0.35 / height, bottom=1.15 / height)
    with matplotlib.rc_context(STYLE):
        ax = fig.add_subplot()
        handles: list[Any] = []
        ax.fill_between(day, rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float), color=_TREG,
                        alpha=0.2, linewidth=0)
        handles.append(Patch(color=_TREG, alpha=0.2, label="Wilson interval"))
        base = float(rows["baseline_pct"].iloc[0])
        rcv = float(rows["rcv_pct"].iloc[0])
        if np.isfinite(base):
            ax.axhspan(base * (1 - rcv / 100), base * (1 + rcv / 100), color="#888888", alpha=0.12, linewidth=0)
            ax.axhline(base, color="#555555", linestyle="--", linewidth=1)
            handles.append(Line2D([], [], color="#555555", linestyle="--", label=f"baseline {base:.2f}%"))
            handles.append(Patch(color="#888888", alpha=0.12, label=f"within RCV (\u00b1{rcv:.0f}%)"))
        low = rows["low_events"].to_numpy(dtype=bool)
        ax.plot(day, pct, color=_TREG, marker="", zorder=3, gid="treg_pct")
        ax.plot(day[~low], pct[~low], linestyle="", marker="o", color=_TREG, zorder=4)
        handles.insert(0, Line2D([], [], color=_TREG, marker="o", label="Treg % of CD4"))
        if low.any():
            ax.plot(day[low], pct[low], linestyle="", marker="o", markerfacecolor="white", color=_TREG, zorder=4)
            handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="white", color=_TREG,
                                  label="low events"))
        sig = rows["significant"].to_numpy(dtype=bool)
        if sig.any():
            top = np.nanmax(rows["ci_high"].to_numpy(float))
            offset = 0.06 * (top if np.isfinite(top) and top > 0 else 1.0)
            ax.plot(day[sig], rows["ci_high"].to_numpy(float)[sig] + offset, linestyle="", marker="*",
                    markersize=9, color=_SIGNIFICANT, zorder=5)
            handles.append(Line2D([], [], linestyle="", marker="*", markersize=9, color=_SIGNIFICANT,
                                  label="significant change"))
        ax.set_ylim(bottom=0)
        ax.set_ylabel("Treg % of CD4+ T cells")
        ax.set_xlabel("day")
        ax.set_xticks(day, [f"{_plain(tp)}\nd{d:g}" for tp, d in zip(rows["timepoint"], day, strict=True)])
        ax.set_title(f"{_plain(subject)}: Treg % of CD4 against baseline", loc="left")

        platelets = _platelets(rows, clinical, subject)
        if platelets is not None:
            ax2 = ax.twinx()
            ax2.grid(False)
            ax2.spines["right"].set_visible(True)
            ax2.plot(platelets["day"], platelets["value"], color=_PLATELET, marker="s", markersize=4,
                     linestyle=":", linewidth=1.2)
            ax2.axhline(100, color=_PLATELET, linewidth=0.8, alpha=0.6, linestyle=(0, (1, 3)))
            ax2.set_ylim(0, max(110.0, float(platelets["value"].max()) * 1.15))
            ax2.set_ylabel("platelets (x10\u2079/L)", color=_PLATELET)
            ax2.tick_params(axis="y", colors=_PLATELET)
            handles.append(Line2D([], [], color=_PLATELET, marker="s", markersize=4, linestyle=":",
                                  label="platelets (IWG CR line at 100)"))
            lo, hi = min(day.min(), platelets["day"].min()), max(day.max(), platelets["day"].max())
            pad = 0.03 * (hi - lo if hi > lo else 1.0)
            ax.set_xlim(lo - pad, hi + pad)
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 4))
    return fig


# ---------------------------------------------------------------------------------------------- overview


def fold_change_overview(baseline_df: pd.DataFrame) -> Figure:
    """Forest plot of every subject's fold changes against baseline with their intervals.

    Parameters
    ----------
    baseline_df : pandas.DataFrame
        A :func:`cytopipe.stats.baseline_table` result.

    Returns
    -------
    matplotlib.figure.Figure
        One row per non-baseline sample, grouped by subject (one colour each), fold change on a log axis with the
        Katz interval as a bar; filled markers are significant changes, open ones are not. The grey band marks
        changes smaller than the RCV.
    """
    later = baseline_df[~baseline_df["is_baseline"].astype(bool)].copy()
    later = later.sort_values(["subject", "day"], kind="stable")
    n_rows = max(len(later), 1)
    fig = _new_figure(6.4, 1.2 + 0.24 * n_rows)
    with matplotlib.rc_context(STYLE):
        ax = fig.add_subplot()
        ax.set_xscale("log")
        ax.axvline(1.0, color="#555555", linestyle="--", linewidth=1)
        rcv = float(baseline_df["rcv_pct"].iloc[0]) if len(baseline_df) else np.nan
        if np.isfinite(rcv):
            ax.axvspan(max(1 - rcv / 100, 1e-3), 1 + rcv / 100, color="#888888", alpha=0.12, linewidth=0)
        labels = []
        handles: list[Any] = []
        for i, (subject, grp) in enumerate(later.groupby("subject", sort=False)):
            colour = PALETTE[i % len(PALETTE)]
            y = np.arange(len(labels), len(labels) + len(grp))
            labels.extend(_plain(f"{subject}  {tp}") for tp in grp["timepoint"])
            fc = grp["fold_change"].to_numpy(float)
            lo = fc - grp["fc_ci_low"].to_numpy(float)
            hi = grp["fc_ci_high"].to_numpy(float) - fc
            ax.errorbar(fc, y, xerr=np.vstack([lo, hi]), linestyle="", color=colour, capsize=2, elinewidth=1)
            sig = grp["significant"].to_numpy(bool)
            ax.plot(fc[sig], y[sig], linestyle="", marker="o", color=colour)
            ax.plot(fc[~sig], y[~sig], linestyle="", marker="o", color=colour, markerfacecolor="white")
            handles.append(Line2D([], [], color=colour, marker="o", linestyle="", label=_plain(subject)))
        if not labels:
            ax.text(0.5, 0.5, "no timepoint after baseline", transform=ax.transAxes, ha="center", va="center")
        ax.set_yticks(np.arange(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5 if labels else 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("fold change against baseline (log scale; bars: Katz interval)")
        ax.set_title("Fold change of Treg % of CD4, all subjects", loc="left")
        handles += [
            Line2D([], [], color="#333333", marker="o", linestyle="", label="significant"),
            Line2D([], [], color="#333333", marker="o", markerfacecolor="white", linestyle="", label="not significant"),
            Patch(color="#888888", alpha=0.12, label=f"within RCV (\u00b1{rcv:.0f}%)"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5))
    return fig


# ---------------------------------------------------------------------------------------------- gating


def _dimension_label(dimension: Any) -> str:
    """``"CD4 (logicle, decades)"``: the channel, the transform's name and, for biexponential scales, the unit."""
    channel = dimension.channel
    ratio = getattr(dimension, "ratio", None)
    name = ratio.name if ratio is not None else " / ".join(channel) if isinstance(channel, tuple) else str(channel)
    transform = getattr(dimension, "transform", None)
    if transform is None:
        return _plain(name)
    unit = ", decades" if getattr(transform, "kind", "") in ("logicle", "hyperlog") else ""
    return _plain(f"{name} ({transform.name}{unit})")


def _friendly(dimensions: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(scale, offset)`` from Gating-ML units to the units gate files are written in.

    Axes then read like the gate file: logicle in decades 0..M, arcsinh as asinh(x / cofactor), raw scatter.
    """
    from cytopipe.errors import GateError
    from cytopipe.gatefile import friendly_units

    pairs = []
    for dim in dimensions:
        try:
            pairs.append(friendly_units(getattr(dim, "transform", None)))
        except GateError:
            pairs.append((1.0, 0.0))
    scale, offset = np.array(pairs, dtype=float).reshape(-1, 2).T
    return scale, offset


def _thousands(axis: Any, dimension: Any) -> None:
    """Raw scatter values run to 262,144 and beyond: label them 50k, 100k... instead of 100000."""
    if getattr(dimension, "transform", None) is None:
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}"))


def _stride(rows: np.ndarray, limit: int) -> np.ndarray:
    """Every k-th of ``rows`` so that at most ``limit`` remain: an even spread over the whole acquisition."""
    return rows if rows.size <= limit else rows[:: -(-rows.size // limit)]


def _count_label(value: float, _: Any = None) -> str:
    """An event count as plain text: 10, 1k, 100k, 1M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _limits(values: np.ndarray, outline: np.ndarray | None) -> tuple[float, float]:
    """Axis limits: the 0.2-99.8 % range of the values (every k-th of at most 50,000), stretched a little
    towards the gate outline."""
    finite = values[:: max(1, -(-values.size // 50_000))]
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.2, 99.8])
    if outline is not None:
        inside = outline[np.isfinite(outline)]
        # Open gates carry huge coordinates: stretch the axes only a little towards them.
        span = hi - lo if hi > lo else 1.0
        inside = inside[(inside > lo - 0.5 * span) & (inside < hi + 0.5 * span)]
        if inside.size:
            lo, hi = min(lo, inside.min()), max(hi, inside.max())
    pad = 0.04 * (hi - lo if hi > lo else 1.0)
    return float(lo - pad), float(hi + pad)


def _bin(values: np.ndarray, limits: tuple[float, float], bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each value on ``bins`` equal cells over ``limits`` and which values fall inside (NaN never)."""
    lo, hi = limits
    scaled = (values - lo) * (bins / (hi - lo))
    keep = (scaled >= 0) & (scaled < bins)
    with np.errstate(invalid="ignore"):  # NaN and infinite values are cast too, and never kept
        return scaled.astype(np.intp), keep


def _histogram2d(x: np.ndarray, y: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float],
                 bins: int = _BINS) -> np.ndarray:
    """``(bins, bins)`` event counts (x along the first axis), as :func:`numpy.histogram2d` on equal bins but in
    one :func:`numpy.bincount` (no per-event search for the bin)."""
    ix, keep_x = _bin(x, xlim, bins)
    iy, keep_y = _bin(y, ylim, bins)
    keep = keep_x & keep_y
    return np.bincount(ix[keep] * bins + iy[keep], minlength=bins * bins).reshape(bins, bins)


def _density(ax: Any, x: np.ndarray, y: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float],
             cmap: str = "viridis") -> None:
    """A log-coloured 2-D histogram drawn as one image (empty cells left blank)."""
    counts = _histogram2d(x, y, xlim, ylim)
    if counts.any():
        ax.imshow(np.ma.masked_less(counts.T, 1), extent=(*xlim, *ylim), origin="lower", aspect="auto",
                  interpolation="nearest", cmap=cmap, norm=LogNorm(vmin=1, vmax=max(float(counts.max()), 2.0)))


def _histogram1d(ax: Any, x: np.ndarray, inside: np.ndarray, xlim: tuple[float, float], scale: float) -> None:
    """All events in grey, the gated ones shaded on top; counts multiplied by ``scale`` (the sampling stride)."""
    index, keep = _bin(x, xlim, _BINS)
    edges = np.linspace(*xlim, _BINS + 1)
    every = np.bincount(index[keep], minlength=_BINS) * scale
    gated = np.bincount(index[keep & inside], minlength=_BINS) * scale
    # Filled steps as one polygon each (fill_between): a step patch costs ~10 ms per panel to fit the axes to it.
    ax.fill_between(edges, np.append(every, every[-1]), step="post", color="#999999", linewidth=0)
    ax.fill_between(edges, np.append(gated, gated[-1]), step="post", color=_GATE, alpha=0.6, linewidth=0)


def _treg_name(strategy: Any, treg: str | None) -> str | None:
    names = [p.name for p in strategy.populations]
    for candidate in (treg, getattr(strategy, "treg", None)):
        if candidate in names:
            return candidate
    return next((n for n in names if n.lower() == "treg"), None)


def _is_scatter(channel: Any) -> bool:
    return isinstance(channel, str) and channel.upper().startswith(("FSC", "SSC"))


def gating_hierarchy(result: Any, strategy: Any, sample_name: str, treg: str | None = None) -> Figure:
    """The gating of one sample as a row of density plots, with back-gating of the Treg population.

    Parameters
    ----------
    result : cytopipe.gates.GatingResult
        The gated sample (``masks``, ``counts``, ``values(gate)``).
    strategy : cytopipe.gates.GatingStrategy
        The strategy that produced ``result``.
    sample_name : str
        Shown in the title.
    treg : str, optional
        The Treg population for back-gating; default ``strategy.treg``, else the population named Treg.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per gated population: a 2-D histogram (log colour) of the parent's events in the gate's first
        two dimensions with ``gate.outline()`` drawn, or for 1-D gates a histogram with the gated events shaded;
        boolean gates (no dimensions of their own) are skipped. A last panel shows every event on FSC-A/SSC-A in
        grey with the Treg events on top (back-gating), so a scientist can see where the Tregs sit in scatter.
        Titles give the exact counts.

    Notes
    -----
    Only the gating contract is used: ``strategy.populations``, ``pop.gate.dimensions``, ``pop.gate.outline()``,
    ``result.values(gate)`` and ``result.masks``.

    Drawing costs little whatever the file size: a panel bins at most :data:`_MAX_PLOT_EVENTS` of its parent's
    events (every k-th; 1-D counts are scaled back by k) with one :func:`numpy.bincount` and draws them as one
    image, and back-gating draws at most :data:`_MAX_BACKGATE_DOTS` Treg events (every k-th).
    """
    pops = [p for p in strategy.populations if len(getattr(p.gate, "dimensions", ()) or ()) >= 1]
    treg_name = _treg_name(strategy, treg)
    scatter = next((p for p in pops if len(p.gate.dimensions) >= 2
                    and all(_is_scatter(d.channel) for d in p.gate.dimensions[:2])), None)
    n_panels = len(pops) + (1 if treg_name and scatter is not None else 0)
    # A fixed layout in inches: constrained layout costs seconds per sample on a six-panel row.
    panel, gap, left, bottom, top = 1.85, 0.7, 0.65, 0.5, 0.8
    width = left + max(n_panels, 1) * panel + (max(n_panels, 1) - 1) * gap + 0.15
    height = bottom + panel + top
    fig = _new_figure(width, height, layout=None, dpi=_GATING_DPI)
    fig.subplots_adjust(left=left / width, right=1 - 0.15 / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap / panel)
    n_events = int(getattr(result, "n_events", 0)) or len(next(iter(result.masks.values())))
    stacked: dict[int, np.ndarray] = {}

    def values_of(gate: Any) -> np.ndarray:
        if id(gate) not in stacked:  # the scatter gate's values serve its panel and the back-gating
            stacked[id(gate)] = np.asarray(result.values(gate))
        return stacked[id(gate)]

    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(1, max(n_panels, 1), squeeze=False)[0]
        for ax in axes:
            # A fixed title position (y given) skips measuring every tick label to place it; four ticks per
            # linear axis are plenty on a 1.85-inch panel.
            ax.grid(False)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
        for ax, pop in zip(axes, pops, strict=False):
            parent = np.flatnonzero(result.masks[pop.parent]) if pop.parent else np.arange(n_events)
            n_parent = int(parent.size)
            n_in = int(np.count_nonzero(result.masks[pop.name]))  # masks carry the parent chain
            rows = _stride(parent, _MAX_PLOT_EVENTS)
            dims = pop.gate.dimensions
            scale, offset = _friendly(dims)
            values = values_of(pop.gate)[rows] * scale.astype(np.float32) + offset.astype(np.float32)
            inside = result.masks[pop.name][rows]
            if len(dims) >= 2:
                outline = pop.gate.outline() if len(dims) == 2 else None
                outline = None if outline is None else np.asarray(outline, dtype=float) * scale[:2] + offset[:2]
                xlim = _limits(values[:, 0], None if outline is None else outline[:, 0])
                ylim = _limits(values[:, 1], None if outline is None else outline[:, 1])
                _density(ax, values[:, 0], values[:, 1], xlim, ylim)
                if outline is not None:
                    # Open sides are +-inf: draw them just beyond the axes so only the closed sides show.
                    xs = np.clip(outline[:, 0], 2 * xlim[0] - xlim[1], 2 * xlim[1] - xlim[0])
                    ys = np.clip(outline[:, 1], 2 * ylim[0] - ylim[1], 2 * ylim[1] - ylim[0])
                    ax.plot(xs, ys, color=_GATE, linewidth=1.3)
                else:
                    # No drawable outline (n-D or data-driven without one): show the gated events instead.
                    ax.plot(values[inside, 0], values[inside, 1], linestyle="", marker=",", color=_GATE, alpha=0.3)
                ax.set_xlim(xlim)
                ax.set_ylim(ylim)
                ax.set_ylabel(_dimension_label(dims[1]))
                _thousands(ax.yaxis, dims[1])
            else:
                xlim = _limits(values[:, 0], None)
                _histogram1d(ax, values[:, 0], inside, xlim, n_parent / max(rows.size, 1))
                ax.set_xlim(xlim)
                if rows.size:  # a log axis needs some positive count
                    ax.set_yscale("log")
                    # Decades only, labelled 10, 1k, 100k: no dozens of minor ticks, no mathtext 10^3 to typeset.
                    ax.yaxis.set_major_locator(LogLocator(numticks=4))
                    ax.yaxis.set_minor_locator(NullLocator())
                    ax.yaxis.set_major_formatter(FuncFormatter(_count_label))
                ax.set_ylabel("events")
            ax.set_xlabel(_dimension_label(dims[0]))
            _thousands(ax.xaxis, dims[0])
            pct = 100.0 * n_in / n_parent if n_parent else float("nan")
            parent_name = _plain(pop.parent) if pop.parent else "all events"
            ax.set_title(f"{_plain(pop.name)}\n{n_in:,} = {pct:.1f}% of {parent_name}", fontsize=8, y=1.0)
        if treg_name and scatter is not None:
            ax = axes[len(pops)]
            xy = values_of(scatter.gate)
            every = xy[_stride(np.arange(n_events), _MAX_PLOT_EVENTS), :2]
            xlim, ylim = _limits(every[:, 0], None), _limits(every[:, 1], None)
            _density(ax, every[:, 0], every[:, 1], xlim, ylim, cmap="Greys")
            tregs = np.flatnonzero(result.masks[treg_name])
            dots = _stride(tregs, _MAX_BACKGATE_DOTS)
            ax.plot(xy[dots, 0], xy[dots, 1], linestyle="", marker=".", markersize=1.5, color=_GATE, alpha=0.7)
            ax.set_xlim(xlim)
            ax.set_ylim(ylim)
            ax.set_xlabel(_dimension_label(scatter.gate.dimensions[0]))
            ax.set_ylabel(_dimension_label(scatter.gate.dimensions[1]))
            _thousands(ax.xaxis, scatter.gate.dimensions[0])
            _thousands(ax.yaxis, scatter.gate.dimensions[1])
            ax.set_title(f"Back-gating: {_plain(treg_name)}\n{tregs.size:,} events on scatter", fontsize=8, y=1.0)
        if not pops:
            axes[0].text(0.5, 0.5, "no gate with dimensions to draw", ha="center", va="center",
                         transform=axes[0].transAxes)
        fig.suptitle(f"Gating of {_plain(sample_name)}", x=0.1 / width, y=1 - 0.08 / height, ha="left", va="top",
                     fontweight="bold", fontsize=9.5)
    return fig

"""One sample, start to finish: read -> compensate -> transform -> gate -> count -> gating plot.

:func:`process_sample` is the unit of work that :mod:`cytopipe.batch` ships to worker processes or to a Dask
cluster. It is a pure function of its :class:`SampleTask` (plus the file on disk), picklable, and it never raises
for a problem with the sample itself: a missing, truncated or corrupt file, a marker the gates need but the file
lacks, or gates that find no events come back as a :class:`SampleResult` whose ``failure`` names the stage
(``read``, ``compensate``, ``gate``, ``count`` or ``plot``) and gives a one-line reason.

The single-file helpers :func:`event_membership` (``cytopipe gate``) and :func:`export_population`
(``cytopipe export``) share the same loading and gating code.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, CytopipeError, GateError
from .fcs import file_sha256, read_fcs, read_fcs_sha256, write_fcs

if TYPE_CHECKING:
    import pandas as pd

STAGES = ("read", "compensate", "gate", "count", "plot")
POPULATION_COLUMNS = ("sample", "subject", "timepoint", "day", "population", "parent", "count", "pct_parent",
                      "pct_total")
TREG_COLUMNS = ("sample", "subject", "timepoint", "day", "cd4_events", "treg_events", "treg_pct", "ci_low",
                "ci_high")
FAILURE_COLUMNS = ("sample", "file", "stage", "reason")


@dataclass(frozen=True)
class SampleTask:
    """Everything one worker needs to process one sample.

    Parameters
    ----------
    sample, file, subject, timepoint, day
        Identity from the sample sheet; ``file`` is an absolute path.
    strategy
        The gating strategy (a :class:`cytopipe.gates.GatingStrategy`); gates fitted on the client for the
        ``subject`` / ``baseline`` scopes are already fitted here, ``sample``-scope gates are fitted in the worker.
    treg, parent
        Resolved names of the Treg population and of its denominator (``None`` = all events).
    spillover
        Path of a spillover matrix file that replaces the file's own keyword (sheet row or ``--spillover``), or
        ``None``.
    plots_dir
        Folder for ``gating_<sample>.svg``; ``None`` skips the plot.
    controls
        ``(role, file)`` pairs of the subject's control tubes (``fmo:CD25``, ``unstained``...) for data-driven
        cuts that use a control.
    data_driven
        The gate file's strategy before any fitting when it has data-driven gates: the threshold sensitivity is
        computed against it. ``None`` for fixed gates.
    failure
        A reason decided before the sample reached a worker (its subject's pooled gate fit failed); the sample
        fails at the ``gate`` stage with it.
    panels
        File path -> :class:`cytopipe.panel.Panel` applied when reading that file (the sample and its controls);
        a file without an entry is read as it is.
    failure_stage
        The stage ``failure`` is reported at (``read`` for a sheet row's unreadable panel).
    """

    sample: str
    file: str
    strategy: Any
    subject: str = ""
    timepoint: str = ""
    day: float = 0.0
    treg: str | None = None
    parent: str | None = None
    spillover: str | None = None
    plots_dir: str | None = None
    controls: tuple[tuple[str, str], ...] = ()
    data_driven: Any = None
    failure: str | None = None
    panels: dict[str, Any] = field(default_factory=dict)
    failure_stage: str = "gate"


@dataclass
class SampleResult:
    """The outcome of :func:`process_sample` for one sample.

    Attributes
    ----------
    populations
        One dict per population with the ``populations.csv`` columns, in the strategy's order.
    treg
        The ``treg.csv`` row, or ``None`` when the sample failed before counting.
    failure
        ``{"sample", "file", "stage", "reason"}`` or ``None``. A ``plot`` failure keeps the counts.
    sha256
        SHA-256 of the input file ('' when it could not be read).
    fitted
        One dict per data-driven gate fitted for this sample (``gates_fitted.csv`` rows).
    sensitivity
        One dict per data-driven threshold: how much the Treg % moves when it shifts (``sensitivity.csv`` rows).
    workspace
        The sample's ``<Sample>`` element of ``gates_fitted.wsp``: its gates in FlowJo's terms
        (:func:`cytopipe.flowjo.write.sample_tree`) rendered by :func:`cytopipe.flowjo.render.sample_fragment`; or
        ``{"error": reason}`` when FlowJo cannot hold them (the sample's counts stand); ``None`` before counting.
    references
        Median raw detector value of each reference population (``"CD4 T|CD4" -> median``; see
        :func:`cytopipe.reference.reference_medians`), for the drift QC across visits.
    timings
        Seconds per stage (``read``, ``gate``, ``count``, ``workspace``, ``plot``) and ``total``.
    """

    sample: str
    file: str
    subject: str = ""
    timepoint: str = ""
    day: float = 0.0
    sha256: str = ""
    n_events: int = 0
    spillover_source: str = ""
    populations: list[dict] = field(default_factory=list)
    treg: dict | None = None
    fitted: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    workspace: dict | None = None
    references: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    plot: str | None = None
    failure: dict | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        """True when the sample produced counts and no stage failed."""
        return self.failure is None

    @property
    def events_per_s(self) -> float:
        """Events processed per second of worker time (0 when nothing was processed)."""
        total = self.timings.get("total", 0.0)
        return self.n_events / total if total > 0 else 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (for the cache); :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SampleResult:
        """Rebuild a result written by :meth:`to_dict`."""
        return cls(**data)


def resolve_treg(strategy: Any, treg: str | None = None, parent: str | None = None) -> tuple[str, str | None]:
    """Name the Treg population and its denominator.

    Parameters
    ----------
    strategy
        The gating strategy.
    treg, parent
        Explicit choices (``--treg`` / ``--parent``); ``None`` falls back to the strategy's ``treg`` / ``parent``,
        then to the population named ``Treg`` (any case) and its parent.

    Returns
    -------
    tuple
        ``(treg, parent)``; ``parent`` is ``None`` when the denominator is all events.

    Raises
    ------
    GateError
        The named population does not exist, or no population is called Treg and none was named.
    """
    names = [p.name for p in strategy.populations]
    where = _strategy_label(strategy)
    chosen = treg or getattr(strategy, "treg", None)
    if chosen is None:
        matches = [n for n in names if n.lower() == "treg"]
        if not matches:
            raise GateError(f"{where}: no population named 'Treg'; name the Treg population with --treg "
                            f"(populations: {', '.join(names)})")
        chosen = matches[0]
    chosen = _find_population(names, chosen, where, "--treg")
    denominator = parent
    if denominator is None and chosen == getattr(strategy, "treg", None):
        denominator = getattr(strategy, "parent", None)  # the gate file's parent belongs to its own Treg
    if denominator is None:
        return chosen, strategy.population(chosen).parent
    return chosen, _find_population(names, denominator, where, "--parent")


def _find_population(names: list[str], name: str, where: str, option: str) -> str:
    if name in names:
        return name
    folded = [n for n in names if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise GateError(f"{where}: {option} population {name!r} not found (populations: {', '.join(names)})")


def _strategy_label(strategy: Any) -> str:
    return getattr(strategy, "name", "") or "gate file"


def choose_spillover(sample: Any, strategy: Any, spillover_file: str | None = None) -> Any:
    """Pick the spillover matrix for the dimensions that use the file's compensation (``compensation: file``).

    Precedence: an explicit matrix file (sheet row ``spillover`` or ``--spillover``), then the file's own
    ``$SPILLOVER`` / ``SPILL`` / ``$COMP``. Dimensions that the gate file leaves uncompensated (``compensation:
    none``) or compensates with its own matrix (a path, loaded with the gate file) are not affected.

    Returns
    -------
    cytopipe.compensate.Spillover or None
        ``None`` when there is nothing to compensate with (the file has no spillover keyword) or the gate file
        does not use the file's compensation.

    Raises
    ------
    CytopipeError
        The matrix file is unreadable or names detectors absent from the sample.
    """
    from .compensate import read_spillover_file, spillover_from_metadata

    if (getattr(strategy, "compensation", "file") or "file") != "file":
        return None
    if spillover_file:
        return read_spillover_file(spillover_file, sample.channels)
    return spillover_from_metadata(sample.metadata, sample.channels, path=str(sample.path))


def needs_fitting(strategy: Any) -> bool:
    """True when the strategy still holds unfitted data-driven gates."""
    # A strategy holding data-driven gates imported cytopipe.autogate when it was built or unpickled; checking
    # sys.modules first spares worker processes with fixed gates that import (~25 ms each).
    autogate = sys.modules.get("cytopipe.autogate")
    return autogate is not None and autogate.needs_fitting(strategy)


def _fit_sample_gates(strategy: Any, sample: Any, spillover: Any, controls: tuple[tuple[str, str], ...] = (),
                      panels: dict[str, Any] | None = None) -> tuple[Any, list[dict]]:
    """Fit the ``sample``-scope data-driven gates of ``strategy`` on this sample (no-op for fixed strategies)."""
    if not needs_fitting(strategy):
        return strategy, []
    from .autogate import fit_strategy
    from .panel import read_sample

    panels = panels or {}
    tubes = {role: read_sample(path, panels.get(path), scale=strategy.scale) for role, path in controls} or None
    return fit_strategy(strategy, [sample], spillover=spillover, controls=tubes)


def count_rows(result: Any, strategy: Any, ident: dict) -> list[dict]:
    """``populations.csv`` rows for one gated sample, in the strategy's population order."""
    n_total = int(result.n_events)
    rows = []
    for pop in strategy.populations:
        count = int(result.counts[pop.name])
        parent_count = n_total if pop.parent is None else int(result.counts[pop.parent])
        rows.append({**ident, "population": pop.name, "parent": pop.parent or "",
                     "count": count, "pct_parent": _pct(count, parent_count), "pct_total": _pct(count, n_total)})
    return rows


def treg_row(result: Any, treg: str, parent: str | None, ident: dict) -> dict:
    """The ``treg.csv`` row: Treg events over the denominator's events with a Wilson 95% interval (percent)."""
    from .stats import wilson_interval

    k = int(result.counts[treg])
    n = int(result.n_events if parent is None else result.counts[parent])
    low, high = wilson_interval(k, n)
    return {**ident, "cd4_events": n, "treg_events": k, "treg_pct": _pct(k, n),
            "ci_low": 100.0 * float(low), "ci_high": 100.0 * float(high)}


def _pct(k: int, n: int) -> float:
    return 100.0 * k / n if n else math.nan


def one_line(err: BaseException) -> str:
    """A one-line reason; exceptions that are not CytopipeError (bugs, OS errors) keep their type name."""
    text = " ".join(str(err).split())
    if isinstance(err, CytopipeError):
        return text
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename or ''}: {err.strerror}".lstrip(": ")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def process_sample(task: SampleTask) -> SampleResult:
    """Read, compensate, transform, gate and count one sample, and draw its gating plot.

    Parameters
    ----------
    task
        The sample and the (client-fitted) strategy; see :class:`SampleTask`.

    Returns
    -------
    SampleResult
        Population rows, the Treg row, the file's SHA-256, fitted gate parameters and timings; or a failure record
        tagged with the stage that failed. Never raises for a problem with the sample.

    Notes
    -----
    1. read: :func:`cytopipe.fcs.read_fcs_sha256`, one pass over the file for its SHA-256 and its float32 events
       (decoded as the gate file's ``scale`` asks: ``$PnE`` always, ``$PnG`` for Gating-ML), then acquisition QC
       (:mod:`cytopipe.qc`): corrupt data fail here; margin events and a missing spillover become flags.
    2. compensate: choose the spillover (:func:`choose_spillover`); the strategy compensates only the channels
       its gates use, so the full events matrix is never copied.
    3. gate: fit ``sample``-scope data-driven gates, then :meth:`GatingStrategy.apply` (each used column is
       compensated and transformed once). A denominator without events fails the sample here.
    4. count: population rows, the Treg row with its Wilson interval and the reference populations' medians.
       workspace: the sample's gates for ``gates_fitted.wsp`` (ellipses as polygons keeping the same events).
    5. plot: ``gating_<sample>.svg`` into ``task.plots_dir``; a plot failure keeps the counts.

    The events and every per-sample cache are freed by reference counting when this returns (the gating engine
    holds no reference cycles), so a worker holds one sample at a time without calling the garbage collector.
    """
    from .adapt import apply_widths, fallback_notes, fit_widths, resolve_optional
    from .panel import apply_panel
    from .qc import check_acquisition, require_plausible
    from .reference import reference_medians

    ident = {"sample": task.sample, "subject": task.subject, "timepoint": task.timepoint, "day": task.day}
    out = SampleResult(sample=task.sample, file=task.file, subject=task.subject, timepoint=task.timepoint,
                       day=task.day)
    clock = time.perf_counter()
    start = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        out.timings[name] = out.timings.get(name, 0.0) + now - clock
        clock = now

    def fail(stage: str, err: BaseException | str) -> SampleResult:
        reason = err if isinstance(err, str) else one_line(err)
        out.failure = {"sample": task.sample, "file": task.file, "stage": stage, "reason": reason}
        out.timings["total"] = time.perf_counter() - start
        return out

    if task.failure is not None and task.failure_stage == "read":
        return fail("read", task.failure)
    try:
        # One read of the file gives the events and the manifest's SHA-256 (the bytes hashed are the bytes gated).
        raw, out.sha256 = read_fcs_sha256(task.file, scale=task.strategy.scale)
        sample = apply_panel(raw, task.panels.get(task.file))
        del raw
        qc = check_acquisition(sample)
        require_plausible(sample, qc)  # gating garbage would give numbers that mean nothing
    except Exception as err:  # noqa: BLE001 - any problem with one file must not stop the batch
        if not out.sha256:  # the file could not be read: its hash as before (or the reason it has none)
            try:
                out.sha256 = file_sha256(task.file)
            except Exception as unreadable:  # noqa: BLE001
                return fail("read", unreadable)
        return fail("read", err)
    out.n_events = int(sample.n_events)
    lap("read")

    try:
        spillover = choose_spillover(sample, task.strategy, task.spillover)
    except Exception as err:  # noqa: BLE001
        return fail("compensate", err)
    mode = getattr(task.strategy, "compensation", "file") or "file"
    out.spillover_source = str(spillover.source) if spillover is not None else ("" if mode == "file" else mode)
    lap("compensate")

    if task.failure is not None:
        return fail("gate", task.failure)
    try:
        strategy, notes = resolve_optional(task.strategy, sample)
        widths, width_rows = fit_widths(strategy, [sample], [spillover])
        strategy = apply_widths(strategy, widths)
        strategy, fitted = _fit_sample_gates(strategy, sample, spillover, task.controls, task.panels)
        out.fitted = [{**ident, **row} for row in [*width_rows, *fitted]]
        result = strategy.apply(sample, spillover)
        if task.data_driven is not None:
            from .autogate import sensitivity

            data_driven = apply_widths(resolve_optional(task.data_driven, sample)[0], widths)
            rows = sensitivity(data_driven, sample, task.treg, task.parent, spillover=spillover,
                               fitted=strategy)
            out.sensitivity = [{**ident, **row} for row in rows]
    except Exception as err:  # noqa: BLE001
        return fail("gate", err)
    if out.n_events == 0:
        return fail("gate", f"{task.file}: the file has no events")
    denominator = task.parent if task.parent is not None else None
    if denominator is not None and int(result.counts[denominator]) == 0:
        return fail("gate", f"{task.file}: population {denominator!r} has no events (the gates found nothing "
                            f"to count the Treg % against)")
    lap("gate")

    try:
        out.populations = count_rows(result, strategy, ident)
        # Optional populations not gated and cuts that found no valley are said here, once per sample.
        flags = "; ".join([*qc.flags(), *notes, *fallback_notes(out.fitted)])
        out.treg = {**treg_row(result, task.treg, task.parent, ident), "acquisition_qc": flags}
        out.references = reference_medians(sample, result, strategy, task.parent, qc.finite)
    except Exception as err:  # noqa: BLE001
        return fail("count", err)
    lap("count")

    try:  # gates_fitted.wsp: a gate FlowJo cannot hold leaves the sample out of the workspace, not the study
        from .flowjo.write import sample_fragment, sample_tree

        # Rendered here, beside the gating (the workers run in parallel): the client only joins the samples.
        out.workspace = sample_fragment(sample_tree(strategy, sample, result, spillover, name=task.sample))
    except Exception as err:  # noqa: BLE001
        out.workspace = {"error": one_line(err)}
    lap("workspace")

    if task.plots_dir is not None:
        try:
            out.plot = _draw_plot(result, strategy, task.sample, task.treg, task.plots_dir)
        except Exception as err:  # noqa: BLE001
            return fail("plot", err)
        lap("plot")
    out.timings["total"] = time.perf_counter() - start
    return out


def safe_stem(name: str) -> str:
    """A file-name-safe stem for a sample or subject name: unsafe characters replaced by ``_``; a stem longer than
    100 bytes is cut to 20 characters plus a hash of the whole name (file names stop at 255 bytes, and two long
    names sharing a beginning must not share a file)."""
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(name)) or "sample"
    if len(safe.encode("utf-8", "surrogatepass")) > 100:
        import hashlib

        safe = f"{safe[:20]}_{hashlib.sha256(str(name).encode('utf-8', 'surrogatepass')).hexdigest()[:24]}"
    return safe


def plot_path(plots_dir: str | os.PathLike, sample: str) -> Path:
    """``<plots_dir>/gating_<sample>.svg`` with the sample name made safe (:func:`safe_stem`)."""
    return Path(plots_dir) / f"gating_{safe_stem(sample)}.svg"


def _draw_plot(result: Any, strategy: Any, sample: str, treg: str | None, plots_dir: str) -> str:
    from .plots import figure_id, gating_hierarchy, save_figure

    path = plot_path(plots_dir, sample)
    # The element ids are those of the sample: the report inlines the file as it is.
    save_figure(gating_hierarchy(result, strategy, sample, treg=treg), path, ident=figure_id(sample))
    return str(path)


def _load_and_gate(fcs_path: str | os.PathLike, gates_path: str | os.PathLike, panel: str | os.PathLike | None = None,
                   pregated: str | None = None, controls: dict[str, str] | None = None,
                   wsp_sample: str | None = None) -> tuple[Any, Any, Any]:
    """Read one file (with its panel) and gate it with a gate file (sample-scope fitting for data-driven gates,
    with the control tubes ``{role: path}`` read with the same panel).

    The exact path (float64 decoding and transforms): ``gate`` and ``export`` output individual events, and an
    event on a gate boundary must land where Gating-ML 2.0 puts it (float32 decoding of log channels moves some).
    """
    from .adapt import apply_widths, fit_widths, pregate, resolve_optional
    from .gatefile import load_strategy
    from .panel import read_panel, read_sample

    strategy = pregate(load_strategy(gates_path, wsp_sample, fcs=fcs_path), pregated, where=str(gates_path))
    panel_file = read_panel(panel) if panel else None
    sample = read_sample(fcs_path, panel_file, scale=strategy.scale, exact=True)
    spillover = choose_spillover(sample, strategy)
    strategy, _ = resolve_optional(strategy, sample)
    strategy = apply_widths(strategy, fit_widths(strategy, [sample], [spillover])[0])
    tubes = tuple((role, str(path)) for role, path in (controls or {}).items())
    strategy, _ = _fit_sample_gates(strategy, sample, spillover, tubes, {path: panel_file for _, path in tubes})
    return sample, strategy, strategy.apply(sample, spillover, exact=True)


def fit_gate_file(fcs_path: str | os.PathLike, gates_path: str | os.PathLike, out: str | os.PathLike,
                  panel: str | os.PathLike | None = None) -> Path:
    """Fit a gate file's data-driven gates on one sample and write the fixed result (``cytopipe gates fit``).

    Parameters
    ----------
    fcs_path
        The FCS file to fit on.
    gates_path
        A YAML or Gating-ML gate file (or a shipped strategy's name).
    out
        ``.xml`` writes Gating-ML 2.0; anything else writes YAML.
    panel
        A panel CSV setting the file's markers (``--panel``).

    Returns
    -------
    pathlib.Path
        ``out``: every data-driven gate replaced by the fixed gate fitted on this file (thresholds, ellipses and
        polygons in the gate file's units), which Gating-ML can hold and any tool can apply.

    Raises
    ------
    CytopipeError
        An unreadable file, an invalid gate file, or a fit that fails on this sample.
    """
    from .gatefile import dump_yaml

    _, strategy, _ = _load_and_gate(fcs_path, gates_path, panel)
    target = Path(out)
    if target.suffix.lower() == ".xml":
        from .gatingml import write_gatingml

        write_gatingml(strategy, target)
    else:
        from .outputs import atomic_write

        atomic_write(target, dump_yaml(strategy))
    return target


def event_membership(fcs_path: str | os.PathLike, gates_path: str | os.PathLike,
                     panel: str | os.PathLike | None = None, pregated: str | None = None,
                     controls: dict[str, str] | None = None, wsp_sample: str | None = None) -> pd.DataFrame:
    """Per-event population membership (``cytopipe gate``).

    Parameters
    ----------
    fcs_path
        The FCS file.
    gates_path
        A YAML or Gating-ML gate file or a FlowJo workspace; data-driven gates are fitted on this file alone.
    panel
        A panel CSV (``channel,marker``) setting the file's markers (``--panel``).
    pregated
        The population every event of the file is in (``--pregated``); gates above it are not applied.
    controls
        Control tubes for data-driven cuts, ``{role: path}`` (``{"isotype:CD25": "B01.fcs"}``; ``--control``).
    wsp_sample
        For a FlowJo workspace: the sample or group tree (``--wsp-sample``; ``own`` = this file's own sample).

    Returns
    -------
    pandas.DataFrame
        One row per event in file order, one ``uint8`` 0/1 column per population in the strategy's order.
    """
    import numpy as np
    import pandas as pd

    _, strategy, result = _load_and_gate(fcs_path, gates_path, panel, pregated, controls, wsp_sample)
    return pd.DataFrame({p.name: result.masks[p.name].view(np.uint8) for p in strategy.populations})


def export_population(fcs_path: str | os.PathLike, gates_path: str | os.PathLike, population: str,
                      out_path: str | os.PathLike, panel: str | os.PathLike | None = None,
                      pregated: str | None = None, controls: dict[str, str] | None = None,
                      wsp_sample: str | None = None) -> int:
    """Write the events of one population as an FCS 3.1 file (``cytopipe export``).

    The events are written as stored (not decoded, uncompensated, untransformed), so the exported file can be gated
    again with the same spillover: every TEXT keyword is kept (``$SPILLOVER``, ``$PnS``, ``$PnR``, user keywords;
    the data layout keywords are recomputed by :func:`cytopipe.fcs.write_fcs`), and ``CYTOPIPE_POPULATION`` /
    ``CYTOPIPE_SOURCE`` record the origin.

    Parameters
    ----------
    fcs_path, gates_path
        Input FCS file and gate file (YAML or Gating-ML).
    population
        Name of the population to export (case-insensitive when unambiguous).
    out_path
        FCS file to write.
    panel, pregated, controls, wsp_sample
        As for :func:`event_membership`. The panel's markers are written as ``$PnS``.

    Returns
    -------
    int
        The number of events written.

    Raises
    ------
    GateError
        The population does not exist.
    """

    if Path(out_path).resolve() == Path(fcs_path).resolve():
        raise ConfigError(f"{out_path}: refusing to overwrite the input file")
    sample, strategy, result = _load_and_gate(fcs_path, gates_path, panel, pregated, controls, wsp_sample)
    name = _find_population([p.name for p in strategy.populations], population, str(gates_path), "--population")
    # The stored channel values, not the decoded ones: the file keeps its $PnE/$PnG keywords.
    events = read_fcs(fcs_path, scale="raw").events[result.masks[name]]
    # write_fcs recomputes the layout keywords and writes atomically; everything else is carried over.
    metadata = {**sample.metadata, "CYTOPIPE_POPULATION": name, "CYTOPIPE_SOURCE": Path(fcs_path).name}
    write_fcs(out_path, events, sample.channels, sample.markers, metadata)
    return int(events.shape[0])

"""The batch run behind ``cytopipe run``: read the study, plan, fit shared gates, execute, write."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from cytopipe import columns
from cytopipe.columns import Table
from cytopipe.errors import ConfigError, CytopipeError, GateError
from cytopipe.fcs import SCALES
from cytopipe.pipeline import (
    SampleResult,
    SampleTask,
    file_sha256,
    needs_fitting,
    one_line,
    resolve_treg,
)

from .cache import CACHE_DIR, ResultCache, task_key
from .executors import WorkerStore, _one_thread, _pool_context, _run_dask, _run_in_process, _run_pool
from .progress import Progress, _progress_mode
from .tables import (
    _baseline,
    _chosen_tables,
    _drift,
    _manifest_text,
    _reference_qc,
    _remove_stale_temporaries,
    _tables,
    _versions,
    _write_outputs,
    _write_workspace,
)

if TYPE_CHECKING:
    import pandas as pd

#: Seconds a Dask cluster may have no worker before a run gives up (``--scheduler-timeout``).
DEFAULT_SCHEDULER_TIMEOUT = 300.0
# Clinical table used when --clinical is not given and this file sits beside the sample sheet.
CLINICAL_NAME = "clinical.csv"


#: The tables of a :class:`RunResult`, by attribute.
_TABLES = ("populations", "treg", "baseline", "failures", "fitted", "sensitivity", "drift")


class _Frame:
    """A :class:`RunResult` table as a DataFrame, built from the run's table on first access (a run from the
    command line never builds it: pandas stays unimported)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, result: RunResult | None, owner: type | None = None) -> Any:
        if result is None:
            return self
        table = result.tables[self.name]
        if self.name not in result._frames:
            result._frames[self.name] = table if not isinstance(table, dict) else _as_frame(self.name, table)
        return result._frames[self.name]

    def __set__(self, result: RunResult, value: Any) -> None:
        result.tables[self.name] = value
        result._frames.pop(self.name, None)


def _as_frame(name: str, table: Table) -> pd.DataFrame:
    """A run's table as the DataFrame the run returned before tables: none without columns, ``baseline.csv`` as
    :func:`cytopipe.stats.baseline_table` returns it for DataFrames (:func:`cytopipe.stats.baseline_frame`)."""
    import pandas as pd

    if not table:
        return pd.DataFrame()
    if name == "baseline":
        from cytopipe.stats import baseline_frame

        return baseline_frame(table)
    return columns.to_frame(table)


class RunResult:
    """The tables of one batch run and its exit code.

    Attributes
    ----------
    populations, treg, baseline, failures, fitted, sensitivity, drift
        The tables written to ``populations.csv``, ``treg.csv``, ``baseline.csv``, ``failures.csv``,
        ``gates_fitted.csv``, ``sensitivity.csv`` and ``gate_drift.csv`` (the last three are empty for fixed
        gates), as DataFrames (built on first access).
    tables
        The same tables by attribute name, as the run made them: :mod:`cytopipe.columns` tables (or DataFrames).
    exit_code
        0 when every sample succeeded, 1 when some failed.
    out
        The output folder.
    computed, cached
        Sample names processed in this run and those taken from the cache.
    elapsed
        Wall-clock seconds of the whole run.
    n_events
        Events read by this run (cached samples not counted).
    """

    populations = _Frame()
    treg = _Frame()
    baseline = _Frame()
    failures = _Frame()
    fitted = _Frame()
    sensitivity = _Frame()
    drift = _Frame()

    def __init__(self, populations: Any, treg: Any, baseline: Any, failures: Any, fitted: Any, sensitivity: Any,
                 drift: Any, exit_code: int, out: Path, computed: list[str] | None = None,
                 cached: list[str] | None = None, elapsed: float = 0.0, n_events: int = 0) -> None:
        self.tables: dict[str, Any] = {"populations": populations, "treg": treg, "baseline": baseline,
                                       "failures": failures, "fitted": fitted, "sensitivity": sensitivity,
                                       "drift": drift}
        self._frames: dict[str, Any] = {}
        self.exit_code = exit_code
        self.out = out
        self.computed = list(computed or [])
        self.cached = list(cached or [])
        self.elapsed = elapsed
        self.n_events = n_events

    def __repr__(self) -> str:
        return (f"RunResult(exit_code={self.exit_code}, out={str(self.out)!r}, computed={len(self.computed)}, "
                f"cached={len(self.cached)}, elapsed={self.elapsed:.1f})")


class SheetRow(NamedTuple):
    """The columns of a sample sheet row that plan the run (see :func:`cytopipe.samplesheet.read_sample_sheet`)."""

    sample: str
    file: str
    subject: str
    timepoint: str
    day: float
    baseline: bool
    role: str
    spillover: str
    panel: str
    pregated: str


def _fit_shared_scopes(strategy: Any, samples: list[SheetRow], controls: dict[str, tuple[tuple[str, str], ...]],
                       spillover_for: Callable[[Any, str], Any], report: Progress,
                       panels: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict], dict[str, str]]:
    """Fit ``subject`` / ``baseline`` scope gates per subject on this machine.

    Parameters
    ----------
    strategy
        The gate file's strategy.
    samples
        The sheet's ``role == "sample"`` rows (to fit), in sheet order.
    controls
        Per subject, ``(role, file)`` of its control tubes.
    spillover_for
        ``(sample, row spillover path) -> Spillover | None``.
    report
        Where to log.
    panels
        File path -> :class:`cytopipe.panel.Panel` to apply when reading it.

    Returns
    -------
    tuple
        ``({subject: strategy with those gates fitted}, fitted parameter rows, {subject: failure reason})``; a
        subject whose fit fails (an unreadable file, too few events) fails its samples, not the run.
    """
    if not needs_fitting(strategy):
        return {}, [], {}
    from cytopipe.autogate import client_scopes, fit_strategy

    scopes = client_scopes(strategy)
    if not scopes:
        return {}, [], {}
    from cytopipe.adapt import apply_widths, fit_widths, resolve_optional
    from cytopipe.panel import read_sample

    panels = panels or {}
    fitted: dict[str, Any] = {}
    rows: list[dict] = []
    failed: dict[str, str] = {}
    by_subject: dict[str, list[SheetRow]] = {}
    for rec in samples:
        by_subject.setdefault(rec.subject, []).append(rec)
    for subject in sorted(by_subject):
        group = by_subject[subject]
        # subject scope pools the subject's samples; baseline scope fits on its baseline sample alone.
        chosen = group if "subject" in scopes else [rec for rec in group if rec.baseline]
        flags = [rec.baseline for rec in chosen]
        report.log(f"fitting {'/'.join(sorted(scopes))}-scope gates of subject {subject} on {len(chosen)} sample(s)")
        try:
            if "baseline" in scopes and True not in flags:
                raise GateError(f"subject {subject} has no baseline sample to fit baseline-scope gates on")
            loaded = [read_sample(rec.file, panels.get(rec.file), scale=strategy.scale) for rec in chosen]
            spills = [spillover_for(sample, rec.spillover) for sample, rec in zip(loaded, chosen, strict=True)]
            tubes = {role: read_sample(path, panels.get(path), scale=strategy.scale)
                     for role, path in controls.get(subject, ())} or None
            resolved, _ = resolve_optional(strategy, loaded[0]) if loaded else (strategy, [])
            with _one_thread():
                widths, width_rows = fit_widths(resolved, loaded, spills)  # pooled like the gates
                fitted[subject], params = fit_strategy(apply_widths(resolved, widths), loaded, spillover=spills,
                                                       controls=tubes, scopes=scopes,
                                                       baseline=flags.index(True) if True in flags else None)
            params = [*width_rows, *params]
        except Exception as err:  # noqa: BLE001 - one subject's bad data must not stop the other subjects
            failed[subject] = f"{'/'.join(sorted(scopes))}-scope gate fit for subject {subject} failed: " + \
                one_line(err)
            report.error(failed[subject])
            continue
        rows.extend({"sample": "", "subject": subject, "timepoint": "", "day": "", **row} for row in params)
    return fitted, rows, failed


def run(sheet: str | os.PathLike = "sample_fcs/study.csv", gates: str | os.PathLike = "treg",
        out: str | os.PathLike = "results", workers: int | None = None, scheduler: str | None = None,
        treg: str | None = None, parent: str | None = None, clinical: str | os.PathLike | None = None,
        spillover: str | os.PathLike | None = None, cva: float = 10.0, cvi: float = 10.0, z: float = 1.96,
        drift_limit: float = 20.0,
        progress: bool | None = None, log_json: bool = False, quiet: bool = False, plots: bool | str = True,
        report: bool = True, pdf: bool = True, stream: IO[str] | None = None,
        panel: str | os.PathLike | None = None, pregated: str | None = None,
        wsp_sample: str | None = None, scheduler_timeout: float = DEFAULT_SCHEDULER_TIMEOUT) -> RunResult:
    """Gate every sample of a sample sheet and write the study's result folder.

    Parameters
    ----------
    sheet
        Sample sheet CSV (see :func:`cytopipe.samplesheet.read_sample_sheet`).
    gates
        Gate file, YAML or Gating-ML 2.0, or a shipped strategy's name (``cytopipe gates list``).
    out
        Output folder (created). Finished samples are cached in ``out/.cache/``.
    workers
        Worker processes (default: all cores); 1 runs in this process. Ignored with ``scheduler``.
    scheduler
        ``tcp://HOST:PORT`` of a Dask distributed scheduler to run the per-sample work on.
    treg, parent
        Treg population and its denominator (default: the strategy's, else the population named Treg and its
        parent).
    clinical
        Clinical table (platelets, lymphocytes...) joined into ``baseline.csv`` and the report; default: a
        ``clinical.csv`` beside the sample sheet when there is one (logged, and recorded in ``manifest.json``).
    spillover
        Spillover matrix file for every sample (a sheet row's ``spillover`` column still wins for that row).
    cva, cvi, z
        Reference-change-value settings for ``baseline.csv`` and the report.
    drift_limit
        Percent change of a reference population's median against the subject's baseline (CD4 on CD4 T cells,
        CD8 on CD8 T, CD3 on T cells, lymphocyte scatter) above which a visit is flagged (``acquisition_qc``,
        ``gate_drift.csv``).
    progress
        Progress bar on/off; ``None`` = on when ``stream`` is a terminal.
    log_json, quiet
        JSON-lines logs; or nothing but errors.
    plots
        Draw ``plots/gating_<sample>.svg`` per sample: ``True``/``"all"``; ``False``/``"none"``; or ``"flagged"``,
        only for samples with a QC flag or a significant change (drawn after the statistics, re-reading just
        those files), for very large batches.
    report
        Render ``report.html`` at the end (it also rewrites ``baseline.csv`` with the same settings, adding the
        columns that need ``populations.csv``).
    pdf
        Also print ``report.pdf`` (needs Chromium; a warning when it is absent).
    stream
        Where progress and logs go (default ``sys.stderr``).
    panel
        Panel CSV (``channel,marker``) setting the markers of every file (a sheet row's ``panel`` column wins).
    pregated
        Population every file's events are in (a sheet row's ``pregated`` column wins): the gates above it are
        not applied, its descendants are gated as usual.
    wsp_sample
        For a FlowJo workspace as ``gates``: the sample or group whose tree gates every file (default group
        "All Samples", else the first sample's); ``"own"``: each file its own workspace sample's tree.
    scheduler_timeout
        Seconds the Dask cluster may have no worker before the run gives up (samples finished by then are
        cached, so a re-run resumes).

    Returns
    -------
    RunResult
        The tables and the exit code (0 all ok, 1 some samples failed).

    Raises
    ------
    CytopipeError
        A usage or configuration problem (bad sheet, gate file, option or scheduler address): exit code 2.
    """
    from cytopipe.bundled import find_gate_file
    from cytopipe.gatefile import load_strategy
    from cytopipe.samplesheet import read_sample_rows

    started = time.perf_counter()
    stream = stream if stream is not None else sys.stderr
    if not (math.isfinite(drift_limit) and drift_limit > 0):
        raise ConfigError(f"--drift-limit must be a positive percentage, got {drift_limit!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if not scheduler_timeout > 0:
        raise ConfigError(f"--scheduler-timeout must be a positive number of seconds (got {scheduler_timeout})")
    if scheduler is not None and not str(scheduler).startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        raise ConfigError(f"--scheduler {scheduler!r} is not an address like tcp://HOST:PORT")
    for option, value in (("--spillover", spillover), ("--clinical", clinical)):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{option} {value}: file not found")
    mode = {True: "all", False: "none"}.get(plots, plots) if isinstance(plots, bool) else str(plots)
    if mode not in ("all", "none", "flagged"):
        raise ConfigError(f"--plots must be all, none or flagged (got {plots!r})")
    if scheduler is None and (workers or os.cpu_count() or 1) > 1:
        _pool_context(mode == "all")  # warm the worker processes' imports while this process does the set-up
    # The sheet as plain rows (no pandas: a run imports none, cytopipe.columns tables stand in for its frames).
    sheet_rows, sheet_columns = read_sample_rows(sheet)
    records = [SheetRow(*(row[name] for name in SheetRow._fields)) for row in sheet_rows]
    from cytopipe.adapt import pregate
    from cytopipe.panel import read_panel

    panel_file = read_panel(panel) if panel is not None else None  # a malformed --panel is a usage error
    gates = find_gate_file(gates)  # the manifest records the file a strategy's name stands for
    own = wsp_sample == "own"  # FlowJo workspace: every file gated with its own sample's tree
    strategy = pregate(load_strategy(gates, None if own else wsp_sample), pregated, where=str(gates))
    samples = [rec for rec in records if rec.role == "sample"]
    trees: dict[str, Any] = {}
    if own:
        from cytopipe.flowjo import own_strategies

        trees = own_strategies(gates, [rec.file for rec in samples])
        # Treg and parent names are resolved on the first file's own tree.
        strategy = next((pregate(t, pregated, where=str(gates)) for t in trees.values() if not isinstance(t, str)),
                        strategy)
    log = Progress(len(samples), _progress_mode(progress, log_json, quiet, stream), stream)
    if clinical is None and (Path(sheet).parent / CLINICAL_NAME).is_file():
        clinical = Path(sheet).parent / CLINICAL_NAME
        log.log(f"clinical data: {clinical} (beside the sample sheet; --clinical FILE to choose another)")
    clinical_table = None
    if clinical is not None:
        from cytopipe.stats import read_clinical_table

        clinical_table = read_clinical_table(clinical)  # a malformed table is a usage error before any work
    treg_name, parent_name = resolve_treg(strategy, treg, parent)
    _check_markers(strategy, gates, samples, panel_file)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    cache = ResultCache(out / CACHE_DIR)
    spill_path = str(Path(spillover).resolve()) if spillover is not None else None
    plots_dir = str((out / "plots").resolve()) if mode == "all" else None
    tasks, settings, client_fitted = _plan(strategy, records, treg_name, parent_name, spill_path, plots_dir, log,
                                           panel_file, pregated)
    if own:
        tasks = [replace(task, strategy=pregate(trees[task.file], pregated, where=str(gates)))
                 if not isinstance(trees[task.file], str) else replace(task, failure=trees[task.file])
                 for task in tasks]

    results: list[SampleResult] = []
    todo: list[tuple[SampleTask, str]] = []
    for task, setting in zip(tasks, settings, strict=True):
        sha = cache.known_sha(task.file)
        hit = cache.get(task_key(task, sha, setting), task, sha) if sha else None
        if hit is not None and (hit.plot is None or Path(hit.plot).is_file()):
            results.append(hit)
            log.sample(hit)
        else:
            todo.append((task, setting))
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if todo:
        where = f"on {scheduler}" if scheduler else f"{min(n_workers, len(todo))} worker(s)"
        log.log(f"{len(todo)} sample(s) to process, {len(results)} from the cache; {where}")
    figures = _Figures() if report else None
    for result in _execute(todo, cache, n_workers, scheduler, scheduler_timeout,
                           idle=lambda: _prepare_outputs(report)):
        results.append(result)
        log.sample(result)
        if figures is not None:
            figures.add(result)
    log.finish()

    table = columns.from_rows(sheet_rows, sheet_columns)  # the sheet as read_sample_sheet's frame, as a table
    tables: dict[str, Any] = _tables(results, strategy, table, client_fitted)
    tables["drift"] = _drift(tables["fitted"], table)
    _reference_qc(tables, results, table, drift_limit)
    if not report or mode == "flagged":  # the report computes baseline.csv itself (with more columns)
        tables["baseline"] = _baseline(tables["treg"], clinical=clinical_table, cva=cva, cvi=cvi, z=z)
    if mode == "flagged":
        _draw_flagged(tables["baseline"], tasks, settings, str((out / "plots").resolve()), cache, n_workers,
                      scheduler, log)
    written, stale = _chosen_tables(tables, baseline=not report)
    workspace = _write_workspace(out, results, log)
    settings_record = {"workers": None if scheduler else n_workers, "scheduler": scheduler, "spillover": spill_path,
                       "clinical": str(Path(clinical).resolve()) if clinical else None, "cva": cva, "cvi": cvi,
                       "z": z, "drift_limit": drift_limit, "plots": mode, "treg": treg_name, "parent": parent_name,
                       "panel": panel_file.record() if panel_file is not None else None, "pregated": pregated,
                       "values": {"scale": strategy.scale, "decoding": SCALES[strategy.scale], "precision": "float32"}}
    manifest = _manifest_text(sheet, gates, strategy, table, results, settings_record, workspace)

    unwritten = [True]

    def write_outputs() -> None:  # once
        if unwritten:
            unwritten.clear()
            _write_outputs(out, written, stale, manifest)

    try:
        if report:
            from cytopipe.report import render_from_tables

            # The report renders from the tables (not re-read from the folder) and the manifest's text, and writes
            # baseline.csv (same settings, plus columns from populations.csv): return that one. Its PDF is laid
            # out natively (cytopipe.pdf) by a forked child: this process writes the tables and manifest.json
            # meanwhile, once report.html is written, instead of before the report.
            tables["baseline"] = render_from_tables(
                out, written, clinical=clinical, cva=cva, cvi=cvi, z=z, pdf=pdf, plots=mode != "none",
                figures=figures.inlined if figures is not None else None, manifest=json.loads(manifest),
                meanwhile=write_outputs)["baseline"]
    finally:
        write_outputs()  # without a report, or one that stopped before writing them

    computed = [task.sample for task, _ in todo]
    done_here = set(computed)
    cached = [task.sample for task in tasks if task.sample not in done_here]
    failed = set(tables["failures"]["sample"].tolist())
    elapsed = time.perf_counter() - started
    log.log(f"{len(samples) - len(failed)}/{len(samples)} samples ok, {len(failed)} failed; {len(computed)} "
            f"processed, {len(samples) - len(computed)} cached; {elapsed:.1f} s; results in {out}")
    return RunResult(**{name: tables[name] for name in _TABLES}, exit_code=1 if failed else 0, out=out,
                     computed=computed, cached=cached, elapsed=elapsed,
                     n_events=sum(r.n_events for r in results if not r.cached))


def _prepare_outputs(report: bool) -> None:
    """Import what the tables and the report need while the workers gate (the client is idle then): the package
    metadata of the manifest, and Jinja2 with the report's modules (the tables need no pandas)."""
    _versions()  # the package versions manifest.json records
    if report:
        import cytopipe.report  # noqa: F401


class _Figures:
    """The report's gating figures, read as each sample's result arrives (the client only waits for the workers
    then), instead of all of them after the last sample.

    A figure is taken as :func:`cytopipe.report.inline_svg` reads ``plots/gating_<sample>.svg`` just after the
    worker wrote it. Samples whose names share one file (names that differ only in unsafe characters) are left to
    the report, which reads the file as it is at the end, as without this.
    """

    def __init__(self) -> None:
        self.inlined: dict[str, Any] = {}  # sample -> its figure, for render_report(figures=...)
        self._owner: dict[str, str] = {}  # figure file -> the sample that wrote it
        self._shared: set[str] = set()  # figure files written by two samples

    def add(self, result: SampleResult) -> None:
        """Read ``result``'s gating figure, if it drew one."""
        path = result.plot
        if path is None or path in self._shared:
            return
        owner = self._owner.setdefault(path, result.sample)
        if owner != result.sample:
            self._shared.add(path)
            self.inlined.pop(owner, None)
            return
        from cytopipe.report import inline_svg

        figure = inline_svg(path)
        if figure is not None:
            self.inlined[result.sample] = figure


def _row_settings(records: list[SheetRow], strategy: Any, treg: str, parent: str | None, panel: Any,
                  pregated: str | None) -> tuple[dict[str, Any], dict[str, tuple[str, str]], dict[str, Any]]:
    """Per sheet row: the panel to read the file with, a reason the row cannot run, the row's strategy.

    Returns
    -------
    tuple
        ``({file: Panel or None}, {sample: (stage, reason)}, {sample: pregated strategy})``. A row whose own
        ``panel`` is unreadable or whose ``pregated`` population is unknown (or drops the Treg population or its
        denominator) fails alone.
    """
    from cytopipe.adapt import pregate
    from cytopipe.errors import CytopipeError
    from cytopipe.panel import read_panel

    read: dict[str, Any] = {}
    panels: dict[str, Any] = {}
    problems: dict[str, tuple[str, str]] = {}
    strategies: dict[str, Any] = {}
    by_value: dict[str, Any] = {}
    for rec in records:
        if rec.panel:
            if rec.panel not in read:
                try:
                    read[rec.panel] = read_panel(rec.panel)
                except CytopipeError as err:
                    read[rec.panel] = err
            chosen = read[rec.panel]
            if isinstance(chosen, CytopipeError):
                problems[rec.sample] = ("read", str(chosen))
                continue
            panels[rec.file] = chosen
        elif panel is not None:
            panels[rec.file] = panel
        if not rec.pregated:
            strategies[rec.sample] = strategy
            continue
        if rec.pregated not in by_value:
            try:
                own = pregate(strategy, rec.pregated, "sheet column 'pregated'")
                names = {p.name for p in own.populations}
                for label, value in (("Treg", treg), ("denominator", parent)):
                    if value is not None and value not in names:
                        raise ConfigError(f"pre-gated {own.populations[0].name}: the {label} population "
                                          f"'{value}' is not below it")
                by_value[rec.pregated] = own
            except CytopipeError as err:
                by_value[rec.pregated] = err
        chosen = by_value[rec.pregated]
        if isinstance(chosen, CytopipeError):
            problems[rec.sample] = ("gate", str(chosen))
        else:
            strategies[rec.sample] = chosen
    return panels, problems, strategies


def _draw_flagged(baseline: Table, tasks: list[SampleTask], settings: list[str], plots_dir: str,
                  cache: ResultCache, n_workers: int, scheduler: str | None, log: Progress) -> None:
    """``--plots flagged``: gate again, drawing the figure, only the samples with a QC flag or a significant change
    (``baseline``: the rows of ``baseline.csv``)."""
    n = columns.length(baseline)
    if not n:
        return
    flags = ([not columns.is_missing(v) and str(v) != "" for v in baseline["qc_flags"].tolist()]
             if "qc_flags" in baseline else [False] * n)
    significant = ([bool(v) for v in baseline["significant"].tolist()] if "significant" in baseline
                   else [False] * n)
    chosen = {str(sample) for sample, flag, sig in zip(baseline["sample"].tolist(), flags, significant, strict=True)
              if flag or sig}
    redo = [(replace(task, plots_dir=plots_dir), setting)
            for task, setting in zip(tasks, settings, strict=True) if task.sample in chosen]
    if redo:
        log.log(f"drawing gating figures of {len(redo)} flagged or significantly changed sample(s)")
        for _ in _execute(redo, cache, n_workers, scheduler):
            pass


def _check_markers(strategy: Any, gates: str | os.PathLike, samples: list[SheetRow], panel: Any) -> None:
    """Stop before any work when the gates name a marker that no file of the study has (a typo such as CD52 for
    CD25 would otherwise fail every sample, one by one).

    The first readable file is checked; when it lacks a marker, up to :data:`_MARKER_PROBES` files spread over the
    sheet are checked too, and the run stops only when none of them resolves every marker: in a study that mixes
    instruments (a mass cytometer without scatter beside flow cytometers) the files that lack a marker fail alone.
    Files are read with their panel; optional populations may lack their markers; a file with its own panel or
    pre-gating, or an unreadable one, is left to the per-sample checks.
    """
    from cytopipe.errors import MarkerError

    candidates = [rec for rec in samples if not (rec.panel or rec.pregated)]
    # The first existing file decides almost every run: the other files are looked for only when it lacks a marker
    # (a stat per file is ~10 us, before the first sample can start).
    first = next((i for i, rec in enumerate(candidates) if Path(rec.file).is_file()), None)
    problems = _marker_problems(strategy, gates, candidates[first].file, panel) if first is not None else None
    if not problems:
        return
    rows = [candidates[first], *(rec for rec in candidates[first + 1:] if Path(rec.file).is_file())]
    spread = sorted({round(i * (len(rows) - 1) / max(_MARKER_PROBES - 1, 1)) for i in range(_MARKER_PROBES)})
    for index in spread[1:]:  # index 0 is the first file
        if not _marker_problems(strategy, gates, rows[index].file, panel):
            return
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    checked = f"; none of {len(spread)} files checked has it" if len(spread) > 1 else ""
    raise MarkerError(f"{problems[0]} in {rows[0].file}{more}{checked}; nothing was processed")


def _marker_problems(strategy: Any, gates: str | os.PathLike, file: str, panel: Any) -> list[str] | None:
    """The markers of ``strategy`` that ``file`` lacks; ``None`` when it cannot be read (left to its sample)."""
    from cytopipe.adapt import resolve_optional
    from cytopipe.gatefile import strategy_marker_problems
    from cytopipe.panel import read_sample

    try:
        sample = read_sample(file, panel, scale=strategy.scale)
    except CytopipeError:
        return None
    return strategy_marker_problems(resolve_optional(strategy, sample)[0], sample, os.fspath(gates))


_MARKER_PROBES = 8  # files read before a missing marker stops the run


def _plan(strategy: Any, records: list[SheetRow], treg: str, parent: str | None, spill_path: str | None,
          plots_dir: str | None, log: Progress, panel: Any = None, pregated: str | None = None
          ) -> tuple[list[SampleTask], list[str], list[dict]]:
    """One task per sample (after fitting shared-scope gates), its cache settings and the client-fitted rows."""
    from cytopipe.pipeline import choose_spillover

    def spillover_for(sample: Any, row_spillover: str) -> Any:
        return choose_spillover(sample, strategy, row_spillover or spill_path)

    panels, problems, row_strategy = _row_settings(records, strategy, treg, parent, panel, pregated)
    samples = [rec for rec in records if rec.role == "sample"]
    controls: dict[str, tuple[tuple[str, str], ...]] = {}
    for rec in records:
        if rec.role != "sample" and rec.sample not in problems:
            controls[rec.subject] = (*controls.get(rec.subject, ()), (rec.role, rec.file))
    # Shared-scope gates are fitted once per subject for each pre-gated strategy its rows use.
    subject_strategies: dict[tuple[int, str], Any] = {}
    client_fitted: list[dict] = []
    subject_failed: dict[tuple[int, str], str] = {}
    runnable = [rec for rec in samples if rec.sample not in problems]
    groups: dict[int, list[SheetRow]] = {}
    for rec in runnable:
        groups.setdefault(id(row_strategy[rec.sample]), []).append(rec)
    for key, group in groups.items():
        own = row_strategy[group[0].sample]
        fitted, rows, failed = _fit_shared_scopes(own, group, controls, spillover_for, log, panels)
        subject_strategies.update({(key, subject): s for subject, s in fitted.items()})
        subject_failed.update({(key, subject): reason for subject, reason in failed.items()})
        client_fitted.extend(rows)
    definition = getattr(strategy, "source", "") or repr(strategy)
    shas: dict[str, str] = {}

    def sha_of(path: str | None) -> str:
        if not path or not Path(path).is_file():
            return ""
        if path not in shas:
            shas[path] = file_sha256(path)
        return shas[path]

    tasks: list[SampleTask] = []
    settings: list[str] = []
    texts: dict[str, str] = {}  # settings without the gates -> the settings text
    for rec in samples:
        matrix = rec.spillover or spill_path
        own = row_strategy.get(rec.sample, strategy)
        data_driven = own if needs_fitting(own) else None
        subject_controls = controls.get(rec.subject, ()) if data_driven is not None else ()
        stage, problem = problems.get(rec.sample, ("gate", None))
        key = (id(own), rec.subject)
        used = {path: panels[path] for path in (rec.file, *(p for _, p in subject_controls)) if path in panels}
        tasks.append(SampleTask(
            sample=rec.sample, file=rec.file, subject=rec.subject, timepoint=rec.timepoint, day=float(rec.day),
            strategy=subject_strategies.get(key, own), treg=treg, parent=parent, spillover=matrix,
            plots_dir=plots_dir, controls=subject_controls, data_driven=data_driven,
            failure=problem or subject_failed.get(key), failure_stage=stage, panels=used))
        setting = {
            "fitted": [r for r in client_fitted if r["subject"] == rec.subject],
            "spillover": sha_of(matrix), "controls": [(role, sha_of(path)) for role, path in subject_controls],
            "panels": sorted((Path(path).name, p.sha256) for path, p in used.items()),
            "pregated": own.populations[0].name if own is not strategy else (pregated or ""),
            "scale": strategy.scale,
        }
        varying = json.dumps(setting, sort_keys=True, default=str)
        if varying not in texts:  # the gate definitions (kB) are encoded once per distinct setting, not per sample
            texts[varying] = json.dumps({"gates": definition, **setting}, sort_keys=True, default=str)
        settings.append(texts[varying])
    return tasks, settings, client_fitted


def _execute(todo: list[tuple[SampleTask, str]], cache: ResultCache, workers: int, scheduler: str | None,
             scheduler_timeout: float = 300.0, idle: Callable[[], None] | None = None) -> Iterator[SampleResult]:
    """Run the tasks in process, in a pool or on Dask; cache each successful result as soon as it is made (by the
    pool worker that made it, or here as it arrives).

    ``idle`` is called once the tasks are with the workers (pool or Dask), while this process waits for them.
    """
    tasks = [task for task, _ in todo]
    store = WorkerStore(cache, {task.sample: setting for task, setting in todo})
    task_of = {task.sample: task for task in tasks}
    if not tasks:
        return
    if scheduler is not None:
        results = _run_dask(tasks, scheduler, scheduler_timeout, idle)
    elif workers == 1 or len(tasks) == 1:
        results = _run_in_process(tasks)
    else:
        results = _run_pool(tasks, workers, idle, store)  # forked workers store their results themselves
    try:
        for result in results:
            if not store.in_workers:
                store.put(task_of[result.sample], result)
            yield result
    finally:
        cache.close()

"""Many samples: a process pool or a Dask cluster, a result cache, failure isolation, progress and the outputs.

:func:`run` is what ``cytopipe run`` calls. It reads the sample sheet and the gate file, fits the data-driven
gates whose scope spans several samples (``subject``, ``baseline``) on this machine, sends one
:class:`cytopipe.pipeline.SampleTask` per sample to the workers, caches every finished sample under
``OUT/.cache/``, and writes the result tables, ``manifest.json`` and ``report.html``.

Determinism: rows are sorted by subject, day, sample and population order, and floats are written with a fixed
format, so ``--workers 1``, ``--workers N`` and a Dask cluster give byte-identical CSV files.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any

import pandas as pd

from . import __version__
from .errors import ConfigError, CytopipeError, GateError
from .fcs import SCALES
from .outputs import atomic_write, printable, write_csv
from .pipeline import (
    FAILURE_COLUMNS,
    POPULATION_COLUMNS,
    TREG_COLUMNS,
    SampleResult,
    SampleTask,
    file_sha256,
    needs_fitting,
    one_line,
    process_sample,
    resolve_treg,
)

CACHE_DIR = ".cache"
#: Seconds a Dask cluster may have no worker before a run gives up (``--scheduler-timeout``).
DEFAULT_SCHEDULER_TIMEOUT = 300.0
# Clinical table used when --clinical is not given and this file sits beside the sample sheet.
CLINICAL_NAME = "clinical.csv"
# Bump when the cached SampleResult layout or the meaning of its numbers changes.
CACHE_FORMAT = 2
# What process_sample imports (plots only when drawing; autogate only for data-driven gates): numpy and cytopipe's
# own modules, no pandas or scipy.
_WORKER_MODULES = ("cytopipe.pipeline", "cytopipe.fcs", "cytopipe.compensate", "cytopipe.gates", "cytopipe.stats",
                   "cytopipe.flowjo.write", "cytopipe.plots")
_DEPENDENCIES = ("numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "PyYAML", "Jinja2", "flowio",
                 "dask", "distributed")


@dataclass
class RunResult:
    """The tables of one batch run and its exit code.

    Attributes
    ----------
    populations, treg, baseline, failures, fitted, sensitivity, drift
        The tables written to ``populations.csv``, ``treg.csv``, ``baseline.csv``, ``failures.csv``,
        ``gates_fitted.csv``, ``sensitivity.csv`` and ``gate_drift.csv`` (the last three are empty for fixed
        gates).
    exit_code
        0 when every sample succeeded, 1 when some failed.
    out
        The output folder.
    computed, cached
        Sample names processed in this run and those taken from the cache.
    elapsed
        Wall-clock seconds of the whole run.
    """

    populations: pd.DataFrame
    treg: pd.DataFrame
    baseline: pd.DataFrame
    failures: pd.DataFrame
    fitted: pd.DataFrame
    sensitivity: pd.DataFrame
    drift: pd.DataFrame
    exit_code: int
    out: Path
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    n_events: int = 0


# ----------------------------------------------------------------------------------------------------------------
# progress and logs


class Progress:
    """Progress reporting on stderr: a one-line bar on a terminal, log lines otherwise, JSON lines or nothing.

    Parameters
    ----------
    total
        Number of samples in the run.
    mode
        ``"tty"`` (one line rewritten with ``\\r``), ``"plain"``, ``"json"`` or ``"quiet"`` (errors only).
    stream
        Where to write (default ``sys.stderr``).
    """

    def __init__(self, total: int, mode: str, stream: IO[str] | None = None) -> None:
        self.total = total
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.processed = 0  # samples computed in this run (cached ones take no time and would skew the ETA)
        self.events = 0
        self.start = time.perf_counter()

    def log(self, message: str, **fields: Any) -> None:
        """An informational message (not shown with ``quiet``)."""
        if self.mode == "json":
            self._json({"event": "info", "message": message, **fields})
        elif self.mode in ("plain", "tty"):
            self._line(f"cytopipe: {message}")

    def error(self, message: str, **fields: Any) -> None:
        """An error message, shown in every mode."""
        if self.mode == "json":
            self._json({"event": "error", "message": message, **fields})
        else:
            self._line(f"cytopipe: error: {message}")

    def sample(self, result: SampleResult) -> None:
        """Record one finished sample."""
        self.done += 1
        if not result.cached:
            self.processed += 1
            self.events += result.n_events
        elapsed = time.perf_counter() - self.start
        rate = self.events / elapsed if elapsed > 0 else 0.0
        if result.failure is not None:
            f = result.failure
            self.error(f"{f['sample']}: {f['stage']} failed: {f['reason']}", sample=f["sample"], stage=f["stage"],
                       done=self.done, total=self.total)
        if self.mode == "json":
            self._json({"event": "sample", "sample": result.sample, "ok": result.ok, "cached": result.cached,
                        "events": result.n_events, "seconds": round(result.timings.get("total", 0.0), 4),
                        "done": self.done, "total": self.total, "events_per_s": round(rate)})
        elif self.mode == "plain":
            how = "cached" if result.cached else f"{result.n_events} events in {result.timings.get('total', 0):.2f} s"
            status = "ok" if result.ok else "FAILED"
            self._line(f"cytopipe: [{self.done}/{self.total}] {result.sample} {status} ({how})")
        elif self.mode == "tty":
            eta = elapsed / self.processed * (self.total - self.done) if self.processed else 0.0
            self.stream.write(f"\r\x1b[K{self.done}/{self.total} samples  {rate / 1e6:6.2f} M events/s  "
                              f"ETA {int(eta) // 60:d}:{int(eta) % 60:02d}")
            self.stream.flush()

    def finish(self) -> None:
        """End the progress line."""
        if self.mode == "tty":
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, text: str) -> None:
        text = printable(text)
        if self.mode == "tty":
            text = "\r\x1b[K" + text
        self.stream.write(text + "\n")
        self.stream.flush()

    def _json(self, record: dict) -> None:
        self.stream.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")
        self.stream.flush()


def _progress_mode(progress: bool | None, log_json: bool, quiet: bool, stream: IO[str]) -> str:
    if quiet:
        return "quiet"
    if log_json:
        return "json"
    if progress is None:
        progress = bool(getattr(stream, "isatty", lambda: False)())
    return "tty" if progress else "plain"


# ----------------------------------------------------------------------------------------------------------------
# cache


class ResultCache:
    """Finished samples under ``OUT/.cache/``.

    An entry is ``results/<key>.json`` where the key hashes the file's SHA-256, the sample's identity, the gate
    definitions (with any client-fitted parameters) and the settings. ``files/`` maps a file's path, size and
    modification time to its SHA-256 so that unchanged files are not re-read to be recognised. Every entry is
    written to a temporary name and renamed, so a run killed at any instant leaves only whole entries.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "results"
        self.files = root / "files"
        self.results.mkdir(parents=True, exist_ok=True)
        self.files.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*/.*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)

    @staticmethod
    def _stat_key(path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return _sha_text(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}")

    def known_sha(self, path: str) -> str | None:
        """The SHA-256 recorded for this file when its path, size and mtime are unchanged."""
        key = self._stat_key(path)
        if key is None:
            return None
        try:
            return (self.files / key).read_text().strip() or None
        except OSError:
            return None

    def remember_sha(self, path: str, sha: str) -> None:
        """Record a file's SHA-256 under its path, size and mtime."""
        key = self._stat_key(path)
        if key is not None and sha:
            atomic_write(self.files / key, sha)

    def get(self, key: str, task: SampleTask | None = None, sha: str = "") -> SampleResult | None:
        """The cached result, or ``None`` when the entry is absent or not exactly what :meth:`put` writes.

        An entry is used only when its checksum matches its content, every field has the type and the meaning
        this version writes (see :func:`_valid_result`) and it belongs to ``task`` and the file ``sha``; anything
        else (truncated, tampered, hand-edited, from another version) is recomputed.
        """
        path = self.results / f"{key}.json"
        try:
            if path.stat().st_size > _MAX_ENTRY_BYTES:
                return None
            entry = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
            payload = entry["result"] if isinstance(entry, dict) and set(entry) == {"result", "sha256"} else None
            if not isinstance(payload, dict) or entry["sha256"] != _sha_text(_entry_text(payload)):
                return None
            result = SampleResult.from_dict(payload)
        except (OSError, ValueError, TypeError, KeyError, RecursionError):
            return None
        if not _valid_result(result, payload, task, sha):
            return None
        result.cached = True
        return result

    def put(self, key: str, result: SampleResult) -> None:
        """Store a successful result with the checksum of its content (a cache that cannot be written is skipped)."""
        payload = json.loads(_result_text(result))
        path = self.results / f"{key}.json"
        try:
            if path.is_dir() and not path.is_symlink():
                import shutil

                shutil.rmtree(path)
            atomic_write(path, json.dumps({"result": payload, "sha256": _sha_text(_entry_text(payload))}))
        except OSError:
            return  # a full or read-only cache costs a recomputation next time, not this run

    def __len__(self) -> int:
        return sum(1 for _ in self.results.glob("*.json"))


# A cached result is a few kB per population; anything far bigger was not written by this version.
_MAX_ENTRY_BYTES = 16 * 2**20


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid in a cache entry")


def _entry_text(payload: dict) -> str:
    """The canonical text of a cached result (NaN as null, so the entry is strict JSON)."""
    try:  # most results hold no NaN: encode them without copying (the copy is most of the cost)
        return json.dumps(payload, allow_nan=False)  # keys in written order: columns keep their order
    except ValueError:
        return json.dumps(_nan_to_none(payload), allow_nan=False)


def _result_text(result: SampleResult) -> str:
    """:func:`_entry_text` of ``result.to_dict()``, without the deep copy of :func:`dataclasses.asdict` (most of
    the cost) when JSON encodes the fields as they are."""
    try:
        return _entry_text({f.name: getattr(result, f.name) for f in fields(result)})
    except TypeError:  # a field JSON cannot encode as it is: the dict of to_dict
        return _entry_text(result.to_dict())


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid_result(result: SampleResult, payload: dict, task: SampleTask | None, sha: str) -> bool:
    """Is a cached result exactly what :func:`cytopipe.pipeline.process_sample` returns for this task?

    Checks the field set, every type, the identity (sample, file, subject, timepoint, day, SHA-256) against the
    task, one population row per population of the task's strategy in order, and the counts: each population
    within its parent, percentages that follow from the counts, and a Treg row that agrees with the population
    rows. A hand-edited count breaks one of these (or the entry's checksum).
    """
    fields = set(SampleResult.__dataclass_fields__)
    if set(payload) != fields or result.failure is not None or result.cached is not False:
        return False
    texts = (result.sample, result.file, result.subject, result.timepoint, result.sha256, result.spillover_source)
    if not all(isinstance(t, str) for t in texts) or not _is_int(result.n_events) or not _is_real(result.day):
        return False
    if len(result.sha256) != 64 or (sha and result.sha256 != sha):
        return False
    if task is not None and (result.sample, result.file, result.subject, result.timepoint, float(result.day)) != (
            task.sample, task.file, task.subject, task.timepoint, float(task.day)):
        return False
    if result.plot is not None and not isinstance(result.plot, str):
        return False
    if not isinstance(result.timings, dict) or not all(isinstance(v, (int, float)) for v in result.timings.values()):
        return False
    for rows in (result.fitted, result.sensitivity, result.populations):
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return False
    if not isinstance(result.treg, dict) or set(result.treg) != {*TREG_COLUMNS, "acquisition_qc"}:
        return False
    counts: dict[str, int] = {}
    for row in result.populations:
        if set(row) != set(POPULATION_COLUMNS) or not _is_int(row["count"]) or row["count"] > result.n_events:
            return False
        counts[row["population"]] = row["count"]
        parent = counts.get(row["parent"], result.n_events) if row["parent"] else result.n_events
        if row["count"] > parent or not _close(row["pct_parent"], row["count"], parent) or \
                not _close(row["pct_total"], row["count"], result.n_events):
            return False
    if task is not None and list(counts) != [p.name for p in task.strategy.populations]:
        return False
    treg = result.treg
    want = (counts.get(task.treg) if task is not None else treg["treg_events"],
            (counts.get(task.parent) if task.parent is not None else result.n_events) if task is not None
            else treg["cd4_events"])
    return (_is_int(treg["treg_events"]) and _is_int(treg["cd4_events"]) and
            (treg["treg_events"], treg["cd4_events"]) == want and
            _close(treg["treg_pct"], treg["treg_events"], treg["cd4_events"]) and
            isinstance(treg["acquisition_qc"], str))


def _close(pct: Any, count: int, total: int) -> bool:
    """``pct`` is ``100 * count / total`` as :mod:`cytopipe.pipeline` writes it (null when ``total`` is 0)."""
    if total == 0:
        return pct is None or (isinstance(pct, float) and math.isnan(pct))
    return _is_real(pct) and pct == 100.0 * count / total


def _sha_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def task_key(task: SampleTask, sha: str, settings: str) -> str:
    """The cache key of a task: file content, sample identity, gate definitions and settings."""
    ident = json.dumps([task.sample, task.subject, task.timepoint, task.day, task.treg, task.parent,
                        task.plots_dir is not None], default=str)
    return _sha_text(f"{CACHE_FORMAT}\0{__version__}\0{sha}\0{ident}\0{settings}")


# ----------------------------------------------------------------------------------------------------------------
# executors


def _limit_threads() -> None:
    """Worker initializer: die with the parent; one BLAS/OpenMP thread per worker process (the pool is the
    parallelism)."""
    _die_with_parent()
    _limit_worker()


# In a pool worker: len(sys.modules) when its BLAS/OpenMP pools were last limited to one thread (None elsewhere).
_LIMITED_AT: int | None = None


def _limit_worker() -> None:
    """Limit this pool worker's BLAS/OpenMP pools to one thread for good (finding the libraries costs ~1-5 ms, so
    :func:`process_one` does it again only after an import may have loaded another one)."""
    global _LIMITED_AT
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # threadpoolctl ships with scikit-learn, but stay usable without it
        pass
    _LIMITED_AT = len(sys.modules)


def _one_thread() -> Any:
    """A context with one BLAS/OpenMP thread: sums then run in one order, so fits agree to the last digit
    whatever the machine's thread count (in this process, in a pool worker or on a Dask worker)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1)


def process_one(task: SampleTask) -> SampleResult:
    """:func:`cytopipe.pipeline.process_sample` with one BLAS thread (what every executor runs)."""
    if _LIMITED_AT is not None:  # a pool worker, limited for good by its initializer
        if len(sys.modules) != _LIMITED_AT:  # a library loaded since (scipy's BLAS in the first fit) is limited too
            _limit_worker()
        return process_sample(task)
    with _one_thread():
        return process_sample(task)


def _die_with_parent() -> None:
    """Make this worker process exit when the process that started the run dies (even by ``kill -9``).

    On Linux the kernel sends SIGKILL to the worker when its parent exits (``PR_SET_PDEATHSIG``; a fork-server
    worker's parent is the fork server, which exits with the run). Elsewhere a daemon thread polls the parent.
    """
    import signal
    import threading

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="cytopipe-parent-watch", daemon=True).start()


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the ``.<name>.<pid>.<hex>.tmp`` files (:func:`cytopipe.outputs.atomic_open`) that a killed run left
    in ``out`` and ``out/plots``; a file whose writer process is still alive is left alone."""
    for folder in (out, out / "plots"):
        for tmp in folder.glob(".*.tmp"):
            parts = tmp.name.rsplit(".", 3)
            if len(parts) == 4 and parts[1].isdecimal() and _alive(int(parts[1])):
                continue
            try:
                tmp.unlink()
            except OSError:
                continue


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _run_in_process(tasks: list[SampleTask]) -> Iterator[SampleResult]:
    for task in tasks:
        yield process_one(task)


def _pool_context(drawing: bool) -> Any:
    """The multiprocessing context for worker pools (``None``: use no pool, run in this process).

    On Linux, when this process runs no other Python thread, the workers are forked from it: they start in
    milliseconds with the pipeline modules already imported (here, once) and re-import nothing, and a script
    without the ``__main__`` guard works. Forking while another thread runs could copy a lock that thread holds
    into the children, so otherwise (and on other systems) a fork server with the pipeline modules preloaded is
    started, early, so that its imports overlap this process's set-up; a program read from stdin cannot be
    re-imported by such workers, so it runs in process.
    """
    import multiprocessing
    import threading

    modules = [m for m in _WORKER_MODULES if drawing or m != "cytopipe.plots"]
    methods = multiprocessing.get_all_start_methods()
    if sys.platform == "linux" and "fork" in methods and threading.active_count() == 1:
        for name in modules:
            importlib.import_module(name)
        return multiprocessing.get_context("fork")
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        return None  # the program came from stdin: spawned workers could not re-import it and would die at start
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(modules)
    forkserver.ensure_running()
    return context


def _run_pool(tasks: list[SampleTask], workers: int) -> Iterator[SampleResult]:
    """Process tasks in a pool of ``workers`` processes; yields results as they finish.

    A worker that dies (e.g. killed for memory) breaks the pool; the unfinished tasks are retried once in a fresh
    pool and those lost again become failures, so one pathological file cannot sink the batch.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = _pool_context(any(task.plots_dir is not None for task in tasks))
    if context is None:
        yield from _run_in_process(tasks)
        return
    pending = list(tasks)
    for attempt in range(2):
        lost: list[SampleTask] = []
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context,
                                   initializer=_limit_threads)
        try:
            futures = {pool.submit(process_one, task): task for task in pending}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except BrokenProcessPool:
                    lost.append(futures[future])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if not lost:
            return
        if len(lost) == len(tasks):
            # Nothing ever finished: the workers cannot start, which is almost always a script re-run by them.
            raise ConfigError("worker processes died before finishing any sample; a Python script that calls "
                              "cytopipe.run with workers > 1 must do so under `if __name__ == '__main__':` "
                              "(or use workers=1)")
        pending = lost
        if attempt == 1:
            for task in lost:
                yield _lost(task, "the worker process died while processing this sample (killed, out of memory "
                                  "or crashed)")


def _lost(task: SampleTask, reason: str) -> SampleResult:
    return SampleResult(sample=task.sample, file=task.file, subject=task.subject, timepoint=task.timepoint,
                        day=task.day, failure={"sample": task.sample, "file": task.file, "stage": "read",
                                               "reason": reason})


def _run_dask(tasks: list[SampleTask], scheduler: str, timeout: float = 300.0) -> Iterator[SampleResult]:
    """Process tasks on an existing Dask distributed cluster; yields results as they finish.

    Raises
    ------
    ConfigError
        The cluster has had no worker for ``timeout`` seconds while samples remain (the last worker died and
        none joined): the run stops instead of waiting forever; the samples already yielded are cached.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--scheduler needs dask and distributed: pip install cytopipe[dask]") from None
    try:
        client = Client(scheduler, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        first = " ".join(str(err).split())[:200]
        raise ConfigError(f"cannot connect to the Dask scheduler at {scheduler}: {first}") from None
    try:
        futures = client.map(process_one, tasks, pure=False)
        owner = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        waiting = list(futures)
        alone_since: float | None = None  # when the cluster was last seen without a worker
        while waiting:
            progressed = False
            for future in [f for f in waiting if f.done()]:
                try:
                    # A result lives on the worker that computed it: if that worker died, the scheduler computes
                    # it again once a worker joins. Never block on it here.
                    result = future.result(timeout=2)
                except TimeoutError:
                    continue
                except Exception as err:  # noqa: BLE001 - a failed task fails its sample, not the batch
                    result = _lost(owner[future.key], f"Dask task failed: {type(err).__name__}: "
                                                      f"{' '.join(str(err).split())}")
                waiting.remove(future)
                future.release()
                progressed = True
                yield result
            if progressed:
                alone_since = None
                continue
            time.sleep(0.2)
            if client.scheduler_info().get("workers"):
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > timeout:
                raise ConfigError(f"the Dask cluster at {scheduler} has had no worker for {timeout:g} s with "
                                  f"{len(waiting)} sample(s) left; gave up (finished samples are cached: start "
                                  "workers and re-run to resume)")
    finally:
        client.close()


# ----------------------------------------------------------------------------------------------------------------
# gate fitting on the client


def _fit_shared_scopes(strategy: Any, samples: pd.DataFrame, controls: dict[str, tuple[tuple[str, str], ...]],
                       spillover_for: Callable[[Any, str], Any], report: Progress,
                       panels: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[dict], dict[str, str]]:
    """Fit ``subject`` / ``baseline`` scope gates per subject on this machine.

    Parameters
    ----------
    strategy
        The gate file's strategy.
    samples
        The sheet's ``role == "sample"`` rows.
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
    from .autogate import client_scopes, fit_strategy

    scopes = client_scopes(strategy)
    if not scopes:
        return {}, [], {}
    from .adapt import apply_widths, fit_widths, resolve_optional
    from .panel import read_sample

    panels = panels or {}
    fitted: dict[str, Any] = {}
    rows: list[dict] = []
    failed: dict[str, str] = {}
    for subject, group in samples.groupby("subject", sort=True):
        # subject scope pools the subject's samples; baseline scope fits on its baseline sample alone.
        chosen = group if "subject" in scopes else group[group["baseline"]]
        flags = list(chosen["baseline"])
        report.log(f"fitting {'/'.join(sorted(scopes))}-scope gates of subject {subject} on {len(chosen)} sample(s)")
        try:
            if "baseline" in scopes and True not in flags:
                raise GateError(f"subject {subject} has no baseline sample to fit baseline-scope gates on")
            loaded = [read_sample(rec.file, panels.get(rec.file), scale=strategy.scale)
                      for rec in chosen.itertuples(index=False)]
            spills = [spillover_for(sample, rec.spillover)
                      for sample, rec in zip(loaded, chosen.itertuples(index=False), strict=True)]
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


# ----------------------------------------------------------------------------------------------------------------
# tables


def _sort_rows(table: pd.DataFrame, columns: Iterable[str], population_order: list[str] | None = None) -> pd.DataFrame:
    table = table.copy()
    keys = ["subject", "day", "sample"]
    if population_order is not None:
        table["_order"] = table["population"].map({n: i for i, n in enumerate(population_order)})
        keys.append("_order")
    table = table.sort_values(keys, kind="mergesort").reset_index(drop=True)
    return table[list(columns)]


def _per_sample(results: list[SampleResult], attribute: str) -> pd.DataFrame:
    """Concatenate a per-sample list of rows (fitted gates, sensitivity) in subject, day, sample order."""
    ordered = sorted(results, key=lambda r: (r.subject, r.day, r.sample))
    return pd.DataFrame([row for r in ordered for row in getattr(r, attribute)])


def _tables(results: list[SampleResult], strategy: Any, sheet: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The result tables, sorted by subject, day, sample (and population order)."""
    order = [p.name for p in strategy.populations]
    extra = [c for c in sheet.columns if c not in ("sample", "file", "subject", "timepoint", "day", "baseline",
                                                   "role", "spillover", "panel", "pregated")]
    counted = [r for r in results if r.treg is not None]
    pop_rows = [row for r in counted for row in r.populations]
    populations = _sort_rows(pd.DataFrame(pop_rows, columns=list(POPULATION_COLUMNS)), POPULATION_COLUMNS, order)
    treg = pd.DataFrame([r.treg for r in counted], columns=[*TREG_COLUMNS, "acquisition_qc"])
    # The baseline flag and the sheet's extra columns travel with each sample (the report re-renders from them).
    treg = treg.join(sheet.set_index("sample")[["baseline", *extra]], on="sample")
    treg = _sort_rows(treg, [*TREG_COLUMNS, "acquisition_qc", "baseline", *extra])
    failures = pd.DataFrame([r.failure for r in results if r.failure is not None], columns=list(FAILURE_COLUMNS))
    failures = failures.join(sheet.set_index("sample")[["subject", "day"]], on="sample")
    failures = failures.sort_values(["subject", "day", "sample"], kind="mergesort")[list(FAILURE_COLUMNS)]
    return {"populations": populations, "treg": treg, "failures": failures.reset_index(drop=True),
            "fitted": _per_sample(results, "fitted"), "sensitivity": _per_sample(results, "sensitivity")}


def _drift(fitted: pd.DataFrame, sheet: pd.DataFrame) -> pd.DataFrame:
    """``gate_drift.csv``: each per-sample fitted parameter against the subject's baseline sample's fit.

    The sheet's baseline flag names the baseline sample; gates fitted once per subject have no drift. Empty when
    nothing was fitted (fixed gates).
    """
    if fitted.empty:
        return pd.DataFrame()
    from .autogate import gate_drift

    flags = sheet.set_index("sample")["baseline"]
    return gate_drift(fitted.assign(baseline=fitted["sample"].map(flags).eq(True)))


def _reference_qc(tables: dict[str, pd.DataFrame], results: list[SampleResult], sheet: pd.DataFrame,
                  limit: float) -> None:
    """Reference-population drift QC and gating SD (issue 14), in place on ``tables``.

    The reference medians against each subject's baseline join the gate rows of ``gate_drift.csv`` (column
    ``qc`` says which moved more than ``limit`` percent); moved references are named in ``treg.csv``'s
    ``acquisition_qc``; ``treg.csv`` gains ``gate_sd_pp``, the gating SD of each Treg % from ``sensitivity.csv``
    widened by the sample's reference drift (NaN for fixed gates), which ``baseline.csv`` turns into the combined
    interval of the change.
    """
    from .reference import DRIFT_COLUMNS, drift_decades, drift_flags, reference_drift
    from .stats import gate_sd_from_sensitivity

    flags = sheet.set_index("sample")["baseline"]
    rows = [{"sample": r.sample, "subject": r.subject, "timepoint": r.timepoint, "day": r.day,
             "baseline": bool(flags.get(r.sample, False)), "references": r.references}
            for r in results if r.treg is not None]
    references = reference_drift(rows, limit)
    parts = [t for t in (tables["drift"].assign(qc=""), references) if not t.empty]
    if parts:
        drift = pd.concat(parts, ignore_index=True)[list(DRIFT_COLUMNS)]
        tables["drift"] = drift.sort_values(["subject", "day", "sample"], kind="mergesort").reset_index(drop=True)
    treg = tables["treg"]
    moved = drift_flags(references)
    treg["acquisition_qc"] = ["; ".join(x for x in (str(qc or ""), moved.get(str(sample), "")) if x)
                              for qc, sample in zip(treg["acquisition_qc"], treg["sample"], strict=True)]
    gate_sd = gate_sd_from_sensitivity(tables["sensitivity"], drift=drift_decades(references))
    treg.insert(treg.columns.get_loc("acquisition_qc") + 1, "gate_sd_pp",
                treg["sample"].astype(str).map(gate_sd).astype(float))


def _versions() -> dict[str, str]:
    versions = {"cytopipe": __version__, "python": platform.python_version()}
    for name in _DEPENDENCIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


# ----------------------------------------------------------------------------------------------------------------
# the run


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
    from .bundled import find_gate_file
    from .gatefile import load_strategy
    from .samplesheet import read_sample_sheet

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
    table = read_sample_sheet(sheet)
    from .adapt import pregate
    from .panel import read_panel

    panel_file = read_panel(panel) if panel is not None else None  # a malformed --panel is a usage error
    gates = find_gate_file(gates)  # the manifest records the file a strategy's name stands for
    own = wsp_sample == "own"  # FlowJo workspace: every file gated with its own sample's tree
    strategy = pregate(load_strategy(gates, None if own else wsp_sample), pregated, where=str(gates))
    samples = table[table["role"] == "sample"].reset_index(drop=True)
    trees: dict[str, Any] = {}
    if own:
        from .flowjo import own_strategies

        trees = own_strategies(gates, list(samples["file"]))
        # Treg and parent names are resolved on the first file's own tree.
        strategy = next((pregate(t, pregated, where=str(gates)) for t in trees.values() if not isinstance(t, str)),
                        strategy)
    log = Progress(len(samples), _progress_mode(progress, log_json, quiet, stream), stream)
    if clinical is None and (Path(sheet).parent / CLINICAL_NAME).is_file():
        clinical = Path(sheet).parent / CLINICAL_NAME
        log.log(f"clinical data: {clinical} (beside the sample sheet; --clinical FILE to choose another)")
    clinical_table = None
    if clinical is not None:
        from .stats import read_clinical

        clinical_table = read_clinical(clinical)  # a malformed table is a usage error before any work
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
    tasks, settings, client_fitted = _plan(strategy, table, treg_name, parent_name, spill_path, plots_dir, log,
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
    printer = _start_printer() if report and pdf else None  # Chromium starts up while the workers gate
    if todo:
        where = f"on {scheduler}" if scheduler else f"{min(n_workers, len(todo))} worker(s)"
        log.log(f"{len(todo)} sample(s) to process, {len(results)} from the cache; {where}")
    for result in _execute(todo, cache, n_workers, scheduler, scheduler_timeout):
        results.append(result)
        log.sample(result)
    log.finish()

    tables = _tables(results, strategy, table)
    if client_fitted:
        tables["fitted"] = pd.concat([pd.DataFrame(client_fitted), tables["fitted"]], ignore_index=True)
    tables["drift"] = _drift(tables["fitted"], table)
    _reference_qc(tables, results, table, drift_limit)
    tables["baseline"] = _baseline(tables["treg"], clinical=clinical_table, cva=cva, cvi=cvi, z=z)
    if mode == "flagged":
        _draw_flagged(tables["baseline"], tasks, settings, str((out / "plots").resolve()), cache, n_workers,
                      scheduler, log)
    _write_tables(tables, out)
    workspace = _write_workspace(out, results, log)
    settings_record = {"workers": None if scheduler else n_workers, "scheduler": scheduler, "spillover": spill_path,
                       "clinical": str(Path(clinical).resolve()) if clinical else None, "cva": cva, "cvi": cvi,
                       "z": z, "drift_limit": drift_limit, "plots": mode, "treg": treg_name, "parent": parent_name,
                       "panel": panel_file.record() if panel_file is not None else None, "pregated": pregated,
                       "values": {"scale": strategy.scale, "decoding": SCALES[strategy.scale], "precision": "float32"}}
    _write_manifest(out, sheet, gates, strategy, table, results, settings_record, workspace)
    if report:
        from .report import render_report

        render_report(out, clinical=clinical, cva=cva, cvi=cvi, z=z, pdf=pdf, plots=mode != "none", printer=printer)
    if printer is not None:
        printer.close()
        # The report rewrites baseline.csv (same settings, plus columns from populations.csv): return that one.
        tables["baseline"] = pd.read_csv(out / "baseline.csv", keep_default_na=False, na_values=[""])

    computed = [task.sample for task, _ in todo]
    done_here = set(computed)
    cached = [task.sample for task in tasks if task.sample not in done_here]
    failed = set(tables["failures"]["sample"])
    elapsed = time.perf_counter() - started
    log.log(f"{len(samples) - len(failed)}/{len(samples)} samples ok, {len(failed)} failed; {len(computed)} "
            f"processed, {len(samples) - len(computed)} cached; {elapsed:.1f} s; results in {out}")
    return RunResult(populations=tables["populations"], treg=tables["treg"], baseline=tables["baseline"],
                     failures=tables["failures"], fitted=tables["fitted"], sensitivity=tables["sensitivity"],
                     drift=tables["drift"], exit_code=1 if failed else 0, out=out, computed=computed,
                     cached=cached, elapsed=elapsed, n_events=sum(r.n_events for r in results if not r.cached))


def _row_settings(table: pd.DataFrame, strategy: Any, treg: str, parent: str | None, panel: Any,
                  pregated: str | None) -> tuple[dict[str, Any], dict[str, tuple[str, str]], dict[str, Any]]:
    """Per sheet row: the panel to read the file with, a reason the row cannot run, the row's strategy.

    Returns
    -------
    tuple
        ``({file: Panel or None}, {sample: (stage, reason)}, {sample: pregated strategy})``. A row whose own
        ``panel`` is unreadable or whose ``pregated`` population is unknown (or drops the Treg population or its
        denominator) fails alone.
    """
    from .adapt import pregate
    from .errors import CytopipeError
    from .panel import read_panel

    read: dict[str, Any] = {}
    panels: dict[str, Any] = {}
    problems: dict[str, tuple[str, str]] = {}
    strategies: dict[str, Any] = {}
    by_value: dict[str, Any] = {}
    for rec in table.itertuples(index=False):
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


def _start_printer() -> Any:
    """A headless Chromium for the PDF, started now so that its start-up overlaps the gating (None without one)."""
    from .printer import Printer, PrinterError, find_chromium, take_early

    early = take_early()  # started by the CLI while this module was imported
    if early is not None:
        return early
    chromium = find_chromium()
    try:
        return Printer(chromium) if chromium else None
    except PrinterError:
        return None


def _draw_flagged(baseline: pd.DataFrame, tasks: list[SampleTask], settings: list[str], plots_dir: str,
                  cache: ResultCache, n_workers: int, scheduler: str | None, log: Progress) -> None:
    """``--plots flagged``: gate again, drawing the figure, only the samples with a QC flag or a significant change."""
    if baseline is None or not len(baseline):
        return
    flags = baseline["qc_flags"].fillna("").astype(str) != "" if "qc_flags" in baseline else False
    significant = baseline["significant"].astype(bool) if "significant" in baseline else False
    chosen = set(baseline.loc[flags | significant, "sample"].astype(str))
    redo = [(replace(task, plots_dir=plots_dir), setting)
            for task, setting in zip(tasks, settings, strict=True) if task.sample in chosen]
    if redo:
        log.log(f"drawing gating figures of {len(redo)} flagged or significantly changed sample(s)")
        for _ in _execute(redo, cache, n_workers, scheduler):
            pass


def _check_markers(strategy: Any, gates: str | os.PathLike, samples: pd.DataFrame, panel: Any) -> None:
    """Stop before any work when the gates name a marker that no file of the study has (a typo such as CD52 for
    CD25 would otherwise fail every sample, one by one).

    The first readable file is checked; when it lacks a marker, up to :data:`_MARKER_PROBES` files spread over the
    sheet are checked too, and the run stops only when none of them resolves every marker: in a study that mixes
    instruments (a mass cytometer without scatter beside flow cytometers) the files that lack a marker fail alone.
    Files are read with their panel; optional populations may lack their markers; a file with its own panel or
    pre-gating, or an unreadable one, is left to the per-sample checks.
    """
    from .adapt import resolve_optional
    from .errors import MarkerError
    from .gatefile import strategy_marker_problems
    from .panel import read_sample

    rows = [rec for rec in samples.itertuples(index=False) if Path(rec.file).is_file()
            and not (getattr(rec, "panel", "") or getattr(rec, "pregated", ""))]
    spread = sorted({round(i * (len(rows) - 1) / max(_MARKER_PROBES - 1, 1)) for i in range(_MARKER_PROBES)})
    first_problems: tuple[str, list[str]] | None = None
    for index in spread if rows else ():
        rec = rows[index]
        try:
            sample = read_sample(rec.file, panel, scale=strategy.scale)
        except CytopipeError:
            return
        problems = strategy_marker_problems(resolve_optional(strategy, sample)[0], sample, os.fspath(gates))
        del sample  # a mapped file stays open while the events live; the traceback below must not keep them
        if not problems:
            return
        first_problems = first_problems or (rec.file, problems)
    if first_problems:
        file, problems = first_problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        checked = f"; none of {len(spread)} files checked has it" if len(spread) > 1 else ""
        raise MarkerError(f"{problems[0]} in {file}{more}{checked}; nothing was processed")


_MARKER_PROBES = 8  # files read before a missing marker stops the run


def _plan(strategy: Any, table: pd.DataFrame, treg: str, parent: str | None, spill_path: str | None,
          plots_dir: str | None, log: Progress, panel: Any = None, pregated: str | None = None
          ) -> tuple[list[SampleTask], list[str], list[dict]]:
    """One task per sample (after fitting shared-scope gates), its cache settings and the client-fitted rows."""
    from .pipeline import choose_spillover

    def spillover_for(sample: Any, row_spillover: str) -> Any:
        return choose_spillover(sample, strategy, row_spillover or spill_path)

    panels, problems, row_strategy = _row_settings(table, strategy, treg, parent, panel, pregated)
    samples = table[table["role"] == "sample"]
    controls: dict[str, tuple[tuple[str, str], ...]] = {}
    for rec in table[table["role"] != "sample"].itertuples(index=False):
        if rec.sample not in problems:
            controls[rec.subject] = (*controls.get(rec.subject, ()), (rec.role, rec.file))
    # Shared-scope gates are fitted once per subject for each pre-gated strategy its rows use.
    subject_strategies: dict[tuple[int, str], Any] = {}
    client_fitted: list[dict] = []
    subject_failed: dict[tuple[int, str], str] = {}
    runnable = samples[~samples["sample"].isin(problems)]
    groups: dict[int, list[str]] = {}
    for rec in runnable.itertuples(index=False):
        groups.setdefault(id(row_strategy[rec.sample]), []).append(rec.sample)
    for key, names in groups.items():
        own = row_strategy[names[0]]
        fitted, rows, failed = _fit_shared_scopes(own, runnable[runnable["sample"].isin(names)], controls,
                                                  spillover_for, log, panels)
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
    for rec in samples.itertuples(index=False):
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
        settings.append(json.dumps({
            "gates": definition, "fitted": [r for r in client_fitted if r["subject"] == rec.subject],
            "spillover": sha_of(matrix), "controls": [(role, sha_of(path)) for role, path in subject_controls],
            "panels": sorted((Path(path).name, p.sha256) for path, p in used.items()),
            "pregated": own.populations[0].name if own is not strategy else (pregated or ""),
            "scale": strategy.scale,
        }, sort_keys=True, default=str))
    return tasks, settings, client_fitted


def _execute(todo: list[tuple[SampleTask, str]], cache: ResultCache, workers: int, scheduler: str | None,
             scheduler_timeout: float = 300.0) -> Iterator[SampleResult]:
    """Run the tasks in process, in a pool or on Dask; cache each successful result as soon as it arrives."""
    tasks = [task for task, _ in todo]
    setting_of = {task.sample: setting for task, setting in todo}
    task_of = {task.sample: task for task in tasks}
    if not tasks:
        return
    if scheduler is not None:
        results = _run_dask(tasks, scheduler, scheduler_timeout)
    elif workers == 1 or len(tasks) == 1:
        results = _run_in_process(tasks)
    else:
        results = _run_pool(tasks, workers)
    for result in results:
        if result.ok and result.sha256:
            cache.remember_sha(result.file, result.sha256)
            cache.put(task_key(task_of[result.sample], result.sha256, setting_of[result.sample]), result)
        yield result


def _write_tables(tables: dict[str, pd.DataFrame], out: Path) -> None:
    for name in ("populations", "treg", "baseline", "failures"):
        write_csv(tables[name], out / f"{name}.csv")
    # Tables that exist only for data-driven gates: a stale one from an earlier run with other gates would mislead.
    # gate_drift.csv is written whenever gates were fitted (only its header when none was fitted per sample).
    fitted = not tables["fitted"].empty
    for name, key, wanted in (("gates_fitted.csv", "fitted", fitted),
                              ("sensitivity.csv", "sensitivity", not tables["sensitivity"].empty),
                              ("gate_drift.csv", "drift", fitted or not tables["drift"].empty)):
        if wanted:
            write_csv(tables[key], out / name)
        else:
            (out / name).unlink(missing_ok=True)


def _write_workspace(out: Path, results: list[SampleResult], log: Progress) -> dict:
    """``gates_fitted.wsp``: every counted sample with its own gates, for FlowJo (subject, day, sample order).

    Samples whose gates FlowJo cannot hold are left out with one error line; with none left the file is removed
    (a stale one from an earlier run would mislead). Returns the ``manifest.json`` record.
    """
    from .flowjo.write import WORKSPACE_NAME, write_workspace

    ordered = sorted((r for r in results if r.workspace is not None), key=lambda r: (r.subject, r.day, r.sample))
    trees = [r.workspace for r in ordered if "error" not in r.workspace]
    left_out = {r.sample: r.workspace["error"] for r in ordered if "error" in r.workspace}
    if left_out:
        first = next(iter(left_out.items()))
        log.error(f"{WORKSPACE_NAME}: {len(left_out)} sample(s) left out, e.g. {first[0]}: {first[1]}")
    target = out / WORKSPACE_NAME
    if not trees:
        target.unlink(missing_ok=True)
        return {"file": None, "samples": 0, "left_out": left_out}
    subjects: dict[str, list[str]] = {}
    for r in ordered:
        if "error" not in r.workspace:
            subjects.setdefault(f"subject {r.subject}", []).append(r.workspace["name"])
    size = write_workspace(target, trees, groups=subjects)
    return {"file": WORKSPACE_NAME, "samples": len(trees), "bytes": size, "left_out": left_out}


def _write_manifest(out: Path, sheet: str | os.PathLike, gates: str | os.PathLike, strategy: Any,
                    table: pd.DataFrame, results: list[SampleResult], settings: dict,
                    workspace: dict | None = None) -> None:
    """``manifest.json``: versions, inputs with their SHA-256, the sheet and gate texts, settings, command line."""
    controls = table[table["role"] != "sample"]
    manifest = {
        "cytopipe": __version__,
        "versions": _versions(),
        "command": sys.argv,
        "sample_sheet": {"path": str(Path(sheet).resolve()), "sha256": file_sha256(sheet),
                         "text": Path(sheet).read_text(encoding="utf-8-sig")},
        "gates": {"path": str(Path(gates).resolve()), "sha256": file_sha256(gates),
                  "text": getattr(strategy, "source", "") or repr(strategy)},
        "settings": settings,
        "inputs": [{"sample": r.sample, "file": r.file, "sha256": r.sha256, "events": r.n_events,
                    "spillover": r.spillover_source, **_row_panel(table, r.sample, settings)}
                   for r in sorted(results, key=lambda r: r.sample)],
        "controls": [{"sample": rec.sample, "role": rec.role, "file": rec.file,
                      "sha256": file_sha256(rec.file) if Path(rec.file).is_file() else ""}
                     for rec in controls.itertuples(index=False)],
        "failed": sorted({r.sample for r in results if r.failure is not None}),
        "flowjo_workspace": workspace or {},
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")


def _row_panel(table: pd.DataFrame, sample: str, settings: dict) -> dict[str, Any]:
    """The panel file and pre-gated population one sample was read with (sheet row, else the run's options)."""
    rows = table[table["sample"] == sample]
    rec = rows.iloc[0] if len(rows) else None
    own_panel = str(rec["panel"]) if rec is not None and rec.get("panel", "") else ""
    run_panel = (settings.get("panel") or {}).get("path") or ""
    own_pregated = str(rec["pregated"]) if rec is not None and rec.get("pregated", "") else ""
    return {"panel": own_panel or run_panel, "pregated": own_pregated or settings.get("pregated") or ""}


def _baseline(treg: pd.DataFrame, *, clinical: pd.DataFrame | None, cva: float, cvi: float, z: float
              ) -> pd.DataFrame:
    """``baseline.csv`` from the Treg table (Treg:Tcon ratio from the CD4 events outside the Treg gate)."""
    from .stats import baseline_table

    table = treg.assign(tcon_events=treg["cd4_events"] - treg["treg_events"])
    return baseline_table(table, cva=cva, cvi=cvi, z=z, clinical=clinical)

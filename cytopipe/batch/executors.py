"""Where samples run: in this process, a process pool (fork or fork server) or a Dask cluster."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from cytopipe.errors import ConfigError
from cytopipe.pipeline import (
    SampleResult,
    SampleTask,
    process_sample,
)

from .cache import ResultCache, task_key

# What process_sample imports (plots only when drawing; autogate only for data-driven gates): numpy and cytopipe's
# own modules, no pandas or scipy.
# process_sample's own lazy imports (adapt, panel, qc, reference) are preloaded too: each forked worker would
# otherwise import them before its first sample.
_WORKER_MODULES = ("cytopipe.pipeline", "cytopipe.fcs", "cytopipe.compensate", "cytopipe.gates", "cytopipe.stats",
                   "cytopipe.flowjo.write", "cytopipe.plots", "cytopipe.adapt", "cytopipe.panel", "cytopipe.qc",
                   "cytopipe.reference")


def _limit_threads(parent: int | None = None) -> None:
    """Worker initializer: die with the parent (``parent``: its pid, when the pool knows it; see
    :func:`_die_with_parent`); one BLAS/OpenMP thread per worker process (the pool is the parallelism); the garbage
    collector on, for this process's own objects only.

    The objects a forked worker inherits are frozen out of its collections (:func:`gc.freeze` moves them in O(1)):
    collecting over them would write to every one of them, copying the parent's memory pages into the worker, and
    none of them is the worker's garbage. The ``cytopipe`` command runs its client without collections
    (:func:`cytopipe.cli._no_collections`); its workers collect.
    """
    import gc

    gc.freeze()
    gc.enable()
    _die_with_parent(parent)
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
    """:func:`cytopipe.pipeline.process_sample` with one BLAS thread (what every executor runs), in a process that
    keeps freed memory for the next sample (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    if _LIMITED_AT is not None:  # a pool worker, limited for good by its initializer
        if len(sys.modules) != _LIMITED_AT:  # a library loaded since (scipy's BLAS in the first fit) is limited too
            _limit_worker()
        return process_sample(task)
    with _one_thread():
        return process_sample(task)


_FREED_MEMORY_KEPT = False


def keep_freed_memory() -> None:
    """glibc: keep freed blocks below 64 MiB in this process for the next sample instead of handing them back to the
    system, which would fault them in and zero them again for every file (up to ~6,000 page faults, ~10 ms, per
    million events). Done once per process by the executors of a batch (pool and Dask workers, and a run in the
    calling process), not by :func:`cytopipe.pipeline.process_sample` itself: a program calling it directly keeps
    its own allocator settings. A file's event buffer above that size is still mapped and unmapped, so the peak
    memory does not change; no effect without glibc."""
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT:
        return
    _FREED_MEMORY_KEPT = True
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD


def _process_chunk(tasks: list[SampleTask]) -> list[SampleResult]:
    """:func:`process_one` for each task of a chunk (what a pool worker runs; see :func:`_chunks`), each result
    stored in the run's cache as it is made when the worker was forked with the cache (:class:`WorkerStore`)."""
    results = []
    for task in tasks:
        result = process_one(task)
        if _STORE is not None:
            _STORE.put(task, result)
        results.append(result)
    return results


class WorkerStore:
    """A pool run's result cache as its forked workers inherit it: each worker appends the entry of every sample it
    finishes to the cache's log itself (encoding, checksum and ``write``), instead of the process that started the
    run doing it for every sample as the results arrive (~0.15 ms each, while the workers gate on every core).

    Parameters
    ----------
    cache : cytopipe.batch.cache.ResultCache
        The run's cache (its log is opened before the workers are forked: :meth:`ResultCache.share`).
    settings : dict
        Sample -> its cache settings (:func:`cytopipe.batch.cache.task_key`).

    Attributes
    ----------
    in_workers : bool
        Whether the workers store the results (set by :func:`_run_pool` when it forks them); otherwise the caller
        stores each result with :meth:`put`.
    """

    def __init__(self, cache: ResultCache, settings: dict[str, str]) -> None:
        self.cache, self.settings = cache, settings
        self.in_workers = False

    def put(self, task: SampleTask, result: SampleResult) -> None:
        """Store a successful result (in a worker: appended only, not kept in its memory)."""
        if result.ok and result.sha256:
            self.cache.put(task_key(task, result.sha256, self.settings[task.sample]), result,
                           remember=not self.in_workers)


#: In a pool worker forked with the run's cache: where it stores its results (see :class:`WorkerStore`).
_STORE: WorkerStore | None = None


#: File bytes of one chunk of pool tasks: ~50 ms of a worker's time on 20k-event files, against ~0.2 ms of the
#: client's per task sent (future, queues, wake-ups), so small files go to the workers a few at a time.
CHUNK_BYTES = 8 * 2**20
#: Most tasks in one chunk (files of a few kB).
CHUNK_TASKS = 8


def _file_sizes(tasks: list[SampleTask]) -> list[int]:
    """Bytes of each task's file (0 for a task that fails before a worker reads it, or a file that is missing: it
    fails at once in the worker): one stat per file, for :func:`_prepare_workers` and :func:`_chunks`."""
    sizes = []
    for task in tasks:
        try:
            sizes.append(os.path.getsize(task.file) if task.failure is None else 0)
        except OSError:
            sizes.append(0)
    return sizes


def _chunks(tasks: list[SampleTask], sizes: list[int], workers: int) -> Iterator[list[SampleTask]]:
    """Consecutive tasks grouped for the pool, by the ``sizes`` of their files (:func:`_file_sizes`).

    A chunk holds tasks up to :data:`CHUNK_BYTES` of files and :data:`CHUNK_TASKS` tasks, and at most a
    ``1 / (4 * workers)`` share of the bytes still to send, so chunks shrink to single files towards the end and the
    workers finish together (guided scheduling). A large file (a 1M-event file is ~50 MB) is a chunk of its own.
    """
    left = sum(sizes)
    chunk: list[SampleTask] = []
    held = 0
    for task, size in zip(tasks, sizes, strict=True):
        if chunk and (held + size > min(CHUNK_BYTES, left / (4 * workers)) or len(chunk) == CHUNK_TASKS):
            yield chunk
            left -= held
            chunk, held = [], 0
        chunk.append(task)
        held += size
    if chunk:
        yield chunk


def _die_with_parent(parent: int | None = None) -> None:
    """Make this worker process exit when the process that started the run dies (even by ``kill -9``).

    On Linux the kernel sends SIGKILL to the worker when its parent exits (``PR_SET_PDEATHSIG``; a fork-server
    worker's parent is the fork server, which exits with the run). Elsewhere a daemon thread polls the parent.
    ``parent``: the parent's pid as the pool that started this worker knew it; a worker that starts after its
    parent died (a run killed while its pool starts) would otherwise take its new parent (init) for it and live
    on. Default: this process's parent now.
    """
    import signal
    import threading

    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:  # the parent died before this worker started
        os._exit(1)
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


def _run_in_process(tasks: list[SampleTask]) -> Iterator[SampleResult]:
    """:func:`process_one` for each task in this process, limiting the BLAS/OpenMP pools once for the whole run
    (finding the libraries costs ~1.5 ms) and again only after an import may have loaded another one."""
    from contextlib import ExitStack

    keep_freed_memory()
    with ExitStack() as limits:
        limited_at = None
        for task in tasks:
            if len(sys.modules) != limited_at:
                limits.enter_context(_one_thread())
                limited_at = len(sys.modules)
            yield process_sample(task)


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
        try:  # what each worker's initializer imports (_limit_worker)
            import threadpoolctl  # noqa: F401
        except ImportError:
            pass
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


#: File bytes per worker from which each worker would build the strategy's transform tables itself (about 2**18
#: values transformed: a few 20,000-event files).
_PREPARE_BYTES = 8 << 20


def _prepare_workers(tasks: list[SampleTask], sizes: list[int], workers: int) -> None:
    """Build once, before the workers are forked, what each would otherwise build for itself (the strategy's
    transform tables: ~40 ms per worker, and its polygon grids), when the batch is large enough (``sizes``: its
    files' bytes) for every worker to build them anyway."""
    from cytopipe.evaluate import prepare

    if sum(sizes) < _PREPARE_BYTES * min(workers, len(tasks)):
        return
    strategies = {id(task.strategy): task.strategy for task in tasks[:64]}
    for strategy in list(strategies.values())[:4]:  # per-subject fits: the first few only
        prepare(strategy)


def _run_pool(tasks: list[SampleTask], workers: int, idle: Callable[[], None] | None = None,
              store: WorkerStore | None = None) -> Iterator[SampleResult]:
    """Process tasks in a pool of ``workers`` processes, in chunks of small files (:func:`_chunks`); yields results
    as their chunks finish (``idle`` is called once the tasks are submitted, while this process would only wait).
    Workers forked from this process store their results in ``store`` themselves (``store.in_workers`` is then
    set before the first result is yielded).

    A worker that dies (e.g. killed for memory) breaks the pool; the unfinished tasks are retried once in a fresh
    pool and those lost again become failures, so one pathological file cannot sink the batch.
    """
    context = _pool_context(any(task.plots_dir is not None for task in tasks))
    if context is None:
        yield from _run_in_process(tasks)
        return
    global _STORE
    sizes = _file_sizes(tasks)
    if context.get_start_method() == "fork":
        _prepare_workers(tasks, sizes, workers)
        if store is not None:
            store.cache.share()
            store.in_workers = True
            _STORE = store  # inherited by the workers forked below
    try:
        yield from _pool_attempts(tasks, sizes, workers, context, idle)
    finally:
        _STORE = None


def _pool_attempts(tasks: list[SampleTask], sizes: list[int], workers: int, context: Any,
                   idle: Callable[[], None] | None) -> Iterator[SampleResult]:
    """The pools of :func:`_run_pool`: the tasks in chunks, then those lost with a dead worker once more, alone."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    pending = list(tasks)
    for attempt in range(2):
        lost: list[SampleTask] = []
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context,
                                   initializer=_limit_threads,
                                   initargs=(os.getpid() if context.get_start_method() != "forkserver" else None,))
        try:
            # A retry sends one task at a time: a file that kills its worker again fails alone.
            chunks = _chunks(pending, sizes, workers) if attempt == 0 else ([task] for task in pending)
            futures = {pool.submit(_process_chunk, chunk): chunk for chunk in chunks}
            if idle is not None:
                idle()
                idle = None
            for future in as_completed(futures):
                try:
                    yield from future.result()
                except BrokenProcessPool:
                    lost.extend(futures[future])
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


def _run_dask(tasks: list[SampleTask], scheduler: str, timeout: float = 300.0,
              idle: Callable[[], None] | None = None) -> Iterator[SampleResult]:
    """Process tasks on an existing Dask distributed cluster; yields results as they finish (``idle`` is called
    once they are submitted).

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
        if idle is not None:
            idle()
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

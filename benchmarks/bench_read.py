"""Benchmark: read a 1,000,000-event x 16-channel float32 FCS file with cytopipe, FlowIO and numpy.fromfile.

Usage::

    python benchmarks/bench_read.py [--events 1000000] [--repeat 9]

Writes ``benchmarks/_data/bench_1000000x16.fcs`` with :func:`cytopipe.fcs.write_fcs` if absent, then in one run
reports, best of ``--repeat`` runs each, the readers taking turns (warm page cache):

* ``cytopipe.read_fcs`` (the default: this file is above ``MAP_THRESHOLD``, so it is memory-mapped) and
  ``cytopipe (no map)``, the path taken by files below the threshold (one ``readinto``);
* ``open``: the call that returns the events array;
* ``open+pass``: that call plus one full pass over the values (``sum``), which is what any analysis does first
  and which makes a lazy memory map pay for its page faults;
* events/s, the ratio to ``numpy.fromfile`` of the same DATA bytes, and peak memory as a multiple of the data
  size: tracemalloc peak (heap allocations) and resident-set growth (``VmHWM``, includes mapped file pages).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cytopipe.fcs.read as fcs_read
from cytopipe.fcs import read_fcs, write_fcs

HERE = Path(__file__).resolve().parent
CHANNELS = 16


def _ensure_file(n_events: int) -> Path:
    path = HERE / "_data" / f"bench_{n_events}x{CHANNELS}.fcs"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        events = rng.lognormal(6, 1.5, size=(n_events, CHANNELS)).astype(np.float32)
        write_fcs(path, events, [f"FL{i}-A" for i in range(1, CHANNELS + 1)], metadata={"$CYT": "benchmark"})
    return path


def _read_without_map(path: Path) -> np.ndarray:
    """cytopipe's path for segments below ``MAP_THRESHOLD``: one ``readinto`` into the array's own buffer."""
    saved = fcs_read.MAP_THRESHOLD
    fcs_read.MAP_THRESHOLD = 1 << 62
    try:
        return read_fcs(path).events
    finally:
        fcs_read.MAP_THRESHOLD = saved


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _once(fn: Callable[[], np.ndarray], touch: bool) -> float:
    gc.collect()
    start = time.perf_counter()
    events = fn()
    if touch:
        float(events.sum(dtype=np.float64))
    seconds = time.perf_counter() - start
    del events
    return seconds


def _best_times(readers: dict[str, Callable[[], np.ndarray]], touch: bool, repeat: int) -> dict[str, float]:
    """Best time per reader, the readers taking turns so that a busy machine slows them alike."""
    best = dict.fromkeys(readers, float("inf"))
    for round_ in range(repeat):
        for name, fn in readers.items():
            if name.startswith("flowio") and round_ >= 2:
                continue  # slow and only there for comparison
            best[name] = min(best[name], _once(fn, touch))
    return best


def _memory(fn: Callable[[], np.ndarray], touch: bool) -> tuple[int, int | None]:
    gc.collect()
    can_reset = _peak_rss_reset()
    rss_before = _rss_kib("VmRSS")
    tracemalloc.start()
    events = fn()
    if touch:
        float(events.sum(dtype=np.float64))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = (_rss_kib("VmHWM") - rss_before) * 1024 if can_reset else None
    del events
    return peak, rss_growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    path = _ensure_file(args.events)
    sample = read_fcs(path)
    begin, n_values = int(sample.metadata["$BEGINDATA"]), sample.events.size
    data_bytes = sample.events.nbytes
    del sample

    import flowio  # optional: the comparison needs it, cytopipe does not

    readers: dict[str, Callable[[], np.ndarray]] = {
        "numpy.fromfile": lambda: np.fromfile(path, dtype="<f4", count=n_values, offset=begin).reshape(-1, CHANNELS),
        "cytopipe.read_fcs": lambda: read_fcs(path).events,
        "cytopipe (no map)": lambda: _read_without_map(path),
        "flowio.FlowData": lambda: flowio.FlowData(str(path)).as_array(preprocess=False),
    }
    print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB, {args.events:,} events x {CHANNELS} float32)")
    print(f"data size: {data_bytes / 1e6:.1f} MB; best of {args.repeat} (FlowIO: 2), warm page cache\n")
    header = (
        f"{'reader':<20} {'mode':<10} {'seconds':>9} {'events/s':>14} {'vs fromfile':>12} "
        f"{'heap peak':>10} {'RSS peak':>9}"
    )
    print(header)
    print("-" * len(header))
    for touch in (False, True):
        mode = "open+pass" if touch else "open"
        best = _best_times(readers, touch, args.repeat)
        baseline = best["numpy.fromfile"]
        for name, fn in readers.items():
            seconds = best[name]
            heap, rss = _memory(fn, touch)
            rss_text = f"{rss / data_bytes:.2f}x" if rss is not None else "n/a"
            print(
                f"{name:<20} {mode:<10} {seconds:>9.4f} {args.events / seconds:>14,.0f} "
                f"{seconds / baseline:>11.2f}x {heap / data_bytes:>9.2f}x {rss_text:>9}"
            )
        print()
    print("ratios: seconds / numpy.fromfile seconds (lower is faster); memory as a multiple of the data size.")
    print("RSS peak counts file pages mapped by cytopipe's copy-on-write view; they are page cache, not heap.")


if __name__ == "__main__":
    main()

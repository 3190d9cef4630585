"""The default command against FlowKit: ``cytopipe run`` as a user runs it (figures, report and PDF on) next to
FlowKit's 2-process pool, on the same files and the same fixed Treg gates.

Full mode (the measurement of issue 12; about 15-25 minutes on 2 cores, most of it FlowKit)::

    python benchmarks/bench.py                 # 6 x 1M, 100 x 50k, 500 x 20k events; 3 interleaved rounds
    python benchmarks/bench.py --quick         # 2 x 1M, 20 x 50k, 60 x 20k; 3 rounds; a few minutes
    python benchmarks/bench.py --memory        # also: peak RSS of the worker on one 10M-event file

1. Simulates each study with :mod:`cytopipe.simulate` (cached under ``benchmarks/_data/``, never in git).
2. Fits the data-driven gates of ``--gates`` on the first file and exports them to Gating-ML 2.0; cytopipe and
   FlowKit both read that file, so both gate with the same fixed gates.
3. Per round, in a fresh process each (timed from outside, from process start to exit, Python start-up and imports
   included, as a user waits for them), in interleaved order:

   * ``FlowKit``: ``Sample`` + ``gate_sample`` per file in a 2-process ``multiprocessing`` pool (its best setup);
   * ``default``: ``python -m cytopipe run SHEET --gates XML --out DIR`` with nothing turned off (2 cores:
     2 workers; gating figures, report.html and report.pdf);
   * ``no-plots``: the same with ``--no-plots`` (report and PDF still on);
   * ``tables``: ``--no-plots --no-report`` (gating and tables only), to price the figures and the report.

   Each cytopipe run writes into a new, empty results folder (no cache), as a user's first run of a study does;
   the benchmark removes its output folders before its first run and after its last, never between runs.
   Deleting a run's ~600 files just before the next run (``--delete-before``, how this benchmark ran until
   2026-12-05) made the default run on 500 x 20k 0.2-0.35 s slower on this project's machine: its ext4 has no
   journal, and without one the kernel skips recently deleted inodes when it allocates a new file's inode
   (``recently_deleted`` in ``find_inode_bit``), so creating a file cost ~0.03 ms after no deletion and 0.2-0.6 ms
   after a few hundred; FlowKit writes no files. cytopipe's modules are compiled to bytecode first
   (``compileall``), as a pip install does; FlowKit's already are.
4. Prints per configuration the median, min and max seconds over the rounds; ratios FlowKit / cytopipe as the
   ratio of medians with the spread (min-max over rounds of the per-round ratios); and the share of the default
   run's wall time spent on figures + report + PDF: ``(default - tables) / default`` (medians).
5. Asserts that every configuration counts exactly FlowKit's Treg and parent events in every file.

Not a timed test: the figures depend on the machine and its load; interleaving spreads a shared machine's load
over every configuration alike.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FULL = ((6, 1_000_000), (100, 50_000), (500, 20_000))
QUICK = ((2, 1_000_000), (20, 50_000), (60, 20_000))
CONFIGS = ("flowkit", "default", "no-plots", "tables")
FLAGS = {"default": [], "no-plots": ["--no-plots"], "tables": ["--no-plots", "--no-report"]}


# ---------------------------------------------------------------------------------------------------- data


def make_data(n_files: int, n_events: int) -> Path:
    """Simulated study files + sheet under ``_data/``; reused when already there."""
    from cytopipe import simulate

    folder = HERE / "_data" / f"f{n_files}_e{n_events}"
    sheet = folder / "study.csv"
    if sheet.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # Generated data (about 44 MB per million events) never belongs in git.
    (HERE / "_data" / ".gitignore").write_text("*\n")
    rows = []
    k = 0
    while len(rows) < n_files:
        for spec, rng in simulate.study_specs(seed=simulate.STUDY_SEED + k, n_events=n_events):
            if len(rows) == n_files:
                break
            name = f"r{k}_{spec.file}"
            print(f"simulating {name} ({n_events:,} events)", file=sys.stderr)
            simulate.write_sample(folder / name, simulate.simulate_sample(spec, rng), spec.style)
            rows.append({"file": name, "subject": f"{spec.subject}-r{k}", "timepoint": spec.timepoint,
                         "day": spec.day})
        k += 1
    pd.DataFrame(rows).to_csv(folder / ".study.csv", index=False)
    os.replace(folder / ".study.csv", sheet)
    return folder


def fixed_gates(gates: Path, first_file: Path, folder: Path) -> Path:
    """Gating-ML export of the gates, data-driven ones fitted on the first file."""
    from cytopipe import autogate
    from cytopipe.fcs import read_fcs
    from cytopipe.gatefile import load_strategy, resolve_channels
    from cytopipe.gatingml import write_gatingml
    from cytopipe.pipeline import choose_spillover

    strategy = load_strategy(gates)
    sample = read_fcs(first_file)
    if autogate.needs_fitting(strategy):
        strategy, _ = autogate.fit_strategy(strategy, [sample], spillover=choose_spillover(sample, strategy))
    # FlowKit finds dimensions (and the spillover's detectors) by $PnN only: name channels as the files do.
    out = folder / "gates.xml"
    write_gatingml(resolve_channels(strategy, sample), out)
    return out


# ---------------------------------------------------------------------------------------------------- runs


def gatingml_ids(xml: Path) -> dict[str, str]:
    """cytopipe population name -> Gating-ML gate id (``CD4+`` is written as ``CD4_pos``; FlowKit uses the id)."""
    import xml.etree.ElementTree as ET

    ids = {}
    for element in ET.parse(xml).getroot():
        gate_id = next((v for k, v in element.attrib.items() if k.endswith("}id")), None)
        named = next((e.get("population") for e in element.iter() if e.tag.endswith("cytopipe")), None)
        if gate_id is not None:
            ids[named or gate_id] = gate_id
    return ids


def flowkit_counts(args: tuple[str, str, str, str]) -> tuple[str, int, int]:
    """FlowKit: Treg and parent counts of one file (module level so a process pool can pickle it)."""
    import flowkit as fk

    path, xml, treg, parent = args
    strategy = fk.parse_gating_xml(xml)
    results = strategy.gate_sample(fk.Sample(path))
    return Path(path).name, int(results.get_gate_count(treg)), int(results.get_gate_count(parent))


class PeakMemory:
    """Peak RSS (VmHWM) of a process and of every process descending from it, sampled from ``/proc`` every 20 ms.

    Runs in the benchmark's own process, not in the measured one (a sampling thread there would take CPU from the
    run, and would stop cytopipe from forking its workers). Pool workers of a fork server are grandchildren of the
    measured process, so ``RUSAGE_CHILDREN`` would miss them; VmHWM is a high-water mark, so sampling while they
    live is enough. A forked worker's RSS includes the pages it shares with its parent.
    """

    def __init__(self, root: int) -> None:
        import threading

        self.root = root
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """Record the current VmHWM of the root and its descendants (found through ``/proc/PID/task/*/children``:
        a few reads, where scanning all of ``/proc`` every 20 ms would take CPU from the measured run)."""
        todo = [self.root]
        while todo:
            pid = todo.pop()
            proc = Path("/proc") / str(pid)
            try:
                status = (proc / "status").read_text()
                for task in (proc / "task").iterdir():
                    todo.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:  # exited meanwhile
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), int(line.split()[1]) / 1024)
                    break

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    @property
    def main(self) -> float:
        return self.peaks.get(self.root, 0.0)

    @property
    def largest_worker(self) -> float:
        return max((v for pid, v in self.peaks.items() if pid != self.root), default=0.0)


def flowkit_child(folder: Path, xml: Path, treg: str, parent: str, workers: int) -> None:
    """The FlowKit configuration, in its own process: prints ``{file: [treg, parent]}`` as JSON."""
    import flowkit  # noqa: F401 - imported before the pool forks, so the workers inherit it

    sheet = pd.read_csv(folder / "study.csv")
    ids = gatingml_ids(xml)
    tasks = [(str(folder / f), str(xml), ids[treg], ids[parent]) for f in sheet["file"]]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        rows = pool.map(flowkit_counts, tasks, chunksize=1)
    print(json.dumps({name: [t, c] for name, t, c in rows}))


def run_config(kind: str, folder: Path, xml: Path, treg: str, parent: str, workers: int = 2, index: int = 0,
               delete_before: bool = False) -> dict:
    """One configuration in a fresh process: wall seconds (outside view), peak RSS, Treg/parent counts per file.

    cytopipe writes into a new folder, ``_runs/<kind>_<index>`` (removed when the benchmark ends, not before the next
    run), or with ``delete_before`` into ``_out_<kind>``, deleted just before the run (see the module's notes)."""
    if kind == "flowkit":
        command = [sys.executable, str(Path(__file__).resolve()), "--flowkit-child", "--folder", str(folder),
                   "--xml", str(xml), "--treg", treg, "--parent", parent, "--workers", str(workers)]
        out = None
    else:
        out = folder / f"_out_{kind}" if delete_before else folder / RUNS / f"{kind}_{index}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "cytopipe", "run", str(folder / "study.csv"), "--gates", str(xml),
                   "--out", str(out), "--treg", treg, "--parent", parent, "--workers", str(workers), "--quiet",
                   *FLAGS[kind]]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakMemory(proc.pid) as memory:
        stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed ({proc.returncode}):\n{stderr[-3000:]}")
    if out is None:
        counts = json.loads(stdout.strip().splitlines()[-1])
    else:
        sheet = pd.read_csv(folder / "study.csv")
        names = {Path(f).stem: Path(f).name for f in sheet["file"]}
        table = pd.read_csv(out / "treg.csv")
        counts = {names[s]: [int(t), int(c)] for s, t, c in
                  table[["sample", "treg_events", "cd4_events"]].itertuples(index=False)}
        if kind == "default":
            assert (out / "report.html").is_file(), "the default run wrote no report"
            assert len(list((out / "plots").glob("gating_*.svg"))) == len(sheet), "a gating figure is missing"
    return {"seconds": seconds, "counts": counts, "peak_worker": memory.largest_worker,
            "peak_main": memory.main,
            "report_kb": (out / "report.html").stat().st_size / 1024 if out and (out / "report.html").is_file()
            else 0.0,
            "pdf": bool(out and (out / "report.pdf").is_file())}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]"


def study(n_files: int, n_events: int, gates: Path, rounds: int, delete_before: bool = False) -> dict:
    """Measure one study; print its table; return the medians."""
    import flowkit

    from cytopipe.gatefile import load_strategy
    from cytopipe.pipeline import resolve_treg

    folder = make_data(n_files, n_events)
    sheet = pd.read_csv(folder / "study.csv")
    xml = fixed_gates(gates, folder / sheet["file"].iloc[0], folder)
    treg, parent = resolve_treg(load_strategy(xml))
    print(f"\n== {n_files} files x {n_events:,} events (FlowKit {flowkit.__version__}; Treg = {treg!r} of "
          f"{parent!r}); {rounds} interleaved rounds", flush=True)
    trials: dict[str, list[dict]] = {kind: [] for kind in CONFIGS}
    for index in range(rounds):
        # Rotate the order each round: no configuration always runs first (cold disk cache) or last.
        order = CONFIGS[index % len(CONFIGS):] + CONFIGS[:index % len(CONFIGS)]
        for kind in order:
            trials[kind].append(run_config(kind, folder, xml, treg, parent, index=index,
                                           delete_before=delete_before))
        print(f"   round {index + 1}: " + ", ".join(f"{k} {trials[k][-1]['seconds']:.2f} s" for k in CONFIGS),
              flush=True)
    reference = trials["flowkit"][0]["counts"]
    for kind, done in trials.items():
        for res in done:
            assert res["counts"] == reference, f"{kind}: Treg/parent counts differ from FlowKit's"
    median = {kind: statistics.median(r["seconds"] for r in done) for kind, done in trials.items()}
    print(f"   {'configuration':12s} {'seconds: median [min-max]':>28s} {'files/s':>8s} {'x FlowKit (spread)':>22s}"
          f" {'peak RSS worker':>16s}")
    for kind in CONFIGS:
        seconds = [r["seconds"] for r in trials[kind]]
        per_round = [f["seconds"] / r["seconds"] for f, r in zip(trials["flowkit"], trials[kind], strict=True)]
        ratio = median["flowkit"] / median[kind]
        spread = f"{ratio:5.1f}x ({min(per_round):.1f}-{max(per_round):.1f})"
        peak = max(r["peak_worker"] for r in trials[kind])
        print(f"   {kind:12s} {_spread(seconds):>28s} {n_files / median[kind]:8.1f} {spread:>22s} "
              f"{peak:11.0f} MiB")
    share = (median["default"] - median["tables"]) / median["default"]
    shares = [(d["seconds"] - t["seconds"]) / d["seconds"] for d, t in zip(trials["default"], trials["tables"],
                                                                              strict=True)]
    report_kb = trials["default"][0]["report_kb"]
    print(f"   figures + report + PDF: {100 * share:.1f}% of the default run's wall time (per round "
          f"{', '.join(f'{100 * s:.0f}%' for s in shares)}); report.html {report_kb:,.0f} KB = "
          f"{report_kb / n_files:.1f} KB/sample; PDF written: {trials['default'][0]['pdf']}")
    print(f"   Treg counts identical to FlowKit's in all {len(reference)} files for every configuration "
          f"({sum(v[0] for v in reference.values()):,} Treg of {sum(v[1] for v in reference.values()):,} {parent})")
    return {"study": f"{n_files} x {n_events:,}", "median": median, "share": share}


_WORKER_MEMORY = """
import inspect, json, sys
from cytopipe.gatefile import load_strategy
from cytopipe.pipeline import SampleTask, process_sample, resolve_treg

def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024

xml, fcs, plots = sys.argv[1:4]
strategy = load_strategy(xml)
treg, parent = resolve_treg(strategy)
before = hwm()
fields = inspect.signature(SampleTask).parameters
kw = dict(sample="big", file=fcs, subject="s", timepoint="t", day=0.0, strategy=strategy, treg=treg, parent=parent,
          plots_dir=plots)
result = process_sample(SampleTask(**{k: v for k, v in kw.items() if k in fields}))
assert result.ok, result.failure
print(json.dumps({"before": before, "peak": hwm()}))
"""


def memory_check(gates: Path, n_events: int = 10_000_000) -> None:
    """Peak RSS of a worker's job (read, QC, gate, count, gating figure) on one 10M-event file.

    Runs :func:`cytopipe.pipeline.process_sample` -- exactly what a pool worker runs per file -- in a fresh process
    and reads its high-water mark (VmHWM, which counts the file's mapped pages too); the increase over the process
    after its imports is the job's own memory.
    """
    folder = make_data(1, n_events)
    sheet = pd.read_csv(folder / "study.csv")
    fcs = folder / sheet["file"].iloc[0]
    xml = fixed_gates(gates, fcs, folder)
    from cytopipe.fcs import read_fcs

    sample = read_fcs(fcs)
    event_mib = sample.events.nbytes / 2**20
    del sample
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", _WORKER_MEMORY, str(xml), str(fcs), str(folder / "_plots")],
                          capture_output=True, text=True, env=env, check=True)
    res = json.loads(done.stdout.strip().splitlines()[-1])
    job = res["peak"] - res["before"]
    print(f"\n== memory: one file of {n_events:,} events ({event_mib:.0f} MiB of event data): a worker's peak RSS "
          f"{res['peak']:.0f} MiB ({res['before']:.0f} MiB after imports), the job's own {job:.0f} MiB = "
          f"{job / event_mib:.2f}x the event data (target <= 1.5x)")


#: Per study folder, the output folders of the timed cytopipe runs (one per run; see run_config).
RUNS = "_runs"


def _remove_runs() -> None:
    """Remove the benchmark's output folders (``_runs`` and ``_out_*``) of every study folder."""
    for folder in (HERE / "_data").glob("f*_e*"):
        for out in [folder / RUNS, *folder.glob("_out_*")]:
            shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller studies (2 x 1M, 20 x 50k, 60 x 20k)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians; default 3)")
    parser.add_argument("--studies", help="comma-separated FILESxEVENTS, e.g. 6x1000000,100x50000")
    parser.add_argument("--memory", action="store_true", help="also the worker's peak RSS on a 10M-event file")
    parser.add_argument("--gates", type=Path, default=REPO / "gates" / "treg_fixed.yaml")
    parser.add_argument("--delete-before", action="store_true",
                        help="each cytopipe run into one folder per configuration, deleted just before the run")
    parser.add_argument("--flowkit-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--xml", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--treg", help=argparse.SUPPRESS)
    parser.add_argument("--parent", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flowkit_child:
        flowkit_child(args.folder, args.xml, args.treg, args.parent, args.workers)
        return 0
    import compileall

    import cytopipe

    # A pip-installed cytopipe runs from compiled bytecode (pip compiles on install), as FlowKit and every other
    # site-packages library here does. A repository checkout may not have it (PYTHONDONTWRITEBYTECODE, a fresh
    # clone): compile once, so no run pays for compiling ~70 modules from source.
    compileall.compile_dir(Path(cytopipe.__file__).parent, quiet=1)

    studies = QUICK if args.quick else FULL
    if args.studies:
        studies = tuple(tuple(int(v) for v in item.split("x")) for item in args.studies.split(","))
    print(f"cytopipe {cytopipe.__version__}; numpy {np.__version__}; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} at start; gates {args.gates.name} (fitted on each study's first "
          "file, then fixed)")
    _remove_runs()  # an earlier benchmark's output folders: removed before any run is timed
    try:
        summary = [study(n, e, args.gates, args.rounds, args.delete_before) for n, e in studies]
    finally:
        _remove_runs()
    print("\nsummary (ratio of medians, FlowKit 2-process pool / cytopipe):")
    print(f"   {'study':>16s} {'default':>8s} {'no-plots':>9s} {'tables':>7s} {'figures+report share':>21s}")
    for row in summary:
        m = row["median"]
        print(f"   {row['study']:>16s} {m['flowkit'] / m['default']:7.1f}x {m['flowkit'] / m['no-plots']:8.1f}x "
              f"{m['flowkit'] / m['tables']:6.1f}x {100 * row['share']:20.1f}%")
    if args.memory:
        memory_check(args.gates)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""cytopipe against FlowKit on the same files and the same (fixed) Treg gates.

One command::

    python benchmarks/bench.py [--files 20] [--events 1000000] [--gates gates/treg_fixed.yaml] [--repeat 3]

1. Simulates ``--files`` FCS files of ``--events`` events with :mod:`cytopipe.simulate` (cached under
   ``benchmarks/_data/``).
2. Loads the gate file; data-driven gates are fitted once on the first file, so both tools gate with the same
   fixed gates, exported to Gating-ML 2.0 (``_data/.../gates.xml``) and read back by both cytopipe and FlowKit.
3. Per stage, on the first file, in this process: events/s of read, compensate, transform (the gated fluorescence
   channels) and gate, for cytopipe and FlowKit.
4. End to end on the whole batch, each run in a fresh process (so its peak memory is its own), the configurations
   interleaved round by round, best of ``--repeat``: cytopipe ``run`` with 1 and 2 workers (no plots, no report;
   with an empty cache) and FlowKit with a 2-process pool over files (its best configuration) and serially
   (once). Each run is timed from before the tool is imported; both tools' pools fork from the timed process.
   Prints files/s, events/s, peak RSS (main process and largest worker, sampled from outside) and the ratios.
5. Asserts that cytopipe and FlowKit count the same Treg (and parent) events in every file.

Not a timed test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


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


# ---------------------------------------------------------------------------------------------------- stages


def best_of(fn, repeat: int = 3) -> float:
    """Fastest of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def stages_cytopipe(path: Path, xml: Path) -> dict[str, float]:
    from cytopipe.compensate import compensate
    from cytopipe.fcs import read_fcs
    from cytopipe.gatefile import load_strategy

    strategy = load_strategy(xml)
    sample = read_fcs(path)
    n = sample.n_events
    from cytopipe.pipeline import choose_spillover

    spill = choose_spillover(sample, strategy)
    # read_fcs maps the file; touching one column faults every page in, so the read is really paid here.
    out: dict[str, float] = {"read": n / best_of(lambda: float(read_fcs(path).events[:, 0].sum()))}
    comp = compensate(sample.events, sample.channels, spill)
    out["compensate"] = n / best_of(lambda: compensate(sample.events, sample.channels, spill))
    used = {}
    for pop in strategy.populations:
        for dim in pop.gate.dimensions:
            if dim.transform is not None and getattr(dim.transform, "name", "") != "flin":
                used[dim.channels[0]] = dim.transform
    columns = {ch: np.ascontiguousarray(comp[:, sample.find_channel(ch)]) for ch in used}
    out["transform"] = n / best_of(lambda: [t.apply(columns[ch]) for ch, t in used.items()])
    out["transform_channels"] = len(used)
    result = strategy.apply(sample, spill)

    def gate_only() -> None:
        for pop in strategy.populations:
            values = result.values(pop.gate)
            if pop.parent is not None:
                values = values[result.masks[pop.parent]]
            pop.gate.mask(values)

    out["gate"] = n / best_of(gate_only)
    out["apply (comp+transform+gate)"] = n / best_of(lambda: strategy.apply(sample, spill))
    return out


def flowkit_transforms(strategy) -> dict:
    """FlowKit: {channel label: transform} of the gated, transformed dimensions."""
    used = {}
    for gate_id in strategy.get_gate_ids():
        gate = strategy.get_gate(*gate_id)
        for dim in getattr(gate, "dimensions", []) or []:
            ref = getattr(dim, "transformation_ref", None)
            if ref is not None and dim.id is not None:
                used[dim.id] = strategy.get_transform(ref)
    return used


def stages_flowkit(path: Path, xml: Path) -> dict[str, float]:
    import flowkit as fk

    strategy = fk.parse_gating_xml(str(xml))
    sample = fk.Sample(str(path))
    n = sample.event_count
    out: dict[str, float] = {"read": n / best_of(lambda: fk.Sample(str(path)), repeat=2)}
    spill = sample.metadata.get("spillover") or sample.metadata.get("spill")
    n_detectors = int(spill.split(",")[0])
    matrix = fk.Matrix(spill, spill.split(",")[1:1 + n_detectors])
    out["compensate"] = n / best_of(lambda: sample.apply_compensation(matrix), repeat=2)
    used = flowkit_transforms(strategy)
    out["transform"] = n / best_of(lambda: [sample.apply_transform({ch: t for ch, t in used.items()})], repeat=2)
    out["transform_channels"] = len(used)
    sample.apply_compensation(None)
    out["apply (comp+transform+gate)"] = n / best_of(lambda: strategy.gate_sample(sample), repeat=2)
    return out


# ---------------------------------------------------------------------------------------------------- end to end


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


def child(kind: str, workers: int, folder: Path, xml: Path, treg: str, parent: str) -> dict:
    """One end-to-end configuration; runs in its own process. Timed from before importing the tool.

    Both tools run their pools with the same start method: forked from this process (cytopipe's own choice on
    Linux; FlowKit is imported first, inside the timed region, so its workers inherit it as cytopipe's do).
    """
    sheet = pd.read_csv(folder / "study.csv")
    files = [str(folder / f) for f in sheet["file"]]
    start = time.perf_counter()
    if kind == "cytopipe":
        from cytopipe.batch import run

        out = folder / f"_out_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        result = run(sheet=folder / "study.csv", gates=xml, out=out, workers=workers, treg=treg, parent=parent,
                     plots=False, report=False, quiet=True)
        elapsed = time.perf_counter() - start
        stems = {Path(f).stem: Path(f).name for f in sheet["file"]}
        counts = {stems[s]: [int(t), int(c)] for s, t, c in
                  result.treg[["sample", "treg_events", "cd4_events"]].itertuples(index=False)}
        failures = len(result.failures)
    else:
        import flowkit  # noqa: F401 - imported before the pool forks, like cytopipe's modules

        ids = gatingml_ids(xml)
        tasks = [(f, str(xml), ids[treg], ids[parent]) for f in files]
        if workers == 1:
            rows = [flowkit_counts(t) for t in tasks]
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                rows = pool.map(flowkit_counts, tasks, chunksize=1)
        elapsed = time.perf_counter() - start
        counts = {name: [t, c] for name, t, c in rows}
        failures = 0
    return {"seconds": elapsed, "counts": counts, "failures": failures}


def run_child(kind: str, workers: int, folder: Path, xml: Path, treg: str, parent: str) -> dict:
    """Run one configuration in a fresh process; its result with the peak RSS of its main process and workers."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--workers", str(workers),
           "--folder", str(folder), "--xml", str(xml), "--treg", treg, "--parent", parent]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakMemory(proc.pid) as memory:
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} with {workers} worker(s) failed:\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib_self"] = memory.main
    result["peak_mib_worker"] = memory.largest_worker
    return result


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--gates", type=Path, default=REPO / "gates" / "treg_fixed.yaml")
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs per configuration; the best counts")
    parser.add_argument("--skip-flowkit-serial", action="store_true", help="skip FlowKit's slow serial batch")
    parser.add_argument("--child", choices=("cytopipe", "flowkit"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--xml", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--treg", help=argparse.SUPPRESS)
    parser.add_argument("--parent", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.workers, args.folder, args.xml, args.treg, args.parent)))
        return 0

    import flowkit

    import cytopipe
    from cytopipe.gatefile import load_strategy
    from cytopipe.pipeline import resolve_treg

    folder = make_data(args.files, args.events)
    sheet = pd.read_csv(folder / "study.csv")
    first = folder / sheet["file"].iloc[0]
    xml = fixed_gates(args.gates, first, folder)
    treg, parent = resolve_treg(load_strategy(xml))
    total_events = args.files * args.events
    print(f"cytopipe {cytopipe.__version__} vs FlowKit {flowkit.__version__}; numpy {np.__version__}; "
          f"{os.cpu_count()} cores; {args.files} files x {args.events:,} events; gates {args.gates.name} "
          f"-> {xml.relative_to(REPO) if xml.is_relative_to(REPO) else xml} (Treg = {treg!r} of {parent!r})")

    print("\nper stage on one file (million events/s, best of 3; single core)")
    ours, theirs = stages_cytopipe(first, xml), stages_flowkit(first, xml)
    print(f"  {'stage':30s} {'cytopipe':>10s} {'FlowKit':>10s} {'ratio':>8s}")
    for stage in ("read", "compensate", "transform", "gate", "apply (comp+transform+gate)"):
        a, b = ours.get(stage), theirs.get(stage)
        ratio = f"{a / b:7.1f}x" if a and b else "       -"
        print(f"  {stage:30s} {a / 1e6 if a else float('nan'):10.2f} "
              f"{b / 1e6 if b else float('nan'):10.2f} {ratio}")
    print(f"  (transform: {ours['transform_channels']} gated channel(s) for cytopipe, "
          f"{theirs['transform_channels']} for FlowKit; FlowKit has no separate gate stage)")

    print(f"\nend to end, {args.files} files x {args.events:,} events: fresh process per run, configurations "
          f"interleaved, best of {args.repeat} (every run listed); plots and report OFF for cytopipe (FlowKit draws "
          "none), empty result cache; peak RSS sampled from /proc every 20 ms")
    configs = [("cytopipe", 1), ("cytopipe", 2), ("flowkit", 2)]
    trials: dict[tuple[str, int], list[dict]] = {config: [] for config in configs}
    # Interleaved rounds: load from other users of a shared machine, which only ever slows a run down, then hits
    # every configuration alike instead of whichever happened to run during it.
    for _ in range(args.repeat):
        for config in configs:
            trials[config].append(run_child(*config, folder, xml, treg, parent))
    if not args.skip_flowkit_serial:  # the slowest, only for a side ratio: once
        trials[("flowkit", 1)] = [run_child("flowkit", 1, folder, xml, treg, parent)]
    runs = {}
    for (kind, workers), done in trials.items():
        res = dict(min(done, key=lambda r: r["seconds"]))
        res["peak_mib_self"] = max(r["peak_mib_self"] for r in done)
        res["peak_mib_worker"] = max(r["peak_mib_worker"] for r in done)
        runs[(kind, workers)] = res
        label = f"{'cytopipe' if kind == 'cytopipe' else 'FlowKit'} {workers} worker(s)"
        listed = ", ".join(f"{r['seconds']:.2f}" for r in done)
        print(f"  {label:22s} {res['seconds']:7.2f} s  {args.files / res['seconds']:6.2f} files/s  "
              f"{total_events / res['seconds'] / 1e6:7.2f} M events/s  peak RSS main {res['peak_mib_self']:6.0f} "
              f"MiB, largest worker {res['peak_mib_worker']:6.0f} MiB  (runs: {listed} s)")
    best_fk = runs[("flowkit", 2)]["seconds"]
    for workers in (1, 2):
        print(f"  ratio cytopipe {workers} worker(s) / FlowKit 2-process pool: "
              f"{best_fk / runs[('cytopipe', workers)]['seconds']:.1f}x")
    if ("flowkit", 1) in runs:
        print(f"  ratio cytopipe 1 worker / FlowKit serial: "
              f"{runs[('flowkit', 1)]['seconds'] / runs[('cytopipe', 1)]['seconds']:.1f}x")

    reference = runs[("flowkit", 2)]["counts"]
    for key, res in runs.items():
        assert res["failures"] == 0, f"{key}: {res['failures']} failed samples"
        assert res["counts"] == reference, f"{key}: Treg/parent counts differ from FlowKit: " + str(
            {f: (res["counts"].get(f), reference[f]) for f in reference if res["counts"].get(f) != reference[f]})
    treg_total = sum(v[0] for v in reference.values())
    print(f"\nTreg counts identical in all {len(reference)} files for every configuration "
          f"({treg_total:,} Treg events of {sum(v[1] for v in reference.values()):,} {parent} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

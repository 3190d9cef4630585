"""Benchmark: what data-driven gates add to the end-to-end time of one 1,000,000-event file (issue 5).

A simulated file (:mod:`cytopipe.simulate`, FACSCanto II style, cached under ``benchmarks/_data/``) goes through
:func:`cytopipe.pipeline.process_sample`, the unit of work of ``cytopipe run`` (read, compensate, transform, gate,
count, gating plot), once with fixed gates and once with the data-driven gate file (which also fits the gates and,
as ``batch.run`` does, writes the sensitivity rows). The fit alone, the fit plus the sensitivity rows (each on a
freshly read sample, as in a worker) and the gating plot alone (build, and build + PNG, on a fresh gating result)
are timed too. Every round runs every measurement once, so all see the same machine load; the median of the rounds
is reported (the first, warming imports and logicle tables, is not counted), with the overheads as ratios of
times measured in the same run.

BLAS runs on one thread (``--threads``), as in ``cytopipe run``'s worker processes: on a small shared machine a
multi-threaded BLAS call waits for a busy core and turns a 0.1 ms product into 5-15 ms of noise.

Run ``python benchmarks/bench_autogate.py [--events N] [--repeats N] [--threads N] [--fixed FILE] [--auto FILE]``.
Defaults: the fixed gates are ``gates/treg_fixed.yaml``, the data-driven ones ``gates/treg.yaml`` (the default gate
file). The 2-D gates: ``--fixed gates/treg_cd127_fixed.yaml --auto gates/treg_cd127.yaml``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from cytopipe import autogate
from cytopipe import simulate as sim
from cytopipe.fcs import read_fcs
from cytopipe.gatefile import load_strategy
from cytopipe.pipeline import SampleTask, choose_spillover, process_sample, resolve_treg
from cytopipe.plots import gating_hierarchy, save_figure

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "_data"


def default_gates(data_driven: bool) -> Path:
    """The bundled gate file of the wanted kind: ``gates/treg.yaml`` (data-driven) or ``gates/treg_fixed.yaml``."""
    path = REPO / "gates" / ("treg.yaml" if data_driven else "treg_fixed.yaml")
    if not path.is_file() or autogate.needs_fitting(load_strategy(path)) != data_driven:
        kind = "data-driven" if data_driven else "fixed"
        raise SystemExit(f"bench_autogate: {path} is not a {kind} gate file; pass one")
    return path


def simulated_file(n_events: int, style: str = "bd", seed: int = 2, unstained: tuple[str, ...] = ()) -> Path:
    """A simulated FCS file with ``n_events`` events (``unstained``: markers left out, an FMO control tube), written
    once and reused."""
    fmo = "".join(f"_FMO-{m}" for m in unstained)
    path = DATA / f"autogate_{style}_{n_events}_s{seed}{fmo}.fcs"
    if not path.is_file():
        DATA.mkdir(parents=True, exist_ok=True)
        spec = sim.SampleSpec(n_events=n_events, style=style, file=path.name, unstained=unstained)
        tmp = path.with_suffix(".tmp")
        sim.write_sample(tmp, sim.simulate_sample(spec, np.random.default_rng(seed)), style)
        tmp.replace(path)
    return path


def run(n_events: int = 1_000_000, repeats: int = 7, fixed_path: Path | None = None,
        auto_path: Path | None = None) -> dict[str, float]:
    """Time the fixed and the data-driven pipeline on one file; returns the median seconds per measurement.

    Every round runs every measurement once, so all see the same machine load; the first round (imports, logicle
    tables) is not counted. A data-driven file that cuts on a control tube (``control: isotype:CD25``) gets a
    simulated FMO tube of that marker (200,000 events, the same blood without the stain) in that role; reading it
    is part of the data-driven run's cost.
    """
    fixed_path = fixed_path or default_gates(data_driven=False)
    auto_path = auto_path or default_gates(data_driven=True)
    path = simulated_file(n_events)
    fixed, auto = load_strategy(fixed_path), load_strategy(auto_path)
    runs = {"fixed": (fixed, *resolve_treg(fixed)), "auto": (auto, *resolve_treg(auto))}
    roles = sorted({r for p in auto.populations for r in getattr(p.gate, "controls", ())})
    controls = tuple((role, str(simulated_file(200_000, unstained=(role.partition(":")[2],))))
                     for role in roles if role.partition(":")[2])
    treg, parent = runs["auto"][1:]
    times: dict[str, list[float]] = {}

    def timed(key: str, fn: Callable[[], object]) -> object:
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        times.setdefault(key, []).append(time.perf_counter() - start)
        times.setdefault(f"{key} cpu", []).append(time.process_time() - cpu)
        return value

    def fit(sensitivity: bool) -> None:
        # A freshly read sample, as in a worker: nothing is cached from an earlier fit.
        sample = read_fcs(path)
        spillover = choose_spillover(sample, auto)
        key = "fit + sensitivity" if sensitivity else "fit"
        start, cpu = time.perf_counter(), time.process_time()
        tubes = {role: read_fcs(file) for role, file in controls} or None
        fitted, _ = autogate.fit_strategy(auto, [sample], spillover=spillover, controls=tubes)
        if sensitivity:
            autogate.sensitivity(auto, sample, treg, parent, spillover=spillover, fitted=fitted)
        times.setdefault(key, []).append(time.perf_counter() - start)
        times.setdefault(f"{key} cpu", []).append(time.process_time() - cpu)

    sample = read_fcs(path)
    spillover = choose_spillover(sample, auto)
    fitted, _ = autogate.fit_strategy(auto, [sample], spillover=spillover,
                                      controls={role: read_fcs(file) for role, file in controls} or None)

    def plot(png: bool) -> None:
        gated = fitted.apply(sample, spillover)  # a fresh result: the plot fills the columns it draws
        start = time.perf_counter()
        figure = gating_hierarchy(gated, fitted, "bench", treg=treg)
        if png:
            save_figure(figure, plot_file)
        times.setdefault("plot build + png" if png else "plot build", []).append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as plots:
        plot_file = Path(plots) / "gating_bench.png"
        for _ in range(repeats + 1):
            for with_plot in (False, True):
                for name, (strategy, treg_name, parent_name) in runs.items():
                    task = SampleTask("bench", str(path), strategy, treg=treg_name, parent=parent_name,
                                      plots_dir=plots if with_plot else None,
                                      data_driven=strategy if name == "auto" else None,
                                      controls=controls if name == "auto" else ())
                    result = timed(f"{name} plot" if with_plot else name, lambda task=task: process_sample(task))
                    if not result.ok:
                        raise SystemExit(f"bench_autogate: {name}: {result.failure}")
                    if with_plot:
                        times.setdefault(f"{name} plot alone", []).append(result.timings["plot"])
                    else:
                        times.setdefault(f"{name} workspace", []).append(result.timings.get("workspace", 0.0))
            fit(sensitivity=False)
            fit(sensitivity=True)
            plot(png=False)
            plot(png=True)
    return {key: float(np.median(values[1:])) for key, values in times.items()}


def report(out: dict[str, float], n_events: int, repeats: int, fixed_path: Path, auto_path: Path) -> str:
    """The benchmark table as text."""
    def pct(a: float, b: float) -> str:
        return f"{100 * (a / b - 1):+.1f} %"

    base = out["fixed"]
    lines = [
        f"{n_events:,} events (simulated FACSCanto II file), process_sample per file, median of {repeats} "
        f"interleaved rounds",
        f"fixed gates: {fixed_path.relative_to(REPO) if fixed_path.is_relative_to(REPO) else fixed_path}; "
        f"data-driven: {auto_path.relative_to(REPO) if auto_path.is_relative_to(REPO) else auto_path}",
        "",
        f"{'':28}{'fixed':>10}{'data-driven':>14}{'overhead':>11}",
        f"{'end-to-end, no gating plot':28}{out['fixed']:>9.3f}s{out['auto']:>13.3f}s"
        f"{pct(out['auto'], out['fixed']):>11}",
        f"{'end-to-end, with the plot':28}{out['fixed plot']:>9.3f}s{out['auto plot']:>13.3f}s"
        f"{pct(out['auto plot'], out['fixed plot']):>11}",
        f"{'gating plot stage alone':28}{out['fixed plot alone']:>9.3f}s{out['auto plot alone']:>13.3f}s",
        "",
        "parts, as a share of the fixed end-to-end time without the plot "
        f"({base:.3f} s):",
        f"  fit_strategy (fresh sample)       {out['fit']:.3f} s  {100 * out['fit'] / base:5.1f} %",
        f"  fit + sensitivity rows            {out['fit + sensitivity']:.3f} s  "
        f"{100 * out['fit + sensitivity'] / base:5.1f} %",
        f"  gating plot: build                {out['plot build']:.3f} s  {100 * out['plot build'] / base:5.1f} %",
        f"  gating plot: build + PNG          {out['plot build + png']:.3f} s  "
        f"{100 * out['plot build + png'] / base:5.1f} %",
        f"  FlowJo workspace stage            {out['fixed workspace']:.3f} s fixed, {out['auto workspace']:.3f} s "
        "data-driven",
        "",
        "CPU time (process_time: the work itself, whatever else the machine runs):",
        f"  end-to-end, no gating plot      {out['fixed cpu']:.3f} s fixed, {out['auto cpu']:.3f} s data-driven "
        f"({pct(out['auto cpu'], out['fixed cpu'])})",
        f"  fit_strategy                    {out['fit cpu']:.3f} s  {100 * out['fit cpu'] / out['fixed cpu']:5.1f} % "
        "of the fixed run",
        f"  fit + sensitivity rows          {out['fit + sensitivity cpu']:.3f} s  "
        f"{100 * out['fit + sensitivity cpu'] / out['fixed cpu']:5.1f} % of the fixed run",
    ]
    return "\n".join(lines)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1, as a worker process)")
    parser.add_argument("--fixed", type=Path, help="fixed gate file (default: gates/treg_fixed.yaml)")
    parser.add_argument("--auto", type=Path, help="data-driven gate file (default: gates/treg.yaml)")
    args = parser.parse_args()
    fixed_path = (args.fixed or default_gates(data_driven=False)).resolve()
    auto_path = (args.auto or default_gates(data_driven=True)).resolve()
    with threadpool_limits(args.threads):
        out = run(args.events, args.repeats, fixed_path, auto_path)
    print(report(out, args.events, args.repeats, fixed_path, auto_path))


if __name__ == "__main__":
    main()

"""Benchmark: what writing ``gates_fitted.wsp`` costs against the run that produces it.

The bundled study's files (``sample_fcs/``, 50,000 events each) are cycled into ``n`` samples and processed one
after another in this process with ``gates/treg.yaml`` (data-driven gates fitted per sample), exactly as a batch
worker does (:func:`cytopipe.pipeline.process_sample`, plots off, one BLAS thread). Times are CPU seconds of this
process (``time.process_time``): on a shared machine wall-clock times of millisecond stages mostly measure the
other processes. Reported:

* worker side: the time spent in :func:`cytopipe.flowjo.write.sample_tree` (channel names, raw-unit coordinates,
  the ellipse polygon placed on the sample's events) against the whole of ``process_sample``;
* client side: rendering and writing the workspace (:func:`cytopipe.flowjo.write.write_workspace`) and its size.

Each size runs twice: without and with the per-sample gating figure (``cytopipe run``'s default draws it).

Run ``python benchmarks/bench_flowjo_write.py [n_samples ...]`` (default: 12 and 100).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cytopipe.flowjo.write
from cytopipe.flowjo.write import write_workspace
from cytopipe.gatefile import load_strategy
from cytopipe.pipeline import SampleTask, process_sample, resolve_treg

REPO = Path(__file__).resolve().parents[1]


def run(n_samples: int, figures: bool = False) -> dict[str, float]:
    """Process ``n_samples`` bundled files (with the per-sample gating figure when ``figures``) and write their
    workspace; return CPU seconds and the file size."""
    with tempfile.TemporaryDirectory() as plots:
        return _run(n_samples, plots if figures else None)


def _run(n_samples: int, plots: str | None) -> dict[str, float]:
    files = sorted((REPO / "sample_fcs").glob("*.fcs"))
    strategy = load_strategy(REPO / "gates" / "treg.yaml")
    treg, parent = resolve_treg(strategy)
    # Imports and first-use set-up are not the workspace's cost.
    process_sample(SampleTask(sample="warm-up", file=str(files[0]), strategy=strategy, treg=treg, parent=parent,
                              data_driven=strategy, plots_dir=plots))
    tree_cpu = [0.0]
    sample_tree = cytopipe.flowjo.write.sample_tree

    def timed_tree(*args: object, **kwargs: object) -> dict:  # process_sample looks the function up per call
        start = time.process_time()
        try:
            return sample_tree(*args, **kwargs)
        finally:
            tree_cpu[0] += time.process_time() - start

    cytopipe.flowjo.write.sample_tree = timed_tree
    results = []
    start = time.process_time()
    try:
        for k in range(n_samples):
            task = SampleTask(sample=f"S{k:03d}", file=str(files[k % len(files)]), strategy=strategy, treg=treg,
                              parent=parent, data_driven=strategy, plots_dir=plots)
            results.append(process_sample(task))
    finally:
        cytopipe.flowjo.write.sample_tree = sample_tree
    total = time.process_time() - start
    assert all(r.ok and "error" not in r.workspace for r in results)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        size = write_workspace(Path(tmp) / "gates_fitted.wsp", [r.workspace for r in results])
        write = time.process_time() - start
    return {
        "samples": n_samples,
        "sample_total_s": total,
        "workspace_stage_s": tree_cpu[0],
        "write_s": write,
        "bytes": size,
        "polygon_vertices_max": max(len(r.workspace["populations"][0]["gate"]["vertices"]) for r in results),
    }


def main(argv: list[str]) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # as in the batch workers
    sizes = [int(a) for a in argv] or [12, 100]
    print("| samples | figures | per-sample work, CPU s | of which sample_tree, CPU s | render + write, CPU s | "
          "wsp share | file size | max ellipse vertices |")
    print("|---|---|---|---|---|---|---|---|")
    for n, figures in [(n, f) for n in sizes for f in (False, True)]:
        r = run(n, figures)
        extra = r["workspace_stage_s"] + r["write_s"]
        cells = [str(n), "yes" if figures else "no", f"{r['sample_total_s']:.2f}", f"{r['workspace_stage_s']:.3f}",
                 f"{r['write_s']:.3f}", f"{100 * extra / r['sample_total_s']:.1f} %", f"{r['bytes'] / 1e6:.2f} MB",
                 str(r["polygon_vertices_max"])]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])

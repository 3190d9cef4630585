"""The outputs of a run: result tables, drift QC, ``manifest.json`` and ``gates_fitted.wsp``."""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cytopipe import __version__
from cytopipe.outputs import atomic_write, write_csv
from cytopipe.pipeline import (
    FAILURE_COLUMNS,
    POPULATION_COLUMNS,
    TREG_COLUMNS,
    SampleResult,
    file_sha256,
)

from .progress import Progress

if TYPE_CHECKING:
    import pandas as pd

#: The installed packages whose code computes or writes the results (scipy, scikit-learn and matplotlib are test
#: oracles only and never imported by a run).
_DEPENDENCIES = ("numpy", "pandas", "threadpoolctl", "PyYAML", "Jinja2", "dask", "distributed")


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
    import pandas as pd

    ordered = sorted(results, key=lambda r: (r.subject, r.day, r.sample))
    return pd.DataFrame([row for r in ordered for row in getattr(r, attribute)])


def _tables(results: list[SampleResult], strategy: Any, sheet: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The result tables, sorted by subject, day, sample (and population order)."""
    import pandas as pd

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
        import pandas as pd

        return pd.DataFrame()
    from cytopipe.autogate import gate_drift

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
    import pandas as pd

    from cytopipe.reference import DRIFT_COLUMNS, drift_decades, drift_flags, reference_drift
    from cytopipe.stats import gate_sd_from_sensitivity

    flags = dict(zip(sheet["sample"].tolist(), sheet["baseline"].tolist(), strict=True))  # names are unique
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


@functools.cache
def _versions() -> dict[str, str]:
    """The versions ``manifest.json`` records (looked up once per process: ~25 ms of package metadata, which
    :func:`cytopipe.batch.runner.run` reads while the workers gate; importing :mod:`importlib.metadata` takes
    another ~13 ms, so it is imported here, not before the first sample is sent)."""
    from importlib import metadata as importlib_metadata

    versions = {"cytopipe": __version__, "python": platform.python_version()}
    for name in _DEPENDENCIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _chosen_tables(tables: dict[str, pd.DataFrame], baseline: bool = True
                   ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The result tables to write, by file stem (what the report renders from), and the stems of the stale files
    to remove (see :func:`_write_outputs`).

    ``baseline=False`` leaves ``baseline.csv`` to the report, which writes it with the columns that need
    ``populations.csv`` (the file is written once, not twice).
    """
    written = {name: tables[name] for name in ("populations", "treg", "baseline", "failures")
               if name != "baseline" or baseline}
    # Tables that exist only for data-driven gates: a stale one from an earlier run with other gates would mislead.
    # gate_drift.csv is written whenever gates were fitted (only its header when none was fitted per sample).
    fitted = not tables["fitted"].empty
    stale = []
    for name, key, wanted in (("gates_fitted", "fitted", fitted),
                              ("sensitivity", "sensitivity", not tables["sensitivity"].empty),
                              ("gate_drift", "drift", fitted or not tables["drift"].empty)):
        if wanted:
            written[name] = tables[key]
        else:
            stale.append(name)
    return written, stale


def _write_outputs(out: Path, written: dict[str, pd.DataFrame], stale: list[str], manifest: str) -> None:
    """Write the tables of :func:`_chosen_tables` (removing its stale ones) and ``manifest.json``
    (:func:`_manifest_text`)."""
    for name, table in written.items():
        write_csv(table, out / f"{name}.csv")
    for name in stale:
        (out / f"{name}.csv").unlink(missing_ok=True)
    atomic_write(out / "manifest.json", manifest)


def _write_workspace(out: Path, results: list[SampleResult], log: Progress) -> dict:
    """``gates_fitted.wsp``: every counted sample with its own gates, for FlowJo (subject, day, sample order).

    Samples whose gates FlowJo cannot hold are left out with one error line; with none left the file is removed
    (a stale one from an earlier run would mislead). Returns the ``manifest.json`` record.
    """
    from cytopipe.flowjo.write import WORKSPACE_NAME, write_workspace

    ordered = sorted((r for r in results if r.workspace is not None), key=lambda r: (r.subject, r.day, r.sample))
    trees = [r.workspace for r in ordered if "error" not in r.workspace]
    left_out = {r.sample: r.workspace["error"] for r in ordered if "error" in r.workspace}
    if left_out:
        first = next(iter(left_out.items()))
        log.warning(f"{WORKSPACE_NAME}: {len(left_out)} sample(s) left out, e.g. {first[0]}: {first[1]}")
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


def _manifest_text(sheet: str | os.PathLike, gates: str | os.PathLike, strategy: Any, table: pd.DataFrame,
                   results: list[SampleResult], settings: dict, workspace: dict | None = None) -> str:
    """The text of ``manifest.json``: versions, inputs with their SHA-256, the sheet and gate texts, settings,
    command line (written by :func:`_write_outputs`)."""
    controls = table[table["role"] != "sample"]
    rows: dict[str, dict] = {}
    for rec in table.to_dict("records"):
        rows.setdefault(rec["sample"], rec)  # the first row of a sample name, as a lookup by name finds it
    manifest = {
        "cytopipe": __version__,
        "versions": dict(_versions()),
        "command": sys.argv,
        "sample_sheet": {"path": str(Path(sheet).resolve()), "sha256": file_sha256(sheet),
                         "text": Path(sheet).read_text(encoding="utf-8-sig")},
        "gates": {"path": str(Path(gates).resolve()), "sha256": file_sha256(gates),
                  "text": getattr(strategy, "source", "") or repr(strategy)},
        "settings": settings,
        "inputs": [{"sample": r.sample, "file": r.file, "sha256": r.sha256, "events": r.n_events,
                    "spillover": r.spillover_source, **_row_panel(rows.get(r.sample), settings)}
                   for r in sorted(results, key=lambda r: r.sample)],
        "controls": [{"sample": rec.sample, "role": rec.role, "file": rec.file,
                      "sha256": file_sha256(rec.file) if Path(rec.file).is_file() else ""}
                     for rec in controls.itertuples(index=False)],
        "failed": sorted({r.sample for r in results if r.failure is not None}),
        "flowjo_workspace": workspace or {},
    }
    return json.dumps(manifest, indent=2, default=str) + "\n"


def _row_panel(rec: dict | None, settings: dict) -> dict[str, Any]:
    """The panel file and pre-gated population one sample was read with (sheet row, else the run's options)."""
    own_panel = str(rec["panel"]) if rec is not None and rec.get("panel", "") else ""
    run_panel = (settings.get("panel") or {}).get("path") or ""
    own_pregated = str(rec["pregated"]) if rec is not None and rec.get("pregated", "") else ""
    return {"panel": own_panel or run_panel, "pregated": own_pregated or settings.get("pregated") or ""}


def _baseline(treg: pd.DataFrame, *, clinical: pd.DataFrame | None, cva: float, cvi: float, z: float
              ) -> pd.DataFrame:
    """``baseline.csv`` from the Treg table (Treg:Tcon ratio from the CD4 events outside the Treg gate)."""
    from cytopipe.stats import baseline_table

    table = treg.assign(tcon_events=treg["cd4_events"] - treg["treg_events"])
    return baseline_table(table, cva=cva, cvi=cvi, z=z, clinical=clinical)

"""The outputs of a run: result tables, drift QC, ``manifest.json`` and ``gates_fitted.wsp``."""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cytopipe import __version__, columns
from cytopipe.columns import Table
from cytopipe.outputs import atomic_write, write_csv
from cytopipe.pipeline import (
    FAILURE_COLUMNS,
    POPULATION_COLUMNS,
    TREG_COLUMNS,
    SampleResult,
    file_sha256,
)

from .progress import Progress

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


def _sort_rows(table: Table, names: Iterable[str], population_order: list[str] | None = None) -> Table:
    """The rows of ``table`` by subject, day, sample (and the position of their population in
    ``population_order``: unknown ones last), with the columns ``names``."""
    keys = ["subject", "day", "sample"]
    if population_order is not None:
        position = {name: i for i, name in enumerate(population_order)}
        table = {**table, "_order": columns.column([position.get(name, math.nan)
                                                     for name in table["population"].tolist()])}
        keys.append("_order")
    return columns.select(columns.sorted_by(table, keys), list(names))


def _per_sample(results: list[SampleResult], attribute: str, before: list[dict] | None = None) -> Table:
    """Concatenate a per-sample list of rows (fitted gates, sensitivity) in subject, day, sample order, after the
    rows ``before`` (the gates fitted once per subject); no columns when there is no row."""
    ordered = sorted(results, key=lambda r: (r.subject, r.day, r.sample))
    rows = [*(before or ()), *(row for r in ordered for row in getattr(r, attribute))]
    return columns.from_rows(rows)


def _join(table: Table, other: Table, key: str, names: Iterable[str]) -> Table:
    """``table`` with the columns ``names`` of ``other`` (unique ``key`` values) of the row with the same ``key``,
    as ``table.join(other.set_index(key)[names], on=key)``: missing cells NaN (int columns become float, flag
    columns object)."""
    where = {value: i for i, value in enumerate(other[key].tolist())}
    at = np.array([where.get(value, -1) for value in table[key].tolist()], dtype=np.intp)
    return {**table, **{name: columns.take_or_missing(other[name], at) for name in names}}


def _tables(results: list[SampleResult], strategy: Any, sheet: Table, client_fitted: list[dict] | None = None
            ) -> dict[str, Table]:
    """The result tables, sorted by subject, day, sample (and population order); ``client_fitted``: the rows of
    the gates fitted once per subject, before the per-sample fits in ``fitted``."""
    order = [p.name for p in strategy.populations]
    extra = [c for c in sheet if c not in ("sample", "file", "subject", "timepoint", "day", "baseline",
                                           "role", "spillover", "panel", "pregated")]
    counted = [r for r in results if r.treg is not None]
    pop_rows = [row for r in counted for row in r.populations]
    populations = _sort_rows(columns.from_rows(pop_rows, POPULATION_COLUMNS), POPULATION_COLUMNS, order)
    treg = columns.from_rows([r.treg for r in counted], [*TREG_COLUMNS, "acquisition_qc"])
    # The baseline flag and the sheet's extra columns travel with each sample (the report re-renders from them).
    treg = _join(treg, sheet, "sample", ["baseline", *extra])
    treg = _sort_rows(treg, [*TREG_COLUMNS, "acquisition_qc", "baseline", *extra])
    failures = columns.from_rows([r.failure for r in results if r.failure is not None], FAILURE_COLUMNS)
    failures = _sort_rows(_join(failures, sheet, "sample", ["subject", "day"]), FAILURE_COLUMNS)
    return {"populations": populations, "treg": treg, "failures": failures,
            "fitted": _per_sample(results, "fitted", client_fitted), "sensitivity": _per_sample(results, "sensitivity")}


def _drift(fitted: Table, sheet: Table) -> Table:
    """``gate_drift.csv``: each per-sample fitted parameter against the subject's baseline sample's fit.

    The sheet's baseline flag names the baseline sample; gates fitted once per subject have no drift. Empty (no
    columns) when nothing was fitted (fixed gates).
    """
    if not columns.length(fitted):
        return {}
    from cytopipe.autogate import gate_drift

    flags = dict(zip(sheet["sample"].tolist(), sheet["baseline"].tolist(), strict=True))
    baseline = np.array([flags.get(sample) is True for sample in fitted["sample"].tolist()], dtype=bool)
    return gate_drift({**fitted, "baseline": baseline})


def _reference_qc(tables: dict[str, Table], results: list[SampleResult], sheet: Table, limit: float) -> None:
    """Reference-population drift QC and gating SD (issue 14), in place on ``tables``.

    The reference medians against each subject's baseline join the gate rows of ``gate_drift.csv`` (column
    ``qc`` says which moved more than ``limit`` percent); moved references are named in ``treg.csv``'s
    ``acquisition_qc``; ``treg.csv`` gains ``gate_sd_pp``, the gating SD of each Treg % from ``sensitivity.csv``
    widened by the sample's reference drift (NaN for fixed gates), which ``baseline.csv`` turns into the combined
    interval of the change.
    """
    from cytopipe.reference import DRIFT_COLUMNS, drift_decades, drift_flags, reference_drift
    from cytopipe.stats import gate_sd_from_sensitivity

    flags = dict(zip(sheet["sample"].tolist(), sheet["baseline"].tolist(), strict=True))  # names are unique
    rows = [{"sample": r.sample, "subject": r.subject, "timepoint": r.timepoint, "day": r.day,
             "baseline": bool(flags.get(r.sample, False)), "references": r.references}
            for r in results if r.treg is not None]
    references = reference_drift(columns.from_rows(rows, ("sample", "subject", "timepoint", "day", "baseline",
                                                          "references")), limit)
    gate_rows = tables["drift"]
    if columns.length(gate_rows):
        gate_rows = {**gate_rows, "qc": columns.column([""] * columns.length(gate_rows))}
    parts = [columns.select(t, DRIFT_COLUMNS) for t in (gate_rows, references) if columns.length(t)]
    if parts:
        tables["drift"] = columns.sorted_by(_concat(parts), ["subject", "day", "sample"])
    treg = tables["treg"]
    moved = drift_flags(references)
    qc = columns.column(["; ".join(x for x in (str(qc or ""), moved.get(str(sample), "")) if x)
                         for qc, sample in zip(treg["acquisition_qc"].tolist(), treg["sample"].tolist(),
                                               strict=True)])
    if not len(qc):
        qc = np.empty(0, dtype=np.float64)  # as pandas types an empty list assigned to a column (the API's dtype)
    gate_sd = gate_sd_from_sensitivity(tables["sensitivity"], drift=drift_decades(references))
    sd = np.array([gate_sd.get(str(sample), math.nan) for sample in treg["sample"].tolist()], dtype=np.float64)
    out: Table = {}
    for name, values in treg.items():
        out[name] = qc if name == "acquisition_qc" else values
        if name == "acquisition_qc":
            out["gate_sd_pp"] = sd
    tables["treg"] = out


def _concat(parts: list[Table]) -> Table:
    """The rows of tables with the same columns, one after the other, as ``pandas.concat`` types them (one dtype:
    kept; integers and floats: float; any other mixture: object)."""
    out: Table = {}
    for name in parts[0]:
        pieces = [part[name] for part in parts]
        kinds = {piece.dtype for piece in pieces}
        if len(kinds) > 1:
            dtype = np.float64 if all(k.kind in "iuf" for k in kinds) else object
            pieces = [piece.astype(dtype) for piece in pieces]
        out[name] = np.concatenate(pieces)
    return out


@functools.cache
def _versions() -> dict[str, str]:
    """The versions ``manifest.json`` records (looked up once per process, while the workers gate).

    Each is ``importlib.metadata.version(name)``, read here as it finds it: the first ``<name>-*.dist-info`` folder
    of the first ``sys.path`` folder that has one (names normalized alike), its ``METADATA``'s ``Version``. That is a
    folder listing and a few lines per package instead of :mod:`importlib.metadata` (~12 ms to import, ~10 ms to
    parse the metadata); anything else (a zip, an egg, two candidates, no ``Version`` line) asks it.
    """
    versions = {"cytopipe": __version__, "python": platform.python_version()}
    wanted = {_normalized(name): name for name in _DEPENDENCIES}
    found: dict[str, str | None] = {}
    for entry in sys.path:
        if len(found) == len(wanted):
            break
        try:
            children = os.listdir(entry or ".")
        except OSError:
            continue
        infos: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith((".dist-info", ".egg-info")):
                key = _normalized(low.rpartition(".")[0].partition("-")[0])
                if key in wanted and key not in found:
                    infos.setdefault(key, []).append(child)
        for key, candidates in infos.items():
            only = candidates[0] if len(candidates) == 1 and candidates[0].lower().endswith(".dist-info") else None
            found[key] = _metadata_version(os.path.join(entry or ".", only, "METADATA")) if only else None
    for key, name in wanted.items():
        version = found.get(key)
        if version is None:
            from importlib import metadata as importlib_metadata

            try:
                version = importlib_metadata.version(name)
            except importlib_metadata.PackageNotFoundError:
                continue
        versions[name] = version
    return versions


def _normalized(name: str) -> str:
    """A distribution name as :mod:`importlib.metadata` compares them (PEP 503, dashes as underscores)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _metadata_version(path: str) -> str | None:
    """The ``Version`` header of a ``METADATA`` file (``None`` when it has none or cannot be read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line in ("\n", "\r\n"):
                    return None  # the end of the headers
                name, sep, value = line.partition(":")
                if sep and name == "Version":
                    return value.strip() or None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _chosen_tables(tables: dict[str, Table], baseline: bool = True) -> tuple[dict[str, Table], list[str]]:
    """The result tables to write, by file stem (what the report renders from), and the stems of the stale files
    to remove (see :func:`_write_outputs`).

    ``baseline=False`` leaves ``baseline.csv`` to the report, which writes it with the columns that need
    ``populations.csv`` (the file is written once, not twice).
    """
    written = {name: tables[name] for name in ("populations", "treg", "baseline", "failures")
               if name != "baseline" or baseline}
    # Tables that exist only for data-driven gates: a stale one from an earlier run with other gates would mislead.
    # gate_drift.csv is written whenever gates were fitted (only its header when none was fitted per sample).
    fitted = columns.length(tables["fitted"]) > 0
    stale = []
    for name, key, wanted in (("gates_fitted", "fitted", fitted),
                              ("sensitivity", "sensitivity", columns.length(tables["sensitivity"]) > 0),
                              ("gate_drift", "drift", fitted or columns.length(tables["drift"]) > 0)):
        if wanted:
            written[name] = tables[key]
        else:
            stale.append(name)
    return written, stale


def _write_outputs(out: Path, written: dict[str, Table], stale: list[str], manifest: str) -> None:
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


def _manifest_text(sheet: str | os.PathLike, gates: str | os.PathLike, strategy: Any, table: Table,
                   results: list[SampleResult], settings: dict, workspace: dict | None = None) -> str:
    """The text of ``manifest.json``: versions, inputs with their SHA-256, the sheet and gate texts, settings,
    command line (written by :func:`_write_outputs`)."""
    records = columns.records(table)
    controls = [rec for rec in records if rec["role"] != "sample"]
    rows: dict[str, dict] = {}
    for rec in records:
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
        "controls": [{"sample": rec["sample"], "role": rec["role"], "file": rec["file"],
                      "sha256": file_sha256(rec["file"]) if Path(rec["file"]).is_file() else ""}
                     for rec in controls],
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


def _baseline(treg: Table, *, clinical: Table | None, cva: float, cvi: float, z: float) -> Table:
    """``baseline.csv`` from the Treg table (Treg:Tcon ratio from the CD4 events outside the Treg gate)."""
    from cytopipe.stats import baseline_table

    table = {**treg, "tcon_events": treg["cd4_events"] - treg["treg_events"]}
    return baseline_table(table, cva=cva, cvi=cvi, z=z, clinical=clinical)

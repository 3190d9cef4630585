"""Real-data validation: cytopipe's data-driven gates against experts' answers on real files (issue 10).

Prints one table per dataset (Markdown), from the files in ``../shared/data`` (never copied into the repo):

* ``ique3_pbmc_treg`` — iQue3 PBMC exported after CD3+CD4+ gating; the expert's Treg events are known per event.
  ``gates/treg_cd127.yaml`` with ``--panel panel.csv --pregated CD4+`` and the CD25 isotype well B01 as
  ``isotype:CD25``: Treg % of CD4+ against the expert's, and per-event F1 against the expert's Treg events; then
  the same without the isotype tube (the gate's control-free fallback).
* ``labkey_flowjo_advanced_tutorial`` — 1993 FACScan T-cell tubes (log-amplified 9-bit, ``$PnE``), scatter
  ``ForSc``/``OrthSc`` mapped by ``benchmarks/panels/labkey_facscan.csv``: ``gates/tcells.yaml`` against the lab's
  FlowJo 7.6.5 counts (CD4 T and CD8 T as % of T cells; an approximate oracle, see its SOURCES.md), and per-event
  F1 against the lab's FlowJo gates re-applied by cytopipe's workspace reader.
* every other real file in ``real_gating/`` (and the Gating-ML FACSCalibur file) through ``gates/tcells.yaml``,
  with a panel where the file lacks usable ``$PnS``: CD4 T and CD8 T as % of T cells, or the one-line reason the
  file could not be gated. No expert answer exists for these; 10-85 % is the plausibility band.

Every file is gated through ``cytopipe.run`` (the same path as the command line), one strategy file per table,
nothing tuned per file. Usage::

    python benchmarks/validate_real.py [--data ../shared/data] [--workers 1] [--only ique3|ique3-nocontrol|labkey|other]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cytopipe.batch import run  # noqa: E402
from cytopipe.fcs import read_fcs  # noqa: E402
from cytopipe.pipeline import event_membership  # noqa: E402

PANELS = REPO / "benchmarks" / "panels"
TCELLS = REPO / "gates" / "tcells.yaml"
TREG_CD127 = REPO / "gates" / "treg_cd127.yaml"
#: Columns on which each expert subset file is an exact row subset of its well's CD3+CD4+ file (SOURCES.md).
MATCH_COLUMNS = ("FSC-H", "SSC-H", "BL1-H", "VL1-H", "FSC-A")
#: Panels for real files whose $PnS do not name CD3/CD4/CD8 as tcells.yaml asks (none is tuned: each only names
#: channels, from the file's own $PnS or its sibling's; see each CSV).
OTHER_PANELS = {"omip021_fortessa": "omip021_fortessa.csv", "peacoqc_lsrii": "peacoqc_lsrii.csv",
                "metacyto_sdy736_lsrii": "metacyto_sdy736_lsrii.csv"}
PLAUSIBLE = (10.0, 85.0)


def gate_study(rows: list[dict], gates: Path, work: Path, workers: int, **options: object) -> object:
    """Write a sample sheet for ``rows`` and run it; returns the :class:`cytopipe.batch.RunResult`."""
    work.mkdir(parents=True, exist_ok=True)
    sheet = work / "study.csv"
    columns = sorted({key for row in rows for key in row}, key=["sample", "file", "subject", "timepoint", "day",
                                                                "role", "panel", "pregated"].index)
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    # Progress and per-sample errors go to a buffer: the tables below say what failed and why.
    return run(sheet, gates=gates, out=work / "results", workers=workers, plots=False, report=False,
               stream=io.StringIO(), **options)


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (floats with 2 decimals)."""
    def cell(column: str, value: object) -> str:
        if isinstance(value, float):
            if np.isnan(value):
                return ""
            share = any(mark in column for mark in ("%", "pp", "F1"))
            return f"{value:.2f}" if share or not value.is_integer() else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row, strict=True)) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = int(np.sum(predicted & truth))
    denominator = int(predicted.sum() + truth.sum())
    return 2.0 * tp / denominator if denominator else float("nan")


def expert_membership(cd4_file: Path, subsets: list[Path]) -> np.ndarray:
    """Per event of ``cd4_file``: is it in one of the expert's subset exports (matched on MATCH_COLUMNS)?"""
    cd4 = read_fcs(cd4_file)
    keys = np.column_stack([cd4.column(c) for c in MATCH_COLUMNS])
    found = np.zeros(cd4.n_events, dtype=bool)
    index = {row.tobytes(): i for i, row in enumerate(keys)}
    for path in subsets:
        part = read_fcs(path)
        for row in np.column_stack([part.column(c) for c in MATCH_COLUMNS]):
            i = index.get(row.tobytes())
            if i is None:
                raise SystemExit(f"{path}: an event is not in {cd4_file} (the subset files must match exactly)")
            found[i] = True
    return found


def ique3(data: Path, work: Path, workers: int, *, with_control: bool = True) -> pd.DataFrame:
    folder = data / "real_gating" / "ique3_pbmc_treg"
    answers = pd.read_csv(folder / "flowjo_answers.csv")
    wells = answers[answers["treg_pct_of_cd3cd4"].notna()].sort_values("well")
    control = folder / answers.loc[answers["well"] == "B01", "file"].iloc[0]
    rows = [{"sample": w.well, "file": str(folder / w.file), "subject": "PBMC", "timepoint": w.well, "day": i}
            for i, w in enumerate(wells.itertuples(index=False))]
    if with_control:
        rows.append({"sample": "B01", "file": str(control), "subject": "PBMC", "timepoint": "B01", "day": 0,
                     "role": "isotype:CD25"})
    result = gate_study(rows, TREG_CD127, work / ("ique3" if with_control else "ique3-nocontrol"), workers,
                        panel=folder / "panel.csv", pregated="CD4+")
    treg = result.treg.set_index("sample")
    failures = result.failures.set_index("sample")
    out = []
    for w in wells.itertuples(index=False):
        cd4_file = folder / w.file
        stem = cd4_file.name.replace("_CD3+CD4+", "_T_reg_{}")
        subsets = [cd4_file.with_name(stem.format(kind)) for kind in ("memory", "naive")]
        truth = expert_membership(cd4_file, subsets)
        if w.well in failures.index:
            out.append({"well": w.well, "events": int(truth.size), "expert Treg %": w.treg_pct_of_cd3cd4,
                        "cytopipe Treg %": float("nan"), "diff pp": float("nan"), "F1": float("nan"),
                        "note": failures.loc[w.well, "reason"]})
            continue
        events = event_membership(cd4_file, TREG_CD127, panel=folder / "panel.csv", pregated="CD4+",
                                  controls={"isotype:CD25": str(control)} if with_control else None)
        predicted = events["Treg"].to_numpy() == 1
        pct = float(treg.loc[w.well, "treg_pct"])
        out.append({"well": w.well, "events": int(truth.size), "expert Treg %": 100.0 * truth.mean(),
                    "cytopipe Treg %": pct, "diff pp": pct - 100.0 * truth.mean(), "F1": f1(predicted, truth),
                    "note": "" if abs(100.0 * predicted.mean() - pct) < 1e-9 else
                    f"gate gives {100.0 * predicted.mean():.2f} %"})
    return pd.DataFrame(out)


def labkey(data: Path, work: Path, workers: int) -> pd.DataFrame:
    folder = data / "flowjo" / "labkey_flowjo_advanced_tutorial"
    counts = pd.read_csv(folder / "flowjo_counts.csv", keep_default_na=False)
    counts = counts[counts["workspace"] == "advanced-v7.6.5.wsp"]
    wells = ("B02", "C02", "D02", "E02")
    files = {w: next((folder / "fcs").glob(f"*-{w}-*.fcs")) for w in wells}
    rows = [{"sample": w, "file": str(files[w]), "subject": w, "timepoint": "T", "day": 0} for w in wells]
    result = gate_study(rows, TCELLS, work / "labkey", workers, panel=PANELS / "labkey_facscan.csv")
    pops = result.populations.set_index(["sample", "population"])["count"]
    failures = result.failures.set_index("sample")
    out = []
    for w in wells:
        mine = counts[counts["sample_name"] == files[w].name].set_index("population_path")["flowjo_count"]
        expert = {name: int(mine[f"/Lymphocytes/T cells{suffix}"])
                  for name, suffix in (("T cells", ""), ("CD4 T", "/CD4 T"), ("CD8 T", "/CD8 T"))}
        expert["Lymphocytes"] = int(mine["/Lymphocytes"])
        row: dict[str, object] = {"well": w, "FlowJo lymph": expert["Lymphocytes"]}
        if w in failures.index:
            out.append({**row, "note": failures.loc[w, "reason"]})
            continue
        got = {name: int(pops[(w, name)]) for name in ("Lymphocytes", "T cells", "CD4 T", "CD8 T")}
        row["cytopipe lymph"] = got["Lymphocytes"]
        # Per event: the lab's own FlowJo 7.6.5 gates, re-applied by cytopipe's workspace reader (its counts are
        # within 0.6 % of FlowJo's), against the data-driven gates.
        lab = event_membership(files[w], folder / "advanced-v7.6.5.wsp", wsp_sample=files[w].name)
        ours_events = event_membership(files[w], TCELLS, panel=PANELS / "labkey_facscan.csv")
        for name in ("CD4 T", "CD8 T"):
            theirs = 100.0 * expert[name] / expert["T cells"]
            ours = 100.0 * got[name] / got["T cells"] if got["T cells"] else float("nan")
            row[f"FlowJo {name} % T"] = theirs
            row[f"cytopipe {name} % T"] = ours
            row[f"{name} diff pp"] = ours - theirs
        for name in ("T cells", "CD4 T", "CD8 T"):
            row[f"F1 {name}"] = f1(ours_events[name].to_numpy() == 1, lab[name].to_numpy() == 1)
        out.append(row)
    return pd.DataFrame(out)


def _reason(fitted: pd.DataFrame, sample: str, t_cells: int) -> str:
    """Why a fraction may be implausible: few T cells, or a cut not at a density valley (only one mode found)."""
    notes = [f"{t_cells} T cells"] if t_cells < 300 else []
    rows = fitted[(fitted["sample"] == sample) & fitted["population"].isin(["T cells", "CD4 T", "CD8 T"])]
    for rec in rows.to_dict("records"):
        for key, value in rec.items():
            # "<channel> method" of a cut ("<channel> W method" is a W: auto logicle width, not a cut)
            if key.endswith(" method") and not key.endswith(" W method") and isinstance(value, str) \
                    and value != "valley":
                notes.append(f"{rec['population']}: {key.removesuffix(' method')} cut by {value}")
    return "; ".join(dict.fromkeys(notes)) or "every cut at a density valley; no expert answer to compare"


def others(data: Path, work: Path, workers: int) -> pd.DataFrame:
    folder = data / "real_gating"
    files = sorted(p for p in folder.glob("*/*.fcs") if p.parent.name != "ique3_pbmc_treg")
    extra = data / "gatingml2" / "isac_gatingMLData" / "FCSFiles" / "data1.fcs"
    if extra.is_file():
        files.append(extra)
    rows = []
    for i, path in enumerate(files):
        dataset = path.parent.name if path != extra else "gatingml2_facscalibur"
        panel = OTHER_PANELS.get(dataset)
        rows.append({"sample": f"{dataset}/{path.stem}", "file": str(path), "subject": f"s{i:02d}", "timepoint": "T",
                     "day": 0, "panel": str(PANELS / panel) if panel else ""})
    started = time.perf_counter()
    result = gate_study(rows, TCELLS, work / "other", workers)
    elapsed = time.perf_counter() - started
    pops = result.populations.set_index(["sample", "population"])["count"]
    failures = result.failures.set_index("sample")
    fitted = result.fitted if not result.fitted.empty else pd.DataFrame(columns=["sample", "population"])
    out = []
    for row in rows:
        name = row["sample"]
        base = {"file": name, "panel": Path(row["panel"]).name if row["panel"] else ""}
        if name in failures.index:
            reason = failures.loc[name, "reason"].replace(f"{row['file']}: ", "")
            out.append({**base, "status": "failed (one line)", "reason": reason[:110]})
            continue
        t_cells = int(pops[(name, "T cells")])
        pcts = {n: 100.0 * int(pops[(name, n)]) / t_cells if t_cells else float("nan") for n in ("CD4 T", "CD8 T")}
        plausible = all(PLAUSIBLE[0] <= v <= PLAUSIBLE[1] for v in pcts.values())
        out.append({**base, "lymphocytes": int(pops[(name, "Lymphocytes")]),
                    "T cells": t_cells, "CD4 T % T": pcts["CD4 T"], "CD8 T % T": pcts["CD8 T"],
                    "status": "plausible" if plausible else "outside 10-85 %",
                    "reason": "" if plausible else _reason(fitted, name, t_cells)})
    table = pd.DataFrame(out)
    table.attrs["elapsed"] = elapsed
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CYTOPIPE_SHARED_DATA",
                                                                         REPO.parent / "shared" / "data")))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", choices=("ique3", "ique3-nocontrol", "labkey", "other"))
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"{args.data}: reference data folder not found")
    tables = {"ique3": ("ique3_pbmc_treg: Treg % of CD4+ (gates/treg_cd127.yaml, --pregated CD4+, isotype B01)",
                        ique3),
              "ique3-nocontrol": ("ique3_pbmc_treg without a control tube (the control-free tail boundary)",
                                  lambda data, work, workers: ique3(data, work, workers, with_control=False)),
              "labkey": ("labkey_flowjo_advanced_tutorial: gates/tcells.yaml vs FlowJo 7.6.5", labkey),
              "other": ("other real files: gates/tcells.yaml (no expert answer; plausible = 10-85 % of T cells)",
                        others)}
    with tempfile.TemporaryDirectory(prefix="cytopipe-validate-") as tmp:
        for key, (title, build) in tables.items():
            if args.only and key != args.only:
                continue
            started = time.perf_counter()
            table = build(args.data, Path(tmp), args.workers)
            print(f"\n### {title}  ({time.perf_counter() - started:.1f} s)\n")
            print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gates/tcells.yaml on real files (issue 10): the lab's FlowJo counts, and every other real file runs through.

Data from ``../shared/data`` (``shared_data`` fixture), never copied. Panels shipped in ``benchmarks/panels/`` only
name channels (a channel map is not event data).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

import cytopipe

REPO = Path(__file__).resolve().parents[1]
TCELLS = REPO / "gates" / "tcells.yaml"
PANELS = REPO / "benchmarks" / "panels"
LABKEY_WELLS = ("B02", "C02", "D02", "E02")
#: FlowJo 7.6.5 disagrees with FlowJo 9.7.2 by a median 3.7 % on these files (SOURCES.md): 3 pp is the issue's bar.
TOLERANCE_PP = 3.0


def run_sheet(tmp_path: Path, rows: list[dict], **options) -> cytopipe.RunResult:
    sheet = tmp_path / "study.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return cytopipe.run(sheet, gates=TCELLS, out=tmp_path / "out", workers=1, plots=False, report=False,
                        stream=io.StringIO(), **options)


def test_labkey_facscan_t_cells_match_flowjo(shared_data, tmp_path):
    folder = shared_data / "flowjo" / "labkey_flowjo_advanced_tutorial"
    files = {w: next((folder / "fcs").glob(f"*-{w}-*.fcs")) for w in LABKEY_WELLS}
    rows = [{"sample": w, "file": str(f), "subject": w, "timepoint": "T", "day": 0} for w, f in files.items()]
    result = run_sheet(tmp_path, rows, panel=PANELS / "labkey_facscan.csv")
    assert result.failures.empty, result.failures.to_dict("records")
    counts = pd.read_csv(folder / "flowjo_counts.csv", keep_default_na=False)
    counts = counts[counts["workspace"] == "advanced-v7.6.5.wsp"]
    pops = result.populations.set_index(["sample", "population"])["count"]
    for well, path in files.items():
        flowjo = counts[counts["sample_name"] == path.name].set_index("population_path")["flowjo_count"].astype(int)
        for name in ("CD4 T", "CD8 T"):
            expected = 100.0 * flowjo[f"/Lymphocytes/T cells/{name}"] / flowjo["/Lymphocytes/T cells"]
            got = 100.0 * pops[(well, name)] / pops[(well, "T cells")]
            assert abs(got - expected) <= TOLERANCE_PP, (well, name, got, expected)
    # ForSc/OrthSc came from the panel; no FSC-H, so the optional singlet gate is skipped, and said once.
    qc = result.treg.set_index("sample")["acquisition_qc"]
    for well in LABKEY_WELLS:
        assert qc[well].count("optional population 'Singlets' not gated (no FSC-H)") == 1


@pytest.mark.slow
def test_every_other_real_file_runs_through(shared_data, tmp_path):
    """No crash, no hang: each file is counted or fails alone with one line; files with >= 1000 T cells (enough
    events for a density valley on each axis) give CD4 T and CD8 T each 10-85 % of T cells."""
    panels = {"omip021_fortessa": "omip021_fortessa.csv", "peacoqc_lsrii": "peacoqc_lsrii.csv",
              "metacyto_sdy736_lsrii": "metacyto_sdy736_lsrii.csv"}
    files = sorted(p for p in (shared_data / "real_gating").glob("*/*.fcs") if p.parent.name != "ique3_pbmc_treg")
    rows = [{"sample": f"{p.parent.name}/{p.stem}", "file": str(p), "subject": f"s{i:02d}", "timepoint": "T",
             "day": 0, "panel": str(PANELS / panels[p.parent.name]) if p.parent.name in panels else ""}
            for i, p in enumerate(files)]
    result = run_sheet(tmp_path, rows)
    counted = set(result.treg["sample"])
    failed = result.failures.set_index("sample")["reason"]
    assert counted | set(failed.index) == {r["sample"] for r in rows} and not counted & set(failed.index)
    for sample, reason in failed.items():
        assert "\n" not in reason and "Traceback" not in reason
        assert not reason.split(":")[0].endswith("Error"), (sample, reason)  # a CytopipeError, not a bug
    pops = result.populations.set_index(["sample", "population"])["count"]
    well_populated = [s for s in counted if pops[(s, "T cells")] >= 1000]
    assert len(well_populated) >= 3  # OMIP-021 Donor1/2, PeacoQC 111
    for sample in well_populated:
        for name in ("CD4 T", "CD8 T"):
            assert 10.0 <= 100.0 * pops[(sample, name)] / pops[(sample, "T cells")] <= 85.0, (sample, name)

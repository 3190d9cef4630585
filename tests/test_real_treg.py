"""The shipped CD25+ CD127low strategy against an expert's gates on real PBMC (``real_gating/ique3_pbmc_treg``).

The files were exported from FlowJo after the expert's CD3+ CD4+ gate and carry no ``$PnS`` (``panel.csv`` names
the markers); the expert's Treg subsets (memory + naive) are exact row subsets of each well's CD3+CD4+ file, so the
expert's per-event membership is known (rows matched on FSC-H, SSC-H, BL1-H, VL1-H, FSC-A; see SOURCES.md). One
strategy file, ``gates/treg_cd127.yaml``, for every well, through the command line: ``cytopipe run`` (Treg % per
well, the CD25 isotype well B01 as ``role: isotype:CD25``) and ``cytopipe gate --out events.csv`` (the 0/1 ``Treg``
column).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.cli import main
from cytopipe.fcs import read_fcs

REPO = Path(__file__).resolve().parents[1]
GATES = REPO / "gates" / "treg_cd127.yaml"
WELLS = ("A01", "C01", "C03", "D01", "D03")
KEY = ["FSC-H", "SSC-H", "BL1-H", "VL1-H", "FSC-A"]


@pytest.fixture(scope="module")
def ique3(shared_data: Path) -> Path:
    folder = shared_data / "real_gating" / "ique3_pbmc_treg"
    if not (folder / "flowjo_answers.csv").is_file():
        pytest.skip(f"{folder} is absent")
    return folder


def _wells(folder: Path) -> pd.DataFrame:
    answers = pd.read_csv(folder / "flowjo_answers.csv")
    return answers[answers["well"].isin(WELLS)].set_index("well")


def _expert(folder: Path, cd3cd4: str) -> np.ndarray:
    """Per-event expert Treg membership of a CD3+CD4+ file: its rows found in the Treg memory and naive files."""
    sample = read_fcs(folder / cd3cd4)
    rows = sample.events[:, [sample.channels.index(c) for c in KEY]]
    treg: set[tuple] = set()
    for part in ("memory", "naive"):
        subset = read_fcs(folder / cd3cd4.replace("CD3+CD4+", f"T_reg_{part}"))
        treg |= set(map(tuple, subset.events[:, [subset.channels.index(c) for c in KEY]].tolist()))
    return np.array([tuple(r) in treg for r in rows.tolist()])


@pytest.mark.slow
def test_treg_cd127_agrees_with_the_expert_on_real_pbmc(ique3: Path, tmp_path: Path, capsys) -> None:
    wells = _wells(ique3)
    isotype = ique3 / "CD25-controls" / "Well_B01_CD3+CD4+_isotype-control.fcs"
    rows = [{"file": str(ique3 / f), "subject": "donor", "timepoint": well, "day": i, "baseline": i == 0,
             "role": "sample"} for i, (well, f) in enumerate(wells["file"].items())]
    rows.append({"file": str(isotype), "subject": "donor", "timepoint": "B01", "day": 0, "baseline": False,
                 "role": "isotype:CD25"})
    sheet = tmp_path / "sheet.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    out = tmp_path / "results"
    code = main(["run", str(sheet), "--gates", str(GATES), "--panel", str(ique3 / "panel.csv"),
                 "--pregated", "CD4+", "--out", str(out), "--workers", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    treg = pd.read_csv(out / "treg.csv").set_index("timepoint")
    lines = []
    for well, answer in wells.iterrows():
        events = tmp_path / f"{well}.csv"
        assert main(["gate", str(ique3 / answer["file"]), "--gates", str(GATES), "--panel",
                     str(ique3 / "panel.csv"), "--pregated", "CD4+", "--control", f"isotype:CD25={isotype}",
                     "--out", str(events)]) == 0
        ours = pd.read_csv(events)["Treg"].to_numpy().astype(bool)
        expert = _expert(ique3, answer["file"])
        assert ours.size == expert.size == answer["cd3cd4_events"]
        f1 = 2 * int((ours & expert).sum()) / int(ours.sum() + expert.sum())
        pct = float(treg.loc[well, "treg_pct"])
        # the run and the per-event command gate the same events
        assert pct == pytest.approx(100 * ours.mean(), abs=1e-9)
        lines.append(f"{well}: cytopipe {pct:.2f} %  expert {answer['treg_pct_of_cd3cd4']:.2f} %  F1 {f1:.3f}")
        assert abs(pct - answer["treg_pct_of_cd3cd4"]) <= 0.5, lines[-1]
        assert f1 >= 0.80, lines[-1]
    print("\n" + "\n".join(lines))


def test_treg_cd127_without_its_control_falls_back_or_fails_in_one_line(ique3: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """Without a control tube the shipped file gates with its control-free tail boundary; with
    ``control_required: true`` it fails in one line naming the population and the roles."""
    well = ique3 / "Well_A01_CD3+CD4+.fcs"
    args = ["gate", str(well), "--panel", str(ique3 / "panel.csv"), "--pregated", "CD4+"]
    assert main([*args, "--gates", str(GATES), "--out", str(tmp_path / "events.csv")]) == 0
    free = pd.read_csv(tmp_path / "events.csv")["Treg"].to_numpy().astype(bool)
    isotype = ique3 / "CD25-controls" / "Well_B01_CD3+CD4+_isotype-control.fcs"
    assert main([*args, "--gates", str(GATES), "--control", f"isotype:CD25={isotype}",
                 "--out", str(tmp_path / "iso.csv")]) == 0
    with_isotype = pd.read_csv(tmp_path / "iso.csv")["Treg"].to_numpy().astype(bool)
    assert not (with_isotype & ~free).any()  # the isotype cut only removes events from the control-free region
    strict = tmp_path / "strict.yaml"
    text = GATES.read_text(encoding="utf-8")
    assert text.count("      control: [") == 1
    strict.write_text(text.replace("      control: [", "      control_required: true\n      control: ["))
    code = main([*args, "--gates", str(strict), "--out", str(tmp_path / "events.csv")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err
    assert "population 'Treg'" in err and "isotype:cd25" in err.casefold() and "fmo:cd25" in err.casefold()
    code = main([*args, "--gates", str(GATES), "--control", "isotype:CD25", "--out", str(tmp_path / "events.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "ROLE=FILE" in err and "\n" not in err

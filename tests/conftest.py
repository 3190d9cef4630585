"""Shared fixtures: the reference data in ``../shared/data`` (never copied into the repo), a report results folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CYTOPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require_shared() -> bool:
    return os.environ.get("CYTOPIPE_REQUIRE_SHARED", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips (or fails under CYTOPIPE_REQUIRE_SHARED=1) when it is absent."""
    if not SHARED_DATA.is_dir():
        message = f"reference data folder {SHARED_DATA} is absent (it sits beside the repo in CI)"
        if _require_shared():
            pytest.fail(message + " and CYTOPIPE_REQUIRE_SHARED=1 demands it")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# Subject -> [(timepoint, day, cd4_events, treg_events, platelets)]; one subject name is an XSS probe.
REPORT_STUDY = {
    "ITP-01": [("D0", 0, 20000, 600, 36), ("W1", 7, 21000, 1100, 41), ("W3", 21, 19500, 1700, 85),
               ("W6", 42, 20500, 1000, 60)],
    "ITP-02": [("D0", 0, 22000, 880, 40), ("W1", 7, 21000, 860, 38), ("W3", 21, 20000, 830, 42)],
    "<script>alert(1)</script>": [("D0", 0, 1500, 60, 50), ("W1", 7, 1600, 70, 55)],
}
_GATE_TEXT = "name: Treg <b>bold</b>\npopulations:\n  - name: Lymphocytes\n"


def one_gate_scatter(name: str, n_events: int) -> tuple[Any, Any]:
    """``(strategy, result)``: ``n_events`` normal FSC-A/SSC-A events (seed 3) gated by one rectangle named
    ``name`` (40,000-60,000 on both axes), uncompensated: the smallest input of a gating figure."""
    from cytopipe.fcs import Sample
    from cytopipe.gates import Dimension, GatingStrategy, Population, RectangleGate

    rng = np.random.default_rng(3)
    events = rng.normal(50000, 9000, (n_events, 2)).astype(np.float32)
    sample = Sample("", events, ("FSC-A", "SSC-A"), ("", ""), {}, "FCS3.1")
    gate = RectangleGate(name, (Dimension("FSC-A"), Dimension("SSC-A")), min=(40000, 40000), max=(60000, 60000))
    strategy = GatingStrategy((Population(name, gate, None),), compensation="none")
    return strategy, strategy.apply(sample)


def _gating_svg(path: Path) -> None:
    """A gating figure as ``cytopipe run`` writes it: one density panel of a gate, titled with a hostile name."""
    from cytopipe.pipeline import _draw_plot

    strategy, result = one_gate_scatter("<i>Lymphocytes</i>", 2000)
    assert Path(_draw_plot(result, strategy, path.stem[len("gating_"):], None, str(path.parent))) == path


def build_results_folder(root: Path, *, clinical: bool = True) -> Path:
    """A results folder as ``cytopipe run`` writes it (tables, manifest, one gating plot, a failure).

    The study is :data:`REPORT_STUDY`; with ``clinical``, ``root / "clinical.csv"`` holds platelet and lymphocyte
    counts for it.
    """
    out = root / "results"
    out.mkdir()
    treg_rows, pop_rows = [], []
    for subject, visits in REPORT_STUDY.items():
        for tp, day, cd4, treg, _ in visits:
            sample = f"{subject}_{tp}"
            pct = 100 * treg / cd4
            treg_rows.append({"sample": sample, "subject": subject, "timepoint": tp, "day": day, "cd4_events": cd4,
                              "treg_events": treg, "treg_pct": pct, "ci_low": np.nan, "ci_high": np.nan,
                              "baseline": "true" if day == 0 else "false"})
            pop_rows.append({"sample": sample, "subject": subject, "timepoint": tp, "day": day,
                             "population": "Lymphocytes", "parent": "", "count": cd4 * 3, "pct_parent": 60.0,
                             "pct_total": 60.0})
    pd.DataFrame(treg_rows).to_csv(out / "treg.csv", index=False)
    pd.DataFrame(pop_rows).to_csv(out / "populations.csv", index=False)
    pd.DataFrame([{"sample": "ITP-02_W6", "file": "ITP-02_W6.fcs", "stage": "read",
                   "reason": "truncated file <DATA> segment"}]).to_csv(out / "failures.csv", index=False)
    pd.DataFrame([{"sample": "ITP-01_D0", "population": "CD25high", "threshold": 2.61}]).to_csv(
        out / "gates_fitted.csv", index=False)
    _gating_svg(out / "plots" / "gating_ITP-01_D0.svg")
    manifest = {
        "cytopipe": "0.1.0",
        "versions": {"cytopipe": "0.1.0", "numpy": "2.4.0"},
        "gates": {"path": "gates/treg.yaml", "sha256": "ab" * 32, "text": _GATE_TEXT},
        "inputs": [{"sample": "ITP-01_D0", "file": "sample_fcs/ITP-01_D0.fcs", "sha256": "cd" * 32}],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    if clinical:
        rows = [{"subject": s, "day": d, "platelets": p, "lymphocytes_per_ul": 1500}
                for s, visits in REPORT_STUDY.items() for _, d, _, _, p in visits]
        # A platelet count on a day without a blood draw for cytometry.
        rows.append({"subject": "ITP-01", "day": 28, "platelets": 80, "lymphocytes_per_ul": 1400})
        pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    return out


@pytest.fixture(scope="session")
def results_folder() -> Callable[..., Path]:
    """:func:`build_results_folder`: ``results_folder(root, clinical=True) -> root / "results"``."""
    return build_results_folder


@pytest.fixture(scope="session")
def report_study() -> dict[str, list[tuple[str, int, int, int, int]]]:
    """The subjects and visits of :func:`build_results_folder`'s results folder."""
    return REPORT_STUDY

"""Validation of the default data-driven strategy (``gates/treg.yaml``) on simulated studies from three
instrument styles, against the simulator's per-event truth (issue 5's acceptance criteria).

Every file is written to disk and read back through the real reader, compensated from its own keyword and gated by
gates fitted on that file alone. Run ``pytest tests/test_autogate_validation.py -s`` to print the accuracy table;
the fitting overhead is measured by ``benchmarks/bench_autogate.py``, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe import autogate
from cytopipe import simulate as sim
from cytopipe.errors import MarkerError
from cytopipe.fcs import read_fcs, write_fcs
from cytopipe.gatefile import load_strategy
from cytopipe.pipeline import SampleTask, choose_spillover, process_sample
from cytopipe.stats import baseline_table

REPO = Path(__file__).resolve().parents[1]
AUTO_YAML = REPO / "gates" / "treg.yaml"
STYLES = ("bd", "attune", "navios")

pytestmark = pytest.mark.slow


def _gate_study(folder: Path, strategy) -> pd.DataFrame:
    """treg.csv-like rows for every file of a written study, gates fitted per file."""
    sheet = pd.read_csv(folder / "study.csv")
    rows = []
    for rec in sheet.itertuples(index=False):
        sample = read_fcs(folder / rec.file)
        spillover = choose_spillover(sample, strategy)
        fitted, _ = autogate.fit_strategy(strategy, [sample], spillover=spillover)
        result = fitted.apply(sample, spillover)
        n, k = result.counts["CD4+"], result.counts["Treg"]
        rows.append({"sample": Path(rec.file).stem, "file": rec.file, "subject": rec.subject,
                     "timepoint": rec.timepoint, "day": rec.day, "baseline": rec.baseline,
                     "cd4_events": n, "treg_events": k, "treg_pct": 100.0 * k / n})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> pd.DataFrame:
    """Per style and file: true and estimated Treg %, true and estimated fold change against baseline."""
    strategy = load_strategy(AUTO_YAML)
    tables = []
    for style in STYLES:
        folder = tmp_path_factory.mktemp(f"study_{style}")
        truth = sim.write_study(folder, style=style)
        table = _gate_study(folder, strategy).merge(truth[["file", "treg_pct_true"]], on="file")
        table.insert(0, "style", style)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    base = table[table["day"] == 0].set_index(["style", "subject"])
    key = list(zip(table["style"], table["subject"], strict=True))
    table["fc"] = table["treg_pct"].to_numpy() / base.loc[key, "treg_pct"].to_numpy()
    table["fc_true"] = table["treg_pct_true"].to_numpy() / base.loc[key, "treg_pct_true"].to_numpy()
    with pd.option_context("display.width", 160, "display.max_rows", 100):
        print("\n" + table[["style", "subject", "timepoint", "treg_pct_true", "treg_pct", "fc_true", "fc"]]
              .round(3).to_string(index=False))
    return table


def test_every_sample_within_one_point_of_truth(studies):
    error = (studies["treg_pct"] - studies["treg_pct_true"]).abs()
    assert len(studies) == 36
    assert error.max() <= 1.0, studies.loc[error.idxmax()].to_dict()


def test_every_fold_change_within_ten_percent(studies):
    later = studies[studies["day"] > 0]
    relative = (later["fc"] / later["fc_true"] - 1).abs()
    assert relative.max() <= 0.10, later.loc[relative.idxmax()].to_dict()


def test_responder_rises_and_non_responder_does_not(studies):
    for style, table in studies.groupby("style"):
        compared = baseline_table(table.drop(columns=["style", "file", "treg_pct_true", "fc", "fc_true"]))
        rises = compared[compared["direction"] == "rise"]
        assert "ITP-02" not in set(rises["subject"]), (style, rises)
        responder = compared[(compared["subject"] == "ITP-01") & compared["timepoint"].isin(["W2", "W3", "W4"])]
        assert (responder["direction"] == "rise").all(), (style, responder)


@pytest.mark.parametrize(("style", "seed"), [("bd", 1), ("navios", 2)])
def test_varied_biology_stays_accurate(tmp_path, style, seed):
    """Subjects drawn from realistic ranges of lymphocyte fraction, CD4/CD8 ratio, CD25 brightness (0.7-1.4x)
    and fix/perm scatter shift."""
    truth = sim.write_study(tmp_path, style=style, seed=seed, vary=True)
    table = _gate_study(tmp_path, load_strategy(AUTO_YAML)).merge(truth[["file", "treg_pct_true"]], on="file")
    base = table[table["day"] == 0].set_index("subject")
    fc = table["treg_pct"] / base.loc[table["subject"], "treg_pct"].to_numpy()
    fc_true = table["treg_pct_true"] / base.loc[table["subject"], "treg_pct_true"].to_numpy()
    assert (table["treg_pct"] - table["treg_pct_true"]).abs().max() <= 1.0
    assert (fc / fc_true - 1).abs().max() <= 0.10


def test_fitted_gates_follow_the_instrument(tmp_path):
    """The same biology on three instruments: thresholds land at the same logicle decades (T follows $PnR)."""
    strategy = load_strategy(AUTO_YAML)
    cuts = {}
    for style in STYLES:
        spec = sim.SampleSpec(n_events=40_000, style=style, file=f"{style}.fcs")
        path = tmp_path / spec.file
        sim.write_sample(path, sim.simulate_sample(spec, np.random.default_rng(5)), style)
        sample = read_fcs(path)
        _, rows = autogate.fit_strategy(strategy, [sample], spillover=choose_spillover(sample, strategy))
        cuts[style] = {r["population"]: r for r in rows}
    for style in ("attune", "navios"):
        # Navios stores integers clipped at 0, which moves the negative populations; positives stay put.
        assert abs(cuts[style]["Treg"]["FoxP3 min"] - cuts["bd"]["Treg"]["FoxP3 min"]) < 0.35
        assert abs(cuts[style]["CD3+"]["CD3 min"] - cuts["bd"]["CD3+"]["CD3 min"]) < 0.35


def test_removing_a_marker_names_the_marker_and_population(tmp_path):
    spec = sim.SampleSpec(n_events=20_000, style="attune", file="nocd4.fcs")
    out = sim.simulate_sample(spec, np.random.default_rng(9))
    # The tube was acquired without the CD4 antibody: the detector is there, its $PnS label is not.
    markers = ["" if m.startswith("CD4 ") else m for m in out.markers]
    assert markers != list(out.markers)
    path = tmp_path / "nocd4.fcs"
    metadata = {k: v for k, v in out.metadata.items() if not k.startswith("$P")}
    write_fcs(path, out.events, out.channels, markers, metadata)
    strategy = load_strategy(AUTO_YAML)
    sample = read_fcs(path)
    with pytest.raises(MarkerError, match=r"population 'CD4\+' needs marker 'CD4'"):
        autogate.fit_strategy(strategy, [sample])
    result = process_sample(SampleTask("nocd4", str(path), strategy, treg="Treg", parent="CD4+"))
    assert result.failure is not None and result.failure["stage"] == "gate"
    assert "population 'CD4+' needs marker 'CD4'" in result.failure["reason"]

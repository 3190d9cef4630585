"""Control tubes of a tail gate (``gates/treg_cd127.yaml``): a list of acceptable roles in order of preference, the
control-free fallback when the sheet has none of them (said in ``acquisition_qc`` and ``gates_fitted.csv``), and
``control_required: true`` for the strict behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe import autogate
from cytopipe import simulate as sim
from cytopipe.adapt import fallback_notes
from cytopipe.cli import main
from cytopipe.errors import GateError
from cytopipe.fcs import Sample
from cytopipe.gatefile import dump_yaml, load_strategy, parse_gates

REPO = Path(__file__).resolve().parents[1]
CD127_YAML = REPO / "gates" / "treg_cd127.yaml"
ROLES = "control: [isotype:CD25, fmo:CD25, unstained]"


def _sample(seed: int, **biology: float) -> Sample:
    spec = sim.SampleSpec(biology=sim.Biology(**biology), n_events=30_000, style="bd", file=f"bd_{seed}.fcs")
    out = sim.simulate_sample(spec, np.random.default_rng(seed))
    return Sample(f"bd_{seed}.fcs", out.events, out.channels, out.markers, out.metadata, "FCS3.1")


@pytest.fixture(scope="module")
def tubes() -> tuple[Sample, Sample]:
    """A stained tube and an FMO-CD25 tube (the same cells without the CD25 antibody)."""
    return _sample(7, treg_pct=6.0), _sample(8, treg_pct=6.0, cd25_brightness=1e-6)


def _variant(old: str, new: str) -> object:
    text = CD127_YAML.read_text(encoding="utf-8")
    assert text.count(old) == 1
    return parse_gates(text.replace(old, new), "variant.yaml")


def test_control_roles_parse_and_round_trip() -> None:
    strategy = load_strategy(CD127_YAML)
    gate = strategy.population("Treg").gate
    assert gate.controls == ("isotype:CD25", "fmo:CD25", "unstained")
    assert gate.required_controls == ()  # none is required: the gate falls back to its control-free boundary
    again = parse_gates(dump_yaml(strategy), "again.yaml").population("Treg").gate
    assert again == gate
    # The single-string form still works and means one role.
    single = _variant(ROLES, "control: isotype:CD25").population("Treg").gate
    assert single.controls == ("isotype:CD25",) and single.control == "isotype:CD25"
    strict = _variant(ROLES, ROLES + "\n      control_required: true").population("Treg").gate
    assert strict.required_controls == (("isotype:CD25", "fmo:CD25", "unstained"),)
    for bad, message in (("control: [isotype:CD25, 3]", "Treg': gate.control: expected a sample-sheet role"),
                         ("control: []", "gate.control: expected"),
                         ("control: isotype:CD25\n      control_required: yes please", "control_required: expected"),
                         ("control_required: true", "control_required: needs control")):
        text = CD127_YAML.read_text(encoding="utf-8").replace(ROLES, bad)
        with pytest.raises(GateError, match=message) as err:
            parse_gates(text, "bad.yaml")
        assert "\n" not in str(err.value)


def test_no_control_falls_back_to_the_control_free_boundary(tubes) -> None:
    sample, _ = tubes
    fitted, rows = autogate.fit_strategy(load_strategy(CD127_YAML), [sample])
    row = rows[-1]
    assert row["population"] == "Treg" and row["control"] == "none"
    assert "control CD25" not in row
    # The same boundary as the gate written without any control: same robust centre, covariance and k.
    plain, plain_rows = autogate.fit_strategy(_variant("      " + ROLES + "\n", ""), [sample])
    assert fitted.population("Treg").gate == plain.population("Treg").gate
    assert "control" not in plain_rows[-1]
    # The note treg.csv's acquisition_qc gets for the sample, once.
    assert fallback_notes(rows) == ["population 'Treg': no control tube in the sheet, tail boundary without a "
                                    "control cut"]
    assert fallback_notes(plain_rows) == []


def test_fmo_role_accepted_and_preference_order(tubes) -> None:
    sample, fmo = tubes
    strategy = load_strategy(CD127_YAML)
    fitted, rows = autogate.fit_strategy(strategy, [sample], controls={"FMO:cd25": fmo})
    assert rows[-1]["control"] == "fmo:CD25"
    # The X cut is the 99th percentile of CD25 on the FMO tube's CD4+ cells gated by the sample's fitted gates.
    treg = fitted.population("Treg").gate
    gated = fitted.apply(fmo)
    cd25 = gated.values(treg)[gated.masks["CD4+"], 0].astype(float)
    cut = np.percentile(cd25, 99)
    vertices = np.asarray(treg.vertices)
    assert vertices[:, 0].min() >= cut - 1e-9
    assert rows[-1]["control CD25"] > rows[-1]["center CD25"]
    # With the control cut the region is a subset of the control-free one.
    free, _ = autogate.fit_strategy(strategy, [sample])
    a, b = fitted.apply(sample), free.apply(sample)
    assert not (a.masks["Treg"] & ~b.masks["Treg"]).any()
    # The first listed role the sheet has wins: the isotype before the FMO tube.
    _, both = autogate.fit_strategy(strategy, [sample], controls={"fmo:CD25": fmo, "isotype:CD25": sample})
    assert both[-1]["control"] == "isotype:CD25"


def test_unstained_tube_is_read_on_the_last_population_it_reaches(tubes) -> None:
    """An unstained tube has no CD3+ CD4+ cells: its CD25 background is read on its Singlets, and the row says so."""
    sample, _ = tubes
    spec = sim.SampleSpec(biology=sim.Biology(treg_pct=6.0), n_events=30_000, style="bd", file="unstained.fcs",
                          unstained=tuple(sim.PANEL))
    out = sim.simulate_sample(spec, np.random.default_rng(9))
    unstained = Sample("unstained.fcs", out.events, out.channels, out.markers, out.metadata, "FCS3.1")
    fitted, rows = autogate.fit_strategy(load_strategy(CD127_YAML), [sample], controls={"unstained": unstained})
    assert rows[-1]["control"] == "unstained (on Singlets)"
    gated = fitted.apply(unstained)
    assert gated.counts["CD4+"] < 50 <= gated.counts["Singlets"]
    cd25 = gated.values(fitted.population("Treg").gate)[gated.masks["Singlets"], 0].astype(float)
    cut = fitted.population("Treg").gate.dimensions[0]
    # Fitting reads every k-th event of a tube of more than 50,000 events only: this one is read whole.
    expected = autogate.from_units(float(np.percentile(cd25, 99)), cut.transform)
    assert rows[-1]["control CD25"] == pytest.approx(expected, abs=1e-6)


def test_control_required_errors_in_one_line(tubes) -> None:
    sample, fmo = tubes
    strict = _variant(ROLES, ROLES + "\n      control_required: true")
    with pytest.raises(GateError) as err:
        autogate.fit_strategy(strict, [sample])
    message = str(err.value)
    assert "\n" not in message
    assert "population 'Treg': needs one of the controls 'isotype:cd25', 'fmo:cd25', 'unstained'" in message
    _, rows = autogate.fit_strategy(strict, [sample], controls={"unstained": fmo})
    assert rows[-1]["control"] == "unstained"
    single = _variant(ROLES, "control: fmo:CD25\n      control_required: true")
    with pytest.raises(GateError, match="population 'Treg': needs the control 'fmo:cd25' .*none given$"):
        autogate.fit_strategy(single, [sample])


def test_threshold_control_accepts_a_list(tubes) -> None:
    sample, fmo = tubes
    text = (REPO / "gates" / "treg.yaml").read_text(encoding="utf-8")
    old = "{side: above, method: reference, population: CD4- T, percentile: 99}"
    assert old in text
    strategy = parse_gates(text.replace(old, "{side: above, method: control, control: [isotype:CD25, fmo:CD25], "
                                             "percentile: 99.5}"), "list.yaml")
    fitted, rows = autogate.fit_strategy(strategy, [sample], controls={"fmo:CD25": fmo})
    assert rows[-1]["CD25 method"] == "control p99.5" and rows[-1]["CD25 control"] == "fmo:CD25"
    assert parse_gates(dump_yaml(strategy), "again.yaml").populations == strategy.populations
    # A threshold cut has no control-free form: none of its roles is an error naming them, in one line.
    with pytest.raises(GateError, match="needs one of the controls 'isotype:cd25', 'fmo:cd25'"):
        autogate.fit_strategy(strategy, [sample])


def test_run_without_control_succeeds_and_says_so(tmp_path: Path, capsys) -> None:
    """``cytopipe run --gates treg_cd127``: a subject with an FMO-CD25 tube uses it; a subject without any control
    is gated with the control-free boundary, said once in acquisition_qc; control_required fails that sample alone."""
    study = tmp_path / "study"
    sim.write_study(study, n_events=10_000, controls=("CD25",))
    sheet = pd.read_csv(study / "study.csv")
    keep = (sheet["timepoint"] == "baseline") & ((sheet["role"] == "sample") | (sheet["subject"] == "ITP-01"))
    sheet[keep].to_csv(study / "small.csv", index=False)
    assert set(sheet[keep]["role"]) == {"sample", "fmo:CD25"}
    out = tmp_path / "r"
    code = main(["run", str(study / "small.csv"), "--gates", "treg_cd127", "--out", str(out), "--workers", "1",
                 "--quiet", "--no-pdf"])
    assert code == 0, capsys.readouterr().err
    treg = pd.read_csv(out / "treg.csv", keep_default_na=False).set_index("subject")
    note = "population 'Treg': no control tube in the sheet, tail boundary without a control cut"
    assert treg.loc["ITP-02", "acquisition_qc"].count(note) == 1
    assert "control" not in treg.loc["ITP-01", "acquisition_qc"]
    fitted = pd.read_csv(out / "gates_fitted.csv").query("population == 'Treg'").set_index("subject")
    assert fitted.loc["ITP-01", "control"] == "fmo:CD25" and fitted.loc["ITP-02", "control"] == "none"
    assert np.isnan(fitted.loc["ITP-02", "control CD25"]) and fitted.loc["ITP-01", "control CD25"] > 0
    assert pd.read_csv(out / "failures.csv").empty

    strict = tmp_path / "strict.yaml"
    strict.write_text(CD127_YAML.read_text(encoding="utf-8").replace(ROLES, ROLES + "\n      control_required: true"))
    code = main(["run", str(study / "small.csv"), "--gates", str(strict), "--out", str(tmp_path / "s"), "--workers",
                 "1", "--quiet", "--no-pdf"])
    assert code == 1
    failures = pd.read_csv(tmp_path / "s" / "failures.csv")
    assert list(failures["sample"]) == ["ITP-02_baseline"]
    reason = failures["reason"].iloc[0]
    assert "\n" not in reason and "population 'Treg': needs one of the controls 'isotype:cd25'" in reason

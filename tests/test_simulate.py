"""The simulator: determinism, realistic composition, stored spillover, bundled study provenance, instrument styles.

Expectations come from the design (DOMAIN.md ranges, the study trajectory, the phenotype medians) and from
independent numpy arithmetic (compensation by the inverse spillover, gates evaluated with matplotlib paths), never
from the simulator's own summary code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.path import Path as PolygonPath

from cytopipe import simulate
from cytopipe.compensate import spillover_from_metadata
from cytopipe.fcs import read_fcs
from cytopipe.samplesheet import read_sample_sheet
from cytopipe.simulate import (
    FLUOROCHROMES,
    PANEL,
    POPULATIONS,
    STYLES,
    Biology,
    SampleSpec,
    simulate_sample,
    study_specs,
    truth_counts,
    write_study,
)
from cytopipe.simulate.biology import _AF_SPECTRUM, _PHENOTYPES
from cytopipe.transforms import Logicle

T_CELLS = ("CD8 T", "CD8 T CD25+", "DN T", "CD4 Tconv", "CD4 activated", "Treg")
LYMPHOCYTES = ("B", "NK", *T_CELLS)
CD4 = ("CD4 Tconv", "CD4 activated", "Treg")


def _count(labels: np.ndarray, names: tuple[str, ...]) -> int:
    return int(np.isin(labels, [POPULATIONS.index(n) for n in names]).sum())


def _compensate(events: np.ndarray, channels: tuple[str, ...], style: str) -> tuple[np.ndarray, list[int]]:
    """Compensate with numpy: raw detectors @ inv(spillover)."""
    spec = STYLES[style]
    columns = [channels.index(d) for d in spec.detectors]
    out = events.astype(np.float64)
    out[:, columns] = out[:, columns] @ np.linalg.inv(np.asarray(spec.spillover))
    return out, columns


@pytest.fixture(scope="module")
def bundled(repo: Path) -> Path:
    folder = repo / "sample_fcs"
    if not (folder / "truth.csv").is_file():
        pytest.fail("sample_fcs/ is empty: run `python -m cytopipe.simulate` to write the bundled study")
    return folder


@pytest.fixture(scope="module")
def bundled_samples() -> list[tuple[SampleSpec, simulate.SimulatedSample]]:
    """The bundled study's events with their labels (simulated once per test module)."""
    return [(spec, simulate_sample(spec, rng)) for spec, rng in study_specs()]


def test_same_seed_gives_identical_arrays_and_other_seed_differs():
    spec = SampleSpec(n_events=4000)
    first = simulate_sample(spec, np.random.default_rng(7))
    again = simulate_sample(spec, np.random.default_rng(7))
    other = simulate_sample(spec, np.random.default_rng(8))
    assert first.events.dtype == np.float32 and first.events.shape == (4000, 11)
    assert first.events.flags.c_contiguous
    np.testing.assert_array_equal(first.events, again.events)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.metadata == again.metadata
    assert not np.array_equal(first.events, other.events)


def test_written_files_are_byte_identical_for_one_seed(tmp_path):
    write_study(tmp_path / "a", n_events=1500, seed=3)
    write_study(tmp_path / "b", n_events=1500, seed=3)
    write_study(tmp_path / "c", n_events=1500, seed=4)
    a, b, c = (simulate.file_digests(tmp_path / d) for d in "abc")
    assert len(a) == 15 and a == b
    assert a["ITP-01_W4.fcs"] != c["ITP-01_W4.fcs"]


def test_bundled_study_is_exactly_the_simulators_output(bundled, tmp_path):
    truth = write_study(tmp_path)
    assert simulate.file_digests(tmp_path) == simulate.file_digests(bundled)
    pd.testing.assert_frame_equal(truth, pd.read_csv(bundled / "truth.csv"))


def test_events_are_shuffled_and_time_runs_forward():
    sample = simulate_sample(SampleSpec(n_events=5000), np.random.default_rng(1))
    # Sorted labels would give ~13 runs; a shuffled mixture gives thousands.
    assert np.count_nonzero(np.diff(sample.labels.astype(int))) > 2000
    time = sample.events[:, sample.channels.index("Time")]
    assert np.all(np.diff(time) >= 0)
    assert 2.5 < time[-1] * float(sample.metadata["$TIMESTEP"]) < 4.5  # 5,000 events at ~1,500 events/s


@pytest.mark.parametrize("vary_seed", [None, 11, 12, 13])
def test_composition_is_within_normal_ranges(vary_seed):
    specs = study_specs(n_events=20_000, **({} if vary_seed is None else {"seed": vary_seed, "vary": True}))
    for spec, rng in specs:
        labels = simulate_sample(spec, rng).labels
        lymph, t, cd4 = _count(labels, LYMPHOCYTES), _count(labels, T_CELLS), _count(labels, CD4)
        cd8 = _count(labels, ("CD8 T", "CD8 T CD25+"))
        assert 0.55 <= t / lymph <= 0.88, spec.file
        assert 0.50 <= cd4 / t <= 0.70, spec.file
        assert 0.7 <= cd4 / cd8 <= 3.9, spec.file
        assert 0.45 <= lymph / labels.size <= 0.75, spec.file  # lymphocytes among all events, incl. debris
        for noise in ("debris", "dead", "doublet"):
            assert 0.02 <= _count(labels, (noise,)) / labels.size <= 0.10, (spec.file, noise)


def test_truth_counts_from_labels():
    names = ["Treg", "Treg", "CD4 Tconv", "CD4 activated", "doublet", "dead", "CD8 T", "debris"]
    labels = np.array([POPULATIONS.index(n) for n in names], dtype=np.uint8)
    assert truth_counts(labels) == {"cd4_true": 4, "treg_true": 2, "treg_pct_true": 50.0}


def test_bundled_treg_trajectory_follows_the_design(bundled):
    truth = pd.read_csv(bundled / "truth.csv")
    assert list(truth.columns[:7]) == ["file", "subject", "timepoint", "day", "cd4_true", "treg_true", "treg_pct_true"]
    assert (truth["n_events"] == 50_000).all()
    assert (truth["cd4_true"] > 5000).all()  # enough CD4 events for a tight interval
    pct = truth.set_index(["subject", "timepoint"])["treg_pct_true"]
    responder = pct["ITP-01"][["baseline", "W1", "W2", "W3", "W4", "W6"]].to_numpy()
    assert 2.5 <= responder[0] <= 3.6
    assert np.all(np.diff(responder[:5]) > 0)  # rises through W1-W4
    assert 9.0 <= responder[3:5].max() <= 11.0
    assert responder[4] / responder[0] > 2.5
    assert responder[0] < responder[5] < responder[4]  # eases at follow-up
    flat = pct["ITP-02"].to_numpy()
    assert np.all((flat > 3.3) & (flat < 5.0))
    assert flat.max() / flat.min() < 1.3  # wobble well below a 39% reference change value
    for row in truth.itertuples():
        # truth.csv holds the labels of the very events in each file
        assert 100 * row.treg_true / row.cd4_true == pytest.approx(row.treg_pct_true, abs=1e-4)


def test_bundled_sheets(bundled):
    sheet = read_sample_sheet(bundled / "study.csv")
    assert len(sheet) == 12 and all(Path(f).is_file() for f in sheet["file"])
    assert sheet.groupby("subject")["baseline"].sum().to_dict() == {"ITP-01": 1, "ITP-02": 1}
    assert set(sheet.loc[sheet["baseline"], "timepoint"]) == {"baseline"}
    clinical = pd.read_csv(bundled / "clinical.csv").set_index(["subject", "day"])["platelets"]
    assert clinical["ITP-01"].iloc[0] == 36 and clinical["ITP-01"].max() == 85
    # platelets lag Tregs: the peak comes after the Treg peak (W4)
    assert clinical["ITP-01"].idxmax() > 28
    assert clinical["ITP-02"].between(20, 32).all()


def test_spillover_is_stored_and_data_are_uncompensated():
    spec = SampleSpec(n_events=30_000)
    sample = simulate_sample(spec, np.random.default_rng(5))
    stored = spillover_from_metadata(sample.metadata, sample.channels)
    assert stored is not None and stored.source == "$SPILLOVER"
    np.testing.assert_allclose(stored.matrix, np.asarray(STYLES["bd"].spillover))
    assert stored.matrix[0, 1] == pytest.approx(0.165) and stored.matrix[1, 0] == pytest.approx(0.0125)

    compensated, columns = _compensate(sample.events, sample.channels, "bd")
    raw = sample.events.astype(np.float64)
    fitc, pe = columns[FLUOROCHROMES.index("FITC")], columns[FLUOROCHROMES.index("PE")]
    tconv = sample.labels == POPULATIONS.index("CD4 Tconv")
    # Raw PE of CD4-FITC-bright conventional cells carries ~16.5 % of their FITC signal; compensation removes it.
    spill = np.median(raw[tconv, pe]) - np.median(compensated[tconv, pe])
    assert spill == pytest.approx(0.165 * np.median(raw[tconv, fitc]), rel=0.1)
    # Compensation recovers each bright population's designed stain (plus its unmixed autofluorescence).
    bio = spec.biology
    unmixed_af = _AF_SPECTRUM @ np.linalg.inv(np.asarray(STYLES["bd"].spillover))
    for population, phenotype in _PHENOTYPES.items():
        cells = sample.labels == POPULATIONS.index(population)
        for marker, (median, *rest) in phenotype.stains.items():
            if median < 1000 or len(rest) > 1:
                continue
            k = FLUOROCHROMES.index(PANEL[marker])
            expected = median * (bio.cd25_brightness * bio.treg_cd25_boost if marker == "CD25" else 1.0)
            expected += phenotype.autofluorescence * unmixed_af[k]
            column = columns[k]
            assert np.median(compensated[cells, column]) == pytest.approx(expected, rel=0.06), (population, marker)
    cd3 = columns[FLUOROCHROMES.index("APC-Cy7")]
    treg = sample.labels == POPULATIONS.index("Treg")
    assert np.median(raw[treg, cd3]) > 1.02 * np.median(compensated[treg, cd3])  # FoxP3 APC spills into APC-Cy7
    # Electronic noise spreads unstained cells around zero: negative values after compensation.
    b_cells = sample.labels == POPULATIONS.index("B")
    assert 0.05 < np.mean(compensated[b_cells, cd3] < 0) < 0.6


def test_biology_knobs_move_what_they_should():
    rng_seed = 9
    base = Biology()
    low = simulate_sample(SampleSpec(biology=dataclasses.replace(base, cd25_brightness=0.5), n_events=20_000),
                          np.random.default_rng(rng_seed))
    high = simulate_sample(SampleSpec(biology=dataclasses.replace(base, cd25_brightness=1.0), n_events=20_000),
                           np.random.default_rng(rng_seed))
    comp_low, columns = _compensate(low.events, low.channels, "bd")
    comp_high, _ = _compensate(high.events, high.channels, "bd")
    pe = columns[FLUOROCHROMES.index("PE")]
    treg = POPULATIONS.index("Treg")
    ratio = np.median(comp_low[low.labels == treg, pe]) / np.median(comp_high[high.labels == treg, pe])
    assert ratio == pytest.approx(0.5, rel=0.1)

    fresh = simulate_sample(SampleSpec(biology=dataclasses.replace(base, fixperm_shift=1.0), n_events=20_000),
                            np.random.default_rng(rng_seed))
    fixed = simulate_sample(SampleSpec(biology=dataclasses.replace(base, fixperm_shift=0.8), n_events=20_000),
                            np.random.default_rng(rng_seed))
    lymph = POPULATIONS.index("CD4 Tconv")
    fsc = fresh.channels.index("FSC-A")
    shift = np.median(fixed.events[fixed.labels == lymph, fsc]) / np.median(fresh.events[fresh.labels == lymph, fsc])
    assert shift == pytest.approx(0.8, rel=0.03)


@pytest.mark.parametrize("field, value", [("lymphocyte_fraction", 1.2), ("cd4_cd8_ratio", 0.0), ("treg_pct", -1.0),
                                          ("debris_fraction", 0.95)])
def test_biology_rejects_impossible_values(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Biology(), **{field: value})


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="style"):
        SampleSpec(style="aurora")
    with pytest.raises(ValueError, match="style"):
        study_specs(style="aurora")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_is_readable_with_markers_and_spillover(style, tmp_path):
    spec = SampleSpec(n_events=3000, style=style, file="x.fcs", subject="S1", timepoint="W1")
    sample = simulate_sample(spec, np.random.default_rng(2))
    path = tmp_path / "x.fcs"
    simulate.write_sample(path, sample, style)
    read = read_fcs(path)
    info = STYLES[style]
    assert read.channels == sample.channels and read.markers == sample.markers
    assert read.metadata["$CYT"] == info.cytometer
    np.testing.assert_array_equal(read.events, sample.events)  # float32 and integer data round-trip exactly
    for marker, fluor in PANEL.items():
        assert read.channels[read.find_channel(marker)] == info.detectors[FLUOROCHROMES.index(fluor)], marker
    for name in ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "Time"):
        read.find_channel(name)
    spill = spillover_from_metadata(read.metadata, read.channels)
    assert spill is not None and spill.source == info.spill_keyword
    assert spill.channels == info.detectors
    np.testing.assert_allclose(spill.matrix, np.asarray(info.spillover))
    assert {read.metadata[f"$P{i}R"] for i in range(1, len(read.channels) + 1)} == {str(info.range)}
    assert read.events.max() <= info.range - 1
    if info.integer:
        assert read.metadata["$DATATYPE"] == "I" and read.events.min() >= 0
        assert np.array_equal(read.events, np.rint(read.events))
    else:
        assert read.metadata["$DATATYPE"] == "F" and read.events.min() < 0  # baseline-restored negatives


def test_styles_differ_in_the_ways_instruments_do():
    names = {s.detectors for s in STYLES.values()}
    assert len(names) == len(STYLES) >= 3
    assert {s.range for s in STYLES.values()} >= {262_144, 1_048_576}
    assert {s.spill_keyword for s in STYLES.values()} == {"$SPILLOVER", "SPILL"}
    assert {s.integer for s in STYLES.values()} == {True, False}
    assert len({s.labels["FoxP3"] for s in STYLES.values()}) == len(STYLES)
    # Same seed and biology -> the same cells, so lymphocyte FSC-A scales with the style's gain.
    medians = {}
    for style in ("bd", "attune"):
        sample = simulate_sample(SampleSpec(n_events=5000, style=style), np.random.default_rng(4))
        cells = sample.labels == POPULATIONS.index("CD4 Tconv")
        medians[style] = np.median(sample.events[cells, sample.channels.index("FSC-A")])
    assert medians["attune"] / medians["bd"] == pytest.approx(STYLES["attune"].fsc_gain, rel=0.02)


def test_write_study_for_a_style_writes_sheets_and_truth(tmp_path):
    truth = write_study(tmp_path, style="navios", n_events=2000, vary=True, seed=5)
    assert len(truth) == 12 and (tmp_path / "study.csv").is_file() and (tmp_path / "clinical.csv").is_file()
    sheet = read_sample_sheet(tmp_path / "study.csv")
    first = read_fcs(sheet["file"].iloc[0])
    assert first.metadata["SPILL"].startswith("6,FL1-A,")
    assert first.find_channel("FoxP3") == first.channels.index("FL6-A")
    assert pd.read_csv(tmp_path / "truth.csv").equals(truth)


def test_command_line_writes_a_study(tmp_path, capsys):
    assert simulate.main(["--out", str(tmp_path), "--events", "1000", "--style", "attune", "--seed", "1"]) == 0
    assert "wrote 12 samples" in capsys.readouterr().out
    assert read_fcs(tmp_path / "ITP-02_W6.fcs").n_events == 1000
    with pytest.raises(SystemExit):
        simulate.main(["--style", "aurora"])


def _gate_masks(gate_file: Path, events: np.ndarray, channels: tuple[str, ...], markers: tuple[str, ...]):
    """Evaluate a fixed YAML gate file with numpy (independent of the gating engine)."""
    definition = yaml.safe_load(gate_file.read_text())
    compensated, _ = _compensate(events, channels, "bd")
    logicle = Logicle(T=262144, W=0.5, M=4.5, A=0)

    def values(name: str) -> np.ndarray:
        column = compensated[:, channels.index(name) if name in channels else markers.index(name)]
        return column if name[:3] in ("FSC", "SSC") else logicle.apply(column.astype(np.float32)) * 4.5

    masks: dict[str, np.ndarray] = {}
    for pop in definition["populations"]:
        gate = pop["gate"]
        data = np.column_stack([values(c) for c in gate["channels"]])
        if gate["type"] == "polygon":
            mask = PolygonPath(np.asarray(gate["vertices"], dtype=float)).contains_points(data)
        else:
            lows, highs = gate.get("min"), gate.get("max")
            lows = lows if isinstance(lows, list) else [lows]
            highs = highs if isinstance(highs, list) else [highs] * len(lows)
            mask = np.ones(len(data), dtype=bool)
            for j, (low, high) in enumerate(zip(lows, highs, strict=False)):
                if low is not None:
                    mask &= data[:, j] >= low
                if high is not None:
                    mask &= data[:, j] < high
        masks[pop["name"]] = mask & masks[pop["parent"]] if pop.get("parent") else mask
    return definition, masks


@pytest.mark.parametrize("gate_file", ["treg_fixed.yaml", "treg_cd127_fixed.yaml"])
def test_fixed_gates_match_truth_on_the_bundled_study(repo, bundled, bundled_samples, gate_file):
    truth = pd.read_csv(bundled / "truth.csv")
    for spec, sample in bundled_samples:
        definition, masks = _gate_masks(repo / "gates" / gate_file, sample.events, sample.channels, sample.markers)
        gated = 100 * masks[definition["treg"]].sum() / masks[definition["parent"]].sum()
        expected = truth.set_index("file").loc[spec.file, "treg_pct_true"]
        assert gated == pytest.approx(expected, abs=0.5), spec.file
        # the CD4+ gate holds true CD4 T cells, not monocytes or CD8 T cells
        labels = sample.labels[masks["CD4+"]]
        assert _count(labels, CD4) / labels.size > 0.97


def test_fmo_and_unstained_controls_leave_out_their_stain(tmp_path):
    truth = write_study(tmp_path, n_events=4000, controls=["CD25", "unstained"])
    sheet = read_sample_sheet(tmp_path / "study.csv")
    assert len(truth) == 12 and len(sheet) == 36
    assert sheet["role"].value_counts().to_dict() == {"sample": 12, "fmo:CD25": 12, "unstained": 12}
    assert sheet.loc[sheet["baseline"], "role"].eq("sample").all()
    specs = dict((spec.file, (spec, rng)) for spec, rng in study_specs(n_events=4000, controls=["CD25", "unstained"]))
    stained, fmo = (simulate_sample(*specs[f]) for f in ("ITP-01_W4.fcs", "ITP-01_W4_FMO-CD25.fcs"))
    unstained = simulate_sample(*specs["ITP-01_W4_unstained.fcs"])
    pe = FLUOROCHROMES.index("PE")
    comp = {name: _compensate(s.events, s.channels, "bd") for name, s in
            (("stained", stained), ("fmo", fmo), ("unstained", unstained))}
    treg = POPULATIONS.index("Treg")
    medians = {name: np.median(c[s.labels == treg, cols[pe]]) for (name, (c, cols)), s in
               zip(comp.items(), (stained, fmo, unstained), strict=True)}
    assert medians["stained"] > 2000 and abs(medians["fmo"]) < 150 and abs(medians["unstained"]) < 150
    # the FMO keeps the other stains: FoxP3 on Tregs is still bright
    apc = FLUOROCHROMES.index("APC")
    c, cols = comp["fmo"]
    assert np.median(c[fmo.labels == treg, cols[apc]]) > 1000
    assert read_fcs(tmp_path / "ITP-02_W1_unstained.fcs").metadata["TUBE NAME"] == "UNSTAINED W1"

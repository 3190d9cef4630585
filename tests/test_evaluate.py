"""The gating engine: its large-sample mode gives the numbers of the whole-sample mode and keeps no per-event values."""

from __future__ import annotations

import numpy as np
import pytest

import cytopipe.evaluate as engine
from cytopipe.fcs import Sample
from cytopipe.gates import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    GatingStrategy,
    PolygonGate,
    Population,
    QuadrantGate,
    RectangleGate,
)
from cytopipe.memo import Memo
from cytopipe.transforms import Logicle, Ratio

SPILL = np.array([[1.0, 0.15, 0.02], [0.03, 1.0, 0.2], [0.0, 0.05, 1.0]])
FLUOR = ("FITC-A", "PE-A", "APC-A")


def _sample(n: int, adjacent: bool, seed: int = 3) -> Sample:
    """Scatter, a Time channel (between two detectors when ``adjacent`` is False) and three spilling detectors."""
    rng = np.random.default_rng(seed)
    true = np.column_stack([rng.lognormal(6, 1.5, n), rng.lognormal(5, 2, n), rng.normal(300, 400, n)])
    fluor = (true @ SPILL).astype(np.float32)
    scatter = np.column_stack([rng.normal(5e4, 2e4, n), rng.normal(3e4, 1e4, n)]).astype(np.float32)
    time = np.arange(n, dtype=np.float32)[:, None]
    if adjacent:
        events = np.hstack([scatter, fluor, time])
        channels = ("FSC-A", "SSC-A", *FLUOR, "Time")
    else:
        events = np.hstack([scatter, fluor[:, :1], time, fluor[:, 1:]])
        channels = ("FSC-A", "SSC-A", "FITC-A", "Time", "PE-A", "APC-A")
    markers = tuple({"FITC-A": "CD4", "PE-A": "CD25", "APC-A": "FoxP3"}.get(c, "") for c in channels)
    spill = f"3,{','.join(FLUOR)},{','.join(f'{v:g}' for v in SPILL.ravel())}"
    return Sample("", np.ascontiguousarray(events), channels, markers, {"$SPILLOVER": spill}, "FCS3.1")


def _strategy() -> GatingStrategy:
    raw = (Dimension("FSC-A", None, "uncompensated"), Dimension("SSC-A", None, "uncompensated"))
    logicle = Logicle()
    cd4, cd25, foxp3 = Dimension("CD4", logicle), Dimension("CD25", logicle), Dimension("FoxP3", logicle)
    return GatingStrategy((
        Population("cells", PolygonGate("cells", raw, ((1e4, 5e3), (9e4, 5e3), (9.5e4, 5e4), (3e4, 5.5e4)))),
        Population("log scatter", RectangleGate("log scatter", (Dimension("SSC-A", logicle, "uncompensated"),),
                                                (0.3,), (None,)), "cells"),
        Population("cd4", RectangleGate("cd4", (cd4,), (0.45,), (None,)), "log scatter"),
        Population("poly", PolygonGate("poly", (cd4, cd25), ((0.3, 0.2), (0.9, 0.25), (0.8, 0.9), (0.35, 0.7))),
                   "cd4"),
        Population("ellipse", EllipsoidGate("ellipse", (cd25, foxp3), (0.5, 0.4), ((0.02, 0.005), (0.005, 0.03)),
                                            2.0), "cd4"),
        Population("quadrant", QuadrantGate.from_signs("quadrant", (cd25, foxp3), (0.5, 0.4), "+-"), "cd4"),
        Population("ratio", RectangleGate("ratio", (Dimension(("CD4", "CD25"), None, ratio=Ratio(1, 0, 1)),),
                                          (0.5,), (None,)), "poly"),
        Population("both", BooleanGate("both", op="and", operands=("poly", "ellipse")), "cd4"),
        Population("not ellipse", BooleanGate("not ellipse", op="not", operands=("ellipse",)), "cd4"),
    ))


@pytest.mark.parametrize("adjacent", [True, False])
def test_large_sample_mode_gives_the_same_bits_and_keeps_no_values(monkeypatch: pytest.MonkeyPatch,
                                                                   adjacent: bool) -> None:
    sample = _sample(30_011, adjacent)
    strategy = _strategy()
    whole = strategy.apply(sample)
    monkeypatch.setattr(engine, "LEAN_EVENTS", 0)
    monkeypatch.setattr(engine, "BLOCK", 997)  # many blocks, none a round size
    lean = strategy.apply(sample)
    assert lean.counts == whole.counts and min(whole.counts.values()) > 50
    for pop in strategy.populations:
        assert lean.members[pop.name].dtype == np.int32
        assert np.array_equal(lean.members[pop.name], whole.members[pop.name])
        assert np.array_equal(lean.masks[pop.name], whole.masks[pop.name])
        if pop.name in whole.kept:
            assert np.array_equal(lean.kept[pop.name], whole.kept[pop.name])
        if isinstance(pop.gate, BooleanGate):
            continue
        rows = whole.members.get(pop.parent) if pop.parent else None
        lean_rows = lean.members.get(pop.parent) if pop.parent else None
        expected = whole.values(pop.gate, rows)
        # Bit for bit: the same products and transforms, a block of rows at a time.
        assert lean.values(pop.gate, lean_rows).tobytes() == expected.tobytes()
        assert lean.values(pop.gate, lean_rows, step=7).tobytes() == expected[::7].tobytes()
    assert all(c.values is None and c.first is None for c in lean._columns.values())


def test_masks_are_built_from_the_members_and_not_kept() -> None:
    sample = _sample(5_000, True)
    result = _strategy().apply(sample)
    assert list(result.masks) == [p.name for p in _strategy().populations] and "cd4" in result.masks
    first, again = result.masks["cd4"], result.masks["cd4"]
    assert first is not again and np.array_equal(first, again)
    assert np.array_equal(np.flatnonzero(first), result.members["cd4"]) and first.sum() == result.counts["cd4"]


def test_kept_bits_are_the_gate_verdict_on_the_parent_events() -> None:
    result = _strategy().apply(_sample(5_000, True))
    parent = result.members["cd4"]
    inside = np.isin(parent, result.members["poly"])
    positions = np.arange(parent.size)
    assert np.array_equal(result.kept_of("poly", positions), inside)
    assert result.kept_of("both", positions) is None  # Boolean gates record no verdict
    n = parent.size
    for part in (slice(0, n), slice(0, n, 3), slice(5, n, 7), slice(0, n, 1000)):
        assert np.array_equal(result.kept_of("poly", part), inside[part]), part  # strided: the k-th bits alone


def test_whole_sample_compensation_in_blocks_gives_the_bits_of_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = _sample(30_011, True)
    strategy = _strategy()
    one = strategy.apply(sample)  # fewer events than BLOCK: one product over all of them
    monkeypatch.setattr(engine, "BLOCK", 997)  # many blocks, none a round size
    blocks = strategy.apply(sample)
    assert blocks.counts == one.counts
    for pop in strategy.populations:
        if isinstance(pop.gate, BooleanGate):
            continue
        rows = one.members.get(pop.parent) if pop.parent else None
        assert blocks.values(pop.gate, rows).tobytes() == one.values(pop.gate, rows).tobytes(), pop.name


def test_unmixing_is_computed_once_per_matrix_and_read_only() -> None:
    spill = engine.SpectrumMatrix(FLUOR, FLUOR, SPILL)
    first = engine._unmixing(spill)
    assert engine._unmixing(engine.SpectrumMatrix(FLUOR, FLUOR, SPILL.copy())) is first
    assert not first.flags.writeable and np.array_equal(first, np.linalg.inv(SPILL))
    inverted = engine.SpectrumMatrix(FLUOR, FLUOR, np.linalg.inv(SPILL), inverted=True)
    engine._unmixing(inverted)
    assert inverted.matrix.flags.writeable  # the matrix it was given is not frozen in passing


def test_prepare_builds_the_tables_and_grids_gating_would_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import cytopipe.gates as gates_module
    import cytopipe.transforms as transforms_module

    monkeypatch.setattr(transforms_module, "_TABLES", {})
    monkeypatch.setattr(transforms_module, "_APPLIED", {})
    monkeypatch.setattr(gates_module, "_GRIDS", Memo(256))
    sample = _sample(20_000, True)
    strategy = _strategy()
    unprepared = strategy.apply(sample)  # too few values for a table: the cells it meets are solved alone
    assert not transforms_module._TABLES
    engine.prepare(strategy)
    assert Logicle()._key() in transforms_module._TABLES
    assert all(vertices in gates_module._GRIDS for vertices in
               (p.gate.vertices for p in strategy.populations if isinstance(p.gate, PolygonGate)))
    prepared = strategy.apply(sample)
    for pop in strategy.populations:
        assert np.array_equal(prepared.members[pop.name], unprepared.members[pop.name])
        if not isinstance(pop.gate, BooleanGate):
            rows = prepared.members.get(pop.parent) if pop.parent else None
            assert prepared.values(pop.gate, rows).tobytes() == unprepared.values(pop.gate, rows).tobytes()


def test_root_scatter_columns_are_kept_contiguous_for_later_reads() -> None:
    sample = _sample(5_000, True)
    result = _strategy().apply(sample)
    assert sorted(result.whole) == [0, 1]  # FSC-A and SSC-A of the root polygon; SSC-A under logicle is not plain
    for index, column in result.whole.items():
        assert column.flags.c_contiguous and np.array_equal(column, sample.events[:, index])
    cells = _strategy().populations[0].gate
    assert np.array_equal(result.values(cells), sample.events[:, :2])
    rows = result.members["cells"]
    scatter = _strategy().populations[1].gate  # log scatter, read on the cells' rows
    assert np.array_equal(result.values(scatter, rows)[:, 0], Logicle().apply(sample.events[rows, 1]))


@pytest.mark.parametrize("lean", [False, True])
def test_column_major_events_give_the_same_bits(monkeypatch: pytest.MonkeyPatch, lean: bool) -> None:
    """A worker's events are column-major (read_fcs_sha256): gating them (polygons read their two columns as they
    are, without a stacked copy) gives the members, verdicts and values of the same events in C order."""
    from dataclasses import replace

    if lean:
        monkeypatch.setattr(engine, "LEAN_EVENTS", 0)
        monkeypatch.setattr(engine, "BLOCK", 997)
    sample = _sample(30_011, adjacent=False)
    columns = replace(sample, events=np.asfortranarray(sample.events))
    strategy = _strategy()
    expected, got = strategy.apply(sample), strategy.apply(columns)
    assert got.counts == expected.counts and min(expected.counts.values()) > 50
    for pop in strategy.populations:
        assert np.array_equal(got.members[pop.name], expected.members[pop.name])
        if pop.name in expected.kept:
            assert np.array_equal(got.kept[pop.name], expected.kept[pop.name])
        if not isinstance(pop.gate, BooleanGate):
            rows = expected.members.get(pop.parent) if pop.parent else None
            assert got.values(pop.gate, rows).tobytes() == expected.values(pop.gate, rows).tobytes()

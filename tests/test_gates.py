"""Gate models and strategy evaluation on real samples (in memory and written/read as FCS)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.path
import numpy as np
import pytest

import cytopipe.gates as gates_module
from cytopipe.compensate import Spillover, compensate, spillover_from_metadata
from cytopipe.errors import GateError, MarkerError
from cytopipe.fcs import Sample, read_fcs, write_fcs
from cytopipe.gates import (
    BooleanGate,
    Dimension,
    EllipsoidGate,
    GatingStrategy,
    PolygonGate,
    Population,
    QuadrantGate,
    RectangleGate,
    SpectrumMatrix,
)
from cytopipe.transforms import Linear, Logicle, Ratio

X, Y, Z = Dimension("X", None, "uncompensated"), Dimension("Y", None, "uncompensated"), Dimension("Z")
SPILL = np.array([[1.0, 0.15, 0.02], [0.03, 1.0, 0.2], [0.0, 0.05, 1.0]])
FLUOR = ("FITC-A", "PE-A", "APC-A")


def _sample(n: int = 20_000, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    true = np.column_stack([rng.lognormal(6, 1.5, n), rng.lognormal(5, 2, n), rng.normal(300, 400, n)])
    events = np.column_stack([rng.normal(5e4, 2e4, n), rng.normal(3e4, 1e4, n), true @ SPILL]).astype(np.float32)
    spill = f"3,{','.join(FLUOR)},{','.join(f'{v:g}' for v in SPILL.ravel())}"
    return Sample("", events, ("FSC-A", "SSC-A") + FLUOR, ("", "", "CD4 FITC", "CD25", "FoxP3"),
                  {"$SPILLOVER": spill}, "FCS3.1")


# --- single gates -------------------------------------------------------------------------------------------------

def test_rectangle_is_half_open_with_open_sides() -> None:
    gate = RectangleGate("r", (X, Y), (1.0, None), (2.0, 5.0))
    values = np.array([[1.0, -1e30], [2.0, 0.0], [1.5, 5.0], [1.5, 4.999], [np.nan, 1.0], [1.2, np.inf]])
    assert gate.mask(values).tolist() == [True, False, False, True, False, False]


def test_rectangle_open_top_excludes_infinity_like_flowcore() -> None:
    gate = RectangleGate("r", (X,), (0.0,), (None,))
    assert gate.mask(np.array([[np.inf], [1e38], [-np.inf]])).tolist() == [False, True, False]


def test_rectangle_any_number_of_dimensions() -> None:
    dims = tuple(Dimension(f"c{k}") for k in range(4))
    gate = RectangleGate("hyper", dims, (0, 0, 0, 0), (1, 1, 1, 1))
    rng = np.random.default_rng(1)
    values = rng.uniform(-0.5, 1.5, size=(1000, 4))
    assert np.array_equal(gate.mask(values), np.all((values >= 0) & (values < 1), axis=1))


def test_polygon_matches_matplotlib_away_from_the_boundary() -> None:
    vertices = ((0, 0), (10, 1), (12, 8), (6, 12), (5, 5), (-1, 7))  # concave
    gate = PolygonGate("p", (X, Y), vertices)
    rng = np.random.default_rng(2)
    points = rng.uniform(-2, 14, size=(50_000, 2))
    path = matplotlib.path.Path(np.asarray(vertices, dtype=float))
    clear = ~(path.contains_points(points, radius=1e-6) ^ path.contains_points(points, radius=-1e-6))
    assert clear.sum() > 49_000
    ours = gate.mask(points)
    assert np.array_equal(ours[clear], path.contains_points(points)[clear])
    assert np.array_equal(gate.mask(points.astype(np.float32)), ours)


def test_polygon_boundary_is_inclusive_and_non_simple_uses_even_odd() -> None:
    square = PolygonGate("sq", (X, Y), ((0, 0), (4, 0), (4, 4), (0, 4)))
    on_edges = np.array([[0, 2], [4, 2], [2, 0], [1, 1], [3.999, 3.999], [4.001, 2], [2, -0.001], [-0.001, 2]])
    # Left/right edges and the bottom are inside; the top edge and beyond are outside (half-open in y).
    assert square.mask(on_edges).tolist() == [True, True, True, True, True, False, False, False]
    diagonal = PolygonGate("tri", (X, Y), ((5, 5), (500, 5), (500, 500)))
    points = np.array([[5.88208437619687] * 2, [8.659643233600654] * 2, [400.0, 400.0]])
    assert diagonal.mask(points).all(), "events exactly on a 45-degree edge are in the gate"
    bowtie = PolygonGate("bow", (X, Y), ((0, 0), (4, 4), (4, 0), (0, 4)))
    assert bowtie.mask(np.array([[1, 2], [3, 2], [2, 3.5], [2, 0.5]])).tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    "vertices",
    [((35e3, 5e3), (85e3, 2e3), (95e3, 30e3), (80e3, 42e3), (45e3, 40e3), (32e3, 20e3)),  # convex: inner square
     ((0, 0), (10, 0), (10, 10), (6, 10), (6, 2), (4, 2), (4, 10), (0, 10)),  # U shape: centroid outside
     ((0, 0), (4, 4), (4, 0), (0, 4))],  # bowtie
)
def test_polygon_inner_square_shortcut_never_changes_the_result(vertices) -> None:
    gate = PolygonGate("p", (X, Y), vertices)
    v = np.asarray(vertices, dtype=float)
    rng = np.random.default_rng(7)
    points = rng.uniform(v.min(0) - 1, v.max(0) + 1, size=(100_000, 2))
    if gate._core is not None:  # also events exactly on and next to the square's sides
        x0, y0, x1, y1 = gate._core
        points[:4] = [[x0, (y0 + y1) / 2], [np.nextafter(x0, x1), (y0 + y1) / 2], [x1, y1], [x0, y0]]
    for dtype in (np.float64, np.float32):
        p = points.astype(dtype)
        assert np.array_equal(gate.mask(p), gate._edge_test(p[:, 0], p[:, 1], dtype))
    assert (gate._core is not None) == (len(vertices) == 6)


def _events_around(v: np.ndarray, rng: np.random.Generator, n: int = 20_000) -> np.ndarray:
    """Events around a polygon where a shortcut could go wrong: on and just off its edges and vertices, on the
    horizontal lines through its vertices, far outside, NaN and infinite."""
    low, high = v.min(0), v.max(0)
    extent = high - low
    k = len(v)
    i = rng.integers(0, k, n // 4)
    on = v[i] + (v[(i + 1) % k] - v[i]) * rng.random(n // 4)[:, None]
    through = np.column_stack([rng.uniform(low[0] - extent[0], high[0] + extent[0], 500),
                               v[rng.integers(0, k, 500), 1]])
    points = np.vstack([rng.uniform(low - extent, high + extent, size=(n, 2)), on,
                        on + rng.normal(0, 1e-6, on.shape) * extent, on + rng.normal(0, 1e-3, on.shape) * extent,
                        v, through, [[np.nan, low[1]], [low[0], np.nan], [np.inf, low[1]], [-np.inf, high[1]]]])
    return points.astype(np.float32)


@pytest.mark.parametrize("shape", ["star", "random", "staircase", "shallow edges", "scatter units", "mixed units"])
def test_polygon_grid_gives_the_exact_verdict_of_every_event(shape: str) -> None:
    rng = np.random.default_rng(11)
    for _ in range(12):
        k = int(rng.integers(3, 30))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        if shape == "star":
            size = 10.0 ** rng.uniform(-3, 3)
            v = np.column_stack([np.cos(angles), np.sin(angles)]) * rng.uniform(0.3, 1, (k, 1)) * size
        elif shape == "random":  # self-intersecting
            v = rng.uniform(-1, 1, (k, 2))
        elif shape == "staircase":  # horizontal edges
            xs, ys = np.sort(rng.uniform(0, 1, k)), rng.uniform(0, 1, k)
            v = np.array([p for j in range(k) for p in ((xs[j], ys[j]), (xs[(j + 1) % k], ys[j]))])
        elif shape == "shallow edges":  # edges a rounding error away from horizontal
            v = rng.uniform(-1, 1, (2 * k, 2))
            v[1::2, 1] = v[0::2, 1] + rng.normal(0, 1e-7, k)
        elif shape == "scatter units":
            v = np.column_stack([5e4 + 3e4 * np.cos(angles), 2e4 + 1e4 * np.sin(angles)])
        else:  # a transformed axis against a raw one, far from the origin
            v = np.column_stack([0.5 + 0.2 * np.cos(angles), 1e5 + 3e3 * np.sin(angles)])
        gate = PolygonGate("p", (X, Y), tuple(map(tuple, v)))
        points = _events_around(np.asarray(gate.vertices), rng)
        assert gates_module._polygon_grid(gate) is not None
        assert np.array_equal(gate.mask(points), gate._exact_mask(points[:, 0], points[:, 1]))


def test_polygon_grid_is_not_built_where_float32_cells_would_be_too_coarse() -> None:
    far = PolygonGate("far", (X, Y), ((1e7, 0), (1e7 + 1, 0), (1e7 + 1, 1)))  # 1e7 from the origin, 1 wide
    assert gates_module._polygon_grid(far) is None
    points = np.array([[1e7 + 0.5, 0.25], [1e7 + 0.5, 0.75], [1e7, 0]] * 1000, dtype=np.float32)
    assert gates_module._GRID_MIN_EVENTS <= len(points)
    assert np.array_equal(far.mask(points), far._exact_mask(points[:, 0], points[:, 1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_polygon_edges_tested_at_once_give_the_bits_of_the_edge_loop(monkeypatch, dtype) -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        k = int(rng.integers(3, 12))
        v = rng.integers(0, 5, (k, 2)).astype(float)  # integer corners: events on edges, vertices, horizontals
        try:
            gate = PolygonGate("p", (X, Y), tuple(map(tuple, v)))
        except GateError:
            continue
        points = (rng.integers(-1, 6, (300, 2)) + rng.choice([0, 0.5], (300, 2))).astype(dtype)
        at_once = gate._edge_test(points[:, 0], points[:, 1], dtype)
        monkeypatch.setattr(gates_module, "_EDGES_AT_ONCE", 0)
        assert np.array_equal(gate._edge_test(points[:, 0], points[:, 1], dtype), at_once)
        monkeypatch.undo()


def test_polygon_validation() -> None:
    with pytest.raises(GateError, match="at least 3 vertices"):
        PolygonGate("p", (X, Y), ((0, 0), (1, 1)))
    with pytest.raises(GateError, match="exactly 2 dimensions"):
        PolygonGate("p", (X,), ((0, 0), (1, 1), (2, 0)))
    with pytest.raises(GateError, match="finite"):
        PolygonGate("p", (X, Y), ((0, 0), (1, np.inf), (2, 0)))


def test_ellipsoid_uses_the_quadratic_form_in_any_dimension() -> None:
    mean = (1.0, 2.0, 3.0)
    cov = ((2.5, 0.3, 0.1), (0.3, 1.0, 0.2), (0.1, 0.2, 0.7))
    gate = EllipsoidGate("e", (X, Y, Z), mean, cov, 2.0)
    rng = np.random.default_rng(3)
    points = rng.normal(mean, 2.0, size=(5000, 3))
    diff = points - mean
    d2 = np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)
    assert np.array_equal(gate.mask(points), d2 <= 2.0)


def test_ellipse_outline_lies_on_its_boundary() -> None:
    gate = EllipsoidGate("e", (X, Y), (12.99701, 16.22941), ((62.5, 37.5), (37.5, 62.5)), 1.0)
    outline = gate.outline()
    diff = outline - gate.mean
    d2 = np.einsum("ij,jk,ik->i", diff, gate.precision, diff)
    np.testing.assert_allclose(d2, 1.0, rtol=1e-9)
    assert np.array_equal(outline[0], outline[-1])


def test_quadrant_regions_follow_divider_intervals() -> None:
    dividers = ((28.0, 70.0), (17.75,))
    middle_low = QuadrantGate("D-N", (X, Y), dividers, (30.0, 10.0), "Q", ("FSC", "SSC"))
    upper_any = QuadrantGate("P", (X, Y), dividers, (80.0, None), "Q", ("FSC", "SSC"))
    values = np.array([[28.0, 17.74], [69.9, 0], [70.0, 0], [27.9, 1], [90.0, 100.0], [np.inf, 0]])
    assert middle_low.mask(values).tolist() == [True, True, False, False, False, False]
    assert upper_any.mask(values).tolist() == [False, False, True, False, True, False]
    assert middle_low.intervals() == ((28.0, 70.0), (None, 17.75))


def test_quadrant_from_signs() -> None:
    gate = QuadrantGate.from_signs("CD4+CD8-", (X, Y), at=(2.0, 1.8), signs="+-")
    assert gate.mask(np.array([[2.0, 1.0], [2.5, 1.8], [1.9, 0.0]])).tolist() == [True, False, False]
    with pytest.raises(GateError, match="signs"):
        QuadrantGate.from_signs("q", (X, Y), at=(0, 0), signs="+")


def test_boolean_gate_combines_operand_masks_with_complements() -> None:
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    both = np.column_stack([a, b])
    assert BooleanGate("and", op="and", operands=("a", "b")).mask(both).tolist() == [True, False, False, False]
    assert BooleanGate("or", op="or", operands=("a", "b"), complement=(True, False)).mask(both).tolist() == [
        True, False, True, True]
    assert BooleanGate("not", op="not", operands=("a",)).mask(both[:, :1]).tolist() == [False, False, True, True]
    with pytest.raises(GateError, match="exactly one operand"):
        BooleanGate("bad", op="not", operands=("a", "b"))
    with pytest.raises(GateError, match="'and', 'or' or 'not'"):
        BooleanGate("bad", op="xor", operands=("a", "b"))


def test_gates_are_immutable() -> None:
    gate = RectangleGate("r", (X,), (0.0,), (1.0,))
    with pytest.raises(AttributeError):
        gate.min = (5.0,)  # type: ignore[misc]


# --- strategy validation --------------------------------------------------------------------------------------------

def _rect(name: str) -> RectangleGate:
    return RectangleGate(name, (X,), (0.0,), (1.0,))


@pytest.mark.parametrize(
    ("populations", "message"),
    [
        ([Population("A", _rect("A")), Population("A", _rect("A"))], "duplicate population name 'A'"),
        ([Population("A", _rect("A"), "Nope")], "unknown parent 'Nope'"),
        ([Population("A", _rect("A"), "B"), Population("B", _rect("B"), "A")], "cycle"),
        ([Population("A", BooleanGate("A", op="not", operands=("A",)))], "cycle"),
        ([Population("A", BooleanGate("A", op="and", operands=("B", "C")))], "references unknown 'B'"),
        ([Population("A", RectangleGate("A", (Dimension("X", None, "M1"),), (0,), (1,)))], "unknown compensation"),
    ],
)
def test_strategy_validation_errors_are_one_line(populations: list[Population], message: str) -> None:
    with pytest.raises(GateError) as info:
        GatingStrategy(tuple(populations), name="treg.yaml")
    assert message in str(info.value) and "treg.yaml" in str(info.value) and "\n" not in str(info.value)


def test_strategy_orders_populations_topologically() -> None:
    pops = (
        Population("Treg", _rect("Treg"), "CD4"),
        Population("NotTreg", BooleanGate("NotTreg", op="not", operands=("Treg",)), "CD4"),
        Population("CD4", _rect("CD4"), "Lymph"),
        Population("Lymph", _rect("Lymph")),
    )
    strategy = GatingStrategy(pops, treg="Treg", parent="CD4")
    order = [p.name for p in strategy.populations]
    assert order.index("Lymph") < order.index("CD4") < order.index("Treg") < order.index("NotTreg")
    assert [p.name for p in strategy.children("CD4")] == ["Treg", "NotTreg"]
    assert strategy.population("CD4").parent == "Lymph"
    with pytest.raises(GateError, match="no population 'CD8'"):
        strategy.population("CD8")


# --- evaluation on samples ------------------------------------------------------------------------------------------

def test_fcs_compensation_equals_compensate_module() -> None:
    sample = _sample()
    logicle = Logicle()
    dims = tuple(Dimension(c, logicle, "FCS") for c in FLUOR)
    strategy = GatingStrategy((Population("all", RectangleGate("all", dims, (-1, -1, -1), (2, 2, 2))),))
    result = strategy.apply(sample, exact=True)
    spill = spillover_from_metadata(sample.metadata, sample.channels)
    expected = compensate(sample.events.astype(np.float64), sample.channels, spill)[:, 2:]
    np.testing.assert_allclose(result.values(strategy.population("all").gate), logicle.apply(expected), atol=1e-12)


def test_marker_names_are_resolved_and_compensated() -> None:
    sample = _sample()
    by_marker = GatingStrategy((Population("p", RectangleGate("p", (Dimension("CD25"),), (100.0,), (None,))),))
    by_pnn = GatingStrategy((Population("p", RectangleGate("p", (Dimension("PE-A"),), (100.0,), (None,))),))
    raw = GatingStrategy((Population("p", RectangleGate("p", (Dimension("PE-A", None, "uncompensated"),),
                                                        (100.0,), (None,))),))
    marker_result = by_marker.apply(sample)
    assert marker_result.channels == {"CD25": "PE-A"}
    assert np.array_equal(marker_result.masks["p"], by_pnn.apply(sample).masks["p"])
    assert not np.array_equal(marker_result.masks["p"], raw.apply(sample).masks["p"])


def test_explicit_spillover_and_named_matrices() -> None:
    sample = _sample()
    other = Spillover(FLUOR, np.eye(3), "identity")
    dims = (Dimension("PE-A"),)
    strategy = GatingStrategy((Population("p", RectangleGate("p", dims, (100.0,), (None,))),))
    identity = strategy.apply(sample, spillover=other)
    uncompensated = sample.events[:, 3] >= 100
    assert np.array_equal(identity.masks["p"], uncompensated)
    named = GatingStrategy((Population("p", RectangleGate("p", (Dimension("PE-A", None, "mine"),), (100.0,),
                                                          (None,))),), matrices={"mine": other})
    assert np.array_equal(named.apply(sample).masks["p"], uncompensated)


def test_non_square_spectrum_matrix_is_least_squares_unmixing() -> None:
    sample = _sample()
    spectra = np.array([[0.78, 0.13, 0.22], [0.05, 0.57, 0.89]])
    matrix = SpectrumMatrix(("P1", "P2"), FLUOR, spectra, source="nonsquare")
    dims = (Dimension("P1", None, "nonsquare"), Dimension("P2", None, "nonsquare"))
    strategy = GatingStrategy((Population("u", RectangleGate("u", dims, (0, 0), (None, None))),),
                              matrices={"nonsquare": matrix})
    values = strategy.apply(sample, exact=True).values(strategy.population("u").gate)
    expected = np.linalg.lstsq(spectra.T, sample.events[:, 2:].astype(np.float64).T, rcond=None)[0].T
    np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-6)
    inverted = SpectrumMatrix(("P1", "P2"), FLUOR, np.linalg.pinv(spectra), inverted=True, source="inv")
    assert np.allclose(inverted.unmixing(), matrix.unmixing())


def test_ratio_dimension() -> None:
    sample = _sample()
    dim = Dimension(("FITC-A", "PE-A"), None, "uncompensated", Ratio(1, 0, 0, name="r"))
    strategy = GatingStrategy((Population("r", RectangleGate("r", (dim,), (0.5,), (2.0,))),))
    ratio = sample.events[:, 2].astype(np.float64) / sample.events[:, 3]
    assert np.array_equal(strategy.apply(sample, exact=True).masks["r"], (ratio >= 0.5) & (ratio < 2.0))


def test_children_see_only_parent_events_and_columns_are_transformed_once(tmp_path: Path) -> None:
    sample = _sample(30_000, 4)
    path = tmp_path / "s.fcs"
    write_fcs(path, sample.events, sample.channels, sample.markers, sample.metadata)
    loaded = read_fcs(path)
    calls: list[int] = []

    class CountingLinear(Linear):
        def apply(self, x: np.ndarray) -> np.ndarray:
            calls.append(len(x))
            return super().apply(x)

    lin = CountingLinear(262144, 0, name="lin")
    fsc, ssc = Dimension("FSC-A", lin, "uncompensated"), Dimension("SSC-A", lin, "uncompensated")
    pops = (
        Population("big", RectangleGate("big", (fsc,), (0.2,), (None,))),
        Population("big_low", RectangleGate("big_low", (ssc,), (None,), (0.12,)), "big"),
        Population("big_low_2", RectangleGate("big_low_2", (fsc, ssc), (0.25, None), (None, 0.1)), "big_low"),
        Population("either", BooleanGate("either", op="or", operands=("big_low_2", "big"), complement=(False, True))),
    )
    result = GatingStrategy(pops).apply(loaded)
    fsc_raw = loaded.events[:, 0] / np.float32(262144)
    ssc_raw = loaded.events[:, 1] / np.float32(262144)
    big = fsc_raw >= 0.2
    big_low = big & (ssc_raw < 0.12)
    expected = {"big": big, "big_low": big_low, "big_low_2": big_low & (fsc_raw >= 0.25) & (ssc_raw < 0.1)}
    expected["either"] = expected["big_low_2"] | ~big
    for name, mask in expected.items():
        assert np.array_equal(result.masks[name], mask), name
        assert result.counts[name] == int(mask.sum())
    # FSC-A on all rows once; SSC-A only on 'big' rows; no row is transformed twice.
    assert calls == [loaded.n_events, int(big.sum())]
    np.testing.assert_allclose(result.values(pops[1].gate)[:, 0], ssc_raw, rtol=1e-6)
    assert sum(calls) == 2 * loaded.n_events  # values() filled in the rows not yet transformed


def test_fast_and_exact_modes_agree_except_on_float32_ties() -> None:
    sample = _sample(50_000, 5)
    logicle = Logicle()
    dims = (Dimension("CD4", logicle), Dimension("CD25", logicle))
    strategy = GatingStrategy((
        Population("poly", PolygonGate("poly", dims, ((0.3, 0.2), (0.9, 0.25), (0.8, 0.9), (0.35, 0.7)))),
        Population("rect", RectangleGate("rect", dims, (0.5, 0.3), (None, 0.8)), "poly"),
    ))
    fast, exact = strategy.apply(sample), strategy.apply(sample, exact=True)
    assert fast.values(strategy.population("poly").gate).dtype == np.float32
    for name in ("poly", "rect"):
        assert abs(fast.counts[name] - exact.counts[name]) <= 2
        assert np.count_nonzero(fast.masks[name] != exact.masks[name]) <= 2


def test_missing_marker_raises_marker_error() -> None:
    strategy = GatingStrategy((Population("p", RectangleGate("p", (Dimension("CD127"),), (0.0,), (None,))),))
    with pytest.raises(MarkerError, match="CD127"):
        strategy.apply(_sample(100))


def test_outlines_for_plotting() -> None:
    rect = RectangleGate("r", (X, Y), (1.0, None), (2.0, 3.0))
    outline = rect.outline()
    assert outline.shape == (5, 2) and outline[0, 1] == -np.inf
    assert PolygonGate("p", (X, Y), ((0, 0), (1, 0), (0, 1))).outline().shape == (4, 2)
    assert BooleanGate("b", op="not", operands=("p",)).outline() is None
    assert RectangleGate("range", (X,), (0.0,), (None,)).outline() is None


def test_a_gated_sample_is_freed_without_the_garbage_collector() -> None:
    """No reference cycles: the events and every cached column go as soon as the result is dropped (batch workers
    hold one sample at a time without calling gc)."""
    import gc
    import weakref

    logicle = Logicle()
    dims = (Dimension("CD4", logicle), Dimension("CD25", logicle))
    strategy = GatingStrategy((
        Population("scatter", RectangleGate("scatter", (Dimension("FSC-A", None, "uncompensated"),
                                                        Dimension("SSC-A", None, "uncompensated")),
                                            (1e4, 1e4), (None, None))),
        Population("poly", PolygonGate("poly", dims, ((0.3, 0.2), (0.9, 0.25), (0.8, 0.9), (0.35, 0.7))), "scatter"),
        Population("ratio", RectangleGate("ratio", (Dimension(("CD4", "CD25"), None, ratio=Ratio(1, 0, 1)),),
                                          (0.5,), (None,)), "poly"),
    ))
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        sample = _sample(20_000, 6)
        result = strategy.apply(sample)
        values = result.values(strategy.population("poly").gate)  # fills the cached columns in full
        watched = [weakref.ref(sample.events), weakref.ref(result.masks["ratio"])]
        watched += [weakref.ref(column) for column in result._columns.values()]
        del sample, result, values
        assert [ref() for ref in watched] == [None] * len(watched)
    finally:
        if enabled:
            gc.enable()

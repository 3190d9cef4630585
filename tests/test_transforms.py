"""Gating-ML 2.0 transforms: published values, flowutils as an independent oracle, inverses, bounds, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flowutils import transforms as fu
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cytopipe.errors import GateError
from cytopipe.transforms import LN10, Arcsinh, Hyperlog, Linear, Log, Logicle, Ratio

# Gating-ML 2.0 specification, worked examples for T=1000, W=1, M=4, A=0 (6 decimals as published).
SPEC_X = np.array([-10.0, -5.0, -1.0, 0.0, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0])
SPEC_LOGICLE = np.array([0.067574, 0.147986, 0.228752, 0.25, 0.256384, 0.271248, 0.312897, 0.432426, 0.739548, 1.0])
SPEC_HYPERLOG = np.array([0.083554, 0.155868, 0.229477, 0.25, 0.256239, 0.270523, 0.309092, 0.416446, 0.731875, 1.0])

PARAMS = [(262144, 0.5, 4.5, 0.0), (10000, 1.0, 4.0, 0.5), (262144, 0.0, 4.5, 0.0), (1000, 2.0, 4.0, 0.0),
          (300000, 1.0, 5.0, 0.3), (262144, 1.0, 5.0, -0.5)]


def _data(seed: int = 1, n: int = 300_000) -> np.ndarray:
    """Mixed negative/linear/log-range values; 300k float32 values take the table path (>= 2**18)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 300, n // 2), rng.lognormal(7, 2, n // 2), [0.0, -1e5, 1e7]])


def _flowutils(func, x: np.ndarray, T: float, W: float, M: float, A: float) -> np.ndarray:
    return func(np.asarray(x, dtype=np.float64).reshape(-1, 1), [0], t=T, w=W, m=M, a=A).ravel()


def test_logicle_matches_published_gatingml_values() -> None:
    np.testing.assert_allclose(Logicle(1000, 1, 4, 0).apply(SPEC_X), SPEC_LOGICLE, atol=5e-7)


def test_hyperlog_matches_published_gatingml_values() -> None:
    np.testing.assert_allclose(Hyperlog(1000, 1, 4, 0).apply(SPEC_X), SPEC_HYPERLOG, atol=5e-7)


@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_logicle_exact_path_agrees_with_flowutils(params: tuple[float, float, float, float]) -> None:
    x = _data()
    ours = Logicle(*params).apply(x)
    assert ours.dtype == np.float64
    assert np.max(np.abs(ours - _flowutils(fu.logicle, x, *params))) < 1e-12


@pytest.mark.parametrize("params", [p for p in PARAMS if p[1] > 0], ids=str)
def test_hyperlog_exact_path_agrees_with_flowutils(params: tuple[float, float, float, float]) -> None:
    x = _data(2)
    assert np.max(np.abs(Hyperlog(*params).apply(x) - _flowutils(fu.hyperlog, x, *params))) < 1e-12


@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_logicle_fast_float32_path_within_1e6_of_flowutils(params: tuple[float, float, float, float]) -> None:
    x = _data(3).astype(np.float32)
    fast = Logicle(*params).apply(x)
    assert fast.dtype == np.float32
    reference = _flowutils(fu.logicle, x, *params)  # the same float32 inputs, solved in float64
    assert np.max(np.abs(fast.astype(np.float64) - reference)) < 1e-6


def test_hyperlog_fast_float32_path_within_1e6_of_flowutils() -> None:
    x = _data(4).astype(np.float32)
    fast = Hyperlog(262144, 0.5, 4.5, 0).apply(x)
    assert np.max(np.abs(fast - _flowutils(fu.hyperlog, x, 262144, 0.5, 4.5, 0))) < 1e-6


def test_fast_path_covers_extreme_float32_values() -> None:
    x = np.resize(np.array([0.0, -0.0, 1e-38, -1e-38, 1e-3, 3e38, -3e38, np.inf, -np.inf, np.nan],
                           dtype=np.float32), 300_000)
    transform = Logicle()
    fast = transform.apply(x)
    exact = transform.apply(x.astype(np.float64))
    finite = np.isfinite(x)
    np.testing.assert_allclose(fast[finite], exact[finite], atol=1e-6)
    assert np.all(np.isnan(fast[~finite]))


def test_table_is_built_once_a_parameter_set_has_seen_a_table_of_values_in_total() -> None:
    from cytopipe import transforms

    transform = Logicle(123456.0, 0.7, 4.3, 0.1)  # parameters no other test uses
    x = _data(5, 50_000).astype(np.float32)
    before = [transform.apply(x)]
    for _ in range(transforms._LUT_CELLS // x.size - 1):  # 5 x 50,003 < 2**18: only the cells used are solved
        assert transform._key() not in transforms._TABLES
        before.append(transform.apply(x))
    fast = transform.apply(x)  # 300,018 values in total: the table is built and used from now on
    assert transform._key() in transforms._TABLES
    # Same bits with or without the table: a result never depends on what the process transformed before.
    for values in before:
        np.testing.assert_array_equal(values, fast)
    np.testing.assert_array_equal(fast, transform._fast(x))
    np.testing.assert_array_equal(transform.apply(x[:10]), fast[:10])
    assert np.max(np.abs(fast.astype(np.float64) - transform.solve(x))) < 1e-6
    assert np.max(np.abs(fast.astype(np.float64) - _flowutils(fu.logicle, x, *transform.params().values()))) < 1e-6


@pytest.mark.parametrize(
    "transform",
    [Linear(1000, 50), Log(10000, 5), Arcsinh(10000, 4, 1), Logicle(), Logicle(10000, 1, 4, 0.5),
     Hyperlog(10000, 1, 4.5, 0), Hyperlog(262144, 1, 5, 0.5)],
    ids=lambda t: f"{t.kind}{t.params()}",
)
def test_inverse_round_trips(transform) -> None:
    x = np.array([-500.0, -1.0, 0.0, 0.5, 3.0, 77.0, 1e3, 5e4, 2.6e5]) if transform.kind != "flog" else (
        np.array([0.01, 1.0, 3.0, 77.0, 1e3, 5e4, 2.6e5]))
    y = transform.apply(x)
    np.testing.assert_allclose(transform.inverse(y), x, rtol=1e-9, atol=1e-7)


def test_closed_form_transforms_follow_the_gatingml_formulas() -> None:
    x = np.array([-20.0, 0.0, 5.0, 1234.5, 10000.0])
    np.testing.assert_allclose(Linear(10000, 500).apply(x), (x + 500) / 10500)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_log = np.log10(x / 10000) / 5 + 1
    got_log = Log(10000, 5).apply(x)
    np.testing.assert_allclose(got_log[2:], expected_log[2:])
    assert np.all(np.isnan(got_log[:2])), "flog is undefined for x <= 0"
    expected = (np.arcsinh(x * math.sinh(4 * LN10) / 10000) + LN10) / (5 * LN10)
    np.testing.assert_allclose(Arcsinh(10000, 4, 1).apply(x), expected)


def test_scale_anchors() -> None:
    """Top of scale maps to 1 for every scale; logicle/hyperlog put 0 at (W + A) / (M + A)."""
    for transform in (Linear(1000, 0), Log(1000, 3), Arcsinh(1000, 4, 0.5), Logicle(1000, 1, 4, 0.5),
                      Hyperlog(1000, 1, 4, 0.5)):
        assert transform.apply(np.array([1000.0]))[0] == pytest.approx(1.0, abs=1e-12)
    assert Logicle(1000, 1, 4, 0.5).apply(np.array([0.0]))[0] == pytest.approx(1.5 / 4.5, abs=1e-14)
    assert Arcsinh(1000, 4, 0.5).apply(np.array([0.0]))[0] == pytest.approx(0.5 / 4.5)


def test_arcsinh_from_cofactor_is_asinh_over_cofactor() -> None:
    x = np.linspace(-1000, 1e5, 50)
    transform = Arcsinh.from_cofactor(150.0)
    np.testing.assert_allclose(transform.apply(x) * 4.5 * LN10, np.arcsinh(x / 150.0), rtol=1e-12, atol=1e-12)


def test_bounds_clamp_output() -> None:
    x = np.array([-100.0, 10.0, 100.0, 1e4])
    bounded = Logicle(10000, 0.5, 4.5, 0, bound_min=0.4, bound_max=0.9).apply(x)
    plain = Logicle(10000, 0.5, 4.5, 0).apply(x)
    np.testing.assert_allclose(bounded, np.clip(plain, 0.4, 0.9))
    assert bounded.min() == 0.4 and bounded.max() == 0.9


def test_small_float32_arrays_with_new_parameters_give_the_table_bits() -> None:
    x = _data(6, 1000).astype(np.float32)
    transform = Logicle(123456, 0.7, 4.2, 0.1)
    small = transform.apply(x)
    assert small.dtype == np.float32
    np.testing.assert_array_equal(small, transform._fast(x))  # builds the table: the same bits
    np.testing.assert_array_equal(transform.apply(x[:7]), small[:7])
    exact = transform.apply(x.astype(np.float64))
    assert np.max(np.abs(small - exact)) < 1e-6  # the table's interpolation error, below float32 resolution at 1


def test_dtype_policy() -> None:
    for transform in (Linear(), Log(), Arcsinh(), Logicle(), Hyperlog()):
        assert transform.apply(np.ones(4, dtype=np.float32)).dtype == np.float32
        assert transform.apply(np.ones(4)).dtype == np.float64
        assert transform.apply(np.ones(4, dtype=np.int16)).dtype == np.float64


def test_ratio_is_a_new_dimension_over_two_channels() -> None:
    pair = np.array([[10.0, 2.0], [5.0, 5.0], [1.0, 3.0]])
    np.testing.assert_allclose(Ratio(2.7, -100, -300).apply(pair), 2.7 * (pair[:, 0] + 100) / (pair[:, 1] + 300))
    with pytest.raises(GateError, match="no inverse"):
        Ratio().inverse(np.ones(3))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        Ratio().apply(np.ones(3))


@pytest.mark.parametrize(
    ("factory", "parameter"),
    [
        (lambda: Linear(T=0), "T"), (lambda: Linear(100, A=200), "A"), (lambda: Log(M=0), "M"),
        (lambda: Log(T=-1), "T"), (lambda: Arcsinh(A=5, M=4), "A"), (lambda: Logicle(W=3, M=4.5), "W"),
        (lambda: Logicle(A=5, M=4.5), "A"), (lambda: Logicle(T=0), "T"), (lambda: Hyperlog(W=0), "W"),
        (lambda: Logicle(bound_min=1, bound_max=0), "boundMin"), (lambda: Ratio(A=math.inf), "A"),
        (lambda: Arcsinh.from_cofactor(0), "cofactor"),
    ],
)
def test_invalid_parameters_raise_gate_error_naming_the_parameter(factory, parameter: str) -> None:
    with pytest.raises(GateError) as info:
        factory()
    message = str(info.value)
    assert parameter in message and "\n" not in message


def test_transforms_are_frozen_and_hashable() -> None:
    assert Logicle(262144, 0.5, 4.5, 0) == Logicle() and hash(Logicle()) == hash(Logicle(262144, 0.5, 4.5, 0))
    assert Logicle() != Logicle(W=1.0)
    with pytest.raises(AttributeError):
        Logicle().W = 1.0  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(
    W=st.floats(0.0, 1.5), M=st.floats(3.0, 6.0), A=st.floats(0.0, 1.0),
    x=st.lists(st.floats(-1e5, 1e6, allow_nan=False), min_size=2, max_size=30),
)
def test_logicle_is_monotone_and_inverts(W: float, M: float, A: float, x: list[float]) -> None:
    assume(A <= M - 2 * W)
    transform = Logicle(262144, W, M, A)
    values = np.sort(np.asarray(x))
    y = transform.apply(values)
    assert np.all(np.diff(y) >= 0)
    np.testing.assert_allclose(transform.inverse(y), values, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("cls", [Logicle, Hyperlog])
def test_absurd_decades_are_a_gate_error_not_an_overflow(cls):
    with pytest.raises(GateError, match=r"M \+ A must be at most 300 decades, got 309"):
        cls(T=262144, W=0.5, M=309, A=0)

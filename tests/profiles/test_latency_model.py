"""LatencyModel: exact recovery (knees included), constants, the laws every fit obeys, LOO, closed-form
decode steps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplan.profiles.errors import ProfileError
from pdplan.profiles.latency_model import LatencyModel

PREFILL_GRID = [(s, n) for s in (1, 2, 4, 8) for n in (16, 64, 256, 1024)]
DECODE_GRID = [(b, c) for b in (1, 4, 16, 64) for c in (32, 256, 2048)]


def _tables(prefill_fn, decode_fn):
    pre = (
        [s for s, _ in PREFILL_GRID],
        [n for _, n in PREFILL_GRID],
        [prefill_fn(s, n) for s, n in PREFILL_GRID],
    )
    dec = (
        [b for b, _ in DECODE_GRID],
        [c for _, c in DECODE_GRID],
        [decode_fn(b, c) for b, c in DECODE_GRID],
    )
    return pre, dec


def test_known_coefficients_are_recovered_exactly() -> None:
    a, b, c, d = 3.0, 0.2, 0.01, 2e-6
    e, f, g = 5.0, 0.05, 1e-4
    pre, dec = _tables(
        lambda s, n: a + b * s + c * s * n + d * s * n * n, lambda bs, ctx: e + f * bs + g * bs * ctx
    )
    model = LatencyModel.fit(pre, dec)
    assert model.prefill_coef == pytest.approx((a, b, c, d), rel=1e-6)
    assert model.decode_coef == pytest.approx((e, f, g), rel=1e-6)
    assert (model.prefill_knee_tokens, model.decode_knee_batch) == (0.0, 0.0)  # a linear table has none
    assert model.prefill_loo.max < 1e-6 and model.decode_loo.max < 1e-6
    assert model.prefill_loo.num_points == len(PREFILL_GRID)
    # a chunk of 100 new tokens after 300 cached ones: pairs = n² + 2·n·p
    assert model.prefill_ms([100], [300]) == pytest.approx(a + b + c * 100 + d * (100**2 + 2 * 100 * 300))


def test_a_constant_profile_predicts_constants() -> None:
    pre, dec = _tables(lambda s, n: 12.5, lambda b, c: 4.0)
    model = LatencyModel.fit(pre, dec)
    assert model.prefill_coef[0] == pytest.approx(12.5, rel=1e-12)
    assert model.prefill_coef[1:] == (0.0, 0.0, 0.0)  # exactly: ties go to fewer terms
    assert model.decode_coef[0] == pytest.approx(4.0, rel=1e-12)
    assert model.decode_coef[1:] == (0.0, 0.0)
    assert (model.prefill_knee_tokens, model.decode_knee_batch) == (0.0, 0.0)
    assert model.prefill_ms([1]) == model.prefill_ms([8000] * 16) == pytest.approx(12.5)
    assert model.decode_ms(1, 10) == model.decode_ms(512, 10**7) == pytest.approx(4.0)
    assert model.decode_loo.max == pytest.approx(0.0, abs=1e-12)
    assert LatencyModel.constant(12.5, 4.0).prefill_coef == pytest.approx(model.prefill_coef)


KNEE_DECODE_GRID = [(b, c) for b in (1, 4, 16, 64, 256) for c in (32, 256, 2048)]


def _knee_tables(prefill_fn, decode_fn):
    pre, _ = _tables(prefill_fn, decode_fn)
    dec = tuple(
        list(col) for col in zip(*[(b, c, decode_fn(b, c)) for b, c in KNEE_DECODE_GRID], strict=True)
    )
    return pre, dec


# a roofline-shaped truth: flat below 300 prompt tokens and below 24 decode sequences
A, B, C, D, T0 = 3.0, 0.2, 0.01, 2e-6, 300.0
E, F, G, B0 = 5.0, 0.05, 1e-4, 24.0


def _knee_prefill(s: float, n: float) -> float:
    return A + B * s + C * max(s * n, T0) + D * s * n * n


def _knee_decode(b: float, c: float) -> float:
    return E + F * max(b, B0) + G * b * c


def test_a_knee_is_recovered_exactly() -> None:
    model = LatencyModel.fit(*_knee_tables(_knee_prefill, _knee_decode))
    assert model.prefill_coef == pytest.approx((A, B, C, D), rel=1e-6)
    assert model.prefill_knee_tokens == pytest.approx(T0, rel=1e-6)
    assert model.decode_coef == pytest.approx((E, F, G), rel=1e-6)
    assert model.decode_knee_batch == pytest.approx(B0, rel=1e-6)
    # every point is predicted exactly even when it is left out: the knee is refitted each time
    assert model.prefill_loo.max < 1e-6 and model.decode_loo.max < 1e-6
    # off the grid too: flat below the knee, linear above it
    assert model.prefill_ms([100]) == pytest.approx(A + B + C * T0 + D * 100**2)
    assert model.prefill_ms([100, 250]) == pytest.approx(2 * B + A + C * 350 + D * (100**2 + 250**2))
    assert model.decode_ms(3, 999) == pytest.approx(E + F * B0 + G * 999)
    assert model.decode_ms(100, 999) == pytest.approx(E + F * 100 + G * 999)
    written = model.to_dict()
    assert written["prefill"]["knee_tokens"] == pytest.approx(T0, rel=1e-6)
    assert written["decode"]["knee_batch"] == pytest.approx(B0, rel=1e-6)


def test_a_knee_on_a_grid_value_and_the_linear_fit_without_knees() -> None:
    tables = _knee_tables(
        lambda s, n: A + C * max(s * n, 256) + D * s * n * n, lambda b, c: E + F * max(b, 16) + G * b * c
    )
    model = LatencyModel.fit(*tables)
    assert (model.prefill_knee_tokens, model.decode_knee_batch) == pytest.approx((256, 16), rel=1e-6)
    assert model.prefill_loo.max < 1e-6 and model.decode_loo.max < 1e-6
    plain = LatencyModel.fit(*tables, knees=False)
    assert (plain.prefill_knee_tokens, plain.decode_knee_batch) == (0.0, 0.0)
    # the linear model cannot follow the corner: that is the error the knee removes
    assert plain.prefill_loo.max > 0.05 and plain.decode_loo.max > 0.05


def test_leave_one_out_is_the_error_of_refitting_without_each_point() -> None:
    rng = np.random.default_rng(7)
    noise = iter(rng.uniform(0.9, 1.1, size=64))
    pre, dec = _tables(
        lambda s, n: (2 + 0.01 * s * n) * next(noise),
        lambda b, c: (6 + 0.02 * b + 1e-5 * b * c) * next(noise),
    )
    model = LatencyModel.fit(pre, dec)
    errors = []
    for i in range(len(DECODE_GRID)):
        keep = [j for j in range(len(DECODE_GRID)) if j != i]
        sub = LatencyModel.fit(pre, tuple([col[j] for j in keep] for col in dec))
        b, c, y = (col[i] for col in dec)
        errors.append(abs(sub.decode_ms(b, b * c) - y) / y)
    assert model.decode_loo.median == pytest.approx(float(np.median(errors)), rel=1e-9)
    assert model.decode_loo.max == pytest.approx(max(errors), rel=1e-9)
    assert 0 < model.decode_loo.max < 0.25


latencies = st.lists(
    st.floats(0.01, 1e4, allow_nan=False), min_size=len(DECODE_GRID), max_size=len(DECODE_GRID)
)


@settings(max_examples=40, deadline=None)
@given(
    pre_y=st.lists(st.floats(0.01, 1e4), min_size=len(PREFILL_GRID), max_size=len(PREFILL_GRID)),
    dec_y=latencies,
)
def test_any_fit_is_non_negative_and_monotone(pre_y: list[float], dec_y: list[float]) -> None:
    pre = ([s for s, _ in PREFILL_GRID], [n for _, n in PREFILL_GRID], pre_y)
    dec = ([b for b, _ in DECODE_GRID], [c for _, c in DECODE_GRID], dec_y)
    model = LatencyModel.fit(pre, dec)
    assert min(model.prefill_coef + model.decode_coef) >= 0
    assert model.prefill_ms([1]) >= 0 and model.decode_ms(1, 0) >= 0
    for small, large in (([16], [32]), ([16], [16, 16]), ([64, 8], [64, 8, 1])):
        assert model.prefill_ms(small) <= model.prefill_ms(large)
    assert model.decode_ms(4, 100) <= model.decode_ms(5, 100) <= model.decode_ms(5, 200)
    # across either knee, wherever the fit put it
    prefill = [model.prefill_ms([n]) for n in range(0, 2048, 7)]
    decode = [model.decode_ms(b, 1000) for b in range(0, 600)]
    assert min(prefill + decode) >= 0
    assert all(x <= y for x, y in itertools.pairwise(prefill))
    assert all(x <= y for x, y in itertools.pairwise(decode))


coefficients = st.tuples(st.floats(0, 50), st.floats(0, 1), st.floats(0, 1e-3))
knees = st.just(0.0) | st.floats(0, 600)


@settings(max_examples=200, deadline=None)
@given(
    coef=coefficients,
    knee=knees,
    batch=st.integers(1, 512),
    context=st.integers(0, 10**6),
    steps=st.integers(0, 300),
)
def test_decode_steps_ms_is_the_sum_of_single_steps(coef, knee, batch, context, steps) -> None:
    model = LatencyModel((0.0, 0.0, 0.0, 0.0), coef, decode_knee_batch=knee)
    # each step adds one token per sequence to the context
    total = sum(model.decode_ms(batch, context + i * batch) for i in range(steps))
    assert model.decode_steps_ms(batch, context, steps) == pytest.approx(total, rel=1e-9, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(
    coef=coefficients.filter(lambda c: sum(c) > 1e-6),
    knee=knees,
    batch=st.integers(1, 512),
    context=st.integers(0, 10**6),
    budget=st.floats(-10, 1e5),
)
def test_decode_steps_within_is_the_exact_inverse(coef, knee, batch, context, budget) -> None:
    model = LatencyModel((0.0, 0.0, 0.0, 0.0), coef, decode_knee_batch=knee)
    k = model.decode_steps_within(batch, context, budget)
    assert k >= 0
    if budget <= 0:
        assert k == 0
        return
    assert model.decode_steps_ms(batch, context, k) <= budget
    assert model.decode_steps_ms(batch, context, k + 1) > budget


def test_leave_one_out_refits_the_knee() -> None:
    rng = np.random.default_rng(11)
    noise = iter(rng.uniform(0.97, 1.03, size=128))
    pre, dec = _knee_tables(
        lambda s, n: _knee_prefill(s, n) * next(noise), lambda b, c: _knee_decode(b, c) * next(noise)
    )
    model = LatencyModel.fit(pre, dec)
    assert model.decode_knee_batch > 0 and model.prefill_knee_tokens > 0
    errors, knees = [], set()
    for i in range(len(KNEE_DECODE_GRID)):
        keep = [j for j in range(len(KNEE_DECODE_GRID)) if j != i]
        sub = LatencyModel.fit(pre, tuple([col[j] for j in keep] for col in dec))
        knees.add(sub.decode_knee_batch)
        b, c, y = (col[i] for col in dec)
        errors.append(abs(sub.decode_ms(b, b * c) - y) / y)
    assert len(knees) > 1  # the knee moves with the points it is fitted on
    assert model.decode_loo.median == pytest.approx(float(np.median(errors)), rel=1e-9)
    assert model.decode_loo.max == pytest.approx(max(errors), rel=1e-9)


def test_a_marginal_knee_is_not_kept() -> None:
    # Slight curvature (a 1 % bump) above the smallest point: a knee just above it would fit a
    # hair better and extrapolate flat below the table. Akaike's criterion keeps the line.
    pre, dec = _tables(
        lambda s, n: 2 + 0.01 * s * n * (1.01 if s * n == 512 else 1.0),
        lambda b, c: 6 + 0.02 * b + 1e-5 * b * c,
    )
    model = LatencyModel.fit(pre, dec)
    assert model.prefill_knee_tokens == 0.0
    assert model.prefill_ms([8]) == pytest.approx(2 + 0.01 * 8, rel=0.02)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]])
def test_unusable_tables_are_profile_errors(bad: list[float]) -> None:
    n = len(bad)
    with pytest.raises(ProfileError, match="decode table"):
        LatencyModel.fit(([1], [16], [1.0]), ([1] * n, [16] * n, bad))

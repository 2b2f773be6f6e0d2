"""KV capacity from memory, the seconds view of the latency model, and the closed-form steps."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import simcases as sc
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplan.profiles.engine import DRIVER_RESERVED_BYTES
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim import (
    ColocatedPool,
    DecodePool,
    KvLink,
    PrefillPool,
    colocated_cluster,
    disaggregated_cluster,
    kv_capacity_tokens,
)
from pdplan.sim.costs import StepCoef, activation_reserve_bytes
from pdplan.sim.kernel import NEVER_STEPS, boundary_s, first_boundary_at_or_after

GIB = 1 << 30


def test_kv_capacity_by_hand_llama_8b_on_80gib():
    profile = sc.constant_profile("llama-3.1-8b", tp=1, memory_gib=80)
    spec = profile.model
    # Llama-3.1-8B bf16: KV per token = 2 × 32 layers × 8 kv heads × 128 × 2 bytes = 131072 B.
    assert profile.kv_bytes_per_token == 131072
    reserve = activation_reserve_bytes(profile, 8192, 256)
    # forward: residual + normed input (2 × 4096) and gate/up + SiLU output (3 × 14336), bf16;
    # sampler: 256 rows × 128256 vocab × 30 bytes per logit
    assert reserve == 8192 * (2 * 4096 + 3 * 14336) * 2 + 256 * 128256 * 30
    total = 80 * GIB - DRIVER_RESERVED_BYTES
    non_torch = int(0.13 * GIB)
    pool = int(total * 0.9) - spec.weight_bytes("bfloat16") - reserve - non_torch
    expected = pool // (131072 * 16) * 16  # whole vLLM blocks of 16 tokens
    assert kv_capacity_tokens(profile, max_step_tokens=8192, max_batch_size=256) == expected
    # 71.56 GiB usable − 14.96 GiB weights − 1.70 GiB activations − 0.13 GiB = 54.8 GiB at 128 KiB/token
    assert expected == 448_736


def test_tp_splits_kv_and_weights_so_capacity_grows():
    one = sc.constant_profile("llama-3.1-70b", tp=4, memory_gib=80)
    two = sc.constant_profile("llama-3.1-70b", tp=8, memory_gib=80)
    cap4 = kv_capacity_tokens(one, max_step_tokens=8192, max_batch_size=256)
    cap8 = kv_capacity_tokens(two, max_step_tokens=8192, max_batch_size=256)
    assert cap8 > 2 * cap4  # twice the KV memory, and each GPU holds half the weights


def test_model_that_does_not_fit_is_a_profile_error():
    profile = sc.constant_profile("llama-3.1-70b", tp=1, memory_gib=80)
    with pytest.raises(ProfileError, match="does not fit"):
        kv_capacity_tokens(profile, max_step_tokens=8192, max_batch_size=256)


def test_cluster_builders_check_tp_and_fill_transfer_bytes():
    p1, p2 = sc.constant_profile(tp=1), sc.constant_profile(tp=2)
    link = KvLink(50.0, 0.01)
    cluster = disaggregated_cluster(
        PrefillPool(2, tp=1), DecodePool(1, tp=2, max_kv_tokens=5000), link, (p1, p2)
    )
    assert cluster.kv_bytes_per_token == 131072  # the whole model's KV crosses the link
    assert cluster.decode_cost.kv_capacity_tokens == 5000
    assert cluster.gpus == 4 and cluster.num_layers == 32
    with pytest.raises(ProfileError, match=re.escape("decode.tp=1")):
        disaggregated_cluster(PrefillPool(2), DecodePool(1), link, (p1, p2))
    with pytest.raises(ProfileError, match=re.escape("colocated.tp=2")):
        colocated_cluster(ColocatedPool(2, tp=2), p1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PrefillPool(0), "prefill.instances=0"),
        (lambda: DecodePool(2, max_batch_size=-1), "decode.max_batch_size=-1"),
        (lambda: ColocatedPool(1, policy="fifo"), "colocated.policy 'fifo'"),
        (lambda: KvLink(0.0), "bandwidth_gbps=0.0"),
        (lambda: KvLink(10.0, contention="bus"), "contention 'bus'"),
        (lambda: PrefillPool(1, chunk_tokens=0), "prefill.chunk_tokens=0"),
    ],
)
def test_pool_validation_names_field_and_value(build, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def test_step_coef_is_the_model_in_seconds():
    model = LatencyModel((2.0, 0.5, 0.01, 1e-6), (6.0, 0.03, 2e-5))
    coef = StepCoef.of(model)
    assert coef.prefill_s(3, 900, 300_000) == pytest.approx(model.prefill_ms_sums(3, 900, 300_000) / 1000)
    # A mixed step pays the larger fixed cost once and adds every token-proportional term.
    mixed = coef.mixed_s(2, 500, 125_000, 16, 8000)
    prefill_part = model.prefill_ms_sums(2, 500, 125_000) - 2.0
    decode_part = model.decode_ms(16, 8000) - 6.0
    assert mixed == pytest.approx((6.0 + prefill_part + decode_part) / 1000)
    assert coef.mixed_s(0, 0, 0, 16, 8000) == pytest.approx(model.decode_ms(16, 8000) / 1000)
    assert coef.mixed_s(2, 500, 125_000, 0, 0) == pytest.approx(model.prefill_ms_sums(2, 500, 125_000) / 1000)


@settings(max_examples=200, deadline=None)
@given(
    e=st.just(0.0) | st.floats(1e-6, 20.0),
    f=st.just(0.0) | st.floats(1e-6, 1.0),
    g=st.just(0.0) | st.floats(1e-9, 1e-3),
    batch=st.integers(1, 512),
    ctx=st.integers(1, 10**6),
    t0=st.floats(0.0, 1e4),
    target=st.floats(0.0, 1e3),
)
def test_boundaries_sum_steps_and_inverse_is_exact(e, f, g, batch, ctx, t0, target):
    model = LatencyModel((1.0, 0.0, 0.0, 0.0), (e, f, g))
    coef = StepCoef.of(model)
    first, q = coef.de + coef.df * batch + coef.dg * (batch * ctx), coef.dg * batch * 0.5
    # k steps in closed form = the sum of k single steps, each one token longer per sequence.
    steps = [model.decode_ms(batch, batch * ctx + j * batch) / 1000 for j in range(7)]
    assert boundary_s(t0, first, q, 7) - t0 == pytest.approx(math.fsum(steps), rel=1e-9, abs=1e-12)
    time_s = t0 + target
    k = first_boundary_at_or_after(t0, first, q, time_s)
    if first == 0 and q == 0:
        assert k == NEVER_STEPS
        return
    assert k >= 1 and boundary_s(t0, first, q, k) >= time_s
    assert k == 1 or boundary_s(t0, first, q, k - 1) < time_s


def test_inverse_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(300):
        t0, first, q = float(rng.uniform(0, 100)), float(rng.uniform(1e-3, 0.05)), float(rng.uniform(0, 1e-4))
        time_s = t0 + float(rng.uniform(0, 5))
        k = 1
        while boundary_s(t0, first, q, k) < time_s:
            k += 1
        assert first_boundary_at_or_after(t0, first, q, time_s) == k

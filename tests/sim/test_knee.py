"""The roofline knee in the simulator: step costs in seconds, and exact timelines where it binds.

The model below has only token and sequence terms, dyadic in seconds: a prefill costs
max(Σn, 256)/1024 s, a decode step max(B, 4)/256 s, so every timeline is exact in floating point
and differs from the knee-less one.
"""

from __future__ import annotations

import numpy as np
import pytest
import simcases as sc
from hypothesis import given, settings
from hypothesis import strategies as st
from stepped_reference import SteppedColocated, SteppedDecode
from test_reference import FIELDS

from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim import DecodePool, PrefillPool, simulate
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.costs import StepCoef
from pdplan.sim.disagg import Run

PER_SEQ_MS = 3.90625  # 1/256 s


def knee_model() -> LatencyModel:
    return LatencyModel(
        (0.0, 0.0, sc.PER_TOKEN_MS, 0.0),
        (0.0, PER_SEQ_MS, 0.0),
        prefill_knee_tokens=256.0,
        decode_knee_batch=4.0,
    )


def _same_records(fast, slow) -> None:
    for name in FIELDS:
        assert np.array_equal(getattr(fast.records, name), getattr(slow.records, name), equal_nan=True), name


def test_disaggregated_timeline_with_knees() -> None:
    # A alone: its 100-token prefill is weight-bound, 256/1024 = 0.25 s (not 100/1024); the
    # transfer adds 1/128 s; each of its 2 decode steps costs 4/256 = 1/64 s although the batch
    # holds one sequence. Six 64-token prompts at t=1 batch together: 384 tokens are past the
    # knee, 0.375 s; their 6-sequence decode steps cost 6/256 s each.
    reqs = sc.requests([(0.0, 100, 3)] + [(1.0, 64, 3)] * 6)
    cluster = sc.disagg(
        knee_model(),
        prefill=PrefillPool(1, max_batch_tokens=1024, max_batch_size=8),
        decode=DecodePool(1, max_batch_size=8),
    )
    result = simulate(reqs, cluster)
    assert (
        sc.timeline(result)
        == [(0.0, 0.0, 0.25, 0.2578125, 0.2890625)] + [(1.0, 1.0, 1.375, 1.3828125, 1.4296875)] * 6
    )
    slow = Run(reqs, cluster, "round_robin", np.random.default_rng(0), SteppedDecode).run(None)
    _same_records(result, slow)


def test_colocated_chunked_timeline_with_knees() -> None:
    # A's 128-token prompt in two 64-token chunks, each weight-bound: 0.25 s, first token at 0.5.
    # B (arrives at 0.5) rides in a mixed step with A's decode: 32/1024 + 1/256 s of compute is
    # under the prefill's weight-read floor 256/1024, so the step takes 0.25 s. Then A and B
    # decode one step together at max(2, 4)/256 = 1/64 s.
    reqs = sc.requests([(0.0, 128, 3), (0.5, 32, 2)])
    cluster = sc.colocated(knee_model(), policy="chunked", max_batch_size=4, chunk_tokens=64)
    result = simulate(reqs, cluster)
    assert sc.timeline(result) == [(0.0, 0.0, 0.5, 0.5, 0.765625), (0.5, 0.5, 0.75, 0.75, 0.765625)]
    slow = ColocatedRun(reqs, cluster, "round_robin", np.random.default_rng(0), SteppedColocated).run(None)
    _same_records(result, slow)


def test_without_knees_the_same_requests_finish_earlier() -> None:
    plain = LatencyModel((0.0, 0.0, sc.PER_TOKEN_MS, 0.0), (0.0, PER_SEQ_MS, 0.0))
    reqs = sc.requests([(0.0, 100, 3)])
    result = simulate(reqs, sc.disagg(plain))
    # 100/1024 s prefill + 1/128 s transfer, then 2 steps of 1/256 s
    assert sc.timeline(result) == [(0.0, 0.0, 0.09765625, 0.10546875, 0.11328125)]


@settings(max_examples=100, deadline=None)
@given(
    coef=st.tuples(*[st.floats(0, 10)] * 7),
    knees=st.tuples(st.floats(0, 2000), st.floats(0, 64)),
    seqs=st.integers(0, 8),
    tokens=st.integers(0, 4000),
    batch=st.integers(0, 64),
    context=st.integers(0, 10**5),
)
def test_step_coef_with_knees_is_the_model_in_seconds(coef, knees, seqs, tokens, batch, context) -> None:
    pa, pb, pc, pd, e, f, g = coef
    tokens = tokens if seqs else 0
    model = LatencyModel(
        (pa, pb, pc, pd), (e, f, g), prefill_knee_tokens=knees[0], decode_knee_batch=knees[1]
    )
    step = StepCoef.of(model)
    pairs = tokens * tokens
    prefill_s = step.prefill_s(seqs, tokens, pairs)
    decode_s = step.decode_s(batch, context)
    assert prefill_s == pytest.approx(model.prefill_ms_sums(seqs, tokens, pairs) / 1000, rel=1e-12)
    assert decode_s == pytest.approx(model.decode_ms(batch, context) / 1000, rel=1e-12)
    mixed = step.mixed_s(seqs, tokens, pairs, batch, context)
    if seqs and batch:
        # one weight-read floor (the larger), compute of both phases otherwise: never cheaper
        # than either pure step, never dearer than both run back to back
        tol = 1e-12 * (1 + prefill_s + decode_s)  # float rounding, relative to the sizes
        assert max(prefill_s, decode_s) - tol <= mixed <= prefill_s + decode_s + tol
        floor = max(pc * knees[0], f * knees[1]) / 1000
        compute = (pc * tokens + f * batch) / 1000
        fixed = (max(pa, e) + pb * seqs + pd * pairs + g * context) / 1000
        assert mixed == pytest.approx(fixed + max(floor, compute), rel=1e-12, abs=1e-15)
    elif batch:
        assert mixed == decode_s
    else:
        assert mixed == prefill_s
    # monotone in every count (of a step that holds something)
    if seqs:
        assert step.mixed_s(seqs, tokens + 1, pairs + 2 * tokens + 1, batch, context) >= mixed
    if seqs or batch:
        assert step.mixed_s(seqs, tokens, pairs, batch + 1, context + 1) >= mixed

"""A MoE's decode experts term in the simulator: step costs in seconds, and exact timelines.

The model below prices only prompt tokens (1/1024 s each) and expert reads: 2 experts, top-1, one
expert's weights read at 1/128 s, so a decode step of B sequences reads the experts B tokens touch,
2·(1 − 2^−B) of them — 1/128 s at B = 1, 3/256 s at B = 2 — and every timeline is dyadic, exact in
floating point, and different from the same model without the term (whose decode steps are free).
"""

from __future__ import annotations

import pytest
import simcases as sc
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.moe_cost import ExpertReads
from pdplan.sim import DecodePool, PrefillPool, simulate
from pdplan.sim.costs import StepCoef

#: 1 GB per expert at 7.8125 ms/GB: one expert read costs 1/128 s
TWO_EXPERTS = ExpertReads(num_experts=2, top_k=1, gb_per_expert=1.0)


def moe_model() -> LatencyModel:
    return LatencyModel(
        (0.0, 0.0, sc.PER_TOKEN_MS, 0.0), (0.0, 0.0, 0.0), experts=TWO_EXPERTS, decode_expert_coef=7.8125
    )


def test_step_costs_in_seconds() -> None:
    step = StepCoef.of(moe_model())
    assert (step.xs, step.miss) == (1 / 64, 0.5)  # all experts; the chance a token misses one
    assert [step.decode_s(b, 0) for b in (0, 1, 2, 3)] == [0.0, 1 / 128, 3 / 256, 7 / 512]
    assert step.expert_s(2) == 3 / 256
    # a 4-token chunk beside one decode: its sum 4/1024 s is below the decode step with the
    # experts of all 5 tokens, (1 − 2^−5)/64 s, which the step then costs
    assert step.mixed_s(1, 4, 16, 1, 0) == 31 / 2048
    # a 64-token chunk: the sum, 1/16 s, is dearer
    assert step.mixed_s(1, 64, 64 * 64, 1, 0) == 1 / 16
    assert step.mixed_s(1, 4, 16, 0, 0) == 4 / 1024  # no decodes: the prefill step


@pytest.mark.parametrize("admission", ["preempt", "reserve"])
def test_disaggregated_decode_pays_the_experts_its_batch_touches(admission: str) -> None:
    # A alone: prefill 100/1024 s, transfer 1/128 s, then 2 steps of one sequence, 1/128 s each.
    # B and C at t=1: 64 + 64 tokens prefilled together (1/8 s), then 2 steps of two sequences at
    # 3/256 s each.
    reqs = sc.requests([(0.0, 100, 3), (1.0, 64, 3), (1.0, 64, 3)])
    cluster = sc.disagg(
        moe_model(),
        prefill=PrefillPool(1, max_batch_tokens=1024, max_batch_size=4),
        decode=DecodePool(1, max_batch_size=2, admission=admission),
    )
    result = simulate(reqs, cluster)
    assert sc.timeline(result) == [
        (0.0, 0.0, 0.09765625, 0.10546875, 0.12109375),
        (1.0, 1.0, 1.125, 1.1328125, 1.15625),
        (1.0, 1.0, 1.125, 1.1328125, 1.15625),
    ]


@pytest.mark.parametrize("admission", ["preempt", "reserve"])
def test_colocated_chunked_mixed_step_reads_the_experts_of_all_its_tokens(admission: str) -> None:
    # A's 128-token prompt in two 64-token chunks (1/16 s each): first token at 1/8 s; then A
    # decodes alone at 1/128 s a step. B (4 tokens) arrives at 0.18 and joins at the next step
    # boundary, 1/8 + 8/128 = 0.1875: the mixed step (B's chunk + A's decode) costs the decode step
    # with the experts of 5 tokens, 31/2048 s. Then A and B decode together (3/256 s): B's last
    # token after one step; A's 29 remaining steps alone at 1/128 s.
    reqs = sc.requests([(0.0, 128, 40), (0.18, 4, 2)])
    cluster = sc.colocated(
        moe_model(), policy="chunked", max_batch_size=4, chunk_tokens=64, admission=admission
    )
    result = simulate(reqs, cluster)
    mixed_end = 0.1875 + 31 / 2048
    b_end = mixed_end + 3 / 256
    assert sc.timeline(result) == [
        (0.0, 0.0, 0.125, 0.125, b_end + 29 / 128),
        (0.18, 0.1875, mixed_end, mixed_end, b_end),
    ]


@settings(max_examples=40, deadline=None)
@given(
    coef=st.tuples(*[st.floats(0, 10)] * 8),
    knees=st.tuples(st.floats(0, 2000), st.floats(0, 64)),
    experts=st.integers(2, 256).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))),
    seqs=st.integers(0, 8),
    tokens=st.integers(0, 4000),
    batch=st.integers(0, 64),
    context=st.integers(0, 10**5),
)
def test_moe_step_coef_is_the_model_in_seconds(coef, knees, experts, seqs, tokens, batch, context) -> None:
    pa, pb, pc, pd, e, f, g, m = coef
    tokens = tokens if seqs else 0
    reads = ExpertReads(experts[0], experts[1], 0.05)
    model = LatencyModel(
        (pa, pb, pc, pd),
        (e, f, g),
        prefill_knee_tokens=knees[0],
        decode_knee_batch=knees[1],
        experts=reads,
        decode_expert_coef=m,
    )
    step = StepCoef.of(model)
    pairs = tokens * tokens
    decode_s = step.decode_s(batch, context)
    assert decode_s == pytest.approx(model.decode_ms(batch, context) / 1000, rel=1e-12, abs=1e-15)
    mixed = step.mixed_s(seqs, tokens, pairs, batch, context)
    if seqs and batch:
        # the dense mixed step (test_knee.py), or the decode step with the experts of all the
        # step's tokens when that is dearer: never cheaper than the decode step alone
        dense = StepCoef.of(
            LatencyModel(
                (pa, pb, pc, pd), (e, f, g), prefill_knee_tokens=knees[0], decode_knee_batch=knees[1]
            )
        ).mixed_s(seqs, tokens, pairs, batch, context)
        alone = (model.decode_ms(batch, context) + model.decode_expert_ms(batch + tokens)) / 1000
        alone -= model.decode_expert_ms(batch) / 1000
        assert mixed == pytest.approx(max(dense, alone), rel=1e-12, abs=1e-15)
        assert mixed >= decode_s * (1 - 1e-12)
        assert step.mixed_s(seqs, tokens + 1, pairs + 2 * tokens + 1, batch, context) >= mixed
        assert step.mixed_s(seqs, tokens, pairs, batch + 1, context + 1) >= mixed
    elif batch:
        assert mixed == decode_s

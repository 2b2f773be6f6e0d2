"""KV allocated as tokens are produced, and preemption when it runs out (``admission: preempt``).

Exact timelines worked out by hand (dyadic costs: 1/1024 s per prefill token, 1/64 s per decode
step, 1/128 s link latency), and invariants over random runs with every instance instrumented to
check, at each event, that the KV it holds and has planned never exceeds its capacity.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simcases as sc
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reference import _colocated, _disagg, _workload

from pdplan.profiles.errors import ConfigError
from pdplan.sim import DecodePool, simulate
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.colocated_chunkkv import ChunkwiseColocatedInstance, kept_prefix
from pdplan.sim.colocated_preempt import PreemptingColocatedInstance, cached_prefix
from pdplan.sim.decode import PreemptingDecodeInstance
from pdplan.sim.disagg import Run
from pdplan.sim.kernel import boundary_s


def test_disaggregated_preemption_recomputes_the_latest_request():
    # A, B: prompts 64, outputs 20, one prefill batch [0, 0.125); decode KV holds 140 tokens.
    # Both reserve their prompt (64 + 64 ≤ 140), arrive at 0.1328125 and decode together: the
    # batch holds 128 tokens and grows by 2 a step, so after 6 steps (0.2265625) it holds 140 and
    # the next step does not fit. B, admitted last, is preempted after 6 tokens (ctx 140 − 70).
    # A runs its last 13 steps alone: finishes at 0.2265625 + 13/64 = 0.4296875. B is then
    # recomputed (64 + 6 = 70 tokens = 70/1024 s) and runs its 13 remaining steps:
    # 0.4296875 + 0.068359375 + 0.203125 = 0.701171875. Its first token stays at 0.1328125.
    reqs = sc.requests([(0.0, 64, 20), (0.0, 64, 20)])
    result = simulate(reqs, sc.disagg(kv_tokens=140))
    assert sc.timeline(result) == [
        (0.0, 0.0, 0.125, 0.1328125, 0.4296875),
        (0.0, 0.0, 0.125, 0.1328125, 0.701171875),
    ]
    assert result.preemptions == 1
    # The conservative policy makes B wait for A's whole footprint instead: A reserves 84 of 140,
    # B (84) waits until A finishes at 0.4296875, transfers (1/128) and decodes 19 steps.
    reserve = simulate(
        reqs, sc.disagg(kv_tokens=140, decode=DecodePool(1, max_batch_size=2, admission="reserve"))
    )
    assert sc.timeline(reserve)[1] == (0.0, 0.0, 0.125, 0.4375, 0.734375)
    assert reserve.preemptions == 0


def test_colocated_prefill_first_preemption_timeline():
    # One prefill step of both prompts [0, 0.125) (128/1024 s); 6 decode steps fill KV (140) at
    # 0.21875; B is preempted after 6 tokens and cannot be re-admitted beside A (70 + 2 > 70
    # free). A finishes at 0.21875 + 13/64 = 0.421875; B's re-prefill of 70 tokens ends at
    # 0.490234375 and its 13 remaining steps at 0.693359375.
    reqs = sc.requests([(0.0, 64, 20), (0.0, 64, 20)])
    cluster = sc.colocated(kv_tokens=140, policy="prefill-first", max_batch_size=2, reuse_preempted_kv=False)
    result = simulate(reqs, cluster)
    assert sc.timeline(result) == [
        (0.0, 0.0, 0.125, 0.125, 0.421875),
        (0.0, 0.0, 0.125, 0.125, 0.693359375),
    ]
    assert result.preemptions == 1
    # With the engine's prefix cache (the default): B's 70 freed tokens go to the free queue,
    # nothing else was free, and A's 13 remaining steps take 13 of them, from B's end. 57 are
    # left: 3 whole blocks of 16 = 48 tokens hit, so B recomputes only 22 (22/1024 s): its
    # re-prefill ends at 0.421875 + 0.021484375 and its 13 steps at 0.646484375.
    cached = simulate(reqs, sc.colocated(kv_tokens=140, policy="prefill-first", max_batch_size=2))
    assert sc.timeline(cached)[1] == (0.0, 0.0, 0.125, 0.125, 0.646484375)
    assert cached.preemptions == 1


@pytest.mark.parametrize(
    ("fill", "overwritten", "cached"),
    [(70, 13, 48), (70, 0, 64), (64, 0, 63), (70, 55, 0), (70, 54, 16), (10, 0, 0), (70, 200, 0)],
)
def test_cached_prefix_is_whole_blocks_from_the_front(fill: int, overwritten: int, cached: int) -> None:
    # whole 16-token blocks of what the overwrites left, and never the last token (its logits)
    assert cached_prefix(fill, overwritten) == cached


def test_colocated_chunked_prompt_holds_only_its_computed_chunks_and_is_preempted():
    # KV 128, chunks of 64 tokens (a decode counts one). A (32, 12) prefills [0, 1/32) and
    # decodes from 0.03125, 1/64 s a step. B (87, 2) arrives at 0.15 and cuts A's run at the next
    # boundary, 0.15625 (A's ctx 40): vLLM's gate wants B's whole sequence free beside A's next
    # slot, 87 ≤ 128 − 40 − 1, but B takes only its first chunk's KV, 63 slots (64 − 1).
    # [0.15625, 0.2333984375): A's step + B's 63 tokens (1/64 + 63/1024 s). Then A holds 41, B 63:
    # 24 free, A's slot leaves 23 and B's last 24 do not fit, so B (the last admitted) is preempted
    # and its 63 tokens freed to the prefix cache behind the 24 free slots. B's whole 87 cannot
    # fit again beside A (128 − 41 − 1 = 86), so A decodes its last 2 steps alone: 0.2646484375.
    # A's two slots came from the 24 free ones: B finds its 63 cached, 48 in whole blocks, and
    # computes 39 (39/1024 s): first token 0.302734375, its one decode step to 0.318359375.
    reqs = sc.requests([(0.0, 32, 12), (0.15, 87, 2)])
    pool = dict(kv_tokens=128, policy="chunked", chunk_tokens=64, max_batch_size=4)
    result = simulate(reqs, sc.colocated(**pool))
    assert sc.timeline(result) == [
        (0.0, 0.0, 0.03125, 0.03125, 0.2646484375),
        (0.15, 0.15625, 0.302734375, 0.302734375, 0.318359375),
    ]
    assert result.preemptions == 1
    # Without the prefix cache B recomputes all 87 in chunks of 64 + 23 (87/1024 s).
    cold = simulate(reqs, sc.colocated(**pool, reuse_preempted_kv=False))
    assert sc.timeline(cold)[1] == (0.15, 0.15625, 0.349609375, 0.349609375, 0.365234375)
    assert cold.preemptions == 1
    # Reserving the whole prompt at admission (87 + 2 sequences' slots > 128 − 40): B waits for
    # A's finish at 0.03125 + 11/64 = 0.203125, then 87/1024 s of chunks and one step.
    whole = simulate(reqs, sc.colocated(**pool, admission="preempt-prompt"))
    assert sc.timeline(whole) == [
        (0.0, 0.0, 0.03125, 0.03125, 0.203125),
        (0.15, 0.203125, 0.2880859375, 0.2880859375, 0.3037109375),
    ]
    assert whole.preemptions == 0


@pytest.mark.parametrize(
    ("freed", "overwritten", "fill", "kept"),
    [
        (95, 1, 100, 80),
        (95, 2, 100, 80),
        (96, 0, 100, 96),
        (96, -5, 100, 96),  # the slots free at its preemption are taken first
        (96, 0, 96, 95),
        (95, 80, 100, 0),
    ],
)
def test_kept_prefix_of_a_part_done_prompt(freed: int, overwritten: int, fill: int, kept: int) -> None:
    # whole blocks of what is left of the freed chunks; the whole fill never (its last token)
    assert kept_prefix(freed, overwritten, fill) == kept


def test_prefill_first_chunks_long_prompts_instead_of_rejecting_them():
    # A 3000-token prompt with max_batch_tokens 1024 runs alone in chunks 1024, 1024, 952
    # back to back (the dyadic model's prefill is linear in tokens: 3000/1024 s), then decodes.
    reqs = sc.requests([(0.0, 3000, 3)])
    result = simulate(reqs, sc.colocated(policy="prefill-first", max_batch_tokens=1024))
    assert sc.timeline(result) == [(0.0, 0.0, 3000 / 1024, 3000 / 1024, 3000 / 1024 + 2 / 64)]
    reserve = simulate(reqs, sc.colocated(policy="prefill-first", max_batch_tokens=1024, admission="reserve"))
    assert list(reserve.records.status) == ["rejected"]


def test_admission_must_be_known():
    with pytest.raises(ConfigError, match=r"decode\.admission 'lazy'"):
        DecodePool(1, admission="lazy")
    # whole-prompt vs chunk-by-chunk is a colocated (chunked prefill) choice only
    with pytest.raises(ConfigError, match=r"decode\.admission 'preempt-prompt'"):
        DecodePool(1, admission="preempt-prompt")


class _CheckedDecode(PreemptingDecodeInstance):
    def _plan(self, now):
        super()._plan(now)
        assert self.reserved >= 0 and self.ctx >= 0 and self.batch <= self.max_batch
        if self.batch:  # everything the planned segment writes fits
            assert self.ctx + self.batch * self.wake_k + self.reserved <= self.cap
        else:
            assert self.reserved <= self.cap


class _CheckedColocated(PreemptingColocatedInstance):
    def next_step(self, now):
        super().next_step(now)
        assert self.held >= 0 and self.ctx >= 0
        assert self.batch + len(self.prefilling) <= self.max_batch
        if self.mode == 2:  # SEGMENT
            assert self.ctx + self.batch * self.wake_k + self.held <= self.cap
        elif self.mode == 1:  # STEP
            assert self.ctx + self.held + (self.batch if self.step_decodes else 0) <= self.cap


class _CheckedChunkwise(ChunkwiseColocatedInstance):
    def next_step(self, now):
        super().next_step(now)
        assert self.held >= 0 and self.ctx >= 0 and len(self.prefilling) <= 1
        if self.mode == 2:  # SEGMENT: no prompt holds KV between steps, nor is one computing
            assert self.ctx + self.batch * self.wake_k + self.held <= self.cap
        elif self.mode == 1:  # STEP: prompts hold exactly their computed + scheduled chunks
            fills = sum(self._fill(rid) for rid in self.completing)
            assert self.held == fills + (self.head_done if self.prefilling else 0)
            assert self.batch + len(self.prefilling) + len(self.completing) <= self.max_batch
            assert self.ctx + self.held + (self.batch if self.step_decodes else 0) <= self.cap


class _OneStepChunkwise(ChunkwiseColocatedInstance):
    """The same rules, one event per decode step (no coalesced runs)."""

    def next_step(self, now):
        super().next_step(now)
        if self.mode == 2 and self.wake_k > 1:
            self._schedule(boundary_s(now, self.first, self.q, 1), 1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), dyadic=st.booleans())
def test_chunkwise_coalesced_runs_match_one_event_per_step(seed, n, dyadic):
    # Coalescing decode runs (cut by arrivals, finishes, KV exhaustion and preemptions) changes
    # no record of the chunk-by-chunk policy (a run that ignored the waiting head after a
    # preemption, for one, would admit it late).
    rng = np.random.default_rng(seed)
    reqs = _workload(rng, n, dyadic)
    cluster = _colocated(rng, dyadic, admission="preempt")
    cluster = dataclasses.replace(cluster, pool=dataclasses.replace(cluster.pool, policy="chunked"))
    runs = []
    for factory in (_CheckedChunkwise, _OneStepChunkwise):
        sim_rng = np.random.default_rng(seed)
        runs.append(ColocatedRun(reqs, cluster, "round_robin", sim_rng, instance_factory=factory).run(None))
    for name in ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "status_code"):
        a, b = getattr(runs[0].records, name), getattr(runs[1].records, name)
        if dyadic:  # exact; otherwise a run's closed-form end and a sum of steps differ by ulps
            assert np.array_equal(a, b, equal_nan=True), name
        else:
            assert np.allclose(a, b, rtol=1e-9, atol=0, equal_nan=True), name
    assert runs[0].preemptions == runs[1].preemptions


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    dyadic=st.booleans(),
    colocated=st.booleans(),
    router=st.sampled_from(["round_robin", "least_loaded", "random"]),
    admission=st.sampled_from(["preempt", "preempt-prompt"]),
)
def test_preemption_invariants(seed, n, dyadic, colocated, router, admission):
    rng = np.random.default_rng(seed)
    reqs = _workload(rng, n, dyadic)
    sim_rng = np.random.default_rng(seed)
    factory = _CheckedColocated
    if colocated:
        cluster = _colocated(rng, dyadic, admission=admission)
        if admission == "preempt" and cluster.pool.policy == "chunked":
            factory = _CheckedChunkwise  # KV taken chunk by chunk
        run = ColocatedRun(reqs, cluster, router, sim_rng, instance_factory=factory)
        capacity = cluster.cost.kv_capacity_tokens
    else:
        cluster = _disagg(rng, dyadic, admission="preempt")
        run = Run(reqs, cluster, router, sim_rng, decode_factory=_CheckedDecode)
        capacity = cluster.decode_cost.kv_capacity_tokens
    result = run.run(None)
    rec = result.records
    ok, rejected = rec.status_code == 0, rec.status_code == 1
    # Conservation: all served or rejected, and rejected exactly those that can never fit
    # (prefill-first no longer rejects long prompts under this policy).
    assert np.all(ok | rejected)
    never = rec.prompt_tokens + rec.output_tokens > capacity
    if not colocated and cluster.prefill.chunk_tokens is None:
        never |= rec.prompt_tokens > cluster.prefill.max_batch_tokens
    assert np.array_equal(rejected, never)
    # Causality, preemptions or not.
    a, ps, pe = rec.arrival_s[ok], rec.prefill_start_s[ok], rec.prefill_end_s[ok]
    ds, ft, fin = rec.decode_start_s[ok], rec.first_token_s[ok], rec.finish_s[ok]
    assert np.all(a <= ps) and np.all(ps < pe) and np.all(pe <= ds) and np.all(ds == ft) and np.all(ft <= fin)
    assert np.all((rec.output_tokens[ok] > 1) == (fin > ft))
    # Every output token takes at least one decode step after the first.
    cost = cluster.cost if colocated else cluster.decode_cost
    step = cost.latency.decode_coef[0]  # a decode step (or a mixed one) costs at least e
    assert np.all(fin - ft >= (rec.output_tokens[ok] - 1) * step / 1000 * (1 - 1e-9))
    # Determinism.
    again = (
        ColocatedRun(reqs, cluster, router, np.random.default_rng(seed), instance_factory=factory)
        if colocated
        else Run(reqs, cluster, router, np.random.default_rng(seed), decode_factory=_CheckedDecode)
    ).run(None)
    assert np.array_equal(again.records.finish_s, rec.finish_s, equal_nan=True)
    assert again.preemptions == result.preemptions

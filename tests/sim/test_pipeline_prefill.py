"""A pipelined prefill instance is a tandem of identical stages: exact, hand-computed timelines.

Prefill costs 1/1024 s per token through the whole pipeline (``simcases.dyadic_model``) and the
stage-to-stage sends 1/128 s in all, so with pp = 2 a batch of n tokens takes
s = (n/1024 − 1/128)/2 on each stage and one send of 1/128 between them.
"""

from __future__ import annotations

import simcases as sc

from pdplan.profiles.pipeline import PipelineSend
from pdplan.sim import DecodePool, InstanceCost, PrefillPool, simulate
from pdplan.sim.prefill import tandem

SEND = PipelineSend(latency_ms=sc.LINK_MS, ms_per_token=0.0)  # 1/128 s for the pp − 1 = 1 send


def _cluster(pp: int):
    cluster = sc.disagg(
        prefill=PrefillPool(1, max_batch_tokens=512, max_batch_size=1, pp=pp),
        decode=DecodePool(1, max_batch_size=8),
    )
    if pp == 1:
        return cluster
    from dataclasses import replace

    return replace(cluster, prefill_cost=InstanceCost(sc.dyadic_model(), 100_000, pp=pp, pp_send=SEND))


def test_tandem_recurrence_by_hand() -> None:
    # three stages, send 1: a long batch (s = 4) then a short one (s = 1) that catches up with it
    free = [0.0, 0.0, 0.0]
    assert tandem(free, 0.0, 4.0, 1.0) == (4.0, 14.0)  # D = 4, 4+1+4 = 9, 9+1+4 = 14
    assert free == [4.0, 9.0, 14.0]
    # D1 = 5; stage 2: max(5+1, 9) + 1 = 10; stage 3: max(10+1, 14) + 1 = 15 (blocked behind it)
    assert tandem(free, 4.0, 1.0, 1.0) == (5.0, 15.0)
    assert free == [5.0, 10.0, 15.0]


def test_a_new_batch_enters_stage_one_as_soon_as_it_is_free() -> None:
    # three 512-token prompts at t = 0, one per batch: s = (0.5 − 1/128)/2 = 0.24609375
    reqs = sc.requests([(0.0, 512, 1), (0.0, 512, 1), (0.0, 512, 1)])
    result = simulate(reqs, _cluster(pp=2))
    # stage 1 frees at 0.24609375, 0.4921875; batch j ends at D_2(j) = max(D_1(j) + 1/128, D_2(j−1)) + s
    assert list(result.records.prefill_start_s) == [0.0, 0.24609375, 0.4921875]
    assert list(result.records.prefill_end_s) == [0.5, 0.74609375, 0.9921875]
    # one micro-batch alone takes the whole-pipeline latency, as without pp
    serial = simulate(reqs, _cluster(pp=1))
    assert list(serial.records.prefill_end_s) == [0.5, 1.0, 1.5]
    assert serial.records.prefill_end_s[0] == result.records.prefill_end_s[0]


def test_a_short_batch_waits_behind_a_long_one_on_the_second_stage() -> None:
    # A: 512 tokens, s = 0.24609375, ends 0.5. B: 64 tokens, s = (1/16 − 1/128)/2 = 0.02734375,
    # leaves stage 1 at 0.2734375, reaches stage 2 at 0.28125 but it is busy until 0.5: ends 0.52734375
    reqs = sc.requests([(0.0, 512, 1), (0.0, 64, 1)])
    result = simulate(reqs, _cluster(pp=2))
    assert list(result.records.prefill_start_s) == [0.0, 0.24609375]
    assert list(result.records.prefill_end_s) == [0.5, 0.52734375]
    assert list(result.records.status) == ["ok", "ok"]

"""Exact timelines of a few hand-placed requests on dyadic constant-cost models (both modes).

Every expected time below was worked out by hand from the module docstrings' rules; the latencies
are dyadic so the simulator's float arithmetic must reproduce them exactly.
"""

from __future__ import annotations

import math

import numpy as np
import simcases as sc

from pdplan.sim import DecodePool, SimOptions, simulate

NAN = math.nan


def _assert_timeline(result, expected):
    got = sc.timeline(result)
    assert len(got) == len(expected)
    for i, (row, want) in enumerate(zip(got, expected, strict=True)):
        for value, target in zip(row, want, strict=True):
            assert (math.isnan(value) and math.isnan(target)) or value == target, (i, row, want)


def test_disaggregated_timeline_joins_mid_run_and_waits_for_a_slot():
    # A: prefill [0, 0.125), ready 0.125 + 1/128; 4 decode steps of 1/64.
    # B, C: arrive together, one batch of 128 tokens [0.125, 0.25); join an idle decode together.
    # E: arrives at 0.25, the instant B/C's batch ends, so it is queued for the next batch:
    #    [0.25, 0.28125), ready 0.2890625 = exactly B's boundary after C leaves -> joins there.
    # F: ready 0.3046875 while the batch [B, E] is full (max 2) -> joins when E leaves, 0.3203125.
    # D: alone; one output token -> finishes when admitted.
    reqs = sc.requests(
        [
            (0.0, 128, 5),  # A
            (0.0625, 64, 6),  # B
            (0.0625, 64, 2),  # C
            (0.25, 32, 3),  # E
            (0.28125, 16, 2),  # F
            (0.5, 128, 1),  # D
        ]
    )
    result = simulate(reqs, sc.disagg())
    _assert_timeline(
        result,
        [
            (0.0, 0.0, 0.125, 0.1328125, 0.1953125),
            (0.0625, 0.125, 0.25, 0.2578125, 0.3359375),
            (0.0625, 0.125, 0.25, 0.2578125, 0.2734375),
            (0.25, 0.25, 0.28125, 0.2890625, 0.3203125),
            (0.28125, 0.28125, 0.296875, 0.3203125, 0.3359375),
            (0.5, 0.5, 0.625, 0.6328125, 0.6328125),
        ],
    )
    assert list(result.records.status) == ["ok"] * 6
    assert np.array_equal(result.records.decode_start_s, result.records.first_token_s)


def test_disaggregated_kv_wait_and_rejection():
    # Decode KV holds 200 tokens. A reserves 128+5 at 0.125; B (64+6 = 70 > 67 left) waits from
    # its prefill end 0.1875 until A finishes at 0.1953125, then transfers (1/128) and joins.
    # R needs 190+20 > 200 tokens: rejected on arrival, never scheduled.
    # (the conservative policy; test_preemption.py has the engines' on-demand policy)
    reqs = sc.requests([(0.0, 128, 5), (0.0625, 64, 6), (0.07, 190, 20)])
    decode = DecodePool(1, max_batch_size=2, admission="reserve")
    result = simulate(reqs, sc.disagg(kv_tokens=200, decode=decode))
    _assert_timeline(
        result,
        [
            (0.0, 0.0, 0.125, 0.1328125, 0.1953125),
            (0.0625, 0.125, 0.1875, 0.203125, 0.28125),
            (0.07, NAN, NAN, NAN, NAN),
        ],
    )
    assert list(result.records.status) == ["ok", "ok", "rejected"]
    assert result.kv_start_s[1] == 0.1953125


def test_disaggregated_link_contention_and_chunking():
    # 5**9 bytes per token at 2 GB/s = 1/1024 s per token on the link. Two prompts of one batch
    # leave the link one after the other (FIFO per prefill instance).
    link = sc.KvLink(bandwidth_gbps=2.0, latency_ms=0.0)
    reqs = sc.requests([(0.0, 64, 2), (0.0, 64, 2)])
    result = simulate(reqs, sc.disagg(link=link, kv_bytes_per_token=5**9))
    # batch of 128 tokens: [0, 0.125); A's 64 tokens on the link [0.125, 0.1875), B's [0.1875, 0.25)
    assert result.transfer_end_s.tolist() == [0.1875, 0.25]
    assert result.records.finish_s.tolist() == [0.1875 + 1 / 64, 0.25 + 1 / 64]
    # No contention: both leave together.
    free = sc.KvLink(bandwidth_gbps=2.0, latency_ms=0.0, contention="none")
    no_contention = simulate(reqs, sc.disagg(link=free, kv_bytes_per_token=5**9))
    assert no_contention.transfer_end_s.tolist() == [0.1875, 0.1875]
    # Chunking: a 96-token budget takes A (64) and B's first 32 tokens [0, 3/32); B's last 32
    # tokens run alone [3/32, 1/8).
    chunked = sc.disagg(prefill=sc.PrefillPool(1, max_batch_tokens=1024, max_batch_size=4, chunk_tokens=96))
    res = simulate(reqs, chunked)
    assert res.records.prefill_end_s.tolist() == [0.09375, 0.125]
    assert res.records.prefill_start_s.tolist() == [0.0, 0.0]


def test_layerwise_overlap_starts_the_transfer_with_the_prefill():
    link = sc.KvLink(bandwidth_gbps=2.0, latency_ms=0.0, layerwise_overlap=True)
    # 128 tokens: prefill [0, 0.125); the transfer takes 0.125 s from 0 but ends no earlier than
    # 0.125 + 0.125/4 (the last of 4 layers) = 0.15625.
    cluster = sc.disagg(link=link, kv_bytes_per_token=5**9, num_layers=4)
    result = simulate(sc.requests([(0.0, 128, 2)]), cluster)
    assert result.transfer_end_s.tolist() == [0.15625]
    assert result.kv_start_s.tolist() == [0.0]


def test_colocated_prefill_first_timeline():
    # A's prefill step [0, 0.125); B (arrived 0.0625) is prefilled next, decodes paused;
    # [A, B] decode from 0.1875; B leaves at 0.203125. C arrives at 0.21 inside A's decode run
    # and cuts it at the next boundary 0.21875; C's prefill step [0.21875, 0.25); then [A, C].
    reqs = sc.requests([(0.0, 128, 5), (0.0625, 64, 2), (0.21, 32, 2)])
    result = simulate(reqs, sc.colocated(policy="prefill-first", max_batch_size=4, max_batch_tokens=256))
    _assert_timeline(
        result,
        [
            (0.0, 0.0, 0.125, 0.125, 0.28125),
            (0.0625, 0.125, 0.1875, 0.1875, 0.203125),
            (0.21, 0.21875, 0.25, 0.25, 0.265625),
        ],
    )


def test_colocated_chunked_timeline():
    # Budget 64 tokens: A's prompt in two pure-prefill chunks [0, 1/16), [1/16, 1/8). B (arrived
    # 0.1) gets 63 tokens beside A's decode (mixed step: 1/64 + 63/1024), then its last 33 beside
    # A's last step (1/64 + 33/1024) ending at 0.25, where A finishes and B's first token comes.
    reqs = sc.requests([(0.0, 128, 3), (0.1, 96, 2)])
    result = simulate(reqs, sc.colocated(policy="chunked", max_batch_size=4, chunk_tokens=64))
    _assert_timeline(
        result,
        [
            (0.0, 0.0, 0.125, 0.125, 0.25),
            (0.1, 0.125, 0.25, 0.25, 0.265625),
        ],
    )


def test_unfinished_requests_at_the_time_limit():
    reqs = sc.requests([(0.0, 128, 5), (0.0625, 64, 6)])
    result = simulate(reqs, sc.disagg(), SimOptions(max_time_s=0.2))
    assert list(result.records.status) == ["ok", "unfinished"]
    assert math.isnan(result.records.finish_s[1])


def test_batch_limit_one_serialises_decode():
    reqs = sc.requests([(0.0, 64, 3), (0.0, 64, 3)])
    result = simulate(reqs, sc.disagg(decode=DecodePool(1, max_batch_size=1)))
    # Both ready at 0.125 + 1/128; the second waits for the first's two steps.
    assert result.records.first_token_s.tolist() == [0.1328125, 0.1328125 + 2 / 64]


def test_empty_and_single_request_runs():
    empty = sc.requests([(0.0, 1, 1)]).head(0)
    for cluster in (sc.disagg(), sc.colocated()):
        result = simulate(empty, cluster)
        assert len(result.records) == 0 and result.end_s == 0.0
    # A lone request arriving late: times are relative to the first arrival.
    single = simulate(sc.requests([(5.0, 128, 2)]), sc.disagg())
    assert sc.timeline(single) == [(0.0, 0.0, 0.125, 0.1328125, 0.1328125 + 1 / 64)]

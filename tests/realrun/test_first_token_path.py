"""``bench/local_ttft.py``: the first-token path cut into segments, measured (worker timelines and
client times) and simulated (a hand-computed disaggregated timeline), and step prices."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from realrun_helpers import bench_module

from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim import (
    DecodePool,
    DisaggregatedCluster,
    InstanceCost,
    KvLink,
    PrefillPool,
    Requests,
    simulate,
)

_local_ttft = bench_module("local_ttft")
DETAILS = _local_ttft.DETAILS
SEGMENTS = _local_ttft.SEGMENTS
cores_by_process = _local_ttft.cores_by_process
measured_segments = _local_ttft.measured_segments
path_table = _local_ttft.path_table
simulated_segments = _local_ttft.simulated_segments
step_prices = _local_ttft.step_prices
prefill_breakdown = _local_ttft.prefill_breakdown
thread_cpu_s = _local_ttft.thread_cpu_s

# 1/1024 s per prompt token, 1/64 s per decode step, 1/128 s link latency: exact in floating point.
MODEL = LatencyModel((0.0, 0.0, 0.9765625, 0.0), (15.625, 0.0, 0.0))


def test_simulated_segments_follow_the_disaggregated_timeline() -> None:
    # A (128 tokens, 5 out) at 0: prefill [0, 0.125), KV ready 0.125 + 1/128 = 0.1328125, joins the
    #   idle decode at once (first token 0.1328125); its steps end at 0.1328125 + k/64.
    # B (40 tokens) at 0.0625: queued until A's batch ends, prefill [0.125, 0.1640625), KV ready
    #   0.171875, which is inside A's third step: joins at its end, 0.1796875.
    cluster = DisaggregatedCluster(
        prefill=PrefillPool(1, max_batch_tokens=1024, max_batch_size=4),
        decode=DecodePool(1, max_batch_size=2, admission="reserve"),
        link=KvLink(bandwidth_gbps=1.0, latency_ms=7.8125),
        prefill_cost=InstanceCost(MODEL, 100_000),
        decode_cost=InstanceCost(MODEL, 100_000),
        kv_bytes_per_token=0,
        num_layers=1,
    )
    reqs = Requests(np.array([0.0, 0.0625]), np.array([128, 40]), np.array([5, 3]))
    seg = simulated_segments(simulate(reqs, cluster))
    want = {
        "to_queue": [0.0, 0.0],
        "queue": [0.0, 62.5],
        "prefill": [125.0, 39.0625],
        "handoff": [7.8125, 7.8125],
        "join": [0.0, 7.8125],
        "to_client": [0.0, 0.0],
    }
    assert {k: v.tolist() for k, v in seg.items()} == want
    # the segments add up to the simulated TTFT: 132.8125 and 117.1875 ms
    assert [sum(seg[k][i] for k in want) for i in range(2)] == [132.8125, 117.1875]


def _outcome(sent_s: float, first_s: float, worker: dict[str, float], status: str = "ok") -> SimpleNamespace:
    return SimpleNamespace(status=status, sent_s=sent_s, first_token_s=first_s, worker=worker)


def test_measured_segments_from_worker_timelines_and_client_times() -> None:
    t0 = 1000.0  # the run's time 0, UNIX s
    pd = {
        "arrival_ts": 1000.25,
        "prefill_queued_ts": 1000.375,
        "prefill_start_ts": 1000.5,
        "prefill_end_ts": 1001.0,
        "kv_received_ts": 1001.0625,
        "first_token_ts": 1001.125,
    }
    colocated = {"arrival_ts": 1000.25, "prefill_start_ts": 1000.5, "prefill_end_ts": 1001.0}
    colocated["first_token_ts"] = 1001.0
    outcomes = [
        _outcome(0.125, 1.25, pd),
        _outcome(0.125, 1.25, colocated),
        _outcome(0.125, math.nan, pd, status="failed"),
    ]
    pd |= {"prefill_arrival_ts": 1000.25, "first_token_sent_ts": 1001.1875}
    seg = measured_segments(outcomes, t0)
    assert [seg[k][0] for k in SEGMENTS] == [250.0, 125.0, 500.0, 62.5, 62.5, 125.0]
    assert [seg[k][0] for k in DETAILS] == [125.0, 125.0, 62.5, 62.5]  # in + ready_wait = to_queue
    # colocated: queued = arrival at the worker, no hand-off, the token comes with the prefill
    got = [seg[k][1] for k in SEGMENTS]
    assert got[:3] == [125.0, 250.0, 500.0] and math.isnan(got[3]) and got[4:] == [0.0, 250.0]
    assert all(math.isnan(seg[k][2]) for k in seg)
    table = path_table(seg, {k: np.zeros(3) for k in SEGMENTS})
    assert table["details_measured"]["in"] == {"mean": 125.0, "p50": 125.0, "p90": 125.0}
    assert table["prefill"]["measured"] == {"mean": 500.0, "p50": 500.0, "p90": 500.0}
    assert table["handoff"]["measured"]["mean"] == 62.5 and table["handoff"]["simulated"]["mean"] == 0.0


def test_step_prices_are_ratios_of_sums_within_the_run() -> None:
    prefills = [  # the model prices 512 new tokens at 500 ms, 256 at 250 ms
        {"new_tokens": [256, 256], "prior_tokens": [0, 0], "step_ms": 600.0, "cpu_ms": 450.0, "start_s": 5.0},
        {"new_tokens": [256], "prior_tokens": [0], "step_ms": 300.0, "cpu_ms": 300.0, "start_s": 6.0},
        {"new_tokens": [256], "prior_tokens": [0], "step_ms": 900.0, "cpu_ms": 900.0, "start_s": 99.0},
    ]
    steps = [{"batch_size": 2, "context_tokens": 10, "step_ms": 31.25, "start_s": 5.5}]  # no cpu_ms
    prices = step_prices(prefills, steps, MODEL, 4.0, 10.0)
    assert prices["prefill"] == {"count": 2, "wall_over_model": 1.2, "cpu_over_model": 1.0}
    assert prices["decode"] == {"count": 1, "wall_over_model": 2.0, "cpu_over_model": None}
    assert step_prices([], [], MODEL, 0.0, 1.0) == {}


def test_prefill_breakdown_by_prompts_and_by_the_decode_steps_beside_each_forward() -> None:
    prefills = [  # the model prices 256 new tokens at 250 ms, 512 at 500 ms
        {"new_tokens": [256], "prior_tokens": [0], "step_ms": 250.0, "cpu_ms": 250.0, "start_s": 1.0},
        {
            "new_tokens": [128, 128, 256],
            "prior_tokens": [0, 0, 0],
            "step_ms": 500.0,
            "cpu_ms": 600.0,
            "start_s": 2.0,
        },
        {"new_tokens": [128, 128], "prior_tokens": [0, 0], "step_ms": 250.0, "cpu_ms": 275.0, "start_s": 3.0},
    ]
    steps = [  # decode busy 2.0-2.25 and 2.2-2.5 (overlapping: counted once), 3.1-3.2
        {"batch_size": 1, "context_tokens": 1, "step_ms": 250.0, "start_s": 2.0},
        {"batch_size": 1, "context_tokens": 1, "step_ms": 300.0, "start_s": 2.2},
        {"batch_size": 1, "context_tokens": 1, "step_ms": 100.0, "start_s": 3.1},
    ]
    got = prefill_breakdown(prefills, steps, MODEL, 0.0, 10.0)
    assert got["by_prompts"] == {
        "1": {"count": 1, "cpu_over_model": 1.0, "wall_over_model": 1.0},
        "2-3": {"count": 2, "cpu_over_model": 1.167, "wall_over_model": 1.0},
        "4-8": None,
    }
    # overlaps 0, 1.0 (the whole 2.0-2.5 forward) and 0.4 (100 of 250 ms)
    assert got["by_decode_overlap"]["<20%"] == {"count": 1, "cpu_over_model": 1.0, "wall_over_model": 1.0}
    assert got["by_decode_overlap"]["20-80%"]["cpu_over_model"] == 1.1
    assert got["by_decode_overlap"][">=80%"]["cpu_over_model"] == 1.2
    assert got["mean_decode_overlap"] == pytest.approx(1.4 / 3, abs=1e-3)


@pytest.mark.parametrize("name", ["queue", "join"])
def test_a_missing_timestamp_leaves_only_its_segments_out(name: str) -> None:
    worker = {"arrival_ts": 1.0, "prefill_start_ts": 2.0, "prefill_end_ts": 3.0, "first_token_ts": 4.0}
    drop = {"queue": "prefill_start_ts", "join": "first_token_ts"}[name]
    seg = measured_segments([_outcome(0.0, 5.0, {k: v for k, v in worker.items() if k != drop})], 0.0)
    assert math.isnan(seg[name][0]) and seg["to_queue"][0] == 1000.0


def test_cores_by_process_splits_the_busiest_thread_from_the_rest() -> None:
    before = {("decode-0", 1): 10.0, ("decode-0", 2): 1.0, ("gateway", 3): 0.5}
    after = {("decode-0", 1): 17.5, ("decode-0", 2): 1.5, ("gateway", 3): 1.0, ("decode-0", 4): 0.5}
    got = cores_by_process(before, after, 10.0)  # thread 4 started during the run
    assert got == {
        "decode-0": {"all": 0.85, "busiest_thread": 0.75},
        "gateway": {"all": 0.05, "busiest_thread": 0.05},
    }
    import os

    mine = thread_cpu_s({"me": os.getpid()})
    assert mine and {name for name, _ in mine} == {"me"} and all(v >= 0 for v in mine.values())

"""Closed-loop clients in the simulator: exact small timelines and the concurrency invariant."""

from __future__ import annotations

import numpy as np
import pytest
import simcases as sc

from pdplan.profiles.errors import ConfigError
from pdplan.sim import SimOptions, simulate
from pdplan.sim.closed_loop import ClosedLoop
from pdplan.sim.workload import draw_requests, workload_from_dict


def _rows(result):
    r = result.records
    return list(zip(r.arrival_s.tolist(), r.first_token_s.tolist(), r.finish_s.tolist(), strict=True))


def test_one_client_with_think_time_exact_timeline():
    # prefill-first colocated, 1/1024 s per prompt token, 1/64 s per decode step, think 1/16 s.
    # r0: 0 -> prefill 128 tok [0, 0.125) -> 2 decode steps -> 0.15625
    # r1: arrives 0.15625 + 0.0625 = 0.21875 -> prefill 64 tok -> 0.28125 -> 1 step -> 0.296875
    # r2: arrives 0.359375 -> prefill 32 tok -> 0.390625, a single output token ends there
    reqs = sc.requests([(5.0, 128, 3), (9.0, 64, 2), (9.5, 32, 1)])  # given arrivals are ignored
    cluster = sc.colocated(policy="prefill-first", max_batch_size=4, max_batch_tokens=1024)
    result = simulate(reqs, cluster, SimOptions(closed_loop=ClosedLoop(1, 0.0625)))
    assert _rows(result) == [
        (0.0, 0.125, 0.15625),
        (0.21875, 0.28125, 0.296875),
        (0.359375, 0.390625, 0.390625),
    ]


def test_two_clients_disaggregated_next_request_follows_the_first_finish():
    # r0 and r1 arrive at 0 and share one prefill batch of 192 tokens [0, 0.1875); KV ready
    # 1/128 s later (0 bytes); both join the decode batch at 0.1953125 (first token).
    # r1 (2 tokens) ends after one step at 0.2109375 -> r2 arrives then (think 0);
    # r2: prefill 64 tokens [0.2109375, 0.2734375), ready 0.28125; r0's steps are at 1/64 s
    # boundaries from 0.1953125: r0 (4 tokens) ends at 0.2421875 -> r3 arrives then.
    reqs = sc.requests([(0.0, 128, 4), (0.0, 64, 2), (0.0, 64, 2), (0.0, 32, 1)])
    result = simulate(reqs, sc.disagg(), SimOptions(closed_loop=ClosedLoop(2)))
    arrival = result.records.arrival_s.tolist()
    assert arrival == [0.0, 0.0, 0.2109375, 0.2421875]
    assert result.records.finish_s[1] == 0.2109375
    assert result.records.finish_s[0] == 0.2421875


@pytest.mark.parametrize("mode", ["disagg", "colocated"])
def test_never_more_than_concurrency_requests_in_the_system(mode):
    rng = np.random.default_rng(3)
    n = 60
    reqs = sc.requests(
        [(0.0, int(p), int(o)) for p, o in zip(rng.integers(1, 300, n), rng.integers(1, 20, n), strict=True)]
    )
    cluster = (
        sc.disagg()
        if mode == "disagg"
        else sc.colocated(policy="chunked", max_batch_size=8, chunk_tokens=256)
    )
    result = simulate(reqs, cluster, SimOptions(closed_loop=ClosedLoop(3, 0.01)))
    r = result.records
    assert (r.status == "ok").all()
    events = sorted([(t, 1) for t in r.arrival_s] + [(t, -1) for t in r.finish_s], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak == 3
    # each request after the first three arrives exactly think time after some finish
    finishes = set(np.round(r.finish_s + 0.01, 12).tolist())
    assert all(round(t, 12) in finishes for t in r.arrival_s[3:])


def test_workload_yaml_closed_process():
    spec = workload_from_dict(
        {
            "num_requests": 5,
            "arrival": {"process": "closed", "concurrency": 2, "think_time_s": 0.5},
            "prompt_tokens": {"dist": "fixed", "value": 10},
            "output_tokens": {"dist": "fixed", "value": 3},
        }
    )
    assert spec.closed_loop == ClosedLoop(2, 0.5)
    assert draw_requests(spec).arrival_s.tolist() == [0.0] * 5
    with pytest.raises(ConfigError, match="closed-loop"):
        spec.with_rate(3.0)
    with pytest.raises(ConfigError, match="concurrency"):
        ClosedLoop(0)

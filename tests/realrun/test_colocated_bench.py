"""``bench/local_ttft.py`` on a colocated run (issue 11, sixth pass): mixed steps priced as the
simulator prices them, and the router's spread read from the workers' logs."""

from __future__ import annotations

from types import SimpleNamespace

from realrun_helpers import bench_module

from pdplan.profiles.latency_model import LatencyModel

_local_ttft = bench_module("local_ttft")

# 1/1024 s per prompt token, 1/64 s per decode step: exact in floating point.
MODEL = LatencyModel((0.0, 0.0, 0.9765625, 0.0), (15.625, 0.0, 0.0))


def test_a_mixed_step_is_priced_as_the_simulator_prices_it() -> None:
    """max(prefill, decode fixed cost) once + the slice's token terms: 15.625 + 250 ms here; the
    prefill forwards alone keep the prefill price and the breakdown leaves mixed steps out."""
    mixed = {
        "new_tokens": [256], "prior_tokens": [0], "step_ms": 531.25, "cpu_ms": 265.625, "start_s": 1.0,
        "decode_batch": 2, "decode_context": 300,
    }  # fmt: skip
    alone = {"new_tokens": [256], "prior_tokens": [0], "step_ms": 250.0, "cpu_ms": 250.0, "start_s": 2.0}
    assert _local_ttft.step_price_ms(mixed, MODEL) == 265.625
    assert _local_ttft.step_price_ms(alone, MODEL) == 250.0
    prices = _local_ttft.step_prices([mixed, alone], [], MODEL, 0.0, 10.0)
    assert prices["mixed"] == {"count": 1, "wall_over_model": 2.0, "cpu_over_model": 1.0}
    assert prices["prefill"] == {"count": 1, "wall_over_model": 1.0, "cpu_over_model": 1.0}
    assert _local_ttft.forward_scale([mixed, alone], MODEL, 0.0, 10.0) == round(781.25 / 515.625, 3)
    assert (
        _local_ttft.prefill_breakdown([mixed, alone], [], MODEL, 0.0, 10.0)["by_prompts"]["1"]["count"] == 1
    )


def _outcome(sent: float, end: float, prefill_end: float) -> SimpleNamespace:
    return SimpleNamespace(
        status="ok", sent_s=sent, chunk_s=[prefill_end, end], worker={"prefill_end_ts": 100.0 + prefill_end}
    )


def test_routing_check_finds_each_requests_worker_and_its_load() -> None:
    """Worker 0 ran requests 0, 2 and 3, worker 1 request 1: request 0 found both idle (as many),
    request 1 went to the idle worker (fewer in flight), request 2 to worker 0 while each ran one
    (as many), request 3 to worker 0 while 0 and 2 ran there and nothing on 1 (more)."""
    logs = [
        [  # forwards ending at 100.5, 102.0 and 103.0 (run clock 0.5, 2.0, 3.0)
            {"start_s": 100.25, "step_ms": 250.0},
            {"start_s": 101.75, "step_ms": 250.0},
            {"start_s": 102.5, "step_ms": 500.0},
        ],
        [{"start_s": 101.0, "step_ms": 500.0}],  # ends at 101.5
    ]
    outcomes = [
        _outcome(0.0, 10.0, 0.5),  # worker 0: nothing in flight
        _outcome(1.0, 3.5, 1.5),  # worker 1: 0 in flight there, 1 on worker 0
        _outcome(1.5, 10.0, 2.0),  # worker 0: 1 in flight on each
        _outcome(4.0, 10.0, 3.0),  # worker 0: 2 in flight there, 0 on worker 1
        SimpleNamespace(status="failed", sent_s=0.0, chunk_s=[], worker=None),
    ]
    got = _local_ttft.routing_check(outcomes, 100.0, logs)
    assert got == {"matched": 4, "to_fewer": 1, "to_equal": 2, "to_more": 1}
    assert _local_ttft.routing_check(outcomes, 100.0, logs[:1]) is None


def test_neighbour_breakdown_prices_each_step_by_what_the_other_worker_ran_beside_it() -> None:
    """Worker 0's decode step at 1.0-1.25 s ran while worker 1 prefilled (1.0-1.5 s): overlap 1.0;
    its step at 2.0 s ran alone; worker 1's prefill overlapped worker 0's step for half its time."""
    steps = [
        [
            {"batch_size": 1, "context_tokens": 0, "step_ms": 250.0, "cpu_ms": 31.25, "start_s": 1.0},
            {"batch_size": 1, "context_tokens": 0, "step_ms": 15.625, "cpu_ms": 15.625, "start_s": 2.0},
        ],
        [],
    ]
    prefills = [
        [],
        [{"new_tokens": [512], "prior_tokens": [0], "step_ms": 500.0, "cpu_ms": 750.0, "start_s": 1.0}],
    ]
    got = _local_ttft.neighbour_breakdown(steps, prefills, MODEL, 0.0, 10.0)
    assert got["decode"]["<20%"] == {"count": 1, "cpu_over_model": 1.0}
    assert got["decode"][">=80%"] == {"count": 1, "cpu_over_model": 2.0}
    assert got["decode"]["mean_overlap"] == 0.5
    assert got["prefill_or_mixed"]["20-80%"] == {"count": 1, "cpu_over_model": 1.5}
    assert _local_ttft.neighbour_breakdown(steps[:1], prefills[:1], MODEL, 0.0, 10.0) is None


def test_engine_replay_alternating_holds_decodes_for_the_slice() -> None:
    """bench/colocated_replay.py's replay of the worker's chunked loop: one request alone is the
    same under both schedules; a prompt arriving while another decodes makes that decode wait for
    a slice forward *and* a decode step when they alternate, for one mixed step when they don't."""
    replay = bench_module("colocated_replay")
    import numpy as np

    from pdplan.sim.costs import StepCoef

    # a step's fixed cost is 1/64 s for a prefill and a decode alike, a prompt token 1/1024 s
    coef = StepCoef.of(LatencyModel((15.625, 0.0, 0.9765625, 0.0), (15.625, 0.0, 0.0)))
    one = [np.array([0.0]), np.array([512]), np.array([3])]
    for mixed in (False, True):
        first, finish = replay.engine_replay(*one, coef, mixed=mixed)
        assert first[0] == 0.515625 and finish[0] == 0.515625 + 2 / 64
    two = [np.array([0.0, 0.52]), np.array([512, 256]), np.array([4, 2])]
    alt_first, alt_finish = replay.engine_replay(*two, coef, mixed=False)
    mix_first, mix_finish = replay.engine_replay(*two, coef, mixed=True)
    # request 0 decodes from 0.515625; request 1 (256 tokens) arrives during its first decode step.
    # Alternating: its slice (1/64 + 0.25 s), then a decode step for both; mixed: request 0's token
    # rides in that slice's forward, which costs no more — one fixed cost where two were paid.
    assert alt_first[1] == mix_first[1] == 0.53125 + 1 / 64 + 0.25
    assert alt_finish[0] == 0.53125 + 1 / 64 + 0.25 + 2 / 64
    assert mix_finish[0] == alt_finish[0] - 1 / 64
    assert alt_finish[1] == mix_finish[1] == alt_first[1] + 1 / 64

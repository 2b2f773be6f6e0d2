"""Cluster policies (issue 17): hand-computed timelines of a scale-up delay and of a role switch.

The dyadic latency model of ``simcases``: a 1024-token prompt takes 1 s to prefill (one per batch
at ``max_batch_tokens=1024``), the KV link adds 1/128 s, and a one-token output is delivered when
its KV joins the decode batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from simcases import disagg, requests

from pdplan.profiles.errors import ConfigError
from pdplan.sim import DecodePool, PrefillPool
from pdplan.sim.autoscale import Autoscale, Change, RoleSwitch, Static, Thresholds, simulate_elastic

LINK = 1 / 128
PREFILL = PrefillPool(1, max_batch_tokens=1024, max_batch_size=4)


def _timeline(result):
    frame = result.result.records.to_frame()
    return frame.prefill_start_s.tolist(), frame.first_token_s.tolist()


def test_scale_up_waits_for_its_provisioning_delay():
    """Four 1 s prompts at t=0 on one prefill instance. The controller (every 1 s) sees 3072 queued
    tokens > 1000 at t=1 and requests a second instance, which serves from t=1+2=3. The prompt
    arriving at 3.5 goes to it (idle) and starts at once; the first instance is busy until 4."""
    cluster = disagg(prefill=PREFILL, decode=DecodePool(1, max_batch_size=8))
    reqs = requests([(0.0, 1024, 1)] * 4 + [(3.5, 1024, 1)])
    policy = Autoscale(
        {"prefill": 2, "decode": 1},
        Thresholds(prefill_high_tokens=1000, prefill_low_tokens=10, decode_high_kv=0.9, decode_low_kv=0.0),
        provision_s=2.0,
        cooldown_s=0.0,
        interval_s=1.0,
        poll_s=0.25,
    )
    result = simulate_elastic(reqs, cluster, policy)
    starts, first = _timeline(result)
    assert starts == [0.0, 1.0, 2.0, 3.0, 3.5]
    assert first == [1 + LINK, 2 + LINK, 3 + LINK, 4 + LINK, 4.5 + LINK]
    assert result.result.instance["prefill"].tolist() == [0, 0, 0, 0, 1]
    # at t=5 both are idle (0 < 10 tokens): the lowest-index one drains, released at the next poll
    assert result.changes == (
        Change(1.0, 2, "prefill", "provisioning"),
        Change(3.0, 2, "prefill", "active"),
        Change(5.0, 0, "prefill", "draining"),
        Change(5.25, 0, "prefill", "released"),
    )
    # GPU-seconds over [0, 3.5]: prefill 3.5 + 2.5 (billed from the request at t=1), decode 3.5
    assert result.gpu_s == pytest.approx(9.5, abs=1e-12)
    counts = result.counts_at([0.5, 2.0, 3.0, 5.3])
    assert counts["prefill"].tolist() == [1, 1, 2, 1] and counts["allocated"].tolist() == [2, 3, 3, 2]

    static = simulate_elastic(reqs, cluster, Static())
    assert _timeline(static)[1][4] == 5 + LINK  # without the second instance it waits until 4
    assert static.gpu_s == pytest.approx(7.0) and static.changes == ()


def test_a_longer_delay_misses_the_arrival():
    cluster = disagg(prefill=PREFILL, decode=DecodePool(1, max_batch_size=8))
    reqs = requests([(0.0, 1024, 1)] * 4 + [(3.5, 1024, 1)])
    thresholds = Thresholds(1000, 10, 0.9, 0.0)
    policy = Autoscale(
        {"prefill": 2, "decode": 1}, thresholds, provision_s=3.0, cooldown_s=0.0, interval_s=1.0
    )
    starts, _ = _timeline(simulate_elastic(reqs, cluster, policy))
    assert starts[4] == 4.0  # ready at 4: the first instance is free at 4 too, and has the lower index


def test_role_switch_drains_pays_the_switch_and_serves_in_its_new_role():
    """One prefill and two decode units. At t=1 the prefill queue (3072 tokens) is over 1000 while
    decode holds 2 % of its KV (< 50 %): decode unit 1 (least loaded, lowest index) drains. It still
    holds requests 0 and 2, routed to it on arrival; request 2 leaves at 3 + 1/128, the poll at 3.25
    sees it drained, the switch takes 0.5 s, and from 3.75 it is a prefill instance: the prompt
    arriving at 3.8 starts there at once instead of waiting for the first instance until 4."""
    cluster = disagg(prefill=PREFILL, decode=DecodePool(2, max_batch_size=8))
    reqs = requests([(0.0, 1024, 1)] * 4 + [(3.8, 1024, 1)])
    policy = RoleSwitch(
        Thresholds(prefill_high_tokens=1000, prefill_low_tokens=10, decode_high_kv=0.9, decode_low_kv=0.5),
        switch_s=0.5,
        cooldown_s=0.0,
        interval_s=1.0,
        poll_s=0.25,
    )
    result = simulate_elastic(reqs, cluster, policy)
    assert result.changes == (
        Change(1.0, 1, "decode", "draining"),
        Change(3.25, 1, "decode", "switching"),
        Change(3.75, 1, "prefill", "active"),
    )
    starts, first = _timeline(result)
    assert starts == [0.0, 1.0, 2.0, 3.0, 3.8] and first[4] == pytest.approx(4.8 + LINK, abs=1e-12)
    assert result.result.instance["prefill"].tolist() == [0, 0, 0, 0, 1]
    assert result.result.instance["decode"].tolist() == [1, 2, 1, 2, 2]  # never to a draining unit
    assert result.gpu_s == pytest.approx(3 * 3.8)  # the cluster's size never changes
    counts = result.counts_at([2.0, 3.5, 4.0])
    assert counts["prefill"].tolist() == [1, 1, 2] and counts["decode"].tolist() == [1, 1, 1]


def test_static_policy_equals_the_plain_simulator():
    from pdplan.sim.simulate import simulate

    rng = np.random.default_rng(3)
    n = 300
    reqs = requests(
        list(
            zip(
                np.sort(rng.uniform(0, 30, n)).tolist(),
                rng.integers(16, 900, n).tolist(),
                rng.integers(1, 40, n).tolist(),
                strict=True,
            )
        )
    )
    cluster = disagg(
        prefill=PrefillPool(2, max_batch_tokens=1024, max_batch_size=4),
        decode=DecodePool(2, max_batch_size=8),
    )
    plain = simulate(reqs, cluster).records.to_frame()
    elastic = simulate_elastic(reqs, cluster, Static()).result.records.to_frame()
    assert plain.equals(elastic)


def test_bad_policies():
    with pytest.raises(ConfigError, match="low < high"):
        Thresholds(prefill_high_tokens=10, prefill_low_tokens=20)
    with pytest.raises(ConfigError, match="provision_s"):
        Autoscale({"prefill": 2, "decode": 2}, provision_s=-1)
    with pytest.raises(ConfigError, match="max_instances"):
        Autoscale({"prefill": 2})
    cluster = disagg(prefill=PrefillPool(1, tp=2), decode=DecodePool(1, tp=1))
    with pytest.raises(ConfigError, match="one TP"):
        simulate_elastic(requests([(0.0, 10, 2)]), cluster, RoleSwitch())


def test_diurnal_day_follows_its_profile_and_keeps_the_requests():
    from pdplan.sim.diurnal import DAY_S, DiurnalProfile, diurnal_day

    rng = np.random.default_rng(0)
    n = 2000
    trace = requests(
        list(
            zip(
                np.sort(rng.uniform(0, 3600, n)).tolist(),
                rng.integers(16, 4000, n).tolist(),
                rng.integers(1, 500, n).tolist(),
                strict=True,
            )
        )
    )
    profile = DiurnalProfile(mean_rate_rps=1.0, peak_to_trough=3.0, peak_hour=14.0)
    day = diurnal_day(trace, profile)
    assert len(day) == 86_400 and np.all(np.diff(day.arrival_s) >= 0) and day.arrival_s[-1] <= DAY_S
    # lengths are the trace's, repeated in order
    assert day.prompt_tokens[:n].tolist() == trace.prompt_tokens.tolist()
    assert day.output_tokens[n : 2 * n].tolist() == trace.output_tokens.tolist()
    hourly = np.histogram(day.arrival_s, bins=24, range=(0, DAY_S))[0] / 3600.0
    expected = [
        profile.cumulative(np.array([h * 3600.0 + 3600.0]))[0] - profile.cumulative(np.array([h * 3600.0]))[0]
        for h in range(24)
    ]
    assert np.allclose(hourly, np.array(expected) / 3600.0, rtol=0.08)
    assert hourly.argmax() in (13, 14) and hourly.argmin() in (1, 2)
    assert profile.rate_rps(14 * 3600.0) == pytest.approx(1.5) and profile.rate_rps(
        2 * 3600.0
    ) == pytest.approx(0.5)


def test_per_minute_gpu_hours_add_up():
    from pdplan.planner.fleet import outcome, per_minute
    from pdplan.planner.probe import SloTargets
    from pdplan.planner.slo import parse_slo

    cluster = disagg(prefill=PREFILL, decode=DecodePool(1, max_batch_size=8))
    reqs = requests([(0.0, 1024, 1)] * 4 + [(150.0, 1024, 1)])
    policy = Autoscale(
        {"prefill": 2, "decode": 1},
        Thresholds(1000, 10, 0.9, 0.0),
        provision_s=2.0,
        cooldown_s=0.0,
        interval_s=1.0,
    )
    result = simulate_elastic(reqs, cluster, policy)
    slo = SloTargets(parse_slo("ttft=1.5s"), 0.9)
    frame = per_minute(result, slo, price_per_gpu_hour=2.0)
    assert frame.minute.tolist() == [0, 1, 2] and frame.arrivals.tolist() == [4, 0, 1]
    # TTFTs 1, 2, 3, 4 s (+ link) at t=0: one of four within 1.5 s; the one at 150 s waits 1 s
    assert (
        frame.attainment.iloc[0] == 0.25
        and np.isnan(frame.attainment.iloc[1])
        and frame.attainment.iloc[2] == 1.0
    )
    assert frame.gpu_hours.iloc[-1] * 3600 == pytest.approx(result.gpu_s)
    assert frame.cost.iloc[-1] == pytest.approx(2.0 * result.gpu_s / 3600)
    day = outcome(result, slo, 2.0)
    assert day.attainment == pytest.approx(2 / 5) and day.worst_hour_attainment == pytest.approx(2 / 5)

"""Closed-form capacity bounds and latency floors against the simulator.

The bound says no queueing discipline can complete requests faster than it; the simulator must
agree (completions at overload never exceed it, the bisection never finds more goodput), and it
must not be vacuous (below it the cluster keeps up with the arrivals).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pdplan.planner.bounds import Demand, capacity_bound, scaled, static_infeasibility
from pdplan.planner.presets import get_preset
from pdplan.planner.probe import SloTargets, run_probe, simulate_at
from pdplan.planner.profileset import analytic_profile_set
from pdplan.planner.rate import OK, RatePolicy, find_goodput
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import Candidate, CostCache, build_cluster, memory_fit
from pdplan.planner.traffic import workload_list
from pdplan.sim.cluster import ColocatedPool, DecodePool, InstanceCost, KvLink, PrefillPool

LINK = KvLink(450.0, 0.01, link="nvlink")
SLO = SloTargets(parse_slo("ttft=1s,tpot=50ms"))
LAYOUTS = {
    "prefill-bound 1P:2D": Candidate(
        "a", "disaggregated", PrefillPool(1, 1, 8192, 64, 8192), DecodePool(2, 1, 256)
    ),
    "batch-bound 2P:1D": Candidate(
        "b", "disaggregated", PrefillPool(2, 1, 8192, 64, 8192), DecodePool(1, 1, 48)
    ),
    "KV-bound 2P:1D": Candidate(
        "c", "disaggregated", PrefillPool(2, 1, 4096, 64, 4096), DecodePool(1, 1, 512)
    ),
    "chunked colocated": Candidate(
        "d", "colocated", colocated=ColocatedPool(1, 1, "chunked", 256, 8192, 2048)
    ),
    "prefill-first colocated": Candidate(
        "e", "colocated", colocated=ColocatedPool(1, 1, "prefill-first", 256, 16384, 2048)
    ),
}
KV_LIMIT_TOKENS = 60_000  # the KV-bound layout's decode instance holds ~40 chat requests


@pytest.fixture(scope="module")
def cache() -> CostCache:
    profiles = analytic_profile_set("llama-3.1-8b", "h100-sxm", tps=(1,))
    return CostCache(profiles.profiles)


@pytest.fixture(scope="module")
def chat():
    return workload_list(get_preset("chat").workload(seed=3), 12_000)


def _priced(name: str, cache: CostCache):
    candidate = LAYOUTS[name]
    fit = memory_fit(candidate, cache)
    assert fit.fits
    if name.startswith("KV-bound"):
        latency = fit.costs["decode"].latency
        fit = dataclasses.replace(fit, costs={**fit.costs, "decode": InstanceCost(latency, KV_LIMIT_TOKENS)})
    cluster = build_cluster(candidate, fit, LINK, kv_bytes_per_token=131072, num_layers=32)
    return candidate, fit, cluster


def _completion_rate(result, span_s: float) -> float:
    """Completions per second over the last 60 % of the arrival span (steady state, no drain)."""
    finish = result.records.finish_s
    start = 0.4 * span_s
    done = np.count_nonzero((finish >= start) & (finish <= span_s))
    return done / (span_s - start)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_bound_holds_against_the_simulator_and_is_not_vacuous(name: str, cache: CostCache, chat) -> None:
    candidate, fit, cluster = _priced(name, cache)
    requests = chat.head(5000)
    bound = capacity_bound(candidate, fit.costs, Demand.of(requests)).rate_rps
    assert 5.0 < bound < 80.0, f"{name}: bound {bound:.1f} req/s outside the plausible range"
    over = simulate_at(cluster, requests, 1.3 * bound)
    # ±5 %: the completions counted cover 60 % of the requests, whose mean work varies by ~2 %
    assert _completion_rate(over, (len(requests) - 1) / (1.3 * bound)) <= 1.05 * bound
    under = simulate_at(cluster, requests, 0.75 * bound)
    rate = _completion_rate(under, (len(requests) - 1) / (0.75 * bound))
    assert rate >= 0.95 * 0.75 * bound, f"{name}: the cluster falls behind well below its bound"


@pytest.mark.parametrize("name", ["prefill-bound 1P:2D", "chunked colocated"])
def test_bound_is_above_the_simulated_goodput(name: str, cache: CostCache, chat) -> None:
    candidate, fit, cluster = _priced(name, cache)
    bound = capacity_bound(candidate, fit.costs, Demand.of(chat.head(6000))).rate_rps
    requests = chat.head(int(bound * 120))
    out = find_goodput(
        lambda rate: run_probe(cluster, requests, rate, SLO, 0.2),
        2.0 * bound,  # let the bisection look well above the bound
        target_attainment=SLO.attainment,
        policy=RatePolicy(tolerance=0.01, start_fraction=0.5),
    )
    assert out.status == OK and out.goodput_rps is not None
    assert out.goodput_rps <= 1.03 * bound
    assert out.goodput_rps >= 0.5 * bound


def test_bound_scales_with_instances(cache: CostCache, chat) -> None:
    candidate, fit, _ = _priced("prefill-bound 1P:2D", cache)
    demand = Demand.of(chat.head(4000))
    unit = capacity_bound(candidate.unit(), fit.costs, demand)
    double = dataclasses.replace(
        candidate,
        prefill=dataclasses.replace(candidate.prefill, instances=2),
        decode=dataclasses.replace(candidate.decode, instances=4),
    )
    direct = capacity_bound(double, fit.costs, demand)
    assert direct.rate_rps == pytest.approx(2 * capacity_bound(candidate, fit.costs, demand).rate_rps)
    assert scaled(unit, double.instances).by_role == pytest.approx(direct.by_role)
    assert direct.limit == "prefill"


@pytest.mark.parametrize(
    ("slo", "expected"),
    [
        ("ttft=1s,tpot=50ms", ""),
        ("ttft=20ms,tpot=50ms", "TTFT bound"),
        ("ttft=1s,tpot=5ms", "TPOT bound"),
        ("e2e=500ms", "E2E bound"),
        ("ttft_p99=30ms", "TTFT bound"),
    ],
)
def test_latency_floors_name_the_binding_threshold(slo: str, expected: str, cache: CostCache, chat) -> None:
    candidate, fit, _ = _priced("prefill-bound 1P:2D", cache)
    reason = static_infeasibility(
        candidate,
        fit.costs,
        Demand.of(chat.head(4000)),
        SloTargets(parse_slo(slo)),
        link=LINK,
        kv_bytes_per_token=131072,
    )
    assert reason.startswith(expected) if expected else reason == ""


def test_kv_capacity_rules_out_requests_that_never_fit(cache: CostCache, chat) -> None:
    candidate, fit, _ = _priced("prefill-bound 1P:2D", cache)
    latency = fit.costs["decode"].latency
    small = {**fit.costs, "decode": InstanceCost(latency, 900)}  # below most chat footprints
    reason = static_infeasibility(
        candidate, small, Demand.of(chat.head(4000)), SLO, link=LINK, kv_bytes_per_token=131072
    )
    assert reason.startswith("KV capacity")

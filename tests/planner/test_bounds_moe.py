"""Capacity bounds and latency floors with a MoE's decode experts term (the expert weights a
step's tokens touch, concave in the batch): at overload no layout completes more than its bound,
the decode-bound layout gets close to it, and no request is faster than its floor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pdplan.planner.bounds import Demand, capacity_bound, latency_floor
from pdplan.planner.probe import simulate_at
from pdplan.planner.space import Candidate
from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.moe_cost import ExpertReads
from pdplan.sim import ColocatedCluster, DisaggregatedCluster, Requests
from pdplan.sim.cluster import ColocatedPool, DecodePool, InstanceCost, KvLink, PrefillPool

#: cheap prefill; a decode step of B sequences reads 64·(1 − (60/64)^B) experts of 0.1 GB at
#: 1 ms/GB: 0.4 ms at B = 1, 5.6 ms at B = 32 — the largest term of a full step
MOE = LatencyModel(
    (1.0, 0.0, 0.001, 0.0),
    (2.0, 0.01, 1e-5),
    experts=ExpertReads(num_experts=64, top_k=4, gb_per_expert=0.1),
    decode_expert_coef=1.0,
)
LINK = KvLink(450.0, 0.01)
LAYOUTS = {
    "disaggregated": Candidate("k", "disaggregated", PrefillPool(1, 1, 8192, 8), DecodePool(1, 1, 32)),
    "prefill-first": Candidate("p", "colocated", colocated=ColocatedPool(1, 1, "prefill-first", 32, 8192)),
}


def _requests(n: int) -> Requests:
    rng = np.random.default_rng(7)
    return Requests(
        np.cumsum(rng.exponential(1.0, n)) - 1.0, rng.integers(50, 1500, n), rng.integers(2, 150, n)
    )


def _setup(name: str, model: LatencyModel = MOE):
    candidate = LAYOUTS[name]
    cost = InstanceCost(model, 400_000)
    if candidate.colocated is not None:
        return candidate, {"colocated": cost}, ColocatedCluster(candidate.colocated, cost)
    assert candidate.prefill is not None and candidate.decode is not None
    cluster = DisaggregatedCluster(
        candidate.prefill, candidate.decode, LINK, cost, cost, kv_bytes_per_token=4096, num_layers=32
    )
    return candidate, {"prefill": cost, "decode": cost}, cluster


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_overload_never_completes_more_than_the_bound(name: str) -> None:
    candidate, costs, cluster = _setup(name)
    requests = _requests(2000)
    bound = capacity_bound(candidate, costs, Demand.of(requests)).rate_rps
    # the experts term is priced: the same model without it would promise far more
    free = dataclasses.replace(MOE, decode_expert_coef=0.0)
    assert capacity_bound(candidate, _setup(name, free)[1], Demand.of(requests)).rate_rps > 1.5 * bound
    result = simulate_at(cluster, requests, 2.0 * bound)
    span_s = float(requests.at_rate(2.0 * bound).arrival_s[-1])
    finish = result.records.finish_s
    done = np.count_nonzero((finish >= 0.4 * span_s) & (finish <= span_s)) / (0.6 * span_s)
    assert done <= 1.03 * bound
    # not vacuous: the disaggregated decode instance runs full 32-sequence steps at overload, whose
    # expert reads X(32)/32 per token are what the bound charges
    assert done >= (0.9 if name == "disaggregated" else 0.3) * bound


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_no_request_beats_its_latency_floor(name: str) -> None:
    candidate, costs, cluster = _setup(name)
    requests = _requests(800)
    demand = Demand.of(requests)
    floor = latency_floor(candidate, costs, demand, link=LINK, kv_bytes_per_token=4096)
    rec = simulate_at(cluster, requests, 0.3 * capacity_bound(candidate, costs, demand).rate_rps).records
    ok = rec.status_code == 0
    assert ok.mean() > 0.9
    tpot_ms = (rec.finish_s - rec.first_token_s) * 1000 / np.maximum(rec.output_tokens - 1, 1)
    assert np.all(tpot_ms[ok] >= floor.tpot_ms[ok] * (1 - 1e-9))
    # alone, a decode step still reads its token's top-4 experts: 0.4 ms in every step's floor
    many = ok & (rec.output_tokens > 2)
    assert np.all(floor.tpot_ms[many] >= 2.0 + 0.01 + 0.4)

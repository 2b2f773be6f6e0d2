"""Laws every run must obey, over random clusters and workloads (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reference import _colocated, _disagg, _workload

from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim import InstanceCost, KvLink, Requests, SimOptions, simulate
from pdplan.sim.timeseries import occupancy

CASES = {
    "seed": st.integers(0, 2**32 - 1),
    "n": st.integers(1, 60),
    "dyadic": st.booleans(),
    "colocated": st.booleans(),
    "router": st.sampled_from(["round_robin", "least_loaded", "random"]),
}


def _case(seed, n, dyadic, colocated):
    rng = np.random.default_rng(seed)
    reqs = _workload(rng, n, dyadic)
    cluster = _colocated(rng, dyadic) if colocated else _disagg(rng, dyadic)
    return reqs, cluster


def _max_occupancy(starts, ends, weights=None):
    """Peak of Σ [start, end) over time (a step function peaks at some start)."""
    has = ~np.isnan(starts)
    if not has.any():
        return 0
    return int(occupancy(starts, ends, weights, np.unique(starts[has])).max())


@settings(max_examples=80, deadline=None)
@given(**CASES)
def test_causality_conservation_and_capacity(seed, n, dyadic, colocated, router):
    reqs, cluster = _case(seed, n, dyadic, colocated)
    result = simulate(reqs, cluster, SimOptions(router=router), np.random.default_rng(seed))
    rec = result.records
    ok = rec.status_code == 0
    rejected = rec.status_code == 1
    footprint = rec.prompt_tokens + rec.output_tokens
    # Conservation: every request ends ok or rejected (no time limit), rejected ones exactly
    # those that can never be served, and nothing is half-recorded.
    assert np.all(ok | rejected)
    if colocated:
        limit = cluster.pool.max_batch_tokens if cluster.pool.policy == "prefill-first" else np.inf
        never = (footprint > cluster.cost.kv_capacity_tokens) | (rec.prompt_tokens > limit)
    else:
        limit = cluster.prefill.max_batch_tokens if cluster.prefill.chunk_tokens is None else np.inf
        never = (footprint > cluster.decode_cost.kv_capacity_tokens) | (rec.prompt_tokens > limit)
    assert np.array_equal(rejected, never)
    for name in ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "decode_start_s"):
        column = getattr(rec, name)
        assert not np.isnan(column[ok]).any() and np.isnan(column[rejected]).all(), name
    # Causality.
    a, ps, pe = rec.arrival_s[ok], rec.prefill_start_s[ok], rec.prefill_end_s[ok]
    ds, ft, fin = rec.decode_start_s[ok], rec.first_token_s[ok], rec.finish_s[ok]
    assert np.all(a <= ps) and np.all(ps < ft) and np.all(ps < pe)
    assert np.all(pe <= ds) and np.all(ds == ft) and np.all(ft <= fin)
    assert np.all((rec.output_tokens[ok] > 1) == (fin > ft))
    if colocated:
        assert np.array_equal(pe, ft)
    # Capacity: batch size and KV never exceed their limits on any instance.
    for role, owner in result.instance.items():
        if role == "prefill":
            if cluster.prefill.chunk_tokens is None:  # then [start, end) is exactly one batch
                for i in range(result.instances[role]):
                    mine = owner == i
                    starts, ends = rec.prefill_start_s[mine], rec.prefill_end_s[mine]
                    assert _max_occupancy(starts, ends) <= cluster.prefill.max_batch_size
                    assert (
                        _max_occupancy(starts, ends, rec.prompt_tokens[mine]) <= cluster.prefill.step_tokens
                    )
            continue
        pool = cluster.pool if colocated else cluster.decode
        capacity = result.kv_capacity_tokens[role]
        for i in range(result.instances[role]):
            mine = owner == i
            batch_start = result.kv_start_s if colocated else rec.decode_start_s
            assert _max_occupancy(batch_start[mine], rec.finish_s[mine]) <= pool.max_batch_size
            assert _max_occupancy(result.kv_start_s[mine], rec.finish_s[mine], footprint[mine]) <= capacity
    assert min(result.utilisation.values()) >= 0.0 and max(result.utilisation.values()) <= 1.0 + 1e-9


@settings(max_examples=40, deadline=None)
@given(**CASES)
def test_determinism(seed, n, dyadic, colocated, router):
    reqs, cluster = _case(seed, n, dyadic, colocated)
    first = simulate(reqs, cluster, SimOptions(router=router), np.random.default_rng(seed))
    again = simulate(reqs, cluster, SimOptions(router=router), np.random.default_rng(seed))
    for name in ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "decode_start_s"):
        assert np.array_equal(getattr(first.records, name), getattr(again.records, name), equal_nan=True)
    assert first.busy_s == again.busy_s and first.end_s == again.end_s


def _scaled_model(model: LatencyModel, factor: float) -> LatencyModel:
    return replace(  # knees are in tokens and sequences: they do not scale with time
        model,
        prefill_coef=tuple(c * factor for c in model.prefill_coef),
        decode_coef=tuple(c * factor for c in model.decode_coef),
        decode_expert_coef=model.decode_expert_coef * factor,
    )


def _scaled_cluster(cluster, factor: float):
    if hasattr(cluster, "pool"):
        return replace(
            cluster,
            cost=InstanceCost(_scaled_model(cluster.cost.latency, factor), cluster.cost.kv_capacity_tokens),
        )
    link = cluster.link
    return replace(
        cluster,
        prefill_cost=InstanceCost(
            _scaled_model(cluster.prefill_cost.latency, factor), cluster.prefill_cost.kv_capacity_tokens
        ),
        decode_cost=InstanceCost(
            _scaled_model(cluster.decode_cost.latency, factor), cluster.decode_cost.kv_capacity_tokens
        ),
        link=KvLink(
            link.bandwidth_gbps / factor, link.latency_ms * factor, link.contention, link.layerwise_overlap
        ),
    )


@settings(max_examples=40, deadline=None)
@given(**CASES, exponent=st.sampled_from([-3, -1, 1, 2, 5]))
def test_time_scale_invariance(seed, n, dyadic, colocated, router, exponent):
    """Scaling every duration and arrival time by 2^k scales every record time by exactly 2^k."""
    factor = 2.0**exponent
    reqs, cluster = _case(seed, n, dyadic, colocated)
    base = simulate(reqs, cluster, SimOptions(router=router), np.random.default_rng(seed))
    scaled = simulate(
        reqs.scaled(factor),
        _scaled_cluster(cluster, factor),
        SimOptions(router=router),
        np.random.default_rng(seed),
    )
    for name in (
        "arrival_s",
        "first_token_s",
        "finish_s",
        "prefill_start_s",
        "prefill_end_s",
        "decode_start_s",
    ):
        assert np.array_equal(
            getattr(base.records, name) * factor, getattr(scaled.records, name), equal_nan=True
        )
    assert np.array_equal(base.records.status_code, scaled.records.status_code)


def test_time_scale_invariance_non_dyadic():
    """A factor of 3 changes rounding only: times agree to 1e-9 relative."""
    reqs, cluster = _case(11, 400, dyadic=False, colocated=False)
    base = simulate(reqs, cluster)
    scaled = simulate(reqs.scaled(3.0), _scaled_cluster(cluster, 3.0))
    np.testing.assert_allclose(base.records.finish_s * 3, scaled.records.finish_s, rtol=1e-9)
    assert reqs.scaled(3.0).mean_rate_rps == pytest.approx(reqs.mean_rate_rps / 3, rel=1e-12)


def test_rate_rescaling_hits_the_rate():
    reqs = Requests(np.array([0.0, 1.0, 3.0, 4.0]), np.array([5, 5, 5, 5]), np.array([2, 2, 2, 2]))
    assert reqs.mean_rate_rps == 0.75
    assert reqs.at_rate(3.0).mean_rate_rps == 3.0
    assert reqs.at_rate(3.0).arrival_s.tolist() == [0.0, 0.25, 0.75, 1.0]

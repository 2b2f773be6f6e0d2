"""Run in a child process by ``test_sim_compiled.py``: simulate a fixed set of runs and print, as
JSON, the simulator's status (``pdplan.sim.compiled.status``) and one SHA-256 per run over every
record column, the instances, busy times, end time, event and preemption counts.

The runs reach every compiled module's paths: colocated chunked (three KV admissions) and
prefill-first, disaggregated with preempting and reserving decode, a pipelined prefill pool, the
prefill side alone (the planner's proof), an early stop, all near or over capacity with KV tight
enough to preempt. Llama-3.1-8B's analytic H100 profile, lognormal lengths.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace

import numpy as np

from pdplan.profiles.analytic import analytic_profile
from pdplan.profiles.model_spec import load_model_spec
from pdplan.sim import (
    Arrival,
    ColocatedPool,
    DecodePool,
    KvLink,
    Lengths,
    PrefillPool,
    SimOptions,
    Workload,
    colocated_cluster,
    disaggregated_cluster,
    draw_requests,
    simulate,
)
from pdplan.sim.compiled import status
from pdplan.sim.simulate import EarlyStop, simulate_prefill_side


def _digest(result) -> str:
    h = hashlib.sha256()
    for name, column in sorted(result.records.columns().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(column).tobytes())
    for role in sorted(result.instance):
        h.update(np.ascontiguousarray(result.instance[role]).tobytes())
    facts = (result.busy_s, result.end_s, result.events, result.preemptions, result.kv_capacity_tokens)
    h.update(repr(facts).encode())
    return h.hexdigest()


def main(num_requests: int) -> None:
    profile = analytic_profile(load_model_spec("llama-3.1-8b"), "h100-sxm", tp=1)
    pp2 = analytic_profile(load_model_spec("llama-3.1-8b"), "h100-sxm", tp=1, pp=2)
    workload = Workload(
        arrival=Arrival("gamma", 60.0, cv=2.0),
        prompt_tokens=Lengths("lognormal", mean=1500, cv=0.8, min=16, max=12000),
        output_tokens=Lengths("lognormal", mean=300, cv=0.8, min=1, max=2048),
        num_requests=num_requests,
        seed=3,
    )
    requests = draw_requests(workload, np.random.default_rng(3))
    link = KvLink(50.0, 0.01, link="infiniband")
    runs = {}
    for admission in ("preempt", "preempt-prompt", "reserve"):
        pool = ColocatedPool(
            3, chunk_tokens=1024, max_batch_size=96, admission=admission, max_kv_tokens=60_000
        )
        runs[f"colocated-chunked-{admission}"] = simulate(requests, colocated_cluster(pool, profile))
    pool = ColocatedPool(3, policy="prefill-first", max_batch_size=96, max_kv_tokens=60_000)
    runs["colocated-prefill-first"] = simulate(
        requests, colocated_cluster(pool, profile), SimOptions("round_robin")
    )
    for admission in ("preempt", "reserve"):
        decode = DecodePool(2, max_batch_size=128, admission=admission, max_kv_tokens=50_000)
        cluster = disaggregated_cluster(
            PrefillPool(2, max_batch_tokens=4096), decode, link, (profile, profile)
        )
        runs[f"disaggregated-{admission}"] = simulate(requests, cluster)
    cluster = disaggregated_cluster(
        PrefillPool(2, max_batch_tokens=4096), DecodePool(2), link, (profile, profile)
    )
    stop = EarlyStop(max_late=200, measured_from=100, every_s=1.0, ttft_ms=500.0, tpot_ms=30.0)
    runs["disaggregated-early-stop"] = simulate(requests, cluster, stop=stop)
    runs["prefill-side"] = simulate_prefill_side(requests, cluster, replace(stop, tpot_ms=None))
    piped = disaggregated_cluster(PrefillPool(1, pp=2), DecodePool(2), link, (pp2, profile))
    runs["disaggregated-pp2-prefill"] = simulate(requests, piped)
    print(json.dumps({"status": status(), "runs": {name: _digest(r) for name, r in runs.items()}}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)

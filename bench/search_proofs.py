"""Two cheap failure proofs the search could use, checked on the standard search (issue 9).

Most of the standard search's CPU goes to candidates that fail at the rate they would need: each
failing probe simulates about half the trace before its failure is certain. This measures two
candidate shortcuts on those candidates (llama-3.1-8b analytic on h100-sxm, the Azure
conversation trace replayed whole, ``ttft=1s,tpot=50ms`` at 90 %):

- **window from empty**: replay only the trace from request ``i0`` on, starting from an empty
  cluster. It would prove a failure only if it were optimistic *per request* (every request no
  later than in the whole replay). The table counts the requests whose first token or TPOT is
  *later* in the window replay: any such request makes the proof unsound.
- **fluid deadline bound** (sound): a request that attains the SLO has all its work — at least its
  tokens' shares of the step costs, ``pdplan.sim.costs.StepCoef`` — inside [arrival, arrival +
  TTFT + TPOT·(output − 1)] (or its prefill inside [arrival, arrival + TTFT]). In a window of
  length L, the instances do at most instances·L seconds of work, so at most the cheapest requests
  that fit attain; the misses summed over a partition of the trace into windows are certain. The
  table gives the most misses proven over partitions of 1-600 s against the allowance.

    .venv/bin/python bench/search_proofs.py

Prints a table and writes bench/results/search_proofs.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pdplan.planner.cli.search_cmd import _link, _traffic
from pdplan.planner.probe import SloTargets, early_stop, simulate_requests
from pdplan.planner.profileset import analytic_profile_set
from pdplan.planner.screen import Screen
from pdplan.planner.search import SearchSpec
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import Candidate, enumerate_candidates
from pdplan.sim.costs import StepCoef
from pdplan.sim.requests import Requests

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
WINDOWS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
#: failing need probes of the standard search (candidate label, policy, chunk, batch, rate req/s)
COLOCATED = (
    ("colocated 10× (TP1)", "chunked", 512, 128, 162.206298),
    ("colocated 5× (TP1)", "chunked", 512, 128, 81.103149),
    ("colocated 11× (TP1)", "prefill-first", 8192, 128, 178.426928),
    ("colocated 2× (TP2)", "prefill-first", 8192, 256, 64.882519),
)
DISAGGREGATED = (
    ("disaggregated 1P:1D (TP1)", 4096, 128, 32.44126),
    ("disaggregated 5P:5D (TP1)", 4096, 128, 162.206298),
    ("disaggregated 6P:6D (TP1)", 4096, 128, 194.647557),
)


def fluid_misses(arrival: np.ndarray, deadline: np.ndarray, work_s: np.ndarray, measured: np.ndarray,
                 instances: int) -> int:  # fmt: skip
    """Most certain misses over partitions of the timeline into windows (see the docstring)."""
    best = 0
    for length in WINDOWS_S:
        for offset in (0.0, length / 2):
            first = np.floor((arrival - offset) / length)
            inside = measured & (first == np.floor((deadline - offset) / length))
            window, work = first[inside], work_s[inside]
            order = np.lexsort((work, window))
            window, work = window[order], work[order]
            starts = np.r_[0, np.flatnonzero(np.diff(window)) + 1]
            total = np.cumsum(work)
            before = np.repeat(np.r_[0.0, total[starts[1:] - 1]], np.diff(np.r_[starts, window.size]))
            best = max(best, int(np.count_nonzero(total - before > instances * length)))
    return best


def main() -> None:
    if not TRACE.is_file():
        raise SystemExit(f"the Azure conversation trace is not at {TRACE}")
    traffic, _ = _traffic(None, TRACE, None, None, None)
    spec = SearchSpec(
        profiles=analytic_profile_set("llama-3.1-8b", "h100-sxm"),
        traffic=traffic,
        slo=SloTargets(parse_slo("ttft=1s,tpot=50ms"), 0.9),
        link=_link("nvlink"),
        max_gpus=16,
    )
    screen = Screen(spec)
    candidates = enumerate_candidates(16, modes=spec.modes, grid=spec.grid)

    def find(label: str, **limits: object) -> Candidate:
        for c in candidates:
            pool = c.colocated if c.colocated is not None else c.decode
            step = c.colocated if c.colocated is not None else c.prefill
            if c.label == label and all(
                getattr(pool, k, None) == v or getattr(step, k, None) == v for k, v in limits.items()
            ):
                return c
        raise SystemExit(f"no candidate {label} {limits}")

    rows: list[dict[str, Any]] = []
    for label, policy, step, batch, rate in COLOCATED:
        key = "chunk_tokens" if policy == "chunked" else "max_batch_tokens"
        candidate = find(label, policy=policy, max_batch_size=batch, **{key: step})
        cluster = screen.cluster(candidate)
        requests = traffic.probe_list(rate)
        whole = simulate_requests(cluster, requests).records
        for share in (0.25, 0.4):
            i0 = int(share * len(requests))
            part = Requests(requests.arrival_s[i0:], requests.prompt_tokens[i0:], requests.output_tokens[i0:])
            alone = simulate_requests(cluster, part).records
            steps = np.maximum(part.output_tokens - 1, 1)
            ttft = (alone.first_token_s - alone.arrival_s, (whole.first_token_s - whole.arrival_s)[i0:])
            tpot = (
                (alone.finish_s - alone.first_token_s) / steps,
                (whole.finish_s - whole.first_token_s)[i0:] / steps,
            )
            served = (alone.status_code == 0) & (whole.status_code[i0:] == 0)
            rows.append({
                "proof": "window from empty", "candidate": f"{label} {policy} {step}, batch ≤{batch}",
                "rate_rps": rate, "window_from": i0, "requests": int(served.sum()),
                "later_ttft": int(np.count_nonzero(served & (ttft[0] > ttft[1] + 1e-9))),
                "later_tpot": int(np.count_nonzero(served & (tpot[0] > tpot[1] + 1e-9))),
            })  # fmt: skip
    for label, tokens, batch, rate in DISAGGREGATED:
        candidate = find(label, max_batch_tokens=tokens, max_batch_size=batch)
        cluster = screen.cluster(candidate)
        requests = traffic.probe_list(rate)
        rows.append(_fluid_row(label, cluster, requests, rate, spec))
    for label, policy, step, batch, rate in COLOCATED:
        key = "chunk_tokens" if policy == "chunked" else "max_batch_tokens"
        candidate = find(label, policy=policy, max_batch_size=batch, **{key: step})
        cluster = screen.cluster(candidate)
        requests = traffic.probe_list(rate)
        rows.append(_fluid_row(label, cluster, requests, rate, spec))
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    out = ROOT / "bench" / "results" / "search_proofs.json"
    out.write_text(json.dumps({"trace": TRACE.name, "slo": "ttft=1s,tpot=50ms", "attainment": 0.9,
                               "rows": rows}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out.relative_to(ROOT)}")


def _fluid_row(label: str, cluster: Any, requests: Requests, rate: float, spec: SearchSpec) -> dict[str, Any]:
    """The fluid deadline bound's certain misses for one candidate at one rate."""
    arrival = requests.arrival_s - requests.arrival_s[0]
    p = requests.prompt_tokens.astype(float)
    o = requests.output_tokens.astype(float)
    steps = o - 1.0
    context = steps * p + steps * (steps - 1.0) / 2.0  # as bounds._context_ms
    stop = early_stop(spec.slo, requests, spec.traffic.warmup_fraction)
    assert stop is not None, "the SLO has per-request thresholds"
    slo_ms = spec.slo.per_request_ms
    measured = np.arange(len(requests)) >= stop.measured_from
    ttft_s, tpot_s = slo_ms["ttft"] / 1000.0, slo_ms["tpot"] / 1000.0
    deadline = arrival + ttft_s + tpot_s * steps
    if getattr(cluster, "pool", None) is not None:  # colocated
        pool, c = cluster.pool, StepCoef.of(cluster.cost.latency)
        # a step's fixed cost is ≥ min(pa, de), shared by ≤ K tokens (chunk budget or batch)
        per_token = min(c.pa, c.de) / (
            max(pool.chunk_tokens, pool.max_batch_size) if pool.policy == "chunked" else pool.max_batch_tokens
        )
        prefill = per_token * p + c.pb + c.pc * p + c.pd * p * p
        decode = (per_token if pool.policy == "chunked" else c.de / pool.max_batch_size) * steps
        decode = decode + c.df * steps + c.dg * context
        instances = (pool.instances, pool.instances)
    else:
        c, pool = StepCoef.of(cluster.prefill_cost.latency), cluster.prefill
        prefill = c.pa * p / pool.step_tokens + c.pb + c.pc * p + c.pd * p * p
        d = StepCoef.of(cluster.decode_cost.latency)
        decode = d.de * steps / cluster.decode.max_batch_size + d.df * steps + d.dg * context
        instances = (pool.instances, cluster.decode.instances)
    colocated = getattr(cluster, "pool", None) is not None
    proven = max(
        fluid_misses(arrival, arrival + ttft_s, prefill, measured, instances[0]),
        fluid_misses(arrival, deadline, (prefill + decode) if colocated else decode, measured, instances[1]),
    )
    return {"proof": "fluid deadline bound", "candidate": label, "rate_rps": rate,
            "proven_misses": proven, "misses_needed": stop.max_late + 1,
            "proves_failure": proven > stop.max_late}  # fmt: skip


if __name__ == "__main__":
    main()

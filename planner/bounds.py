"""Closed-form capacity upper bounds and static infeasibility, for pruning the search.

**Capacity bound.** Over a long run at arrival rate λ spread over an instance's requests, the
instance's busy time cannot exceed the elapsed time. The latency model is linear in its terms but
for the roofline knees (``pdplan.profiles.latency_model``: c·max(Σn, T0), f·max(B, B0)), so
summing step times over all steps gives, per request (Σ over steps of a sum of terms = Σ over
requests of each request's share; for a knee term Σ_steps max(x, T0) ≥ max(Σx, T0·steps), and
both grow with the number of steps, so its lower bound may be used):

- prefill (``PrefillPool``, chunked at its token budget S, at most M prompts per batch), with
  N = max(E[p]/S, 1/M) batches per request (batches ≥ tokens / S and ≥ prompts / M):
  ``pa·N + pb + pc·max(E[p], T0·N) + pd·E[p²]``; a chunked prompt's query-key pairs sum to p²
  whatever the chunking (Σ n² + 2·n·prior = p²).
- decode (continuous batching, at most B sequences and K KV tokens): each request runs o − 1
  steps at contexts p … p + o − 2, and holds p + o KV tokens while in the batch, so the number of
  steps per request is N ≥ E[o − 1]/B and ≥ E[(o − 1)(p + o)]/K, and
  ``e·N + f·max(E[o−1], B0·N) + g·E[(o−1)p + (o−1)(o−2)/2]``, plus for a MoE the expert reads
  m·X(B) (``LatencyModel.decode_expert_ms``), concave in B: ≥ max(E[o−1]·X(B)/B, N·X(1)).
- colocated: both, with the per-step fixed cost counted once per step — ``min(pa, e)`` per step
  for chunked steps (whose token budget C also holds the decodes: steps ≥ (Σp + Σ(o−1))/C), whose
  token terms are ≥ pc·Σn + f·B and ≥ min(pc·T0, f·B0) in every step (pure prefill, pure decode or
  mixed; ``StepCoef.mixed_s``); or ``pa`` per prefill step plus ``e`` per decode step, each with
  its own knee, under prefill-first.

λ ≤ instances / (time per request); the candidate's bound is the minimum over its roles. Rejected
requests (longer than any instance holds) do no work, so the sums run over the served ones while λ
counts every arrival. This is DistServe's per-phase goodput decomposition (Zhong et al., OSDI
2024) taken to the fluid limit: it is what no queueing discipline can beat.

**Static infeasibility.** A request alone on an idle cluster still needs its prefill (+ KV
transfer) before the first token and one decode step per further token. When fewer than the
attainment target of requests could meet the SLO even so — or more requests than allowed are
rejected because their KV does not fit — no rate works: the candidate is infeasible, and the
reason names the binding constraint (``TTFT bound``, ``TPOT bound``, ``E2E bound``, ``KV capacity``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pdplan.planner.probe import SloTargets
from pdplan.planner.space import POLICY_CHUNKED, Candidate
from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim.cluster import InstanceCost, KvLink
from pdplan.sim.requests import Requests


@dataclass(frozen=True, eq=False)
class Demand:
    """Prompt and output token counts of a request list, as float arrays (the bounds' input)."""

    prompt: np.ndarray
    output: np.ndarray

    @classmethod
    def of(cls, requests: Requests) -> Demand:
        return cls(requests.prompt_tokens.astype(np.float64), requests.output_tokens.astype(np.float64))

    def __len__(self) -> int:
        return int(self.prompt.size)


@dataclass(frozen=True)
class Bound:
    """Capacity upper bound (req/s) of a candidate, and of each of its roles."""

    rate_rps: float
    by_role: Mapping[str, float]

    @property
    def limit(self) -> str:
        """The role whose bound binds."""
        return min(self.by_role, key=lambda role: self.by_role[role])


def capacity_bound(candidate: Candidate, costs: Mapping[str, InstanceCost], demand: Demand) -> Bound:
    """The fluid capacity bound of ``candidate`` on ``demand`` (see the module docstring)."""
    assert len(demand) > 0, "a bound needs requests"
    served = _served(candidate, costs, demand)
    n = len(demand)
    p, o = demand.prompt[served], demand.output[served]
    steps = o - 1.0
    if candidate.colocated is not None:
        pool, latency = candidate.colocated, costs["colocated"].latency
        decode_steps = max(steps.sum() / pool.max_batch_size, _kv_steps(p, o, costs["colocated"]))
        if pool.policy != POLICY_CHUNKED:
            batches = max(p.sum() / pool.max_batch_tokens, p.size / pool.max_batch_size)
            work_ms = _prefill_ms(p, latency, batches) + _decode_ms(
                p, o, latency, decode_steps, pool.max_batch_size
            )
            return Bound(_rate(pool.instances, work_ms, n), {"colocated": _rate(pool.instances, work_ms, n)})
        pa, pb, pc, pd = latency.prefill_coef
        e, f, g = latency.decode_coef
        all_steps = max(decode_steps, (p.sum() + steps.sum()) / pool.chunk_tokens)
        floor = min(pc * latency.prefill_knee_tokens, f * latency.decode_knee_batch)
        tokens_ms = max(pc * p.sum() + f * steps.sum(), floor * all_steps)
        work_ms = min(pa, e) * all_steps + tokens_ms + _prefill_rest(p, pb, pd) + _context_ms(p, o, g)
        return Bound(_rate(pool.instances, work_ms, n), {"colocated": _rate(pool.instances, work_ms, n)})
    assert candidate.prefill is not None and candidate.decode is not None
    pre, dec = candidate.prefill, candidate.decode
    batches = max(p.sum() / pre.step_tokens, p.size / pre.max_batch_size)
    prefill_ms = _prefill_ms(p, costs["prefill"].latency, batches)
    decode_steps = max(steps.sum() / dec.max_batch_size, _kv_steps(p, o, costs["decode"]))
    decode_ms = _decode_ms(p, o, costs["decode"].latency, decode_steps, dec.max_batch_size)
    by_role = {"prefill": _rate(pre.instances, prefill_ms, n), "decode": _rate(dec.instances, decode_ms, n)}
    return Bound(min(by_role.values()), by_role)


def _prefill_ms(p: np.ndarray, latency: LatencyModel, batches: float) -> float:
    """Least total prefill time of prompts ``p`` in at least ``batches`` batches."""
    pa, pb, pc, pd = latency.prefill_coef
    gemm = max(float(p.sum()), latency.prefill_knee_tokens * batches)
    return pa * batches + pc * gemm + _prefill_rest(p, pb, pd)


def _decode_ms(
    p: np.ndarray, o: np.ndarray, latency: LatencyModel, num_steps: float, max_batch: int
) -> float:
    """Least total decode time of requests (p, o) in at least ``num_steps`` steps of at most
    ``max_batch`` sequences. A MoE's expert reads X(B) are concave in B with X(0) = 0, so a step
    reads at least X(1) and, per token, at least X(max_batch)/max_batch (0 for a dense model)."""
    e, f, g = latency.decode_coef
    tokens = float((o - 1.0).sum())
    gemm = max(tokens, latency.decode_knee_batch * num_steps)
    experts = max(
        tokens * latency.decode_expert_ms(max_batch) / max_batch, num_steps * latency.decode_expert_ms(1)
    )
    return e * num_steps + f * gemm + _context_ms(p, o, g) + experts


def _prefill_rest(p: np.ndarray, pb: float, pd: float) -> float:
    """The per-sequence and query-key-pair prefill terms (the same whatever the batching)."""
    return float(pb * p.size + pd * np.square(p).sum())


def _context_ms(p: np.ndarray, o: np.ndarray, g: float) -> float:
    """The per-context-token decode term: step j of a request reads p + j tokens of KV."""
    steps = o - 1.0
    return float(g * (steps * p + steps * (steps - 1.0) / 2.0).sum())


def _kv_steps(p: np.ndarray, o: np.ndarray, cost: InstanceCost) -> float:
    return float(((o - 1.0) * (p + o)).sum() / cost.kv_capacity_tokens)


def _rate(instances: int, work_ms: float, num_requests: int) -> float:
    """λ with λ·(work per arrival) ≤ instances; ``work_ms`` sums over ``num_requests`` arrivals."""
    if work_ms <= 0:
        return math.inf
    return instances * 1000.0 * num_requests / work_ms


def _served(candidate: Candidate, costs: Mapping[str, InstanceCost], demand: Demand) -> np.ndarray:
    """Requests the simulator's router admits (the others are rejected on arrival)."""
    footprint = demand.prompt + demand.output
    if candidate.colocated is not None:
        ok = footprint <= costs["colocated"].kv_capacity_tokens
        if candidate.colocated.policy != POLICY_CHUNKED:
            ok &= demand.prompt <= candidate.colocated.max_batch_tokens
        return ok
    return (demand.prompt <= costs["prefill"].kv_capacity_tokens) & (
        footprint <= costs["decode"].kv_capacity_tokens
    )


# --- static infeasibility -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Floor:
    """Per-request latency floors on an idle cluster (ms) and the admitted mask."""

    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    e2e_ms: np.ndarray
    served: np.ndarray


def latency_floor(
    candidate: Candidate,
    costs: Mapping[str, InstanceCost],
    demand: Demand,
    *,
    link: KvLink,
    kv_bytes_per_token: int,
) -> Floor:
    """Each request's TTFT and TPOT when it is alone on the cluster (no queueing, batch of one)."""
    p, o = demand.prompt, demand.output
    steps = o - 1.0
    if candidate.colocated is not None:
        pool, latency = candidate.colocated, costs["colocated"].latency
        step = pool.chunk_tokens if pool.policy == POLICY_CHUNKED else pool.max_batch_tokens
        transfer_ms = np.zeros_like(p)
    else:
        assert candidate.prefill is not None
        pool_p = candidate.prefill
        latency, step = costs["prefill"].latency, pool_p.step_tokens
        transfer_ms = link.latency_ms + p * kv_bytes_per_token / (link.bandwidth_gbps * 1e6)
    pa, pb, pc, pd = latency.prefill_coef
    chunks = np.ceil(p / step)
    # its chunks hold ≥ p tokens in ≥ ``chunks`` steps, each at least at the knee: max(p, chunks·T0)
    gemm = np.maximum(p, chunks * latency.prefill_knee_tokens)
    ttft = chunks * (pa + pb) + pc * gemm + pd * p * p + transfer_ms
    decode = costs["colocated" if candidate.colocated is not None else "decode"].latency
    e, f, g = decode.decode_coef
    # mean step of a request decoding alone: context p … p + o − 2, i.e. p + (o − 2)/2 on average;
    # a batch of one below the knee costs as if it held B0 sequences
    per_seq = f * max(1.0, decode.decode_knee_batch) + decode.decode_expert_ms(1)  # a MoE reads top-k
    tpot = np.where(steps > 0, e + per_seq + g * (p + np.maximum(steps - 1.0, 0.0) / 2.0), 0.0)
    return Floor(ttft, tpot, ttft + tpot * steps, _served(candidate, costs, demand))


def static_infeasibility(
    candidate: Candidate,
    costs: Mapping[str, InstanceCost],
    demand: Demand,
    slo: SloTargets,
    *,
    link: KvLink,
    kv_bytes_per_token: int,
) -> str:
    """Why no rate can meet ``slo`` on ``candidate`` (``""`` when some rate might).

    Per-request thresholds: fewer than ``slo.attainment`` of requests meet them even alone.
    Percentile thresholds: the percentile of the floor already exceeds the threshold.
    """
    floor = latency_floor(candidate, costs, demand, link=link, kv_bytes_per_token=kv_bytes_per_token)
    n = len(demand)
    served = floor.served
    values = {"ttft": floor.ttft_ms, "tpot": floor.tpot_ms, "e2e": floor.e2e_ms}
    rejected = 1.0 - served.mean()
    allowed = 1.0 - slo.attainment
    if slo.per_request_ms and rejected > allowed + 1e-12:
        return f"KV capacity: {_rejection_reason(candidate, costs, demand)} (> {allowed:.0%} allowed)"
    if slo.per_request_ms:
        joint = served.copy()
        shares = {}
        for metric, limit in slo.per_request_ms.items():
            ok = values[metric] <= limit
            shares[metric] = float((ok & served).sum()) / n
            joint &= ok
        if joint.sum() / n < slo.attainment:
            metric = min(shares, key=lambda m: shares[m])
            return (
                f"{metric.upper()} bound: only {joint.sum() / n:.0%} of requests meet "
                f"{metric}≤{_fmt_ms(slo.per_request_ms[metric])} even alone on the cluster "
                f"(target {slo.attainment:.0%})"
            )
    for metric, q, limit in slo.percentile_ms:
        # rejected requests count as missing every threshold
        floor_q = float(np.percentile(np.where(served, values[metric], np.inf), q))
        if floor_q > limit:
            shown = "never (too many rejected)" if math.isinf(floor_q) else _fmt_ms(floor_q)
            kind = "KV capacity" if math.isinf(floor_q) else f"{metric.upper()} bound"
            return f"{kind}: {metric} p{q:g} is {shown} even alone on the cluster (> {_fmt_ms(limit)})"
    return ""


def _rejection_reason(candidate: Candidate, costs: Mapping[str, InstanceCost], demand: Demand) -> str:
    footprint = demand.prompt + demand.output
    if candidate.colocated is not None:
        cap = costs["colocated"].kv_capacity_tokens
        too_long = (
            demand.prompt > candidate.colocated.max_batch_tokens
            if candidate.colocated.policy != POLICY_CHUNKED
            else np.zeros(len(demand), dtype=bool)
        )
        return (
            f"{(footprint > cap).mean():.1%} of requests need more KV than an instance holds "
            f"({cap:,} tokens), {too_long.mean():.1%} are longer than one prefill step"
        )
    cap = costs["decode"].kv_capacity_tokens
    pre = costs["prefill"].kv_capacity_tokens
    return (
        f"{(footprint > cap).mean():.1%} of requests need more KV than a decode instance holds "
        f"({cap:,} tokens), {(demand.prompt > pre).mean():.1%} more than a prefill instance ({pre:,})"
    )


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def scaled(unit: Bound, instances: Mapping[str, int]) -> Bound:
    """The bound of a layout with ``instances`` per role, from its one-instance-per-role bound
    (every role's bound is linear in its instance count)."""
    by_role = {role: rate * instances[role] for role, rate in unit.by_role.items()}
    return Bound(min(by_role.values()), by_role)

"""Builders shared by the simulator tests: hand-made latency models and small clusters.

Latencies below are dyadic in seconds (1/1024 s per prompt token, 1/64 s per decode step, 1/128 s
link latency), so hand-computed timelines are exact in floating point.
"""

from __future__ import annotations

import numpy as np

from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.moe_cost import ExpertReads
from pdplan.sim import (
    ColocatedCluster,
    ColocatedPool,
    DecodePool,
    DisaggregatedCluster,
    InstanceCost,
    KvLink,
    PrefillPool,
    Requests,
)

PER_TOKEN_MS = 0.9765625  # 1/1024 s
STEP_MS = 15.625  # 1/64 s
LINK_MS = 7.8125  # 1/128 s


def dyadic_model() -> LatencyModel:
    return LatencyModel((0.0, 0.0, PER_TOKEN_MS, 0.0), (STEP_MS, 0.0, 0.0))


def requests(rows: list[tuple[float, int, int]]) -> Requests:
    arrival, prompt, output = zip(*rows, strict=True)
    return Requests(np.array(arrival), np.array(prompt), np.array(output))


def disagg(
    latency: LatencyModel | None = None,
    *,
    prefill: PrefillPool | None = None,
    decode: DecodePool | None = None,
    link: KvLink | None = None,
    kv_tokens: int = 100_000,
    prefill_kv_tokens: int = 100_000,
    kv_bytes_per_token: int = 0,
    num_layers: int = 1,
    decode_latency: LatencyModel | None = None,
) -> DisaggregatedCluster:
    latency = latency or dyadic_model()
    return DisaggregatedCluster(
        prefill=prefill or PrefillPool(1, max_batch_tokens=1024, max_batch_size=4),
        decode=decode or DecodePool(1, max_batch_size=2),
        link=link or KvLink(bandwidth_gbps=1.0, latency_ms=LINK_MS),
        prefill_cost=InstanceCost(latency, prefill_kv_tokens),
        decode_cost=InstanceCost(decode_latency or latency, kv_tokens),
        kv_bytes_per_token=kv_bytes_per_token,
        num_layers=num_layers,
    )


def colocated(latency: LatencyModel | None = None, *, kv_tokens: int = 100_000, **pool) -> ColocatedCluster:
    return ColocatedCluster(
        ColocatedPool(**{"instances": 1, **pool}), InstanceCost(latency or dyadic_model(), kv_tokens)
    )


def random_model(rng: np.random.Generator) -> LatencyModel:
    """A latency model with every term non-zero and awkward (non-dyadic) coefficients, most of
    the time roofline knees in the range of the tests' batches (≤ 1200 tokens, ≤ 8 sequences),
    and some of the time a MoE's decode experts term (2-64 experts, top-1 to all)."""
    experts = None
    if rng.random() < 0.4:
        num_experts = int(rng.integers(2, 65))
        top_k = int(rng.integers(1, num_experts + 1))
        experts = ExpertReads(num_experts, top_k, float(rng.uniform(0.001, 0.1)))
    return LatencyModel(
        (
            float(rng.uniform(1, 10)),
            float(rng.uniform(0, 1)),
            float(rng.uniform(0.01, 0.1)),
            float(rng.uniform(0, 1e-5)),
        ),
        (float(rng.uniform(3, 12)), float(rng.uniform(0, 0.2)), float(rng.uniform(0, 1e-4))),
        prefill_knee_tokens=float(rng.uniform(0, 600)) if rng.random() < 0.7 else 0.0,
        decode_knee_batch=float(rng.uniform(0, 8)) if rng.random() < 0.7 else 0.0,
        experts=experts,
        decode_expert_coef=float(rng.uniform(0, 20)) if experts else 0.0,
    )


def timeline(result, columns=("arrival_s", "prefill_start_s", "prefill_end_s", "first_token_s", "finish_s")):
    rec = result.records
    return [tuple(float(getattr(rec, c)[i]) for c in columns) for i in range(len(rec))]


def constant_profile(
    model: str = "llama-3.1-8b",
    *,
    tp: int = 1,
    memory_gib: float = 80.0,
    prefill_ms: float = 50.0,
    decode_ms: float = 10.0,
    dtype: str = "bfloat16",
):
    """A hand-made profile whose tables are constant (so its latency model is exactly constant)."""
    import pandas as pd

    from pdplan.profiles.model_spec import load_model_spec, shard_spec
    from pdplan.profiles.profile import Profile

    spec = load_model_spec(model)
    shard_spec(spec, tp)  # the TP must be valid for the model
    return Profile(
        method="analytic",
        model=spec,
        hardware={"name": "test-gpu", "memory_bytes": int(memory_gib * (1 << 30))},
        dtype=dtype,
        tp=tp,
        prefill=pd.DataFrame(
            {"num_seqs": [1, 2, 4], "seq_len": [128, 512, 1024], "latency_ms": [prefill_ms] * 3}
        ),
        decode=pd.DataFrame(
            {"batch_size": [1, 8, 64], "context_len": [128, 512, 2048], "latency_ms": [decode_ms] * 3}
        ),
    )

"""Inputs for the plan and ``pdplan simulate`` tests: hand-made profiles, plans and workloads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.profile import Profile, save_profile


def profile(
    model: str = "llama-3.1-8b", *, tp: int = 1, prefill_ms: float = 40.0, decode_ms: float = 8.0
) -> Profile:
    """A profile with constant tables on an 80 GiB GPU (its latency model is exactly constant)."""
    return Profile(
        method="analytic",
        model=load_model_spec(model),
        hardware={"name": "test-gpu", "memory_bytes": 80 << 30},
        dtype="bfloat16",
        tp=tp,
        prefill=pd.DataFrame(
            {"num_seqs": [1, 2, 4], "seq_len": [128, 512, 1024], "latency_ms": [prefill_ms] * 3}
        ),
        decode=pd.DataFrame(
            {"batch_size": [1, 8, 64], "context_len": [128, 512, 2048], "latency_ms": [decode_ms] * 3}
        ),
    )


def profile_dir(root: Path, *, tp: int = 1, **kw) -> Path:
    return save_profile(profile(tp=tp, **kw), root / f"profile-tp{tp}")


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


DISAGG_PLAN = {
    "schema_version": 1,
    "mode": "disaggregated",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "prefill": {"instances": 2, "tp": 1, "max_batch_tokens": 8192, "max_batch_size": 16},
    "decode": {"instances": 2, "tp": 1, "max_batch_size": 64},
    "kv_transfer": {"link": "infiniband"},
    "slo": "ttft=1s,tpot=50ms",
}
COLOCATED_PLAN = {
    "mode": "colocated",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "colocated": {"instances": 2, "tp": 1, "policy": "chunked", "chunk_tokens": 1024},
}
WORKLOAD = {
    "num_requests": 400,
    "seed": 3,
    "arrival": {"process": "poisson", "rate_rps": 8.0},
    "prompt_tokens": {"dist": "lognormal", "mean": 600, "cv": 0.5, "min": 16, "max": 4096},
    "output_tokens": {"dist": "uniform", "min": 1, "max": 64},
}

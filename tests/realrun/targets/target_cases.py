"""The plans the target tests launch: disaggregated, colocated, and multi-node TP16 with DP attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan
from pdplan.planner.plan import Plan, plan_from_dict
from pdplan.realrun.targets.layout import TargetPlan

GOLDEN = Path(__file__).resolve().parent / "golden"
K8S_DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "k8s"

PLANS: dict[str, dict[str, Any]] = {
    "disagg": {
        "mode": "disaggregated",
        "model": "llama-3.1-8b",
        "hardware": "h100-sxm",
        "prefill": {
            "instances": 2,
            "tp": 2,
            "max_batch_tokens": 8192,
            "max_batch_size": 16,
        },
        "decode": {"instances": 3, "tp": 2, "max_batch_size": 128, "max_kv_tokens": 200000},
        "kv_transfer": {"link": "infiniband"},
        "router": "round_robin",
        "gpu_memory_utilisation": 0.85,
        "launch": {"model_path": "meta-llama/Llama-3.1-8B-Instruct", "transfer_backend": "nixl"},
    },
    "colocated": {
        "mode": "colocated",
        "model": "qwen2.5-7b",
        "hardware": "a100-80g",
        "colocated": {
            "instances": 4,
            "tp": 1,
            "policy": "chunked",
            "max_batch_size": 64,
            "max_batch_tokens": 8192,
            "chunk_tokens": 2048,
            "max_kv_tokens": 150000,
        },
        "router": "round_robin",
        "launch": {"model_path": "Qwen/Qwen2.5-7B-Instruct"},
    },
    "multinode": {
        "mode": "disaggregated",
        "model": "deepseek-v3",
        "hardware": "h200",
        "prefill": {
            "instances": 1,
            "tp": 16,
            "max_batch_tokens": 16384,
            "max_batch_size": 64,
            "chunk_tokens": 8192,
        },
        "decode": {"instances": 2, "tp": 16, "max_batch_size": 256, "max_kv_tokens": 500000},
        "kv_transfer": {"link": "infiniband"},
        "router": "round_robin",
        "gpu_memory_utilisation": 0.8,
        "launch": {
            "model_path": "deepseek-ai/DeepSeek-V3",
            "gpus_per_node": 8,
            "prefill": {"dp": 16, "ep": 16, "dp_attention": True},
            "decode": {"dp": 16, "ep": 16, "dp_attention": True},
        },
    },
}


def plan(name: str, **changes: Any) -> Plan:
    data = {"schema_version": 1, **PLANS[name], **changes}
    return plan_from_dict(yaml.safe_load(yaml.safe_dump(data)), source=name)


def tplan(name: str, **changes: Any) -> TargetPlan:
    return target_plan(plan(name, **changes), TargetRequest("sglang"))

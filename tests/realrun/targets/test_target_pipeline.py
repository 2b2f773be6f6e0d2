"""A plan with pipeline stages (pp) in the engines' launch commands, and where it cannot run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdplan.planner.cli.deploy_cmd import _load_spec
from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan
from pdplan.planner.plan import plan_from_dict
from pdplan.profiles.errors import ConfigError, DeployError
from pdplan.realrun.targets import k8s, sglang, standin, vllm
from pdplan.realrun.targets.layout import TargetPlan

STAGED: dict[str, Any] = {
    "schema_version": 1,
    "mode": "disaggregated",
    "model": "llama-3.1-405b",
    "hardware": "h100-sxm",
    "prefill": {"instances": 1, "tp": 8, "pp": 2, "max_batch_tokens": 16384, "max_batch_size": 64},
    "decode": {"instances": 2, "tp": 8, "pp": 2, "max_batch_size": 128},
    "kv_transfer": {"link": "infiniband"},
    "router": "round_robin",
    "launch": {"model_path": "meta-llama/Llama-3.1-405B-Instruct"},
}


def _tplan(data: dict[str, Any], engine: str = "sglang") -> TargetPlan:
    return target_plan(
        plan_from_dict(yaml.safe_load(yaml.safe_dump(data)), source="p"), TargetRequest(engine)
    )


def _get(argv: tuple[str, ...] | list[str], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


def test_sglang_runs_each_instance_as_tp_per_node_times_pp_nodes_and_reads_it_back() -> None:
    bundle = sglang.build(_tplan(STAGED))
    engines = [p for p in bundle.processes if p.role in ("prefill", "decode")]
    assert len(engines) == 6  # 3 instances × 2 nodes (one rank per node)
    for p in engines:
        assert (_get(p.argv, "--tp-size"), _get(p.argv, "--pp-size"), _get(p.argv, "--nnodes")) == (
            "8",
            "2",
            "2",
        )
    assert sorted({p.node for p in engines}) == list(range(6))  # 48 GPUs: 6 nodes of 8
    back = sglang.parse_bundle(bundle.files)
    pools = dict(back.pools)
    assert (pools["prefill"].tp, pools["prefill"].pp, pools["decode"].pp) == (8, 2, 2)
    assert back.settings.gpus_per_node == 8


def test_sglang_without_pp_writes_no_pp_flag() -> None:
    flat = {
        **STAGED,
        "model": "llama-3.1-70b",
        "prefill": {"instances": 1, "tp": 8},
        "decode": {"instances": 1, "tp": 8},
    }
    bundle = sglang.build(_tplan(flat))
    assert all("--pp-size" not in p.argv for p in bundle.processes)


def test_k8s_pods_carry_the_pp_flag_and_a_node_of_gpus_each() -> None:
    bundle = k8s.build(_tplan(STAGED), "lws")
    text = "\n".join(bundle.files.values())
    assert "- --pp-size\n" in text and "nvidia.com/gpu: '8'" in text


def test_vllm_pipelines_inside_a_node_and_refuses_stages_across_nodes() -> None:
    inside = {
        **STAGED,
        "model": "llama-3.1-70b",
        "prefill": {"instances": 1, "tp": 2, "pp": 2, "max_batch_tokens": 8192},
        "decode": {"instances": 1, "tp": 2, "pp": 2},
        "launch": {"model_path": "meta-llama/Llama-3.1-70B-Instruct"},
    }
    bundle = vllm.build(_tplan(inside, "vllm"))
    decode = next(p for p in bundle.processes if p.role == "decode")
    assert _get(decode.argv, "--tensor-parallel-size") == "2"
    assert _get(decode.argv, "--pipeline-parallel-size") == "2"
    assert dict(decode.env)["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"  # after the prefill's four
    with pytest.raises(DeployError, match=r"prefill: tp=8 × pp=2 spans 2 nodes: .* Ray cluster"):
        vllm.build(_tplan(STAGED, "vllm"))


def test_the_local_target_and_the_stand_in_refuse_pipeline_stages(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(STAGED))
    with pytest.raises(ConfigError, match=r"prefill\.pp=2: the local workers run no pipeline stages"):
        _load_spec(path, None, None, 0)
    prefill = next(p for p in sglang.build(_tplan(STAGED)).processes if p.role == "prefill")
    with pytest.raises(DeployError, match="--pp-size"):
        standin.worker_argv(list(prefill.argv[3:]))

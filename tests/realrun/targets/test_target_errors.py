"""What a target cannot express is an error naming it; the stand-in maps SGLang flags to a worker."""

from __future__ import annotations

import sys

import pytest
from target_cases import PLANS, tplan

from pdplan.profiles.errors import ConfigError, DeployError
from pdplan.realrun.targets import k8s, sglang, standin, vllm
from pdplan.realrun.targets.layout import launch_from_dict


def _launch(name: str, **extra: object) -> dict[str, object]:
    return {**PLANS[name]["launch"], **extra}


def test_vllm_has_no_kv_store_connector() -> None:
    with pytest.raises(DeployError, match=r"launch\.kv_store=mooncake"):
        vllm.build(tplan("disagg", launch=_launch("disagg", kv_store="mooncake")))


def test_vllm_expert_parallel_is_all_or_nothing() -> None:
    par = {"dp": 16, "ep": 8, "dp_attention": True}
    with pytest.raises(DeployError, match=r"launch\.decode\.ep=8"):
        vllm.build(tplan("multinode", launch=_launch("multinode", decode=par)))


def test_vllm_tp_across_nodes_needs_dp_attention() -> None:
    with pytest.raises(DeployError, match="Ray cluster"):
        vllm.build(tplan("multinode", launch={"model_path": "deepseek-ai/DeepSeek-V3"}))


def test_vllm_proxy_routes_round_robin_only() -> None:
    with pytest.raises(DeployError, match=r"least_loaded.*round_robin"):
        vllm.build(tplan("disagg", router="least_loaded"))


def test_sglang_least_loaded_runs_as_power_of_two_and_says_so() -> None:
    bundle = sglang.build(tplan("disagg", router="least_loaded"))
    router = next(p for p in bundle.processes if p.role == "router")
    assert router.argv[router.argv.index("--policy") + 1] == "power_of_two"
    assert any("power_of_two" in n for n in bundle.notes)
    assert "power_of_two" in bundle.files["README.md"]


def test_dp_without_dp_attention_would_change_the_gpu_count() -> None:
    with pytest.raises(ConfigError, match=r"launch\.decode\.dp=2 without dp_attention"):
        sglang.build(tplan("disagg", launch=_launch("disagg", decode={"dp": 2})))


def test_tp_across_nodes_must_fill_whole_nodes() -> None:
    with pytest.raises(ConfigError, match=r"prefill\.tp=16 .* not a multiple of 6"):
        sglang.build(tplan("multinode", launch=_launch("multinode", gpus_per_node=6)))


def test_a_catalog_name_is_not_a_model_path() -> None:
    with pytest.raises(ConfigError, match="--model-path"):
        sglang.build(tplan("disagg", launch={}))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"transfer_backend": "rdma"}, "launch.transfer_backend"),
        ({"gpus_per_node": 0}, "launch.gpus_per_node"),
        ({"decode": {"dp": 2, "tp": 4}}, r"launch\.decode must be a mapping with keys"),
        ({"decode": {"ep": 0}}, r"launch\.decode\.ep=0"),
        ({"modelpath": "x"}, r"unknown keys \['modelpath'\]"),
    ],
)
def test_launch_section_is_strict(raw: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        launch_from_dict(raw)


def test_k8s_vllm_has_no_proxy_image() -> None:
    with pytest.raises(DeployError, match="--engine sglang"):
        k8s.build(tplan("disagg"), "rbg", engine="vllm")
    with pytest.raises(ConfigError, match="--flavor"):
        k8s.build(tplan("disagg"), "helm")


def test_standin_maps_sglang_flags_to_a_worker() -> None:
    bundle = sglang.build(
        tplan("disagg", launch=_launch("disagg"), prefill=dict(PLANS["disagg"]["prefill"], tp=1))
    )
    prefill = next(p for p in bundle.processes if p.role == "prefill")
    argv = standin.worker_argv([*prefill.argv[3:], "--parent-pid", "123"])
    assert argv[:3] == [sys.executable, "-m", "pdplan.realrun.worker"]
    get = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}
    assert get["--role"] == "prefill" and get["--model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert get["--max-batch-size"] == "16" and get["--max-batch-tokens"] == "8192"
    assert get["--bootstrap-port"] == str(prefill.bootstrap_port) and get["--parent-pid"] == "123"


def test_standin_refuses_what_one_process_cannot_be() -> None:
    bundle = sglang.build(tplan("disagg"))
    prefill = next(p for p in bundle.processes if p.role == "prefill")
    with pytest.raises(DeployError, match="--tp-size"):
        standin.worker_argv(list(prefill.argv[3:]))


def test_launch_section_round_trips_through_plan_yaml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from target_cases import plan

    from pdplan.planner.plan import load_plan, save_plan

    original = plan("multinode")
    again = load_plan(save_plan(original, tmp_path / "plan.yaml"))
    assert again.launch == original.launch and again.to_dict() == original.to_dict()
    assert again.to_dict()["launch"]["decode"] == {"dp": 16, "ep": 16, "dp_attention": True}
    assert "launch" not in plan("colocated", launch=None).to_dict()  # plans without it are unchanged


def test_a_plan_simulated_without_the_prefix_cache_turns_it_off_in_the_engines() -> None:
    from target_cases import plan

    from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan

    off = {**PLANS["colocated"]["colocated"], "reuse_preempted_kv": False}
    for name, module, flag in (
        ("sglang", sglang, "--disable-radix-cache"),
        ("vllm", vllm, "--no-enable-prefix-caching"),
    ):
        for changes, present in (({}, False), ({"colocated": off}, True)):
            bundle = module.build(target_plan(plan("colocated", **changes), TargetRequest(name)))
            text = "\n".join(bundle.files.values())
            assert (flag in text) == present, (name, changes)


@pytest.mark.parametrize(
    ("dtype", "kv_dtype", "sglang_flags", "vllm_flags"),
    [
        ("fp8", None, ["--quantization fp8"], ["--quantization fp8"]),
        (None, "fp8", ["--kv-cache-dtype fp8_e4m3"], ["--kv-cache-dtype fp8"]),
        ("fp8", "fp8", ["--quantization fp8", "--kv-cache-dtype fp8_e4m3"], ["--quantization fp8"]),
        ("float16", None, ["--dtype float16"], ["--dtype float16"]),
    ],
)
def test_the_engines_serve_the_dtypes_the_plan_was_simulated_with(
    dtype: str | None, kv_dtype: str | None, sglang_flags: list[str], vllm_flags: list[str]
) -> None:
    from target_cases import plan

    from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan

    changes = {k: v for k, v in (("dtype", dtype), ("kv_dtype", kv_dtype)) if v is not None}
    for name, module, expected in (("sglang", sglang, sglang_flags), ("vllm", vllm, vllm_flags)):
        text = "\n".join(
            module.build(target_plan(plan("colocated", **changes), TargetRequest(name))).files.values()
        )
        for flag in expected:
            assert flag in text, (name, flag)
        plain = "\n".join(module.build(target_plan(plan("colocated"), TargetRequest(name))).files.values())
        assert "--quantization" not in plain and "--kv-cache-dtype" not in plain


def test_an_int4_plan_says_it_needs_an_int4_checkpoint() -> None:
    from target_cases import plan

    from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan

    for name, module in (("sglang", sglang), ("vllm", vllm)):
        bundle = module.build(target_plan(plan("colocated", dtype="int4"), TargetRequest(name)))
        assert any("GPTQ/AWQ int4 checkpoint" in note for note in bundle.notes), name
        assert "--quantization" not in "\n".join(bundle.files.values())


def test_a_kv_dtype_the_engines_cannot_hold_is_an_error() -> None:
    from target_cases import plan

    from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan

    with pytest.raises(DeployError, match="kv_dtype float32"):
        sglang.build(
            target_plan(plan("colocated", dtype="bfloat16", kv_dtype="float32"), TargetRequest("sglang"))
        )

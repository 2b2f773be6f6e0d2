"""MoE in the search: DeepSeek-V3 on 32 H800s (multi-node TP, EP + DP attention chosen per TP),
and a dense model's profiles unchanged by the layout choice."""

from __future__ import annotations

import pytest

from pdplan.planner.presets import get_preset
from pdplan.planner.probe import SloTargets
from pdplan.planner.profileset import ProfileSet, analytic_profile_set
from pdplan.planner.search import SearchSpec, run_search
from pdplan.planner.search_files import plan_of
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import SpaceGrid
from pdplan.planner.traffic import synthetic
from pdplan.profiles.analytic import analytic_profile
from pdplan.profiles.hardware import CATALOG
from pdplan.profiles.layouts import choose_layout
from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.moe_cost import Layout
from pdplan.sim.cluster import KvLink


@pytest.fixture(scope="module")
def deepseek() -> ProfileSet:
    return analytic_profile_set("deepseek-v3", "h800")


def test_deepseek_needs_multi_node_instances_with_ep_and_dp_attention(deepseek: ProfileSet) -> None:
    # 671B parameters in fp8 are 625 GiB: 8 H800s (80 GB) cannot hold them, 16 can
    assert deepseek.tps == (16, 32, 64)
    assert "needs 79.8 GiB per GPU" in deepseek.unfit[8]
    assert deepseek.layouts[16].startswith(
        "TP16 + EP16 + DP-attention 16 (SGLang --tp 16 --ep-size 16 --dp 16"
    )
    profile = deepseek.profiles[16]
    assert (profile.ep, profile.attention_dp) == (16, 16)
    # DP attention: each GPU holds a sixteenth of the tokens' latent KV
    assert profile.kv_bytes_per_token == -(-70_272 // 16)


def test_a_search_of_deepseek_on_32_h800s_names_its_layout(deepseek: ProfileSet) -> None:
    spec = SearchSpec(
        profiles=deepseek,
        traffic=synthetic(get_preset("chat").workload(num_requests=300, seed=0)),
        slo=SloTargets(parse_slo("ttft=2s,tpot=100ms")),
        link=KvLink(50.0, 0.01, link="infiniband"),
        max_gpus=32,
        grid=SpaceGrid(
            tps=(16, 32),
            prefill_max_batch_tokens=(16384,),
            decode_max_batch_size=(256,),
            colocated_max_batch_size=(256,),
            colocated_chunk_tokens=(2048,),
        ),
        workers=1,
    )
    result = run_search(spec)
    assert result.chosen is not None, "a layout fits 32 H800s"
    plan = plan_of(result, workload=None)
    assert plan.gpus <= 32 and plan.launch is not None
    for role, pool in plan.launch.parallel.items():
        tp = plan.tps[role]
        assert (pool.ep, pool.dp, pool.dp_attention) == (tp, tp, True)
    assert plan.predicted["goodput_rps"] > 0


def test_dense_models_keep_the_tp_layout_and_their_profile() -> None:
    spec, h100 = load_model_spec("llama-3.1-8b"), CATALOG["h100-sxm"]
    choice = choose_layout(spec, h100, 2)
    assert choice.layout == Layout(tp=2)
    plain = analytic_profile(spec, h100, tp=2)
    assert choice.profile.decode["latency_ms"].tolist() == plain.decode["latency_ms"].tolist()


def test_serving_dtypes_travel_in_the_plan_and_back() -> None:
    from pdplan.planner.plan import plan_from_dict
    from pdplan.planner.search_files import serving_dtypes

    assert serving_dtypes(analytic_profile_set("qwen3-8b", "h100-sxm", tps=(1,))) == {}
    quantised = analytic_profile_set("qwen3-8b", "h100-sxm", tps=(1,), dtype="fp8", kv_dtype="fp8")
    dtypes = serving_dtypes(quantised)
    assert dtypes == {"dtype": "fp8", "kv_dtype": "fp8"}
    raw = {"mode": "colocated", "colocated": {"instances": 1, "tp": 1}, **dtypes}
    plan = plan_from_dict(raw)
    assert (plan.dtype, plan.kv_dtype) == ("fp8", "fp8") and plan.to_dict()["kv_dtype"] == "fp8"
    with pytest.raises(Exception, match="unknown plan dtype 'fp4'"):
        plan_from_dict({**raw, "dtype": "fp4"})

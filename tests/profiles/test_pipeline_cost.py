"""Pipeline parallelism in the analytic model: stage memory per GPU and step cost, checked by hand."""

from __future__ import annotations

import math

import pytest

from pdplan.profiles.analytic import analytic_profile, analytic_tables, kv_budget_bytes, roofline
from pdplan.profiles.engine import get_engine
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.hardware import get_hardware
from pdplan.profiles.layouts import choose_instance_layout, pipeline_splits
from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.moe_cost import Layout
from pdplan.profiles.pipeline import (
    PipelineSend,
    boundaries_across_nodes,
    stage_layers,
    stage_params,
)

# Llama-3.1-405B (config.json): hidden 16384, MLP 53248, 126 layers, 128 heads, 8 KV heads of 128
H, INTER, LAYERS, VOCAB = 16384, 53248, 126, 128256
ATTN = H * (128 * 128 + 2 * 8 * 128) + 128 * 128 * H  # fused q/k/v and o
LAYER = ATTN + 3 * H * INTER + 2 * H  # + SwiGLU MLP + two RMSNorms


@pytest.fixture(scope="module")
def l405():
    return load_model_spec("llama-3.1-405b")


def test_layers_split_evenly_the_stages_before_the_last_take_the_remainder() -> None:
    assert stage_layers(126, 4) == [31, 32, 32, 31]  # vLLM's get_pp_indices
    assert stage_layers(61, 2) == [31, 30]
    assert stage_layers(61, 4) == [15, 15, 16, 15]
    assert stage_layers(7, 4) == [2, 2, 2, 1]
    assert stage_layers(80, 1) == [80]
    with pytest.raises(ConfigError, match="more pipeline stages than"):
        stage_layers(4, 8)


def test_stage_weights_hold_the_embedding_first_and_the_head_last(l405) -> None:
    first, last = stage_params(l405, 2)
    assert first == 63 * LAYER + VOCAB * H
    assert last == 63 * LAYER + VOCAB * H + H  # LM head + final norm
    assert first + last == l405.num_params  # untied: every weight on exactly one stage


def test_memory_and_kv_per_gpu_follow_the_heaviest_stage(l405) -> None:
    h100 = get_hardware("h100-sxm")
    with pytest.raises(ProfileError, match=r"tp=8\) needs 96\.3 GiB per GPU"):
        kv_budget_bytes(l405, h100, 8, "bfloat16")  # TP8 alone: 94.5 GiB of weights per GPU
    profile = analytic_profile(l405, h100, tp=8, pp=2)
    assert profile.weight_bytes == (63 * LAYER + VOCAB * H + H) * 2 // 8  # 47.2 GiB
    # KV: 2 (K, V) × 8 KV heads / 8 ranks × 128 × 2 bytes = 512 B per layer per GPU; 63 layers
    assert profile.kv_bytes_per_token == 63 * 512
    assert profile.pp == 2 and profile.pp_send is not None


def test_sends_cross_nodes_only_at_node_boundaries() -> None:
    assert boundaries_across_nodes(8, 4, 8) == 3  # a stage per node
    assert boundaries_across_nodes(4, 4, 8) == 1  # two stages per node
    assert boundaries_across_nodes(2, 4, 8) == 0  # all in one node
    h100 = get_hardware("h100-sxm")  # NVLink 450 GB/s, 50 GB/s NIC per GPU, α(2 GPUs) = 16.6 µs
    spec = load_model_spec("llama-3.1-405b")
    send = PipelineSend.of(spec, h100, 8, 2, "bfloat16")
    per_token = 2 * H * 2  # hidden state + residual, bf16
    assert send.latency_ms == pytest.approx(2 * 16.6e-3)  # one network hop: the floor twice
    assert send.ms_per_token == pytest.approx(per_token / 50e9 * 1e3)
    inside = PipelineSend.of(spec, h100, 2, 4, "bfloat16")  # three NVLink sends
    assert inside.latency_ms == pytest.approx(3 * 16.6e-3)
    assert inside.ms_per_token == pytest.approx(3 * per_token / 450e9 * 1e3)


def test_decode_is_a_round_of_micro_batches_and_prefill_a_pass_through_every_stage(l405) -> None:
    h100 = get_hardware("h100-sxm")
    prefill, decode, ops = analytic_tables(l405, h100, tp=8, layout=Layout(tp=8, pp=2))
    full = roofline(l405, h100, Layout(tp=8), "bfloat16")  # the whole model on one TP8 group
    overhead = get_engine("vllm").step_overhead_ms
    send = PipelineSend.of(l405, h100, 8, 2, "bfloat16")
    row = decode[(decode.batch_size == 256) & (decode.context_len == 2048)].iloc[0]
    # round = 2 × ((full(128) − o)/2 + o) + send(128): each micro-batch of 128 rereads the weights
    assert row.latency_ms == pytest.approx(full.decode(128, 2048).total_ms + overhead + send.ms(128))
    odd = decode[(decode.batch_size == 1) & (decode.context_len == 128)].iloc[0]
    assert odd.latency_ms == pytest.approx(full.decode(1, 128).total_ms + overhead + send.ms(1))
    pre = prefill[(prefill.num_seqs == 2) & (prefill.seq_len == 1024)].iloc[0]
    assert pre.latency_ms == pytest.approx(full.prefill(2, 1024).total_ms + overhead + send.ms(2048))
    # the op breakdown still sums to the step
    by_op = ops[(ops.phase == "decode") & (ops.batch_size == 256) & (ops.context_len == 2048)]
    assert by_op.latency_ms.sum() == pytest.approx(row.latency_ms)


def test_multi_node_instances_pick_pipeline_or_tp_by_decode_throughput(l405) -> None:
    h100 = get_hardware("h100-sxm")
    assert pipeline_splits(h100, 8) == [(8, 1)]
    assert pipeline_splits(h100, 16) == [(16, 1), (8, 2)]
    choice = choose_instance_layout(l405, h100, 16)
    # TP16 all-reduces twice a layer over the 50 GB/s network; PP2 sends once per stage boundary
    assert (choice.layout.tp, choice.layout.pp) == (8, 2)
    assert "over TP16" in choice.reason and "--pp-size 2" in choice.reason
    # DeepSeek-V3 on H800: EP + DP attention over 16 GPUs beats TP8 × PP2 (named in the reason)
    ds = choose_instance_layout(load_model_spec("deepseek-v3"), get_hardware("h800"), 16)
    assert (ds.layout.tp, ds.layout.pp, ds.layout.ep) == (16, 1, 16)
    assert "PP2" in ds.reason


def test_pp_beyond_the_layers_is_refused(l405) -> None:
    with pytest.raises(ConfigError, match="--pp 200"):
        analytic_profile(l405, "h100-sxm", tp=8, pp=200)
    assert math.isclose(stage_params(l405, 1)[0], l405.num_params)


def test_a_pipelined_moe_round_reads_the_experts_of_a_micro_batch() -> None:
    from pdplan.profiles.latency_model import LatencyModel
    from pdplan.profiles.moe_cost import ExpertReads
    from pdplan.sim.costs import StepCoef

    spec = load_model_spec("deepseek-v3")
    one, two = ExpertReads.of(spec, 8, "fp8"), ExpertReads.of(spec, 8, "fp8", pp=2)
    assert two is not None and one is not None and two.micro_batches == 2
    assert two.gb(256) == pytest.approx(one.gb(128))  # two micro-batches of 128, each all layers
    assert "micro_batches" not in one.to_dict() and two.to_dict()["micro_batches"] == 2
    model = LatencyModel((1.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0), experts=two, decode_expert_coef=2.0)
    coef = StepCoef.of(model)  # the simulator's closed form agrees with the latency model
    for batch in (1, 7, 256):
        assert coef.decode_s(batch, 0) * 1e3 == pytest.approx(model.decode_ms(batch, 0))

"""Qwen3, MoE and MLA specs: parameter and active-parameter counts against the releases and
transformers, KV bytes per token (GQA, MLA, fp8), quantised weight bytes, sharding, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.hf_config import read_config
from pdplan.profiles.model_spec import ModelSpec, load_model_spec, shard_spec, spec_from_config, with_dtypes

# (total, active) as each release states them: Qwen3 model cards ("8.2B"; "30.5B in total and
# 3.3B activated"), Mistral's Mixtral announcement ("46.7B total parameters but only uses 12.9B
# per token"), Qwen2-57B-A14B ("57B ... 14B activated"), DeepSeek-V3 technical report ("671B total
# parameters with 37B activated for each token").
RELEASES = {
    "qwen3-8b": (8.2e9, 8.2e9),
    "qwen3-30b-a3b": (30.5e9, 3.3e9),
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "qwen2-57b-a14b": (57.4e9, 14.2e9),
    "deepseek-v3": (671e9, 37e9),
}


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_total_and_active_parameters_match_the_releases(name: str) -> None:
    total, active = RELEASES[name]
    spec = load_model_spec(name)
    assert spec.num_params == pytest.approx(total, rel=0.01)
    # the releases round active counts to one decimal (37.55B is "37B" in DeepSeek's report)
    assert spec.num_active_params == pytest.approx(active, rel=0.02)
    assert spec.flops_per_token == 2 * (spec.num_active_params - spec.embedding_params - spec.hidden_size)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_parameter_counts_equal_transformers_models_built_from_the_same_config(name: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = {k: v for k, v in read_config(name).items() if k not in ("_comment", "quantization_config")}
    hf_config = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):  # shapes only: no memory for 671B parameters
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    assert load_model_spec(name).num_params == sum(p.numel() for p in model.parameters())


def test_mla_kv_bytes_per_token_are_the_latent_and_the_rope_key() -> None:
    spec = load_model_spec("deepseek-v3")
    assert spec.is_mla and spec.dtype == "fp8"  # the release stores fp8 weights
    # 61 layers × (kv_lora_rank 512 + qk_rope_head_dim 64) × 2 bytes (bf16 KV)
    assert spec.kv_bytes_per_token() == 61 * 576 * 2 == 70_272
    assert with_dtypes(spec, kv_dtype="fp8").kv_bytes_per_token() == 35_136
    # the latent has no heads to split: each TP rank holds all of it
    assert spec.kv_bytes_per_token_per_rank(8) == 70_272
    assert spec.head_dim == 192 and spec.v_size == 128 * 128
    # bf16 prefill attention: (192 + 128) × 2 FLOPs per head per (query, key) pair
    assert spec.attention_flops(1, 1) == 61 * 2 * 128 * 320


def test_gqa_kv_bytes_and_fp8_kv_halve() -> None:
    spec = load_model_spec("qwen3-30b-a3b")
    assert spec.kv_bytes_per_token() == 2 * 48 * 4 * 128 * 2 == 98_304
    fp8 = with_dtypes(spec, kv_dtype="fp8")
    assert fp8.kv_bytes_per_token() == 49_152
    assert fp8.kv_bytes_per_token_per_rank(2) == 24_576
    assert fp8.kv_bytes_per_token_per_rank(8) == 12_288  # 4 KV heads: one per rank beyond TP4


def test_weight_dtypes_scale_the_bytes() -> None:
    spec = load_model_spec("mixtral-8x7b")
    n = spec.num_params
    assert spec.weight_bytes() == 2 * n
    assert spec.weight_bytes("fp8") == n
    assert spec.weight_bytes("int4") == n // 2
    assert with_dtypes(spec, dtype="int4").kv_bytes_per_token() == spec.kv_bytes_per_token()  # bf16 KV
    with pytest.raises(ConfigError, match="unknown --dtype 'int3'"):
        with_dtypes(spec, dtype="int3")
    with pytest.raises(ConfigError, match="unknown --kv-dtype 'int4'"):
        load_model_spec("mixtral-8x7b", kv_dtype="int4")


def test_structure_read_from_each_family() -> None:
    qwen3 = load_model_spec("qwen3-30b-a3b")
    assert (qwen3.qk_norm, qwen3.num_experts, qwen3.num_experts_per_tok, qwen3.num_dense_layers) == (
        True,
        128,
        8,
        0,
    )
    mixtral = load_model_spec("mixtral-8x7b")
    assert mixtral.moe_intermediate_size == 14336 and not mixtral.qk_norm
    qwen2 = load_model_spec("qwen2-57b-a14b")
    assert (
        qwen2.shared_expert_gate and qwen2.attention_bias and qwen2.shared_expert_intermediate_size == 20480
    )
    ds = load_model_spec("deepseek-v3")
    assert (ds.num_dense_layers, ds.num_moe_layers, ds.shared_expert_intermediate_size) == (3, 58, 2048)
    assert ds.rope_scaling is not None and ds.rope_scaling["rope_type"] == "yarn"


def test_round_trip_keeps_moe_and_mla_fields_and_dense_dicts_unchanged() -> None:
    for name in ("deepseek-v3", "qwen3-30b-a3b", "qwen2-57b-a14b"):
        spec = with_dtypes(load_model_spec(name), kv_dtype="fp8")
        assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "num_experts" not in load_model_spec("llama-3.1-8b").to_dict()


def test_moe_shards_each_expert_and_mla_shards_heads() -> None:
    shard = shard_spec(load_model_spec("qwen3-30b-a3b"), 4)
    assert (shard.moe_intermediate_size, shard.num_experts, shard.num_heads, shard.num_kv_heads) == (
        192,
        128,
        8,
        1,
    )
    ds = shard_spec(load_model_spec("deepseek-v3"), 16)
    assert (ds.num_heads, ds.kv_lora_rank, ds.moe_intermediate_size, ds.intermediate_size) == (
        8,
        512,
        128,
        1152,
    )
    with pytest.raises(ConfigError, match="--tp 3 does not divide num_attention_heads=128"):
        shard_spec(load_model_spec("deepseek-v3"), 3)


def _write(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt_bigcode"}, "model_type 'gpt_bigcode' is not supported"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types has sliding_attention"),
        ({"sliding_window": 4096, "use_sliding_window": True}, "sliding_window=4096"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quant_method='bitsandbytes'"),
        ({"num_experts_per_tok": None}, "no num_experts_per_tok"),
        ({"is_encoder_decoder": True}, "decoder-only"),
    ],
)
def test_what_cannot_be_priced_is_named(tmp_path: Path, change: dict, message: str) -> None:
    config = {**read_config("qwen3-30b-a3b"), **change}
    with pytest.raises(ConfigError, match=message):
        load_model_spec(_write(tmp_path, config))


def test_quantised_checkpoints_are_read_as_such(tmp_path: Path) -> None:
    config = {**read_config("qwen3-8b"), "quantization_config": {"quant_method": "awq", "bits": 4}}
    spec = load_model_spec(_write(tmp_path, config))
    assert spec.dtype == "int4" and spec.weight_bytes() == spec.num_params // 2


@pytest.mark.parametrize(
    ("config_class", "model_class", "overrides"),
    [
        ("GemmaConfig", "GemmaForCausalLM", {}),  # Gemma-7B shapes (head_dim 256, tied head)
        ("Phi3Config", "Phi3ForCausalLM", {}),  # Phi-3-mini shapes
        (  # DeepSeek-V2-Lite shapes: MLA without q_lora, 2 shared experts, the first layer dense
            "DeepseekV2Config",
            "DeepseekV2ForCausalLM",
            dict(
                hidden_size=2048,
                num_hidden_layers=27,
                num_attention_heads=16,
                num_key_value_heads=16,
                q_lora_rank=None,
                moe_intermediate_size=1408,
                n_routed_experts=64,
                n_shared_experts=2,
                num_experts_per_tok=6,
                first_k_dense_replace=1,
                intermediate_size=10944,
                vocab_size=102400,
            ),
        ),
    ],
)
def test_other_families_count_as_transformers_builds_them(
    config_class: str, model_class: str, overrides: dict
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, config_class)(**overrides)
    spec = spec_from_config(config.to_dict(), config_class)
    with torch.device("meta"):
        model = getattr(transformers, model_class)(config)
    assert spec.num_params == sum(p.numel() for p in model.parameters())

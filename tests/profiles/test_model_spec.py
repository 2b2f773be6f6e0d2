"""ModelSpec: derived values against published parameter counts, strict loaders, TP sharding."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.model_spec import (
    ModelSpec,
    catalog_names,
    load_model_spec,
    shard_spec,
)

# Parameter counts from each model card / safetensors index ("8.03B", "70.6B", "7.62B",
# "7.25B", "32.8B"), and the exact totals of the released checkpoints.
PUBLISHED = {
    "llama-3.1-8b": (8.03e9, 8_030_261_248),
    "llama-3.1-70b": (70.55e9, 70_553_706_496),
    "qwen2.5-7b": (7.62e9, 7_615_616_512),
    "mistral-7b": (7.25e9, 7_248_023_552),
    "qwen2.5-32b": (32.76e9, 32_763_876_352),
}


def _catalog_config(name: str) -> dict:
    return json.loads((resources.files("pdplan.profiles") / "catalog" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_released_checkpoints(name: str) -> None:
    rounded, exact = PUBLISHED[name]
    spec = load_model_spec(name)
    assert spec.num_params == exact
    assert spec.num_params == pytest.approx(rounded, rel=5e-3)
    assert spec.weight_bytes() == 2 * exact  # bf16
    assert spec.weight_bytes("float32") == 4 * exact


@pytest.mark.parametrize(
    ("name", "kv_bytes"),
    [
        ("llama-3.1-8b", 131_072),
        ("llama-3.1-70b", 327_680),
        ("qwen2.5-7b", 57_344),
        ("mistral-7b", 131_072),
        ("qwen2.5-32b", 262_144),
    ],
)
def test_kv_bytes_per_token_is_gqa_aware(name: str, kv_bytes: int) -> None:
    spec = load_model_spec(name)
    # 2 (K, V) × layers × kv_heads × head_dim × 2 bytes
    assert spec.kv_bytes_per_token() == kv_bytes
    assert spec.kv_bytes_per_token("float32") == 2 * kv_bytes


def test_flops_per_token_counts_every_gemm_weight_twice() -> None:
    spec = load_model_spec("llama-3.1-8b")
    embedding = 128_256 * 4096
    # the input embedding is a lookup (no FLOPs); the untied LM head is a GEMM
    assert spec.flops_per_token == 2 * (spec.num_params - embedding - 4096)
    assert spec.attention_flops(10, 100) == 4 * 32 * 32 * 128 * 10 * 100


def test_tiny_llama_is_small_and_tied() -> None:
    spec = load_model_spec("tiny-llama")
    assert 20e6 <= spec.num_params <= 50e6
    assert spec.tie_word_embeddings
    assert {"tiny-llama", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "qwen2.5-32b", "mistral-7b"} <= set(
        catalog_names()
    )


def test_config_path_and_hf_directory_give_the_catalog_shape(tmp_path: Path) -> None:
    folder = tmp_path / "Qwen2.5-7B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_catalog_config("qwen2.5-7b")))
    from_dir = load_model_spec(folder)
    from_file = load_model_spec(folder / "config.json")
    catalog = load_model_spec("qwen2.5-7b")
    assert from_dir.name == from_file.name == "Qwen2.5-7B"
    assert from_dir.num_params == from_file.num_params == catalog.num_params
    assert from_dir.attention_bias  # qwen2 defaults to q/k/v bias


def test_missing_fields_are_named(tmp_path: Path) -> None:
    config = _catalog_config("llama-3.1-8b")
    del config["num_hidden_layers"], config["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="lacks num_hidden_layers, vocab_size"):
        load_model_spec(tmp_path)


def test_unknown_name_lists_the_catalog() -> None:
    with pytest.raises(ConfigError) as err:
        load_model_spec("llama-9")
    assert "llama-9" in str(err.value)
    for name in catalog_names():
        assert name in str(err.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_config_is_a_config_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="config"):
        load_model_spec(tmp_path / "config.json")


def test_bad_shapes_are_rejected() -> None:
    base = load_model_spec("tiny-llama").to_dict()
    with pytest.raises(ConfigError, match="model_type 'gpt2' is not supported"):
        ModelSpec.from_dict({**base, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="not a multiple of num_key_value_heads"):
        ModelSpec.from_dict({**base, "num_heads": 8, "num_kv_heads": 3})
    with pytest.raises(ConfigError, match="hidden_size=0"):
        ModelSpec.from_dict({**base, "hidden_size": 0})
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelSpec.from_dict({**base, "num_widgets": 8})


def test_to_dict_round_trips() -> None:
    for name in catalog_names():
        spec = load_model_spec(name)
        assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_shard_spec_splits_heads_mlp_and_vocab() -> None:
    spec = load_model_spec("llama-3.1-70b")
    shard = shard_spec(spec, 4)
    assert (shard.num_heads, shard.num_kv_heads, shard.intermediate_size) == (16, 2, 7168)
    assert shard.vocab_size == 128_256 // 4
    assert shard.hidden_size == spec.hidden_size
    # beyond the KV head count, each rank keeps one (replicated) KV head
    assert shard_spec(spec, 16).num_kv_heads == 1
    assert shard_spec(spec, 1) is spec


@pytest.mark.parametrize(
    ("name", "tp", "field"),
    [
        ("qwen2.5-7b", 8, "num_attention_heads=28"),
        ("qwen2.5-32b", 16, "num_attention_heads=40"),
        ("llama-3.1-8b", 3, "num_attention_heads=32"),
    ],
)
def test_shard_spec_rejects_a_tp_that_does_not_divide(name: str, tp: int, field: str) -> None:
    with pytest.raises(ConfigError, match=f"--tp {tp} does not divide {field}"):
        shard_spec(load_model_spec(name), tp)
    with pytest.raises(ConfigError, match="positive"):
        shard_spec(load_model_spec(name), 0)

"""Hugging Face ``config.json`` → ``ModelSpec``: reading configs and the per-family field names.

One parser for every family pdplan prices (``model_spec.SUPPORTED_MODEL_TYPES``). The families
differ in how they name the same structure, read here as transformers' config classes define them:

- experts: ``num_local_experts`` (Mixtral: experts of ``intermediate_size``), ``num_experts`` +
  ``moe_intermediate_size`` (Qwen2-MoE, Qwen3-MoE), ``n_routed_experts`` (DeepSeek);
- dense layers in a MoE: DeepSeek's ``first_k_dense_replace`` (and ``moe_layer_freq``), Qwen's
  ``mlp_only_layers`` and ``decoder_sparse_step``;
- shared experts: Qwen2-MoE's one gated ``shared_expert_intermediate_size``, DeepSeek's
  ``n_shared_experts × moe_intermediate_size``;
- MLA (DeepSeek-V2/V3): ``kv_lora_rank``, ``q_lora_rank``, ``qk_rope_head_dim``,
  ``qk_nope_head_dim``, ``v_head_dim``;
- quantised checkpoints: ``quantization_config`` (``fp8`` → fp8 weights; 4-bit ``gptq``/``awq``
  → int4).

What a config holds that the cost model cannot price is refused by name (sliding-window or linear
attention layers, encoder-decoders, other quantisation methods), never silently priced as something
else.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.model_spec import SUPPORTED_MODEL_TYPES, ModelSpec, catalog_names
from pdplan.profiles.validate import integer, load_json, mapping, number

_REQUIRED = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)

#: Physical ranges of the config fields that set cost (the largest released models are far inside).
_INT_LIMITS = {
    "hidden_size": 1 << 20,
    "intermediate_size": 1 << 22,
    "num_hidden_layers": 4096,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "head_dim": 1 << 16,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 30,
    "num_experts": 1 << 16,
    "num_local_experts": 1 << 16,
    "n_routed_experts": 1 << 16,
    "num_experts_per_tok": 1 << 16,
    "moe_intermediate_size": 1 << 22,
    "shared_expert_intermediate_size": 1 << 22,
    "n_shared_experts": 1 << 10,
    "first_k_dense_replace": 4096,
    "moe_layer_freq": 4096,
    "decoder_sparse_step": 4096,
    "kv_lora_rank": 1 << 16,
    "q_lora_rank": 1 << 16,
    "qk_rope_head_dim": 1 << 16,
    "qk_nope_head_dim": 1 << 16,
    "v_head_dim": 1 << 16,
}
#: Families with q/k/v bias by default (Qwen2 and Qwen2-MoE always have it).
_BIAS_BY_DEFAULT = ("qwen2", "qwen2_moe")
#: Families with per-head RMSNorm on q and k (Qwen3: ``q_norm``/``k_norm`` of head_dim).
_QK_NORM = ("qwen3", "qwen3_moe")
#: Families whose config class defaults to a tied LM head (Gemma).
_TIED_BY_DEFAULT = ("gemma",)
#: RoPE scaling types kept in the spec (positions only, not cost); the executor runs llama3.
_ROPE_TYPES = ("llama3", "yarn", "longrope", "su", "linear", "dynamic")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def read_config(source: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a catalog name, a ``config.json`` path, or a model directory."""
    text = str(source)
    if text in catalog_names():
        raw = (resources.files("pdplan.profiles") / "catalog" / f"{text}.json").read_text()
        data: dict[str, Any] = json.loads(raw)
        return data
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise choices_error("model (catalog name or path to config.json)", text, catalog_names())
    parsed = load_json(path, "model config")
    if not isinstance(parsed, dict):
        raise ConfigError(f"model config {str(path)!r}: expected a JSON object")
    return parsed


def spec_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """Build a spec from a parsed HF ``config.json``; names the missing or bad field when there is one.

    Raises:
        ConfigError: a missing field, a field of the wrong type, a number outside its physical range,
            a family pdplan does not price, or a feature of the config it cannot price (named).
    """
    where = f"model {name!r}: config.json"
    model_type = config.get("model_type")
    if isinstance(config.get("text_config"), dict) and model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} wraps a text_config (a multimodal model); "
            "pdplan prices decoder-only language models: give the text_config as the config"
        )
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"model {name!r}: config.json lacks {', '.join(missing)}")
    if not isinstance(model_type, str):
        raise ConfigError(f"{where} model_type={model_type!r}; expected a string")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model {name!r}: model_type {model_type!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    _refuse_unpriced(config, where)
    ints = {
        key: integer(f"{where} {key}", config[key], low=0 if key in _ZERO_OK else 1, high=limit)
        for key, limit in _INT_LIMITS.items()
        if config.get(key) is not None
    }
    num_heads = ints["num_attention_heads"]
    hidden = ints["hidden_size"]
    head_dim = ints.get("head_dim") or hidden // num_heads
    mla = _mla_fields(ints)
    if mla:  # DeepSeek's head_dim is the q·k head size; transformers writes the RoPE part there
        head_dim = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    if head_dim < 1:
        raise ConfigError(
            f"{where}: hidden_size={hidden} / num_attention_heads={num_heads} gives head_dim 0; "
            "expected hidden_size ≥ num_attention_heads or a head_dim"
        )
    # transformers ≥ 5 writes ``rope_parameters`` (theta included); older configs ``rope_scaling``.
    raw_rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = dict(mapping(f"{where} rope_scaling", raw_rope))
    theta = config.get("rope_theta") or rope.get("rope_theta") or 10000.0
    return ModelSpec(
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=ints["intermediate_size"],
        num_layers=ints["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=num_heads if mla else ints.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        vocab_size=ints["vocab_size"],
        max_position_embeddings=ints.get("max_position_embeddings", 4096),
        rms_norm_eps=number(f"{where} rms_norm_eps", config.get("rms_norm_eps", 1e-5), low=0, high=1),
        rope_theta=number(f"{where} rope_theta", theta, low=0, low_open=True),
        tie_word_embeddings=_flag(
            f"{where} tie_word_embeddings", config.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)
        ),
        attention_bias=_flag(
            f"{where} attention_bias", config.get("attention_bias", model_type in _BIAS_BY_DEFAULT)
        ),
        dtype=_weight_dtype(config, where),
        rope_scaling=_rope_scaling(rope, name),
        qk_norm=model_type in _QK_NORM,
        **_moe_fields(config, ints, model_type, where),
        **mla,
    )


_ZERO_OK = ("q_lora_rank", "first_k_dense_replace", "n_shared_experts", "shared_expert_intermediate_size")


def _refuse_unpriced(config: dict[str, Any], where: str) -> None:
    """Raise for structure the cost model does not price (each named with its value)."""
    if config.get("is_encoder_decoder"):
        raise ConfigError(f"{where}: is_encoder_decoder=true; pdplan prices decoder-only models")
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list):
        other = sorted({str(t) for t in layer_types if t != "full_attention"})
        if other:
            raise ConfigError(
                f"{where}: layer_types has {', '.join(other)} layers; pdplan prices full attention only"
            )
    window = config.get("sliding_window")
    longest = config.get("max_position_embeddings")
    if (
        isinstance(window, int)
        and config.get("use_sliding_window", True) is not False
        and (not isinstance(longest, int) or window < longest)
    ):
        raise ConfigError(
            f"{where}: sliding_window={window!r} (attention over a window) is not priced; pdplan "
            "prices full attention: set sliding_window to null to price the model that way"
        )


def _moe_fields(config: dict[str, Any], ints: dict[str, int], model_type: str, where: str) -> dict[str, Any]:
    """The MoE fields of ``ModelSpec`` (empty for a dense model)."""
    experts = ints.get("num_local_experts") or ints.get("num_experts") or ints.get("n_routed_experts") or 0
    if not experts:
        return {}
    if "num_experts_per_tok" not in ints:
        raise ConfigError(f"{where}: {experts} experts but no num_experts_per_tok")
    layers = ints["num_hidden_layers"]
    if model_type == "mixtral":  # every expert is a full-width SwiGLU of intermediate_size
        moe_inter, shared, gate, dense = ints["intermediate_size"], 0, False, 0
    else:
        if "moe_intermediate_size" not in ints:
            raise ConfigError(f"{where}: {experts} experts but no moe_intermediate_size")
        moe_inter = ints["moe_intermediate_size"]
        if "n_routed_experts" in ints:  # DeepSeek: shared experts of the routed width
            shared, gate = ints.get("n_shared_experts", 0) * moe_inter, False
            first, freq = ints.get("first_k_dense_replace", 0), ints.get("moe_layer_freq", 1)
            dense = sum(1 for i in range(layers) if not (i >= first and i % freq == 0))
        else:  # Qwen-MoE: mlp_only_layers and decoder_sparse_step pick the dense layers
            shared = ints.get("shared_expert_intermediate_size", 0)
            gate = shared > 0 and model_type == "qwen2_moe"
            only = config.get("mlp_only_layers") or []
            if not isinstance(only, list) or not all(isinstance(i, int) for i in only):
                raise ConfigError(f"{where} mlp_only_layers={only!r}; expected a list of layer indices")
            step = ints.get("decoder_sparse_step", 1)
            dense = sum(1 for i in range(layers) if i in only or (i + 1) % step)
    norm = model_type == "mixtral" or _flag(f"{where} norm_topk_prob", config.get("norm_topk_prob", False))
    return {
        "norm_topk_prob": norm,
        "num_experts": experts,
        "num_experts_per_tok": ints["num_experts_per_tok"],
        "moe_intermediate_size": moe_inter,
        "shared_expert_intermediate_size": shared,
        "shared_expert_gate": gate,
        "num_dense_layers": dense,
    }


def _mla_fields(ints: dict[str, int]) -> dict[str, Any]:
    """The MLA fields of ``ModelSpec`` (empty without ``kv_lora_rank``)."""
    if not ints.get("kv_lora_rank"):
        return {}
    keys = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
    return {key: ints.get(key, 0) for key in keys}


def _weight_dtype(config: dict[str, Any], where: str) -> str:
    """``torch_dtype``, or fp8 / int4 when ``quantization_config`` says the weights are stored so."""
    quant = config.get("quantization_config")
    if quant is None:
        return str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    quant = mapping(f"{where} quantization_config", quant)
    method = quant.get("quant_method")
    if method == "fp8":
        return "fp8"
    if method in ("gptq", "awq") and quant.get("bits") == 4:
        return "int4"
    raise ConfigError(
        f"{where}: quantization_config quant_method={method!r} bits={quant.get('bits')!r} is not "
        "priced; expected fp8, or gptq/awq with bits 4"
    )


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}={value!r}; expected true or false")
    return value


def _rope_scaling(rope: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The RoPE scaling of a config (its type and scalar parameters), ``None`` for plain RoPE."""
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "default":
        return None
    if rope_type not in _ROPE_TYPES:
        raise ConfigError(
            f"model {name!r}: rope_scaling type {rope_type!r} is not supported; "
            f"expected one of {', '.join(_ROPE_TYPES)} or none"
        )
    where = f"model {name!r}: rope_scaling"
    if rope_type == "llama3":
        missing = [k for k in _LLAMA3_KEYS if k not in rope]
        if missing:
            raise ConfigError(f"model {name!r}: llama3 rope_scaling lacks {', '.join(missing)}")
        values = {k: number(f"{where} {k}", rope[k], low=0, low_open=True) for k in _LLAMA3_KEYS}
        return {"rope_type": "llama3", **values}
    scalars = {
        k: v
        for k, v in rope.items()
        if k not in ("type", "rope_type", "rope_theta")
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }
    return {"rope_type": rope_type, **scalars}

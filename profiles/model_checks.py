"""Validation of a ``ModelSpec`` when it is built: ranges, flags, dtypes, and the consistency of the
MoE and MLA fields (what a config must hold for the cost model to price it). Every error names the
model, the field, the value and what was expected."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.model_spec import COUNT_FIELDS, KV_DTYPE_BYTES, SUPPORTED_MODEL_TYPES, WEIGHT_BITS
from pdplan.profiles.validate import integer, number

if TYPE_CHECKING:
    from pdplan.profiles.model_spec import ModelSpec

_POSITIVE = (
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "vocab_size",
)


def check_spec(spec: ModelSpec) -> None:
    """Raise ``ConfigError`` naming the first field of ``spec`` that is out of range or inconsistent."""
    where = f"model {spec.name!r}"
    if spec.model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type {spec.model_type!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    for field in _POSITIVE:
        integer(f"{where}: {field}", getattr(spec, field), low=1, high=1 << 24)
    for field in COUNT_FIELDS:
        integer(f"{where}: {field}", getattr(spec, field), low=0, high=1 << 24)
    integer(f"{where}: max_position_embeddings", spec.max_position_embeddings, low=1)
    number(f"{where}: rms_norm_eps", spec.rms_norm_eps, low=0, high=1)
    number(f"{where}: rope_theta", spec.rope_theta, low=0, low_open=True)
    for flag in (
        "tie_word_embeddings",
        "attention_bias",
        "qk_norm",
        "shared_expert_gate",
        "norm_topk_prob",
    ):
        if not isinstance(getattr(spec, flag), bool):
            raise ConfigError(f"{where}: {flag}={getattr(spec, flag)!r}; expected true or false")
    if spec.rope_scaling is not None and not isinstance(spec.rope_scaling, dict):
        raise ConfigError(f"{where}: rope_scaling={spec.rope_scaling!r}; expected a mapping")
    if spec.num_heads % spec.num_kv_heads:
        raise ConfigError(
            f"{where}: num_attention_heads={spec.num_heads} is not a multiple of "
            f"num_key_value_heads={spec.num_kv_heads}"
        )
    if not isinstance(spec.dtype, str) or spec.dtype not in WEIGHT_BITS:
        raise choices_error("dtype", spec.dtype, WEIGHT_BITS)
    if spec.kv_dtype is not None and spec.kv_dtype not in KV_DTYPE_BYTES:
        raise choices_error("kv_dtype", spec.kv_dtype, KV_DTYPE_BYTES)
    _check_moe(spec, where)
    _check_mla(spec, where)


def _check_moe(spec: ModelSpec, where: str) -> None:
    moe_fields = ("num_experts_per_tok", "moe_intermediate_size", "num_dense_layers")
    if not spec.num_experts:
        extra = [f for f in (*moe_fields, "shared_expert_intermediate_size") if getattr(spec, f)]
        if extra or spec.shared_expert_gate:
            raise ConfigError(f"{where}: {', '.join(extra) or 'shared_expert_gate'} set without num_experts")
        return
    if not 1 <= spec.num_experts_per_tok <= spec.num_experts:
        raise ConfigError(
            f"{where}: num_experts_per_tok={spec.num_experts_per_tok}; expected 1..{spec.num_experts}"
        )
    if spec.moe_intermediate_size < 1:
        raise ConfigError(f"{where}: moe_intermediate_size={spec.moe_intermediate_size}; expected ≥ 1")
    if spec.num_dense_layers >= spec.num_layers:
        raise ConfigError(
            f"{where}: num_dense_layers={spec.num_dense_layers}; expected < num_layers={spec.num_layers}"
        )
    if spec.shared_expert_gate and not spec.shared_expert_intermediate_size:
        raise ConfigError(f"{where}: shared_expert_gate without shared_expert_intermediate_size")


def _check_mla(spec: ModelSpec, where: str) -> None:
    mla_fields = ("q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
    if not spec.kv_lora_rank:
        extra = [f for f in mla_fields if getattr(spec, f)]
        if extra:
            raise ConfigError(f"{where}: {', '.join(extra)} set without kv_lora_rank (MLA)")
        return
    missing = [f for f in mla_fields[1:] if getattr(spec, f) < 1]
    if missing:
        raise ConfigError(f"{where}: MLA (kv_lora_rank={spec.kv_lora_rank}) needs {', '.join(missing)} ≥ 1")
    if spec.head_dim != spec.qk_nope_head_dim + spec.qk_rope_head_dim:
        raise ConfigError(
            f"{where}: head_dim={spec.head_dim}; MLA expects qk_nope_head_dim + qk_rope_head_dim = "
            f"{spec.qk_nope_head_dim + spec.qk_rope_head_dim}"
        )
    if spec.num_kv_heads != spec.num_heads:
        raise ConfigError(f"{where}: MLA expects num_key_value_heads = num_attention_heads={spec.num_heads}")

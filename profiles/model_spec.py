"""Model shapes: ``ModelSpec`` from a Hugging Face ``config.json`` or a catalog name.

Only the fields that set cost are kept. Derived values (parameters, weight bytes, KV bytes per
token, FLOPs per token) are properties, so a spec is one frozen record of the config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.validate import integer, load_json, mapping, number

#: Architectures the executor implements (all are pre-norm decoders with RMSNorm, RoPE, SwiGLU).
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

_REQUIRED = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a Llama/Qwen2/Mistral-family decoder.

    ``attention_bias`` is Qwen2's q/k/v bias; ``dtype`` is the config's ``torch_dtype`` and is the
    default serving dtype. ``rope_scaling`` is ``None`` (plain RoPE) or the llama3 parameters
    ``{rope_type, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}``;
    it changes positions' frequencies, not cost, and is left out of the hash.
    """

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    dtype: str = "bfloat16"
    rope_scaling: dict[str, Any] | None = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model {self.name!r}: model_type {self.model_type!r} is not supported; "
                f"expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for field in (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
        ):
            integer(f"model {self.name!r}: {field}", getattr(self, field), low=1, high=1 << 24)
        integer(f"model {self.name!r}: max_position_embeddings", self.max_position_embeddings, low=1)
        number(f"model {self.name!r}: rms_norm_eps", self.rms_norm_eps, low=0, high=1)
        number(f"model {self.name!r}: rope_theta", self.rope_theta, low=0, low_open=True)
        for flag in ("tie_word_embeddings", "attention_bias"):
            if not isinstance(getattr(self, flag), bool):
                value = getattr(self, flag)
                raise ConfigError(f"model {self.name!r}: {flag}={value!r}; expected true or false")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ConfigError(f"model {self.name!r}: rope_scaling={self.rope_scaling!r}; expected a mapping")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model {self.name!r}: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if not isinstance(self.dtype, str) or self.dtype not in DTYPE_BYTES:
            raise choices_error("dtype", self.dtype, DTYPE_BYTES)

    # --- parameter counts -------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        """Weights of one decoder layer (attention + SwiGLU MLP + two RMSNorms)."""
        h = self.hidden_size
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        mlp = 3 * h * self.intermediate_size
        return attn + mlp + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """All parameters; a tied LM head is counted once."""
        head = 0 if self.tie_word_embeddings else self.embedding_params
        return self.num_layers * self.params_per_layer + self.embedding_params + head + self.hidden_size

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a GEMM per token: layers + LM head (not the embedding lookup)."""
        return self.num_layers * self.params_per_layer + self.embedding_params

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def weight_bytes(self, dtype: str | None = None) -> int:
        return self.num_params * DTYPE_BYTES[dtype or self.dtype]

    def kv_bytes_per_token(self, dtype: str | None = None) -> int:
        """2 (K and V) × layers × kv_heads × head_dim × bytes per element (GQA aware)."""
        return 2 * self.num_layers * self.kv_size * DTYPE_BYTES[dtype or self.dtype]

    # --- FLOPs --------------------------------------------------------------------------------
    @property
    def flops_per_token(self) -> int:
        """Dense FLOPs of one token's forward pass, excluding attention over the context.

        2 FLOPs per multiply-accumulate over every GEMM weight (Kaplan et al. 2020, "Scaling Laws",
        C_forward ≈ 2N).
        """
        return 2 * self.matmul_params

    def attention_flops(self, new_tokens: int, context_tokens: int) -> int:
        """FLOPs of QK^T and PV for ``new_tokens`` queries attending to ``context_tokens`` keys each
        (causal prefill passes the average context). 2 GEMMs × 2 FLOPs/MAC × heads × head_dim."""
        return 4 * self.num_layers * self.num_heads * self.head_dim * new_tokens * context_tokens

    def to_dict(self) -> dict[str, Any]:
        """The fields written into ``profile.yaml`` under ``model``."""
        return {
            "name": self.name,
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "dtype": self.dtype,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict` (strict: unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model: unknown keys {unknown}; valid: {sorted(known)}")
        return cls(**data)


def catalog_names() -> list[str]:
    """Names of the shipped model configs (``profiles/catalog/*.json``)."""
    folder = resources.files("pdplan.profiles") / "catalog"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


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
}


def spec_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """Build a spec from a parsed HF ``config.json``; names the missing or bad field when there is one.

    Raises:
        ConfigError: a missing field, a field of the wrong type, a number outside its physical range.
    """
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"model {name!r}: config.json lacks {', '.join(missing)}")
    where = f"model {name!r}: config.json"
    ints = {
        key: integer(f"{where} {key}", config[key], low=1, high=limit)
        for key, limit in _INT_LIMITS.items()
        if config.get(key) is not None
    }
    num_heads = ints["num_attention_heads"]
    hidden = ints["hidden_size"]
    head_dim = ints.get("head_dim") or hidden // num_heads
    if head_dim < 1:
        raise ConfigError(
            f"{where}: hidden_size={hidden} / num_attention_heads={num_heads} gives head_dim 0; "
            "expected hidden_size ≥ num_attention_heads or a head_dim"
        )
    model_type = config["model_type"]
    if not isinstance(model_type, str):
        raise ConfigError(f"{where} model_type={model_type!r}; expected a string")
    # transformers ≥ 5 writes ``rope_parameters`` (theta included); older configs ``rope_scaling``.
    raw_rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = dict(mapping(f"{where} rope_scaling", raw_rope))
    theta = config.get("rope_theta") or rope.get("rope_theta") or 10000.0
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return ModelSpec(
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=ints["intermediate_size"],
        num_layers=ints["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=ints.get("num_key_value_heads") or num_heads,
        head_dim=head_dim,
        vocab_size=ints["vocab_size"],
        max_position_embeddings=ints.get("max_position_embeddings", 4096),
        rms_norm_eps=number(f"{where} rms_norm_eps", config.get("rms_norm_eps", 1e-5), low=0, high=1),
        rope_theta=number(f"{where} rope_theta", theta, low=0, low_open=True),
        tie_word_embeddings=_flag(f"{where} tie_word_embeddings", config.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v bias; Llama and Mistral declare it (default off).
        attention_bias=_flag(f"{where} attention_bias", config.get("attention_bias", model_type == "qwen2")),
        dtype=str(dtype),
        rope_scaling=_rope_scaling(rope, name),
    )


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}={value!r}; expected true or false")
    return value


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _rope_scaling(rope: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The llama3 RoPE scaling parameters of a config, ``None`` for plain RoPE."""
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise ConfigError(
            f"model {name!r}: rope_scaling type {rope_type!r} is not supported; expected llama3 or none"
        )
    missing = [k for k in _LLAMA3_KEYS if k not in rope]
    if missing:
        raise ConfigError(f"model {name!r}: llama3 rope_scaling lacks {', '.join(missing)}")
    where = f"model {name!r}: rope_scaling"
    values = {k: number(f"{where} {k}", rope[k], low=0, low_open=True) for k in _LLAMA3_KEYS}
    return {"rope_type": "llama3", **values}


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


def load_model_spec(source: str | Path) -> ModelSpec:
    """A ``ModelSpec`` from a catalog name (e.g. ``llama-3.1-8b``), a config.json, or an HF directory.

    Raises:
        ConfigError: unknown name (the valid ones are listed), unreadable file, missing fields.
    """
    text = str(source)
    config = read_config(text)
    if text in catalog_names():
        name = text
    else:
        path = Path(text)
        name = path.name if path.is_dir() else path.parent.name or path.stem
    return spec_from_config(config, name)


def shard_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The per-GPU shape of ``spec`` under tensor parallelism ``tp`` (Megatron-style sharding).

    Attention heads and the MLP's intermediate dimension are split across ranks; KV heads are split
    too, or replicated one per rank when ``tp`` exceeds their count (as vLLM/SGLang do). The
    embedding and LM head are vocab-parallel. ``name`` gains a ``@tpN`` suffix.

    Raises:
        ConfigError: ``tp`` < 1, or it does not divide the attention heads, the intermediate size, or
            (when smaller than the KV head count) the KV heads; or KV heads do not divide ``tp``.
    """
    if tp < 1:
        raise ConfigError(f"--tp {tp}: expected a positive integer")
    if tp == 1:
        return spec
    problems = []
    if spec.num_heads % tp:
        problems.append(f"num_attention_heads={spec.num_heads}")
    if spec.intermediate_size % tp:
        problems.append(f"intermediate_size={spec.intermediate_size}")
    if tp <= spec.num_kv_heads and spec.num_kv_heads % tp:
        problems.append(f"num_key_value_heads={spec.num_kv_heads}")
    if tp > spec.num_kv_heads and tp % spec.num_kv_heads:
        problems.append(f"num_key_value_heads={spec.num_kv_heads} (must divide tp when tp is larger)")
    if problems:
        raise ConfigError(f"--tp {tp} does not divide {', '.join(problems)} of model {spec.name!r}")
    from dataclasses import replace

    return replace(
        spec,
        name=f"{spec.name}@tp{tp}",
        num_heads=spec.num_heads // tp,
        num_kv_heads=max(1, spec.num_kv_heads // tp),
        intermediate_size=spec.intermediate_size // tp,
        vocab_size=-(-spec.vocab_size // tp),
    )

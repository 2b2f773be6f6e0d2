"""Model shapes: ``ModelSpec``, one frozen record of the fields of a Hugging Face config that set cost.

Families: dense pre-norm decoders (``llama``, ``mistral``, ``qwen2``, ``qwen3`` with per-head q/k
RMSNorm, ``gemma``, ``phi3``), mixture-of-experts decoders (``mixtral``, ``qwen2_moe``,
``qwen3_moe``) and ``deepseek_v2``/``deepseek_v3`` (multi-head latent attention, shared experts,
leading dense layers). Parsing a
``config.json`` is :mod:`pdplan.profiles.hf_config`; this module holds the record and what follows
from it: parameters, *active* parameters per token, weight bytes under a weight dtype (bf16, fp8,
int4), KV bytes per token under a KV dtype (GQA and MLA aware), FLOPs, and TP sharding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error

#: Families whose shapes pdplan prices (the executor runs a subset: ``executor.EXECUTOR_MODEL_TYPES``).
SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "phi3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
)

#: Bytes per element of the tensor dtypes torch computes in (activations, measured profiles).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Bits per weight of a serving dtype: the tensor dtypes, fp8 (W8A8, e4m3 weights and activations
#: as SGLang's/vLLM's ``--quantization fp8``) and int4 (weight-only, GPTQ/AWQ style, bf16 compute).
#: Quantisation scales (one per 128×128 block in fp8, one per 128-group in int4) are left out:
#: under 0.1 % and 1.6 % of the weight bytes.
WEIGHT_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "fp8": 8, "int4": 4}
#: Bytes per element of a KV cache dtype (vLLM/SGLang ``--kv-cache-dtype fp8``: e4m3/e5m2).
KV_DTYPE_BYTES = {**DTYPE_BYTES, "fp8": 1}


def activation_dtype(dtype: str) -> str:
    """The dtype activations (and by default the KV cache) are held in under a weight dtype:
    the dtype itself for float types, bfloat16 for fp8 and int4 checkpoints (engines keep the
    residual stream and KV in 16 bits unless ``--kv-cache-dtype`` says otherwise)."""
    return dtype if dtype in DTYPE_BYTES else "bfloat16"


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one decoder-only model.

    Dense fields: ``attention_bias`` is Qwen2's q/k/v bias, ``qk_norm`` Qwen3's per-head RMSNorm of
    q and k. ``dtype`` is the serving weight dtype (``WEIGHT_BITS``; the config's ``torch_dtype``,
    or fp8 for a checkpoint whose ``quantization_config`` says so). ``kv_dtype`` is the KV cache
    dtype (``None``: the activation dtype). ``rope_scaling`` is ``None`` or the RoPE scaling
    parameters (llama3, yarn); it changes positions, not cost, and is left out of the hash.

    Mixture of experts (``num_experts`` > 0): every layer but the first ``num_dense_layers`` has a
    router (hidden × experts), ``num_experts`` SwiGLU experts of ``moe_intermediate_size`` of which
    ``num_experts_per_tok`` run per token, and shared experts of ``shared_expert_intermediate_size``
    in all (DeepSeek: ``n_shared_experts × moe_intermediate_size``; Qwen2-MoE: one, with a sigmoid
    gate, ``shared_expert_gate``). Dense layers use ``intermediate_size``. ``norm_topk_prob``
    renormalises the top-k routing weights (numerics only: the executor follows it).

    Multi-head latent attention (``kv_lora_rank`` > 0, DeepSeek-V2/V3): queries through an optional
    low-rank ``q_lora_rank``; keys and values from a cached latent of ``kv_lora_rank`` plus one
    shared RoPE key of ``qk_rope_head_dim``; per head ``qk_nope_head_dim + qk_rope_head_dim`` for
    q·k and ``v_head_dim`` for values. ``head_dim`` is then the q·k head size.
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
    qk_norm: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    num_dense_layers: int = 0
    norm_topk_prob: bool = False
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    kv_dtype: str | None = None

    def __post_init__(self) -> None:
        from pdplan.profiles.model_checks import check_spec

        check_spec(self)

    # --- structure ----------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def q_size(self) -> int:
        """Width of the queries of all heads (MLA: the q·k head size per head)."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the keys (= the values) of all KV heads (standard attention)."""
        return self.num_kv_heads * self.head_dim

    @property
    def v_size(self) -> int:
        """Width of the attention output of all heads (MLA: ``v_head_dim`` per head)."""
        return self.num_heads * (self.v_head_dim if self.is_mla else self.head_dim)

    # --- parameter counts -------------------------------------------------------------------
    @property
    def attention_params(self) -> int:
        """Weights of one layer's attention block (projections, biases, q/k or latent norms)."""
        h = self.hidden_size
        if self.is_mla:
            heads, qk = self.num_heads, self.head_dim
            if self.q_lora_rank:  # q_a_proj, q_a_layernorm, q_b_proj
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * heads * qk
            else:
                q = h * heads * qk
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank  # + its norm
            kv_b = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + self.v_size * h
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        if self.qk_norm:
            attn += 2 * self.head_dim
        return attn

    @property
    def expert_params(self) -> int:
        """Weights of one routed SwiGLU expert (gate, up, down)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    def moe_params(self, *, active: bool) -> int:
        """Weights of one MoE block: the router, the routed experts (all, or the top-k one token
        runs when ``active``), the shared experts and their gate."""
        h = self.hidden_size
        routed = self.num_experts_per_tok if active else self.num_experts
        shared = 3 * h * self.shared_expert_intermediate_size + (h if self.shared_expert_gate else 0)
        return self.num_experts * h + routed * self.expert_params + shared

    def layer_params(self, *, active: bool = False) -> int:
        """Weights of all decoder layers (attention + dense MLP or MoE + two RMSNorms)."""
        h = self.hidden_size
        dense_mlp = 3 * h * self.intermediate_size
        base = self.attention_params + 2 * h
        num_dense = self.num_layers - self.num_moe_layers
        moe = self.num_moe_layers * (base + self.moe_params(active=active)) if self.is_moe else 0
        return num_dense * (base + dense_mlp) + moe

    @property
    def params_per_layer(self) -> int:
        """Weights of one decoder layer (the mean over layers when dense and MoE layers mix)."""
        return self.layer_params() // self.num_layers

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def _with_embeddings(self, layers: int) -> int:
        head = 0 if self.tie_word_embeddings else self.embedding_params
        return layers + self.embedding_params + head + self.hidden_size

    @property
    def num_params(self) -> int:
        """All parameters; a tied LM head is counted once. Excludes DeepSeek's multi-token
        prediction layer (``num_nextn_predict_layers``), as the release's "671B" does."""
        return self._with_embeddings(self.layer_params())

    @property
    def num_active_params(self) -> int:
        """Parameters one token runs through (top-k routed experts only), embeddings included, as
        the releases count "active" (Mixtral 12.9B, Qwen3-30B-A3B 3.3B, DeepSeek-V3 37B)."""
        return self._with_embeddings(self.layer_params(active=True))

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a GEMM per token: layers + LM head (not the embedding lookup)."""
        return self.layer_params() + self.embedding_params

    @property
    def active_matmul_params(self) -> int:
        """``matmul_params`` counting only the routed experts a token runs."""
        return self.layer_params(active=True) + self.embedding_params

    @property
    def dtype_bytes(self) -> int:
        """Bytes per activation element under the serving dtype."""
        return DTYPE_BYTES[activation_dtype(self.dtype)]

    def weight_bytes(self, dtype: str | None = None) -> int:
        """Bytes of all weights stored in ``dtype`` (``WEIGHT_BITS``; default the spec's)."""
        chosen = dtype or self.dtype
        if chosen not in WEIGHT_BITS:
            raise choices_error("dtype", chosen, WEIGHT_BITS)
        return self.num_params * WEIGHT_BITS[chosen] // 8

    # --- KV cache -------------------------------------------------------------------------
    @property
    def kv_elements_per_token(self) -> int:
        """KV elements one token keeps per layer: K and V of every KV head (GQA), or MLA's latent
        plus its shared RoPE key (what SGLang/vLLM cache for DeepSeek: 512 + 64 = 576)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_size

    def kv_element_bytes(self, dtype: str | None = None) -> int:
        """Bytes per KV element: the spec's ``kv_dtype`` when set, else the activation dtype of
        ``dtype`` (default the spec's weight dtype)."""
        if self.kv_dtype is not None:
            return KV_DTYPE_BYTES[self.kv_dtype]
        chosen = dtype or self.dtype
        if chosen not in WEIGHT_BITS:
            raise choices_error("dtype", chosen, WEIGHT_BITS)
        return DTYPE_BYTES[activation_dtype(chosen)]

    def kv_bytes_per_token(self, dtype: str | None = None) -> int:
        """Layers × KV elements per token × bytes per element: 2 × layers × kv_heads × head_dim ×
        bytes for standard attention (GQA aware), layers × (kv_lora_rank + qk_rope_head_dim) ×
        bytes for MLA."""
        return self.num_layers * self.kv_elements_per_token * self.kv_element_bytes(dtype)

    def kv_bytes_per_token_per_rank(self, tp: int, dtype: str | None = None, attention_dp: int = 1) -> int:
        """KV bytes per token of the instance that *one* GPU of a ``tp`` group holds. KV heads are
        split across ranks, or replicated one per rank when ``tp`` exceeds them (vLLM, SGLang);
        MLA's latent has no heads to split, so every rank holds all of it. With data-parallel
        attention (``attention_dp`` groups of tp/attention_dp GPUs, each serving its own share of
        the sequences) a GPU holds 1/attention_dp of the tokens (rounded up)."""
        full = self.kv_bytes_per_token(dtype)
        attention_tp = max(1, tp // attention_dp)
        if self.is_mla:
            per_rank = full
        else:
            per_rank = full * max(1, self.num_kv_heads // attention_tp) // self.num_kv_heads
        return -(-per_rank // attention_dp)

    # --- FLOPs --------------------------------------------------------------------------------
    @property
    def flops_per_token(self) -> int:
        """Dense FLOPs of one token's forward pass, excluding attention over the context.

        2 FLOPs per multiply-accumulate over every GEMM weight the token runs through (Kaplan et
        al. 2020, "Scaling Laws", C_forward ≈ 2N), with only the top-k routed experts of a MoE.
        """
        return 2 * self.active_matmul_params

    def attention_flops(self, new_tokens: int, context_tokens: int) -> int:
        """FLOPs of QK^T and PV for ``new_tokens`` queries attending to ``context_tokens`` keys each
        (causal prefill passes the average context): 2 FLOPs/MAC × heads × (q·k head size + value
        head size) per pair, i.e. 4 × heads × head_dim without MLA."""
        per_pair = 2 * self.num_heads * (self.head_dim + self.v_size // self.num_heads)
        return self.num_layers * per_pair * new_tokens * context_tokens

    def to_dict(self) -> dict[str, Any]:
        """The fields written into ``profile.yaml`` under ``model`` (the fields that only MoE, MLA,
        Qwen3 or a quantised KV use are written when set, so dense specs read as before)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OPTIONAL}
        out["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        for key, default in _OPTIONAL.items():
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict` (strict: unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model: unknown keys {unknown}; valid: {sorted(known)}")
        return cls(**data)


#: Structure counts that are 0 for a dense, non-MLA model.
COUNT_FIELDS = (
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "num_dense_layers",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
)
#: Fields written to ``profile.yaml`` only when they differ from these defaults.
_OPTIONAL: dict[str, Any] = {
    "qk_norm": False,
    "shared_expert_gate": False,
    "norm_topk_prob": False,
    "kv_dtype": None,
    **dict.fromkeys(COUNT_FIELDS, 0),
}


def catalog_names() -> list[str]:
    """Names of the shipped model configs (``profiles/catalog/*.json``)."""
    folder = resources.files("pdplan.profiles") / "catalog"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def read_config(source: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a catalog name, a ``config.json`` path, or a model directory."""
    from pdplan.profiles.hf_config import read_config as read

    return read(source)


def spec_from_config(config: dict[str, Any], name: str) -> ModelSpec:
    """A spec from a parsed HF ``config.json`` (:func:`pdplan.profiles.hf_config.spec_from_config`)."""
    from pdplan.profiles.hf_config import spec_from_config as parse

    return parse(config, name)


def load_model_spec(
    source: str | Path, *, dtype: str | None = None, kv_dtype: str | None = None
) -> ModelSpec:
    """A ``ModelSpec`` from a catalog name (e.g. ``llama-3.1-8b``), a config.json, or an HF directory,
    optionally served with another weight ``dtype`` or ``kv_dtype`` (``--dtype``, ``--kv-dtype``).

    Raises:
        ConfigError: unknown name (the valid ones are listed), unreadable file, missing fields, a
            family or field pdplan cannot price (named), an unknown dtype.
    """
    text = str(source)
    config = read_config(text)
    if text in catalog_names():
        name = text
    else:
        path = Path(text)
        name = path.name if path.is_dir() else path.parent.name or path.stem
    spec = spec_from_config(config, name)
    return with_dtypes(spec, dtype=dtype, kv_dtype=kv_dtype)


def with_dtypes(spec: ModelSpec, *, dtype: str | None = None, kv_dtype: str | None = None) -> ModelSpec:
    """``spec`` served with weight ``dtype`` and/or KV ``kv_dtype`` (``None`` keeps the spec's).

    Raises:
        ConfigError: a dtype not in ``WEIGHT_BITS`` / ``KV_DTYPE_BYTES`` (named with the choices).
    """
    if dtype is not None and dtype not in WEIGHT_BITS:
        raise choices_error("--dtype", dtype, WEIGHT_BITS)
    if kv_dtype is not None and kv_dtype not in KV_DTYPE_BYTES:
        raise choices_error("--kv-dtype", kv_dtype, KV_DTYPE_BYTES)
    changes: dict[str, Any] = {}
    if dtype is not None:
        changes["dtype"] = dtype
    if kv_dtype is not None:
        changes["kv_dtype"] = kv_dtype
    return replace(spec, **changes) if changes else spec


def shard_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The per-GPU shape of ``spec`` under tensor parallelism ``tp`` (Megatron-style sharding).

    Attention heads, the dense MLP's intermediate dimension and every expert's intermediate
    dimension are split across ranks (vLLM's and SGLang's default for MoE without expert
    parallelism); KV heads are split too, or replicated one per rank when ``tp`` exceeds their
    count; MLA's latent is replicated. The embedding and LM head are vocab-parallel. ``name``
    gains a ``@tpN`` suffix.

    Raises:
        ConfigError: ``tp`` < 1, or it does not divide the attention heads, an intermediate size
            that is used, or (when smaller than the KV head count) the KV heads; or KV heads do
            not divide ``tp``.
    """
    if tp < 1:
        raise ConfigError(f"--tp {tp}: expected a positive integer")
    if tp == 1:
        return spec
    problems = []
    if spec.num_heads % tp:
        problems.append(f"num_attention_heads={spec.num_heads}")
    has_dense_mlp = not spec.is_moe or spec.num_dense_layers > 0
    if has_dense_mlp and spec.intermediate_size % tp:
        problems.append(f"intermediate_size={spec.intermediate_size}")
    for field in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if getattr(spec, field) % tp:
            problems.append(f"{field}={getattr(spec, field)}")
    if not spec.is_mla:
        if tp <= spec.num_kv_heads and spec.num_kv_heads % tp:
            problems.append(f"num_key_value_heads={spec.num_kv_heads}")
        if tp > spec.num_kv_heads and tp % spec.num_kv_heads:
            problems.append(f"num_key_value_heads={spec.num_kv_heads} (must divide tp when tp is larger)")
    if problems:
        raise ConfigError(f"--tp {tp} does not divide {', '.join(problems)} of model {spec.name!r}")
    return replace(
        spec,
        name=f"{spec.name}@tp{tp}",
        num_heads=spec.num_heads // tp,
        num_kv_heads=max(1, spec.num_kv_heads // tp),
        intermediate_size=max(1, spec.intermediate_size // tp),
        moe_intermediate_size=spec.moe_intermediate_size // tp,
        shared_expert_intermediate_size=spec.shared_expert_intermediate_size // tp,
        vocab_size=-(-spec.vocab_size // tp),
    )

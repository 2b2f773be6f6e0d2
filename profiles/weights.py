"""Executor weights: loaded from a Hugging Face safetensors checkpoint, or seeded random.

The executor keeps q/k/v fused into one ``[q + 2·kv, hidden]`` matrix and gate/up into one
``[2·intermediate, hidden]`` matrix, so each dense decoder layer runs four GEMMs. Qwen3 adds
per-head q/k RMSNorm weights; a MoE layer (Qwen3-MoE, Qwen2-MoE, Mixtral) holds a router
``[experts, hidden]``, every expert's fused gate/up ``[experts, 2·moe_intermediate, hidden]`` and
down ``[experts, hidden, moe_intermediate]``, and optionally a shared expert with its gate. A TP
shard holds rank 0's slice of every split matrix (Megatron-style: heads and the MLP's intermediate
dimension by rows or columns, embedding and LM head by vocab rows); its cost equals every other
rank's.

Layout: matrices have the logical shape ``[out, in]`` of ``nn.Linear`` everywhere. On a GPU they
are stored row-major (cuBLAS's preferred "TN" GEMM). On the CPU they are stored column-major (each
a transposed view of a contiguous ``[in, out]`` tensor), so ``F.linear`` runs MKL's
non-transposed GEMM, which is 20–40 % faster for the few-row products of decode steps and equal
for prefill-sized ones (measured on a 2-core EPYC, tiny-llama shapes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.model_spec import ModelSpec

log = logging.getLogger(__name__)


def gemm_layout(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (logical ``[out, in]``) in the storage order its device's GEMM prefers."""
    if matrix.device.type == "cpu":
        return matrix.t().contiguous().t()
    return matrix.contiguous()


@dataclass
class MoeWeights:
    """One MoE block (``E`` experts of intermediate ``m``; ``s`` the shared expert's)."""

    router: torch.Tensor  # [E, h]
    gate_up: torch.Tensor  # [E, 2·m, h]: gate rows first, then up rows, per expert
    down: torch.Tensor  # [E, h, m]
    shared_gate_up: torch.Tensor | None = None  # [2·s, h]
    shared_down: torch.Tensor | None = None  # [h, s]
    shared_gate: torch.Tensor | None = None  # [1, h] (Qwen2-MoE's sigmoid gate)

    def tensors(self) -> list[torch.Tensor]:
        extra = [self.shared_gate_up, self.shared_down, self.shared_gate]
        return [self.router, self.gate_up, self.down, *(t for t in extra if t is not None)]


@dataclass
class LayerWeights:
    """One decoder layer (``h`` hidden, ``q``/``kv`` projection widths, ``i`` intermediate).
    A MoE layer has ``moe`` and no dense ``gate_up``/``down``."""

    input_norm: torch.Tensor  # [h]
    qkv: torch.Tensor  # [q + 2·kv, h]
    qkv_bias: torch.Tensor | None  # [q + 2·kv] (Qwen2) or None
    o: torch.Tensor  # [h, q]
    post_norm: torch.Tensor  # [h]
    gate_up: torch.Tensor | None  # [2·i, h]: gate rows first, then up rows
    down: torch.Tensor | None  # [h, i]
    q_norm: torch.Tensor | None = None  # [head_dim] (Qwen3)
    k_norm: torch.Tensor | None = None  # [head_dim]
    moe: MoeWeights | None = None

    def tensors(self) -> list[torch.Tensor]:
        maybe = [self.qkv_bias, self.gate_up, self.down, self.q_norm, self.k_norm]
        moe = self.moe.tensors() if self.moe is not None else []
        return [self.input_norm, self.qkv, self.o, self.post_norm, *(t for t in maybe if t is not None), *moe]


@dataclass
class ModelWeights:
    """Every weight of a (possibly sharded) model; ``lm_head is embed`` when tied."""

    embed: torch.Tensor  # [vocab (shard), h]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [h]
    lm_head: torch.Tensor  # [vocab (shard), h]

    def nbytes(self) -> int:
        seen: dict[int, int] = {}
        tensors = [self.embed, self.norm, self.lm_head]
        for layer in self.layers:
            tensors += layer.tensors()
        for t in tensors:
            seen[id(t)] = t.numel() * t.element_size()
        return sum(seen.values())


def random_weights(shard: ModelSpec, *, dtype: torch.dtype, device: torch.device, seed: int) -> ModelWeights:
    """Seeded random weights with ``shard``'s shapes, drawn directly on ``device`` in ``dtype``.

    Matrices are N(0, 1/fan_in) so activations stay O(1) through the layers (no overflow in half
    precision, no denormals on the CPU); norms are ones. Cost depends on shapes only.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def normal(*shape: int, fan_in: int, gemm: bool = True) -> torch.Tensor:
        # Drawn into contiguous storage (7× faster than into a strided view), then viewed
        # column-major on the CPU when used in GEMMs (see the module docstring).
        column_major = gemm and len(shape) == 2 and device.type == "cpu"
        out = torch.empty(shape[::-1] if column_major else shape, dtype=dtype, device=device)
        out.normal_(0.0, fan_in**-0.5, generator=gen)
        return out.t() if column_major else out

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype, device=device)

    h, q, kv, i = shard.hidden_size, shard.q_size, shard.kv_size, shard.intermediate_size

    def moe() -> MoeWeights:
        e, m, s = shard.num_experts, shard.moe_intermediate_size, shard.shared_expert_intermediate_size
        return MoeWeights(
            router=normal(e, h, fan_in=h),
            gate_up=normal(e, 2 * m, h, fan_in=h),
            down=normal(e, h, m, fan_in=m),
            shared_gate_up=normal(2 * s, h, fan_in=h) if s else None,
            shared_down=normal(h, s, fan_in=s) if s else None,
            shared_gate=normal(1, h, fan_in=h) if shard.shared_expert_gate else None,
        )

    layers = []
    for n in range(shard.num_layers):
        sparse = shard.is_moe and n >= shard.num_dense_layers
        layers.append(
            LayerWeights(
                input_norm=ones(h),
                qkv=normal(q + 2 * kv, h, fan_in=h),
                qkv_bias=normal(q + 2 * kv, fan_in=h) if shard.attention_bias else None,
                o=normal(h, q, fan_in=q),
                post_norm=ones(h),
                gate_up=None if sparse else normal(2 * i, h, fan_in=h),
                down=None if sparse else normal(h, i, fan_in=i),
                q_norm=ones(shard.head_dim) if shard.qk_norm else None,
                k_norm=ones(shard.head_dim) if shard.qk_norm else None,
                moe=moe() if sparse else None,
            )
        )
    # An untied embedding is only gathered from: keep it row-major. A tied one is also the LM head,
    # the largest GEMM of a decode step, so it takes the GEMM layout.
    embed = normal(shard.vocab_size, h, fan_in=1, gemm=shard.tie_word_embeddings)
    lm_head = embed if shard.tie_word_embeddings else normal(shard.vocab_size, h, fan_in=h)
    return ModelWeights(embed=embed, layers=layers, norm=ones(h), lm_head=lm_head)


class _Checkpoint:
    """Name → tensor access over one or several safetensors files of an HF model directory."""

    def __init__(self, folder: Path, device: torch.device) -> None:
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
            weight_map = None
        else:
            raise ConfigError(
                f"weights {str(folder)!r}: no model.safetensors or model.safetensors.index.json; "
                "expected a Hugging Face model directory saved with safetensors"
            )
        where = "cpu" if device.type == "cpu" else str(device)
        self.folder = folder
        self.handles = {f: safe_open(str(folder / f), framework="pt", device=where) for f in files}
        if weight_map is None:
            weight_map = {name: files[0] for name in self.handles[files[0]].keys()}  # noqa: SIM118
        self.weight_map: dict[str, str] = weight_map

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.weight_map:
            raise ConfigError(f"weights {str(self.folder)!r}: tensor {name!r} is missing")
        tensor = self.handles[self.weight_map[name]].get_tensor(name)
        if tuple(tensor.shape) != shape:
            raise ConfigError(
                f"weights {str(self.folder)!r}: tensor {name!r} has shape {tuple(tensor.shape)}; "
                f"expected {shape} from the model config"
            )
        return tensor


def load_weights(
    folder: Path, spec: ModelSpec, shard: ModelSpec, *, dtype: torch.dtype, device: torch.device
) -> ModelWeights:
    """Read an HF Llama/Qwen2/Qwen3/Mistral (or Qwen-MoE/Mixtral) checkpoint (full shapes
    ``spec``) into rank 0's ``shard``.

    Raises:
        ConfigError: no safetensors files, a missing tensor, or a shape that disagrees with the config.
    """
    ckpt = _Checkpoint(Path(folder), device)
    h, d = spec.hidden_size, spec.head_dim
    q_rows, kv_rows, i_rows = shard.q_size, shard.kv_size, shard.intermediate_size

    def get(name: str, shape: tuple[int, ...], rows: int | None = None, cols: int | None = None):
        t = ckpt.get(name, shape)
        if rows is not None:
            t = t[:rows]
        if cols is not None:
            t = t[:, :cols]
        return t.to(device=device, dtype=dtype).contiguous()

    layers = []
    for n in range(spec.num_layers):
        p = f"model.layers.{n}."
        att = p + "self_attn."
        q_shape, kv_shape = (spec.q_size, h), (spec.kv_size, h)
        qkv = torch.cat(
            [
                get(att + "q_proj.weight", q_shape, rows=q_rows),
                get(att + "k_proj.weight", kv_shape, rows=kv_rows),
                get(att + "v_proj.weight", kv_shape, rows=kv_rows),
            ]
        )
        bias = None
        if shard.attention_bias:
            bias = torch.cat(
                [
                    get(att + "q_proj.bias", (spec.q_size,), rows=q_rows),
                    get(att + "k_proj.bias", (spec.kv_size,), rows=kv_rows),
                    get(att + "v_proj.bias", (spec.kv_size,), rows=kv_rows),
                ]
            )
        sparse = spec.is_moe and n >= spec.num_dense_layers
        gate_up = down = None
        if not sparse:
            mlp_shape = (spec.intermediate_size, h)
            gate_up = gemm_layout(
                torch.cat(
                    [
                        get(p + "mlp.gate_proj.weight", mlp_shape, rows=i_rows),
                        get(p + "mlp.up_proj.weight", mlp_shape, rows=i_rows),
                    ]
                )
            )
            down = gemm_layout(get(p + "mlp.down_proj.weight", (h, spec.intermediate_size), cols=i_rows))
        layers.append(
            LayerWeights(
                input_norm=get(p + "input_layernorm.weight", (h,)),
                qkv=gemm_layout(qkv),
                qkv_bias=bias,
                o=gemm_layout(get(att + "o_proj.weight", (h, spec.q_size), cols=q_rows)),
                post_norm=get(p + "post_attention_layernorm.weight", (h,)),
                gate_up=gate_up,
                down=down,
                q_norm=get(att + "q_norm.weight", (d,)) if spec.qk_norm else None,
                k_norm=get(att + "k_norm.weight", (d,)) if spec.qk_norm else None,
                moe=_load_moe(get, p, spec, shard) if sparse else None,
            )
        )
    assert d * shard.num_heads == q_rows, "shard's q rows are whole heads"
    vocab = (spec.vocab_size, h)
    embed = get("model.embed_tokens.weight", vocab, rows=shard.vocab_size)
    if spec.tie_word_embeddings or not ckpt.has("lm_head.weight"):
        if not spec.tie_word_embeddings:
            raise ConfigError(f"weights {str(folder)!r}: tensor 'lm_head.weight' is missing")
        embed = lm_head = gemm_layout(embed)
    else:
        lm_head = gemm_layout(get("lm_head.weight", vocab, rows=shard.vocab_size))
    log.info("loaded %d layers from %s", spec.num_layers, folder)
    norm = get("model.norm.weight", (h,))
    return ModelWeights(embed=embed, layers=layers, norm=norm, lm_head=lm_head)


#: Checkpoint names of one expert's (gate, up, down) and of the router, by family.
_EXPERT_NAMES = {
    "mixtral": (
        "block_sparse_moe.experts.{e}.w1",
        "block_sparse_moe.experts.{e}.w3",
        "block_sparse_moe.experts.{e}.w2",
    ),
    "qwen": ("mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj", "mlp.experts.{e}.down_proj"),
}


def _load_moe(get: Callable[..., torch.Tensor], prefix: str, spec: ModelSpec, shard: ModelSpec) -> MoeWeights:
    """One MoE block of an HF checkpoint (per-expert tensors, as the hub and ``save_pretrained``
    store them), rank 0's slice of each expert's intermediate dimension."""
    h, m, rows = spec.hidden_size, spec.moe_intermediate_size, shard.moe_intermediate_size
    family = "mixtral" if spec.model_type == "mixtral" else "qwen"
    gate_name, up_name, down_name = (prefix + name + ".weight" for name in _EXPERT_NAMES[family])
    router = prefix + ("block_sparse_moe.gate.weight" if family == "mixtral" else "mlp.gate.weight")
    gate_up, down = [], []
    for e in range(spec.num_experts):
        gate = get(gate_name.format(e=e), (m, h), rows=rows)
        up = get(up_name.format(e=e), (m, h), rows=rows)
        gate_up.append(torch.cat([gate, up]))
        down.append(get(down_name.format(e=e), (h, m), cols=rows))
    out = MoeWeights(
        router=get(router, (spec.num_experts, h)), gate_up=torch.stack(gate_up), down=torch.stack(down)
    )
    s, s_rows = spec.shared_expert_intermediate_size, shard.shared_expert_intermediate_size
    if s:
        shared = prefix + "mlp.shared_expert."
        out.shared_gate_up = torch.cat(
            [
                get(shared + "gate_proj.weight", (s, h), rows=s_rows),
                get(shared + "up_proj.weight", (s, h), rows=s_rows),
            ]
        )
        out.shared_down = get(shared + "down_proj.weight", (h, s), cols=s_rows)
    if spec.shared_expert_gate:
        out.shared_gate = get(prefix + "mlp.shared_expert_gate.weight", (1, h))
    return out

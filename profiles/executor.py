"""``Executor``: a compact forward pass of the Llama/Qwen2/Qwen3/Mistral family and of the
Qwen2-MoE/Qwen3-MoE/Mixtral mixtures of experts, with per-request KV caches.

Pre-norm decoder layers: RMSNorm → fused q/k/v projection (+ Qwen2 bias; + Qwen3's per-head q/k
RMSNorm) → RoPE (plain or llama3 scaled) → grouped-query attention
(``torch.nn.functional.scaled_dot_product_attention``) → output projection → residual → RMSNorm
→ SwiGLU MLP (fused gate/up) or MoE block → residual; final RMSNorm and a tied or untied LM head.
A MoE block routes each token to its top-k experts (softmax over the router's logits in float32,
top-k, optionally renormalised, as transformers does) and runs only the experts the tokens chose,
one pair of GEMMs per expert touched, so the measured cost grows with the experts a batch touches
as served MoE costs do; a shared expert (Qwen2-MoE, with its sigmoid gate) runs on every token.
The arithmetic mirrors ``transformers``' reference models so that logits agree
(``tests/profiles/test_executor.py`` checks it).

Batching: a prefill packs every prompt's tokens into one ``[total_tokens, hidden]`` matrix for the
GEMMs (no padding) and runs causal attention per sequence; a decode step runs the GEMMs over one token
per sequence and attention per sequence against its own cache (``kv_cache.py``: contiguous, no copy
to gather a batch). The profiler measures this executor, so profiles describe the engine that the
local runtime serves with. Known limit: on a GPU the per-sequence attention launches a few kernels
per sequence and layer, so decode batches of hundreds are launch-bound; a varlen (paged) attention
kernel is what would lift that.

API in short (shapes for the model's shard; ``T`` tokens, ``n`` sequences)::

    ex = Executor(spec, device="cpu", dtype=None, seed=0, weights=None, tp=1)
    logits, caches = ex.prefill([[ids...], ...], reserve_tokens=0)   # [n, vocab], n × KVCache
    logits = ex.decode([next_id, ...], caches)                        # [n, vocab]; lengths += 1
    k, v = caches[0].to_tensors()            # [layers, kv_heads, length, head_dim], contiguous
    cache = KVCache.from_tensors(k, v, reserve_tokens=64)

A TP shard (``tp > 1``) is rank 0's slice of the model, run on one device without communication: it
has the per-GPU cost of tensor parallelism minus the all-reduces, which the profiler adds from a
link model. Its logits cover rank 0's vocab slice only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.kv_cache import KVCache
from pdplan.profiles.model_spec import ModelSpec, shard_spec
from pdplan.profiles.timing import OpTimer
from pdplan.profiles.weights import LayerWeights, ModelWeights, MoeWeights, load_weights, random_weights

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Families the executor runs (the analytic model prices more: ``model_spec.SUPPORTED_MODEL_TYPES``).
EXECUTOR_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral")
_NO_TIMING = contextlib.nullcontext()
CPU_ROW_BLOCK_TOKENS = 1024

# attend(layer, q [T, H, d], k [T, kvh, d], v [T, kvh, d]) -> attention output [T, H·d]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def parse_device(device: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``, checked against this machine.

    Raises:
        ConfigError: an unknown device string, or CUDA requested where it is not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        dev = torch.device("cuda", index)
    return dev


def default_dtype(device: torch.device) -> str:
    """float32 on the CPU (fast and exact there), bfloat16 on a GPU (what serving engines run)."""
    return "float32" if device.type == "cpu" else "bfloat16"


def rope_inv_freq(spec: ModelSpec) -> torch.Tensor:
    """RoPE inverse frequencies ``[head_dim / 2]`` (float32), with llama3 scaling when configured.

    Plain RoPE: θ_i = base^(−2i/d) (Su et al. 2021, "RoFormer"). llama3: wavelengths longer than
    ``original_max / low_freq_factor`` are divided by ``factor``, shorter than
    ``original_max / high_freq_factor`` kept, and the band between interpolated smoothly (Meta's
    Llama 3.1 reference code; transformers' ``_compute_llama3_parameters``).
    """
    dim = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = spec.rope_scaling
    if not scaling:
        return inv_freq
    factor, old_len = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def check_executable(spec: ModelSpec) -> None:
    """Raise ``ConfigError`` naming what the executor cannot run in ``spec`` (the analytic model
    can still price it: ``pdplan profile --analytic``)."""
    hint = "; price it with pdplan profile --analytic instead"
    if spec.model_type not in EXECUTOR_MODEL_TYPES:
        raise ConfigError(
            f"model {spec.name!r}: the executor runs {', '.join(EXECUTOR_MODEL_TYPES)}, "
            f"not {spec.model_type!r}{hint}"
        )
    rope = (spec.rope_scaling or {}).get("rope_type", "llama3")
    if rope != "llama3":
        raise ConfigError(f"model {spec.name!r}: the executor runs plain or llama3 RoPE, not {rope!r}{hint}")
    if spec.is_moe and spec.num_dense_layers:
        raise ConfigError(
            f"model {spec.name!r}: {spec.num_dense_layers} dense layers among the MoE layers "
            f"(mlp_only_layers / decoder_sparse_step) are not run by the executor{hint}"
        )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Executor:
    """A model on one device: ``prefill`` prompts into new caches, ``decode`` one token per cache.

    Args:
        spec: the full model's shape (``load_model_spec``).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``; default float32 on CPU, bfloat16 on CUDA.
        seed: seeds the random weights (ignored when ``weights`` is given).
        weights: an HF model directory with safetensors (single file or sharded index); ``None`` for
            seeded random weights (same cost: cost depends on shapes, not values).
        tp: build rank 0's tensor-parallel shard (``shard_spec(spec, tp)``) instead of the full model.

    Raises:
        ConfigError: bad device, dtype or tp, unreadable or mismatching weights.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        seed: int = 0,
        weights: Path | None = None,
        tp: int = 1,
    ) -> None:
        self.device = parse_device(device)
        self.dtype_name = dtype or default_dtype(self.device)
        if self.dtype_name not in TORCH_DTYPES:
            raise ConfigError(f"dtype {self.dtype_name!r}: expected one of {', '.join(TORCH_DTYPES)}")
        self.dtype = TORCH_DTYPES[self.dtype_name]
        check_executable(spec)
        self.full_spec = spec
        self.tp = tp
        self.spec = shard_spec(spec, tp)  # the shapes this executor runs
        if weights is not None:
            self.weights: ModelWeights = load_weights(
                Path(weights), spec, self.spec, dtype=self.dtype, device=self.device
            )
        else:
            self.weights = random_weights(self.spec, dtype=self.dtype, device=self.device, seed=seed)
        self.inv_freq = rope_inv_freq(spec).to(self.device)
        #: When set, time is attributed to op categories (``gemm``/``attention``/``other``).
        self.op_timer: OpTimer | None = None
        #: Row block of the token-wise work (``None``: all tokens at once). On the CPU, blocks of
        #: 1024 rows keep a long prefill's activations near cache size, so its cost per token stays
        #: that of a 1k-token prefill (8×256 tokens: 1450 ms vs 1600 ± 200 ms in one block, 2-core
        #: EPYC, tiny-llama, one thread); GPUs want the biggest GEMMs.
        self.row_block_tokens: int | None = CPU_ROW_BLOCK_TOKENS if self.device.type == "cpu" else None

    # --- public API --------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Columns of the logits this executor returns (the shard's vocab slice when ``tp > 1``)."""
        return self.spec.vocab_size

    def new_cache(self, capacity_tokens: int) -> KVCache:
        """An empty cache of this model's shape, dtype and device."""
        s = self.spec
        return KVCache.allocate(
            s.num_layers, s.num_kv_heads, s.head_dim, capacity_tokens, dtype=self.dtype, device=self.device
        )

    @torch.no_grad()
    def filled_caches(
        self, batch_size: int, context_len: int, *, generator: torch.Generator
    ) -> list[KVCache]:
        """``batch_size`` caches holding ``context_len`` random positions each, in separate storage
        (as in serving), with room for one more token — inputs for timing a decode step without
        prefilling. The reserved tail is zeroed so no page is first touched inside a timed step."""
        s = self.spec
        shape = (s.num_layers, s.num_kv_heads, context_len, s.head_dim)
        source = torch.empty(shape, dtype=self.dtype, device=self.device).normal_(generator=generator)
        caches = []
        for _ in range(batch_size):
            cache = self.new_cache(context_len + 1)
            for part in (cache.k, cache.v):
                part[:, :, :context_len].copy_(source)
                part[:, :, context_len:].zero_()
            cache.length = context_len
            caches.append(cache)
        return caches

    @torch.no_grad()
    def prefill(
        self, prompts: Sequence[Sequence[int]], *, reserve_tokens: int = 0
    ) -> tuple[torch.Tensor, list[KVCache]]:
        """Run every prompt through the model in one batched forward.

        Args:
            prompts: token ids, one non-empty list per sequence (lengths may differ).
            reserve_tokens: extra positions to reserve in each new cache for decoding (it grows by
                doubling anyway when exceeded).

        Returns:
            ``(logits, caches)``: logits of each prompt's last token ``[len(prompts), vocab_size]``
            in the executor's dtype, and one new ``KVCache`` per prompt with ``length = len(prompt)``.

        Raises:
            ConfigError: an empty prompt, or a token id outside the model's vocabulary.
        """
        if not prompts or not all(prompts):
            raise ConfigError("prefill: expected one or more non-empty prompts")
        for prompt in prompts:
            self._check_tokens(prompt)
        lengths = [len(p) for p in prompts]
        with self._op("other"):
            ids = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=self.device)
            positions = torch.cat([torch.arange(n, device=self.device) for n in lengths])
            caches = [self.new_cache(n + max(reserve_tokens, 1)) for n in lengths]
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = torch.empty(q.shape[0], q.shape[1] * q.shape[2], dtype=q.dtype, device=q.device)
            for i, cache in enumerate(caches):
                lo, hi = starts[i], starts[i + 1]
                n = hi - lo
                kc, vc = cache.k[layer, :, :n], cache.v[layer, :, :n]
                kc.copy_(k[lo:hi].transpose(0, 1))
                vc.copy_(v[lo:hi].transpose(0, 1))
                att = F.scaled_dot_product_attention(
                    q[lo:hi].transpose(0, 1)[None], kc[None], vc[None], is_causal=True, enable_gqa=True
                )
                out[lo:hi] = att[0].transpose(0, 1).reshape(n, -1)
            return out

        hidden = self._forward(ids, positions, attend)
        with self._op("other"):
            last = hidden[torch.tensor([s - 1 for s in starts[1:]], device=self.device)]
        logits = self._logits(last)
        for cache, n in zip(caches, lengths, strict=True):
            cache.length = n
        return logits, caches

    @torch.no_grad()
    def decode(self, tokens: Sequence[int], caches: Sequence[KVCache]) -> torch.Tensor:
        """One decode step: token ``tokens[i]`` at position ``caches[i].length`` for every sequence.

        Appends each token's keys and values to its cache (``length`` grows by one; capacity
        doubles when full) and returns the next-token logits ``[len(tokens), vocab_size]``.

        Raises:
            ConfigError: a token id outside the model's vocabulary.
        """
        assert len(tokens) == len(caches) and tokens, "one token per cache, at least one"
        self._check_tokens(tokens)
        for cache in caches:
            self._check_cache(cache)
        lengths = [c.length for c in caches]
        with self._op("other"):
            for cache in caches:
                cache.reserve(cache.length + 1)
            ids = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
            positions = torch.tensor(lengths, dtype=torch.long, device=self.device)
        num_kv, d = self.spec.num_kv_heads, self.spec.head_dim
        group = self.spec.num_heads // num_kv

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys = [c.k[layer] for c in caches]  # [kvh, capacity, d] each
            values = [c.v[layer] for c in caches]
            # Append every sequence's new key and value with one multi-tensor copy each.
            torch._foreach_copy_([kc[:, p] for kc, p in zip(keys, lengths, strict=True)], k.unbind(0))
            torch._foreach_copy_([vc[:, p] for vc, p in zip(values, lengths, strict=True)], v.unbind(0))
            # One query per sequence: fold the query heads of each KV group into the query length,
            # so grouped-query attention needs no expanded K/V (query head j uses KV head j // g).
            queries = q.view(len(caches), 1, num_kv, group, d).unbind(0)
            outs = [
                F.scaled_dot_product_attention(qi, kc[None, :, : p + 1], vc[None, :, : p + 1])
                for qi, kc, vc, p in zip(queries, keys, values, lengths, strict=True)
            ]
            return torch.cat(outs).view(len(caches), -1)

        hidden = self._forward(ids, positions, attend)
        logits = self._logits(hidden)
        for cache in caches:
            cache.length += 1
        return logits

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        vocab = self.full_spec.vocab_size
        low, high = min(tokens), max(tokens)
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ConfigError(
                f"token id {bad} is outside the vocabulary of {self.full_spec.name!r}: [0, {vocab})"
            )

    def _check_cache(self, cache: KVCache) -> None:
        s = self.spec
        expected = (s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device)
        got = (cache.num_layers, cache.k.shape[1], cache.k.shape[3], cache.dtype, cache.device)
        assert got == expected, f"cache (layers, kv heads, head_dim, dtype, device) {got} != {expected}"

    # --- the forward pass -----------------------------------------------------------------------
    def _op(self, category: str) -> contextlib.AbstractContextManager[None]:
        return self.op_timer.section(category) if self.op_timer is not None else _NO_TIMING

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return F.embedding(ids, self.weights.embed)
        # Vocab-parallel embedding (Megatron): rank 0 owns ids [0, vocab shard); others read 0.
        in_shard = ids < self.spec.vocab_size
        rows = F.embedding(torch.where(in_shard, ids, 0), self.weights.embed)
        return rows * in_shard[:, None].to(rows.dtype)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, head_dim]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # RMSNorm in float32, scaled after casting back (Zhang & Sennrich 2019; HF LlamaRMSNorm).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.spec.rms_norm_eps)
        return weight * xf.to(x.dtype)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` after every layer. Token-wise work (norms, projections,
        RoPE, MLP) runs in row blocks of ``row_block_tokens`` so that a long prefill's activations
        stay cache-sized on the CPU; attention sees every token of the layer at once."""
        num_tokens = ids.shape[0]
        block = self.row_block_tokens or num_tokens
        with self._op("other"):
            x = self._embed(ids)
            cos, sin = self._rope(positions)
        spans = [(lo, min(lo + block, num_tokens)) for lo in range(0, num_tokens, block)]
        for n, w in enumerate(self.weights.layers):
            parts = [self._qkv(w, x[lo:hi], cos[lo:hi], sin[lo:hi]) for lo, hi in spans]
            if len(parts) == 1:
                q, k, v = parts[0]
            else:
                with self._op("other"):
                    q, k, v = (torch.cat(t) for t in zip(*parts, strict=True))
            with self._op("attention"):
                att = attend(n, q, k, v)
            rows = [self._mlp_block(w, x[lo:hi], att[lo:hi]) for lo, hi in spans]
            if len(rows) == 1:
                x = rows[0]
            else:
                with self._op("other"):
                    x = torch.cat(rows)
        return x

    def _qkv(
        self, w: LayerWeights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries ``[t, H, d]``, rotated keys and values ``[t, kvh, d]`` of ``t`` tokens."""
        s = self.spec
        with self._op("other"):
            h = self._norm(x, w.input_norm)
        with self._op("gemm"):
            qkv = F.linear(h, w.qkv, w.qkv_bias)
        with self._op("other"):
            t, q_size, kv_size = x.shape[0], s.q_size, s.kv_size
            q = qkv[:, :q_size].view(t, s.num_heads, s.head_dim)
            k = qkv[:, q_size : q_size + kv_size].view(t, s.num_kv_heads, s.head_dim)
            v = qkv[:, q_size + kv_size :].view(t, s.num_kv_heads, s.head_dim)
            if w.q_norm is not None and w.k_norm is not None:  # Qwen3: RMSNorm per head, before RoPE
                q, k = self._norm(q, w.q_norm), self._norm(k, w.k_norm)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _mlp_block(self, w: LayerWeights, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """The rest of a layer for ``t`` tokens: output projection, residual, SwiGLU MLP, residual."""
        inter = self.spec.intermediate_size
        with self._op("gemm"):
            att = F.linear(att, w.o)
        with self._op("other"):
            x = x + att
            h = self._norm(x, w.post_norm)
        if w.moe is not None:
            h = self._moe(w.moe, h)
        else:
            assert w.gate_up is not None and w.down is not None, "a dense layer has its MLP"
            h = self._swiglu(h, w.gate_up, w.down, inter)
        with self._op("other"):
            return x + h

    def _swiglu(self, h: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, inter: int) -> torch.Tensor:
        with self._op("gemm"):
            gu = F.linear(h, gate_up)
        with self._op("other"):
            h = F.silu(gu[:, :inter]) * gu[:, inter:]
        with self._op("gemm"):
            return F.linear(h, down)

    def _moe(self, m: MoeWeights, h: torch.Tensor) -> torch.Tensor:
        """Top-k routing and the experts the tokens chose (transformers' Qwen3-MoE / Mixtral order:
        softmax in float32, top-k, renormalise when ``norm_topk_prob``, cast, weighted sum)."""
        s = self.spec
        inter = s.moe_intermediate_size
        with self._op("gemm"):
            logits = F.linear(h, m.router)
        with self._op("other"):
            probs = torch.softmax(logits.float(), dim=-1)
            top, chosen = torch.topk(probs, s.num_experts_per_tok, dim=-1)
            if s.norm_topk_prob:
                top = top / top.sum(dim=-1, keepdim=True)
            top = top.to(h.dtype)
            out = torch.zeros_like(h)
        for expert in torch.unique(chosen).tolist():  # sorted: a fixed order, a fixed sum
            with self._op("other"):
                tokens, slot = torch.where(chosen == expert)
            y = self._swiglu(h[tokens], m.gate_up[expert], m.down[expert], inter)
            with self._op("other"):
                out.index_add_(0, tokens, y * top[tokens, slot, None])
        if m.shared_gate_up is not None and m.shared_down is not None:
            shared = self._swiglu(h, m.shared_gate_up, m.shared_down, s.shared_expert_intermediate_size)
            if m.shared_gate is not None:
                with self._op("gemm"):
                    gate = F.linear(h, m.shared_gate)
                shared = torch.sigmoid(gate) * shared
            with self._op("other"):
                out = out + shared
        return out

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._op("other"):
            h = self._norm(hidden, self.weights.norm)
        with self._op("gemm"):
            return F.linear(h, self.weights.lm_head)

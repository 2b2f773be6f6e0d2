"""Analytic profiles: prefill and decode cost tables from a roofline model of one GPU.

For any catalog GPU, without touching it, ``analytic_profile`` fills the same tables a measured
profile has (``prefill.csv``: num_seqs × seq_len; ``decode.csv``: batch_size × context_len, plus
an op breakdown in ``ops.csv``). Every step is priced per GPU of a TP group, on the per-GPU shard
(``model_spec.shard_spec``), as the sum of four ops (kernels run one after another)::

    gemm      = max(F_gemm / (P·MFU),        W / (BW·MBU))
    attention = max(F_attn / (P·ATTN_EFF),   A / (BW·MBU))
    other     = E / (BW·MBU) + OVERHEAD
    allreduce = 2·layers · (α + 2(tp−1)/tp · T·hidden·bytes / link_bw)      (0 when tp = 1)

with P the dense bf16 peak, BW the DRAM bandwidth, T the tokens in the step, and

- ``F_gemm = 2·T·N_layers + 2·S·N_head``: 2 FLOPs per multiply-accumulate over the layer
  weights for every token, and over the LM head for one token per sequence (serving engines
  compute logits only at each sequence's last position); ``W`` the weight bytes of the shard.
- ``F_attn = 4·layers·heads·head_dim·Σ(new tokens × keys attended)``: causal prefill attends to
  (n+1)/2 keys on average, a decode token to its context + 1; ``A`` reads Q/K/V and writes O and
  the new KV in prefill, and reads the whole KV context in decode.
- ``E``: elementwise traffic (RMSNorms, residual adds, RoPE, SiLU·mul), per token and layer
  ``bytes × (10·hidden + 3·intermediate + 2·(q + kv))``.
- the all-reduce is Megatron TP's two per layer (after attention and after the MLP), ring
  algorithm: each rank sends and receives 2(tp−1)/tp of the message (Patarasuk & Yuan 2009),
  plus a fixed latency α per call (``Hardware.link_latency_us``).

The efficiency factors below are the model's only free parameters; each is taken from published
measurements (cited where defined). ``bench/analytic_factors.py`` measures the same quantities
(GEMM MFU, weight-streaming MBU, attention efficiency, whole steps) on a CUDA GPU to check them.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata

import pandas as pd

from pdplan.profiles.errors import ConfigError, ProfileError, choices_error
from pdplan.profiles.hardware import Hardware, get_hardware
from pdplan.profiles.model_spec import DTYPE_BYTES, ModelSpec, shard_spec
from pdplan.profiles.profile import Profile

# --- efficiency factors (fractions of the datasheet peak) ----------------------------------------
#: Achieved / peak FLOP/s of the GEMMs when compute-bound. The best bf16 GEMMs on H100 reach
#: ~75-80 % of the dense peak (FlashAttention-3, Shah et al. 2024: 740 TFLOP/s = 75 %; a large
#: square torch.matmul measures ~790 of 989 TFLOP/s); a whole prefill runs many mid-sized GEMMs
#: (N = 1-6k columns per TP shard) that tile less well, so we take 0.6.
MFU = 0.6
#: Achieved / peak DRAM bandwidth of weight-streaming decode GEMMs (model bandwidth utilisation).
#: gpt-fast (pytorch-labs/gpt-fast README) decodes Llama-2-7B bf16 at batch 1 at 1,397 GB/s on an
#: A100-80GB of 2,039 GB/s peak (0.69; power-capped at 330 W, its note puts the card's practical
#: peak at ~1,700 GB/s, i.e. 0.82 of what the card delivered); a device-to-device torch copy on an
#: H100 SXM moves ~3.0 of 3.35 TB/s (0.90), the practical ceiling. We take 0.75.
MBU = 0.75
#: Achieved / peak FLOP/s of attention. FlashAttention-3 forward, bf16, head_dim 128 on H100:
#: 430-620 TFLOP/s for seqlen 512-16k (pytorch/benchmark PR #2391, FA3 paper's setup), i.e.
#: 0.43-0.63; FlashAttention-2 reaches 50-73 % of peak on A100 (Dao 2023).
ATTENTION_EFFICIENCY = 0.5
#: Fixed time per forward step, ms, that does not overlap GPU work: ~10 kernels per layer × 32
#: layers × ~1.5 µs launch gap under CUDA graphs ≈ 0.5 ms. CPU-side scheduling can cost far more
#: (vLLM's v0.6.0 performance post, 2024: on Llama-3-8B/H100, v0.5.3 spent 29 % of the time
#: scheduling and 33 % in the API server); current engines overlap it with the GPU step
#: (multi-step / async scheduling), so only the launch residue is charged. An assumption.
STEP_OVERHEAD_MS = 0.5
#: Fraction of GPU memory an engine may use for weights + KV (vLLM's default
#: ``gpu_memory_utilization=0.9``); the rest is activations, CUDA graphs and fragmentation.
GPU_MEMORY_UTILIZATION = 0.9
#: A model "fits" when, after its weights, the KV of at least this many tokens fits too.
MIN_KV_TOKENS = 2048

# --- grid (same shape as a measured CUDA profile) -------------------------------------------------
PREFILL_SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREFILL_NUM_SEQS = (1, 2, 4, 8, 16, 32)
MAX_PREFILL_TOKENS = 16384
DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DECODE_CONTEXTS = (128, 512, 1024, 2048, 4096, 8192, 16384, 32768)

OPS = ("gemm", "attention", "other", "allreduce")
_GIB = 1 << 30


@dataclass(frozen=True)
class StepCost:
    """One step's time split by op, ms."""

    gemm_ms: float
    attention_ms: float
    other_ms: float
    allreduce_ms: float

    @property
    def total_ms(self) -> float:
        return self.gemm_ms + self.attention_ms + self.other_ms + self.allreduce_ms

    def by_op(self) -> dict[str, float]:
        return dict(
            zip(OPS, (self.gemm_ms, self.attention_ms, self.other_ms, self.allreduce_ms), strict=True)
        )


@dataclass(frozen=True)
class Roofline:
    """The roofline of one model shard on one GPU: prices prefill and decode steps."""

    shard: ModelSpec
    hardware: Hardware
    tp: int
    dtype: str

    @property
    def _bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def _seconds(self, flops: float, eff: float, num_bytes: float) -> float:
        hw = self.hardware
        return max(
            flops / (hw.peak_bf16_tflops * 1e12 * eff), num_bytes / (hw.mem_bandwidth_gbps * 1e9 * MBU)
        )

    def _step(self, tokens: int, seqs: int, attn_pairs: float, attn_bytes: float) -> StepCost:
        s, e = self.shard, self._bytes
        layer_params = s.num_layers * s.params_per_layer
        gemm_flops = 2.0 * tokens * layer_params + 2.0 * seqs * s.embedding_params
        gemm_bytes = e * (layer_params + s.embedding_params)
        attn_flops = 4.0 * s.num_layers * s.num_heads * s.head_dim * attn_pairs
        elementwise = (
            e
            * s.num_layers
            * tokens
            * (10 * s.hidden_size + 3 * s.intermediate_size + 2 * (s.q_size + s.kv_size))
        )
        other = elementwise / (self.hardware.mem_bandwidth_gbps * 1e9 * MBU)
        allreduce = 0.0
        if self.tp > 1:
            message = tokens * s.hidden_size * e
            ring = 2 * (self.tp - 1) / self.tp * message / (self.hardware.link_bandwidth_gbps * 1e9)
            allreduce = 2 * s.num_layers * (self.hardware.link_latency_us * 1e-6 + ring)
        return StepCost(
            gemm_ms=1e3 * self._seconds(gemm_flops, MFU, gemm_bytes),
            attention_ms=1e3 * self._seconds(attn_flops, ATTENTION_EFFICIENCY, attn_bytes),
            other_ms=1e3 * other + STEP_OVERHEAD_MS,
            allreduce_ms=1e3 * allreduce,
        )

    def prefill(self, num_seqs: int, seq_len: int) -> StepCost:
        """One prefill forward of ``num_seqs`` sequences of ``seq_len`` new tokens each."""
        s, e = self.shard, self._bytes
        tokens = num_seqs * seq_len
        pairs = tokens * (seq_len + 1) / 2  # causal: token i attends to i + 1 keys
        # read Q, K, V and write O; write the new K and V into the cache
        attn_bytes = e * s.num_layers * tokens * (2 * s.q_size + 4 * s.kv_size)
        return self._step(tokens, num_seqs, pairs, attn_bytes)

    def decode(self, batch_size: int, context_len: int) -> StepCost:
        """One decode step of ``batch_size`` sequences with ``context_len`` tokens in KV each."""
        s, e = self.shard, self._bytes
        keys = context_len + 1  # the new token attends to itself as well
        pairs = batch_size * keys
        attn_bytes = e * s.num_layers * batch_size * (2 * s.kv_size * keys + 2 * s.q_size)
        return self._step(batch_size, batch_size, pairs, attn_bytes)


def resolve_dtype(spec: ModelSpec, hardware: Hardware, dtype: str | None) -> str:
    """The serving dtype: ``dtype`` when given, else the config's, except that a float32
    checkpoint on a GPU serves in float16 (vLLM's ``dtype="auto"`` rule)."""
    if dtype is not None and dtype not in DTYPE_BYTES:
        raise choices_error("dtype", dtype, DTYPE_BYTES)
    gpu = hardware.name != "cpu"
    chosen = dtype or ("float16" if gpu and spec.dtype == "float32" else spec.dtype)
    if gpu and chosen == "float32":
        raise ConfigError(
            f"--dtype float32 on {hardware.name}: the analytic model prices 16-bit "
            "tensor-core math only; expected bfloat16 or float16"
        )
    return chosen


def kv_budget_bytes(spec: ModelSpec, hardware: Hardware, tp: int, dtype: str) -> int:
    """Bytes left per GPU for KV after the weight shard, at ``GPU_MEMORY_UTILIZATION``.

    Raises:
        ProfileError: the shard plus ``MIN_KV_TOKENS`` of KV does not fit ("needs X, has Y").
    """
    weights = spec.weight_bytes(dtype) // tp
    kv_token = _kv_bytes_per_token(spec, tp, dtype)
    usable = int(hardware.memory_bytes * GPU_MEMORY_UTILIZATION)
    need = weights + MIN_KV_TOKENS * kv_token
    if need > usable:
        raise ProfileError(
            f"model {spec.name} ({dtype}, tp={tp}) needs {need / _GIB:.1f} GiB per GPU "
            f"({weights / _GIB:.1f} GiB weights + KV for {MIN_KV_TOKENS} tokens), has "
            f"{usable / _GIB:.1f} GiB ({GPU_MEMORY_UTILIZATION:.0%} of "
            f"{hardware.memory_bytes / _GIB:.1f} GiB on {hardware.name}); try a larger --tp"
        )
    return usable - weights


def _kv_bytes_per_token(spec: ModelSpec, tp: int, dtype: str) -> int:
    """Per-GPU KV bytes per token (KV heads split, or one replicated head per rank)."""
    heads = max(1, spec.num_kv_heads // tp)
    return spec.kv_bytes_per_token(dtype) * heads // spec.num_kv_heads


def analytic_tables(
    spec: ModelSpec, hardware: Hardware, *, tp: int = 1, dtype: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The ``prefill``, ``decode`` and ``ops`` tables of the analytic profile (see the module doc).

    Grid points whose KV does not fit next to the weights, or that exceed the model's
    ``max_position_embeddings``, are left out.

    Raises:
        ConfigError: ``tp`` does not divide the heads; a bad or unsupported dtype.
        ProfileError: the model does not fit in ``hardware``'s memory at this ``tp``.
    """
    chosen = resolve_dtype(spec, hardware, dtype)
    roof = Roofline(shard_spec(spec, tp), hardware, tp, chosen)
    budget_tokens = kv_budget_bytes(spec, hardware, tp, chosen) // _kv_bytes_per_token(spec, tp, chosen)
    max_len = spec.max_position_embeddings
    prefill_rows: list[tuple[int, int, float]] = []
    decode_rows: list[tuple[int, int, float]] = []
    op_rows: list[tuple[str, int | None, int | None, int | None, int | None, str, float]] = []
    for seq_len in PREFILL_SEQ_LENS:
        for num_seqs in PREFILL_NUM_SEQS:
            tokens = num_seqs * seq_len
            if seq_len > max_len or tokens > min(MAX_PREFILL_TOKENS, budget_tokens):
                continue
            cost = roof.prefill(num_seqs, seq_len)
            prefill_rows.append((num_seqs, seq_len, cost.total_ms))
            op_rows += [("prefill", num_seqs, seq_len, None, None, op, ms) for op, ms in cost.by_op().items()]
    for context_len in DECODE_CONTEXTS:
        for batch_size in DECODE_BATCHES:
            if context_len + 1 > max_len or batch_size * (context_len + 1) > budget_tokens:
                continue
            cost = roof.decode(batch_size, context_len)
            decode_rows.append((batch_size, context_len, cost.total_ms))
            op_rows += [
                ("decode", None, None, batch_size, context_len, op, ms) for op, ms in cost.by_op().items()
            ]
    assert prefill_rows and decode_rows, "MIN_KV_TOKENS admits the smallest grid points"
    prefill = pd.DataFrame(prefill_rows, columns=["num_seqs", "seq_len", "latency_ms"])
    decode = pd.DataFrame(decode_rows, columns=["batch_size", "context_len", "latency_ms"])
    ops = pd.DataFrame(
        op_rows, columns=["phase", "num_seqs", "seq_len", "batch_size", "context_len", "op", "latency_ms"]
    )
    for col in ("num_seqs", "seq_len", "batch_size", "context_len"):
        ops[col] = ops[col].astype("Int64")
    return prefill, decode, ops


def analytic_profile(
    spec: ModelSpec, hardware: Hardware | str, *, tp: int = 1, dtype: str | None = None
) -> Profile:
    """A ``method: analytic`` Profile of ``spec`` on one GPU of a ``tp``-way group of ``hardware``.

    Raises:
        ConfigError: unknown hardware name, ``tp`` does not divide the heads, bad dtype.
        ProfileError: the model does not fit ("needs X GiB per GPU, has Y GiB").
    """
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    chosen = resolve_dtype(spec, hw, dtype)
    prefill, decode, ops = analytic_tables(spec, hw, tp=tp, dtype=chosen)
    return Profile(
        method="analytic",
        model=spec,
        hardware=hw.to_dict(),
        dtype=chosen,
        tp=tp,
        prefill=prefill,
        decode=decode,
        ops=ops,
        versions=_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=(
            f"roofline (pdplan.profiles.analytic): MFU={MFU}, MBU={MBU}, "
            f"attention efficiency={ATTENTION_EFFICIENCY}, step overhead={STEP_OVERHEAD_MS} ms, "
            f"memory utilisation={GPU_MEMORY_UTILIZATION}"
        ),
    )


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("pdplan", "numpy", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out

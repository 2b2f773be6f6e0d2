"""Analytic profiles: prefill and decode cost tables from a kernel-level model of one GPU.

For any catalog GPU, without touching it, ``analytic_profile`` fills the same tables a measured
profile has (``prefill.csv``: num_seqs × seq_len; ``decode.csv``: batch_size × context_len, plus
an op breakdown in ``ops.csv``). Every step is priced per GPU of a TP group, on the per-GPU shard
(``model_spec.shard_spec``), kernel by kernel, as real engines run it (one after another)::

    gemm      = layers · Σ_{qkv, o, gate_up, down} gemm_s(T·K·N) + gemm_s(LM head, S rows)
    attention = layers · (t0 + max(F_attn / (P·ATTN_EFF), A / (BW·mbu)))
    other     = layers · (2 norms + RoPE + SiLU·mul + 2 residual adds) elementwise_s + engine overhead
    allreduce = 2·layers · all_reduce(T·hidden·bytes)                       (0 when tp = 1)

with P the dense bf16 peak, BW the DRAM bandwidth, T the tokens in the step, S its sequences.

- ``gemm_s`` / ``elementwise_s`` (:mod:`pdplan.profiles.gemm`): a per-kernel floor ``t0`` plus the
  roofline at fitted efficiencies (mfu, mbu), fitted on Vidur's measured op times of Llama
  2-7B / 3-8B / 3-70B at TP 1-8 on A100 and H100. The floor does not divide by TP: small shards run
  their GEMMs less efficiently, which is why measured decode steps hardly shrink from TP4 to TP8.
- ``F_attn = 4·layers·heads·head_dim·Σ(new tokens × keys attended)``: causal prefill attends to
  (n+1)/2 keys on average, a decode token to its context + 1; ``A`` reads Q/K/V and writes O and
  the new KV in prefill, and reads the whole KV context in decode.
- ``all_reduce`` (:mod:`pdplan.profiles.comm`): Megatron TP's two per layer (after attention and
  after the MLP), α + ring traffic / bus bandwidth, fitted on Vidur's NCCL measurements (DGX
  A100/H100); PCIe-only GPUs pay PCIe rates.
- engine overhead: :mod:`pdplan.profiles.engine` (``engine: vllm | sglang | trtllm``).

Attention efficiency is the only constant not fitted here (Vidur's tables hold no attention
kernel rows); it is taken from published measurements (cited where defined).
``bench/fidelity.py`` prints the per-op and per-step error of this model against Vidur's
measurements and its TP scaling against published multi-GPU decode steps.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata

import pandas as pd

from pdplan.profiles.comm import all_reduce_fit
from pdplan.profiles.engine import DEFAULT_ENGINE, get_engine, kv_pool_bytes
from pdplan.profiles.errors import ConfigError, ProfileError, choices_error
from pdplan.profiles.gemm import elementwise_s, fit_source, gemm_s, kernel_fit
from pdplan.profiles.hardware import Hardware, get_hardware
from pdplan.profiles.model_spec import DTYPE_BYTES, ModelSpec, shard_spec
from pdplan.profiles.profile import Profile

#: Achieved / peak FLOP/s of attention. FlashAttention-3 forward, bf16, head_dim 128 on H100:
#: 430-620 TFLOP/s for seqlen 512-16k (pytorch/benchmark PR #2391, FA3 paper's setup), i.e.
#: 0.43-0.63; FlashAttention-2 reaches 50-73 % of peak on A100 (Dao 2023).
ATTENTION_EFFICIENCY = 0.5
#: A model "fits" when, after its weights and activations, the KV of at least this many tokens fits.
MIN_KV_TOKENS = 2048

# --- grid (same shape as a measured CUDA profile) -------------------------------------------------
PREFILL_SEQ_LENS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREFILL_NUM_SEQS = (1, 2, 4, 8, 16, 32)
MAX_PREFILL_TOKENS = 16384
#: ``max_num_batched_tokens`` the grid's KV bound assumes (vLLM's default with chunked prefill).
GRID_STEP_TOKENS = 2048
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
    """The kernel-level model of one model shard on one GPU: prices prefill and decode steps."""

    shard: ModelSpec
    hardware: Hardware
    tp: int
    dtype: str
    engine: str = DEFAULT_ENGINE

    @property
    def _bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def _step(self, tokens: int, seqs: int, attn_pairs: float, attn_bytes: float) -> StepCost:
        s, e, hw = self.shard, self._bytes, self.hardware
        fit = kernel_fit(hw.name)
        peak, bw = hw.peak_bf16_tflops * 1e12, hw.mem_bandwidth_gbps * 1e9
        h, q, kv, inter = s.hidden_size, s.q_size, s.kv_size, s.intermediate_size
        gemm_layer = 0.0
        for k, n in ((h, q + 2 * kv), (q, h), (h, 2 * inter), (inter, h)):
            gemm_layer += gemm_s(fit, 2.0 * tokens * k * n, e * (k * n + tokens * (k + n)), peak, bw)
        vocab = s.embedding_params // h  # the LM head shard's rows
        head = gemm_s(fit, 2.0 * seqs * h * vocab, e * (h * vocab + seqs * (h + vocab)), peak, bw)
        attn_flops = 4.0 * s.num_heads * s.head_dim * attn_pairs  # per layer
        attention = fit.gemm_t0_us * 1e-6 + max(
            attn_flops / (peak * ATTENTION_EFFICIENCY), attn_bytes / s.num_layers / (bw * fit.mbu)
        )
        elementwise = sum(
            elementwise_s(fit, e * tokens * per_token, bw)
            for per_token in (2 * h, 2 * h, 2 * (q + kv), 3 * inter, 3 * h, 3 * h)
        )
        allreduce = 0.0
        if self.tp > 1:
            allreduce = 2 * s.num_layers * all_reduce_fit(hw, self.tp).seconds(self.tp, tokens * h * e)
        return StepCost(
            gemm_ms=1e3 * (s.num_layers * gemm_layer + head),
            attention_ms=1e3 * s.num_layers * attention,
            other_ms=1e3 * s.num_layers * elementwise + get_engine(self.engine).step_overhead_ms,
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


def kv_budget_bytes(
    spec: ModelSpec, hardware: Hardware, tp: int, dtype: str, engine: str = DEFAULT_ENGINE
) -> int:
    """Bytes of KV pool per GPU as ``engine`` sizes it (``pdplan.profiles.engine``) at vLLM's
    default online batch limits (``GRID_STEP_TOKENS`` tokens, 256 sequences). It bounds the grid
    only: an instance's own capacity follows its batch limits (``pdplan.sim.costs``).

    Raises:
        ProfileError: the shard, its activations and ``MIN_KV_TOKENS`` of KV do not fit
            ("needs X, has Y").
    """
    kv_token = _kv_bytes_per_token(spec, tp, dtype)
    pool, terms = kv_pool_bytes(
        engine,
        spec,
        hardware_name=hardware.name,
        memory_bytes=hardware.memory_bytes,
        tp=tp,
        dtype=dtype,
        max_step_tokens=GRID_STEP_TOKENS,
        max_batch_size=256,
    )
    if pool < MIN_KV_TOKENS * kv_token:
        need = terms["weights"] + terms["activations"] + terms["non_torch"] + MIN_KV_TOKENS * kv_token
        raise ProfileError(
            f"model {spec.name} ({dtype}, tp={tp}) needs {need / _GIB:.1f} GiB per GPU "
            f"({terms['weights'] / _GIB:.1f} GiB weights + {terms['activations'] / _GIB:.1f} GiB "
            f"activations + KV for {MIN_KV_TOKENS} tokens) under {engine}, has "
            f"{terms['usable'] / _GIB:.1f} GiB of {terms['total'] / _GIB:.1f} GiB on {hardware.name}; "
            "try a larger --tp"
        )
    return pool


def _kv_bytes_per_token(spec: ModelSpec, tp: int, dtype: str) -> int:
    """Per-GPU KV bytes per token (KV heads split, or one replicated head per rank)."""
    heads = max(1, spec.num_kv_heads // tp)
    return spec.kv_bytes_per_token(dtype) * heads // spec.num_kv_heads


def analytic_tables(
    spec: ModelSpec,
    hardware: Hardware,
    *,
    tp: int = 1,
    dtype: str | None = None,
    engine: str = DEFAULT_ENGINE,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The ``prefill``, ``decode`` and ``ops`` tables of the analytic profile (see the module doc).

    Grid points whose KV does not fit next to the weights, or that exceed the model's
    ``max_position_embeddings``, are left out.

    Raises:
        ConfigError: ``tp`` does not divide the heads; a bad or unsupported dtype.
        ProfileError: the model does not fit in ``hardware``'s memory at this ``tp``.
    """
    chosen = resolve_dtype(spec, hardware, dtype)
    get_engine(engine)
    roof = Roofline(shard_spec(spec, tp), hardware, tp, chosen, engine)
    budget = kv_budget_bytes(spec, hardware, tp, chosen, engine)
    budget_tokens = budget // _kv_bytes_per_token(spec, tp, chosen)
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
    spec: ModelSpec,
    hardware: Hardware | str,
    *,
    tp: int = 1,
    dtype: str | None = None,
    engine: str = DEFAULT_ENGINE,
) -> Profile:
    """A ``method: analytic`` Profile of ``spec`` on one GPU of a ``tp``-way group of ``hardware``.

    Raises:
        ConfigError: unknown hardware name, ``tp`` does not divide the heads, bad dtype.
        ProfileError: the model does not fit ("needs X GiB per GPU, has Y GiB").
    """
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    chosen = resolve_dtype(spec, hw, dtype)
    prefill, decode, ops = analytic_tables(spec, hw, tp=tp, dtype=chosen, engine=engine)
    fit = kernel_fit(hw.name)
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
        engine=engine,
        notes=(
            f"kernel model (pdplan.profiles.analytic): GEMM t0={fit.gemm_t0_us} us, "
            f"MFU={fit.mfu}, MBU={fit.mbu} ({fit_source(hw.name)}), "
            f"attention efficiency={ATTENTION_EFFICIENCY}, all-reduce fitted on Vidur NCCL "
            f"times, {engine} step overhead={get_engine(engine).step_overhead_ms} ms"
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

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

from pdplan.profiles.engine import DEFAULT_ENGINE, get_engine, kv_pool_bytes
from pdplan.profiles.errors import ConfigError, ProfileError, choices_error
from pdplan.profiles.gemm import KernelFit, elementwise_s, fit_source, gemm_s, kernel_fit
from pdplan.profiles.hardware import Hardware, get_hardware
from pdplan.profiles.model_spec import DTYPE_BYTES, WEIGHT_BITS, ModelSpec, activation_dtype, shard_spec
from pdplan.profiles.moe_cost import Layout, all_to_all_s, expected_distinct_experts, tp_all_reduce_s
from pdplan.profiles.pipeline import PipelineSend, kv_bytes_per_token_per_gpu, micro_batch
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
    """The kernel-level model of one model shard on one GPU: prices prefill and decode steps.

    ``shard`` is ``shard_spec(model, tp)``. ``ep`` and ``attention_dp`` are the instance's expert
    parallelism and data-parallel attention (:mod:`pdplan.profiles.moe_cost`); with
    ``attention_dp`` > 1, ``attention_shard`` is ``shard_spec(model, tp // attention_dp)``.
    ``dtype`` is the weight dtype: fp8 runs W8A8 at the fp8 peak, int4 reads a quarter of the
    bf16 bytes and computes at the bf16 rate.
    """

    shard: ModelSpec
    hardware: Hardware
    tp: int
    dtype: str
    engine: str = DEFAULT_ENGINE
    ep: int = 1
    attention_dp: int = 1
    attention_shard: ModelSpec | None = None

    @property
    def _bytes(self) -> int:
        """Bytes per activation element."""
        return DTYPE_BYTES[activation_dtype(self.dtype)]

    @property
    def _attn(self) -> ModelSpec:
        return self.attention_shard or self.shard

    def _gemm(self, fit: KernelFit, tokens: float, k: int, n: int, weight_rows: float | None = None) -> float:
        """One GEMM of ``tokens`` × k × n (``weight_rows`` × k × n weights read, default all)."""
        hw, e = self.hardware, self._bytes
        weights = (k * n if weight_rows is None else weight_rows * k * n) * WEIGHT_BITS[self.dtype] / 8
        return gemm_s(
            fit,
            2.0 * tokens * k * n,
            weights + e * tokens * (k + n),
            hw.peak_tflops(self.dtype) * 1e12,
            hw.mem_bandwidth_gbps * 1e9,
        )

    def _moe_s(self, fit: KernelFit, tokens: int) -> float:
        """One MoE block on one GPU: router, the local experts the batch touches, shared experts."""
        s, h = self.shard, self.shard.hidden_size
        mi = s.moe_intermediate_size * self.ep  # one expert's intermediate on this rank
        touched = expected_distinct_experts(tokens, s.num_experts_per_tok, s.num_experts) / self.ep
        pairs = tokens * s.num_experts_per_tok / self.ep  # (token, expert) pairs on this rank
        # expert GEMMs as one grouped kernel each: FLOPs of the routed pairs, weights of the touched experts
        routed = self._gemm(fit, pairs, h, 2 * mi, weight_rows=touched) + self._gemm(
            fit, pairs, mi, h, weight_rows=touched
        )
        router = gemm_s(  # the gate stays in 16 bits in fp8 checkpoints (DeepSeek-V3, Qwen3-FP8)
            fit,
            2.0 * tokens * h * s.num_experts,
            self._bytes * (h * s.num_experts + tokens * (h + s.num_experts)),
            self.hardware.peak_bf16_tflops * 1e12,
            self.hardware.mem_bandwidth_gbps * 1e9,
        )
        shared = 0.0
        if s.shared_expert_intermediate_size:
            si = s.shared_expert_intermediate_size
            shared = self._gemm(fit, tokens, h, 2 * si) + self._gemm(fit, tokens, si, h)
        return routed + router + shared

    def _step(self, tokens: int, seqs: int, attn_pairs: float, attn_bytes: float) -> StepCost:
        """``attn_pairs``/``attn_bytes``: attention (query, key) pairs and bytes on one GPU, per layer."""
        s, a, e, hw = self.shard, self._attn, self._bytes, self.hardware
        fit = kernel_fit(hw.kernel_family)
        bw = hw.mem_bandwidth_gbps * 1e9
        h, inter = s.hidden_size, s.intermediate_size
        t_attn = -(-tokens // self.attention_dp)  # tokens of this GPU's attention group
        proj = sum(self._gemm(fit, t_attn, k, n) for k, n in attention_gemms(a))
        num_moe = s.num_moe_layers
        dense_mlp = self._gemm(fit, tokens, h, 2 * inter) + self._gemm(fit, tokens, inter, h)
        gemm = s.num_layers * proj + (s.num_layers - num_moe) * dense_mlp
        if num_moe:
            gemm += num_moe * self._moe_s(fit, tokens)
        vocab = s.vocab_size  # the LM head shard's rows
        head = gemm_s(
            fit, 2.0 * seqs * h * vocab, e * (h * vocab + seqs * (h + vocab)), hw.peak_bf16_tflops * 1e12, bw
        )
        attn_flops = 2.0 * a.num_heads * (a.head_dim + a.v_size // a.num_heads) * attn_pairs
        if a.is_mla and attn_pairs and tokens == seqs:  # decode: absorbed MLA attends in the latent
            attn_flops = 2.0 * a.num_heads * (2 * a.kv_lora_rank + a.qk_rope_head_dim) * attn_pairs
        attention = fit.gemm_t0_us * 1e-6 + max(
            attn_flops / (hw.peak_bf16_tflops * 1e12 * ATTENTION_EFFICIENCY), attn_bytes / (bw * fit.mbu)
        )
        width = 2 * (a.q_size + a.kv_size) if not a.is_mla else 2 * a.q_size + a.kv_elements_per_token
        # norms, RoPE, activation, residuals: on this GPU's tokens (a DP-attention group's share)
        elementwise = sum(
            elementwise_s(fit, e * t_attn * per_token, bw)
            for per_token in (2 * h, 2 * h, width, 3 * max(inter, s.moe_intermediate_size), 3 * h, 3 * h)
        )
        return StepCost(
            gemm_ms=1e3 * (gemm + head),
            attention_ms=1e3 * s.num_layers * attention,
            other_ms=1e3 * s.num_layers * elementwise + get_engine(self.engine).step_overhead_ms,
            allreduce_ms=1e3 * self._comm_s(tokens, t_attn),
        )

    def _comm_s(self, tokens: int, t_attn: int) -> float:
        """Collectives of one step: the attention output's all-reduce inside its TP group; after
        each MLP an all-reduce over the instance (with DP attention: the gather and scatter of
        the tokens, a ring all-reduce's two halves), or, in MoE layers under EP, the dispatch and
        combine all-to-alls."""
        s, e, hw = self.shard, self._bytes, self.hardware
        h, attention_tp = s.hidden_size, self.tp // self.attention_dp
        attn = tp_all_reduce_s(hw, attention_tp, t_attn * h * e)
        mlp = tp_all_reduce_s(hw, self.tp, tokens * h * e)
        num_moe = s.num_moe_layers if self.ep > 1 else 0
        a2a = 0.0
        if num_moe:
            per_rank = tokens / self.tp * s.num_experts_per_tok * h
            # dispatch in fp8 when the weights are (DeepEP's low-latency dispatch), combine in 16 bits
            dispatch_bytes = 1 if self.dtype == "fp8" else e
            a2a = all_to_all_s(hw, self.ep, per_rank * dispatch_bytes) + all_to_all_s(
                hw, self.ep, per_rank * e
            )
            if self.ep < self.tp:  # each expert is still TP-split inside its group
                a2a += tp_all_reduce_s(hw, self.tp // self.ep, tokens / self.ep * h * e)
        return s.num_layers * attn + (s.num_layers - num_moe) * mlp + num_moe * a2a

    def _kv_element_bytes(self) -> int:
        return self._attn.kv_element_bytes(self.dtype)

    def _prefill_token_bytes(self) -> float:
        """Attention bytes per new prefill token per layer: read Q, K, V and write O (MLA:
        decompressed per head); write the new KV into the cache."""
        a, e = self._attn, self._bytes
        if a.is_mla:
            return e * (2 * a.q_size + 2 * a.v_size) + a.kv_elements_per_token * self._kv_element_bytes()
        return e * (2 * a.q_size + 2 * a.kv_size) + 2 * a.kv_size * self._kv_element_bytes()

    def prefill(self, num_seqs: int, seq_len: int) -> StepCost:
        """One prefill forward of ``num_seqs`` sequences of ``seq_len`` new tokens each."""
        dp = self.attention_dp
        tokens = num_seqs * seq_len
        pairs = tokens * (seq_len + 1) / 2 / dp  # causal: token i attends to i + 1 keys
        return self._step(tokens, num_seqs, pairs, self._prefill_token_bytes() * tokens / dp)

    def mixed(self, chunk_tokens: int, batch_size: int, context_len: int) -> StepCost:
        """One chunked-prefill step (Sarathi-Serve): the first ``chunk_tokens`` tokens of one prompt
        beside ``batch_size`` decodes with ``context_len`` tokens in KV each. The GEMMs run on all
        the step's tokens at once, so the weights (and the experts its tokens touch) are read
        once; attention pairs and bytes add. (MLA decode attention is priced in the
        decompressed form here, as in prefill.) Checks the simulator's mixed-step formula
        (``pdplan.sim.costs.StepCoef.mixed_s``) in ``bench/moe_models.py``."""
        a, e, dp = self._attn, self._bytes, self.attention_dp
        n, keys = chunk_tokens, context_len + 1
        kv = a.kv_elements_per_token * self._kv_element_bytes()
        pairs = (n * (n + 1) / 2 + batch_size * keys) / dp
        attn_bytes = (self._prefill_token_bytes() * n + batch_size * (kv * keys + e * 2 * a.q_size)) / dp
        return self._step(n + batch_size, 1 + batch_size, pairs, attn_bytes)

    def decode(self, batch_size: int, context_len: int) -> StepCost:
        """One decode step of ``batch_size`` sequences with ``context_len`` tokens in KV each."""
        a, e, dp = self._attn, self._bytes, self.attention_dp
        keys = context_len + 1  # the new token attends to itself as well
        seqs = batch_size / dp  # this GPU's attention group's share
        kv = a.kv_elements_per_token * self._kv_element_bytes()  # per token per layer
        attn_bytes = seqs * (kv * keys + e * 2 * a.q_size)
        return self._step(batch_size, batch_size, seqs * keys, attn_bytes)


def attention_gemms(a: ModelSpec) -> list[tuple[int, int]]:
    """(K, N) of the attention projections of one layer's shard: fused q/k/v and o, or MLA's
    q (low-rank or not), kv_a (latent + RoPE key), kv_b (keys and values per head) and o."""
    h = a.hidden_size
    if not a.is_mla:
        return [(h, a.q_size + 2 * a.kv_size), (a.q_size, h)]
    q = [(h, a.q_lora_rank), (a.q_lora_rank, a.q_size)] if a.q_lora_rank else [(h, a.q_size)]
    kv_b = (a.kv_lora_rank, a.num_heads * (a.qk_nope_head_dim + a.v_head_dim))
    return [*q, (h, a.kv_elements_per_token), kv_b, (a.v_size, h)]


def resolve_dtype(spec: ModelSpec, hardware: Hardware, dtype: str | None) -> str:
    """The serving weight dtype: ``dtype`` when given, else the config's, except that a float32
    checkpoint on a GPU serves in float16 (vLLM's ``dtype="auto"`` rule)."""
    if dtype is not None and dtype not in WEIGHT_BITS:
        raise choices_error("dtype", dtype, WEIGHT_BITS)
    gpu = hardware.name != "cpu"
    chosen = dtype or ("float16" if gpu and spec.dtype == "float32" else spec.dtype)
    if gpu and chosen == "float32":
        raise ConfigError(
            f"--dtype float32 on {hardware.name}: the analytic model prices 16-bit "
            "tensor-core math only; expected bfloat16 or float16"
        )
    return chosen


def kv_budget_bytes(
    spec: ModelSpec,
    hardware: Hardware,
    tp: int,
    dtype: str,
    engine: str = DEFAULT_ENGINE,
    attention_dp: int = 1,
    pp: int = 1,
) -> int:
    """Bytes of KV pool per GPU as ``engine`` sizes it (``pdplan.profiles.engine``) at vLLM's
    default online batch limits (``GRID_STEP_TOKENS`` tokens, 256 sequences). It bounds the grid
    only: an instance's own capacity follows its batch limits (``pdplan.sim.costs``). With ``pp``
    stages, of a GPU of the heaviest stage (``pdplan.profiles.pipeline``).

    Raises:
        ProfileError: the shard, its activations and ``MIN_KV_TOKENS`` of KV do not fit
            ("needs X, has Y").
    """
    kv_token = kv_bytes_per_token_per_gpu(spec, tp, pp, dtype, attention_dp)
    pool, terms = kv_pool_bytes(
        engine,
        spec,
        hardware_name=hardware.name,
        memory_bytes=hardware.memory_bytes,
        tp=tp,
        dtype=dtype,
        max_step_tokens=GRID_STEP_TOKENS,
        max_batch_size=256,
        pp=pp,
    )
    if pool < MIN_KV_TOKENS * kv_token:
        need = terms["weights"] + terms["activations"] + terms["non_torch"] + MIN_KV_TOKENS * kv_token
        raise ProfileError(
            f"model {spec.name} ({dtype}, tp={tp}{f', pp={pp}' if pp > 1 else ''}) "
            f"needs {need / _GIB:.1f} GiB per GPU "
            f"({terms['weights'] / _GIB:.1f} GiB weights + {terms['activations'] / _GIB:.1f} GiB "
            f"activations + KV for {MIN_KV_TOKENS} tokens) under {engine}, has "
            f"{terms['usable'] / _GIB:.1f} GiB of {terms['total'] / _GIB:.1f} GiB on {hardware.name}; "
            "try a larger --tp (or --pp)"
        )
    return pool


def roofline(
    spec: ModelSpec, hardware: Hardware, layout: Layout, dtype: str, engine: str = DEFAULT_ENGINE
) -> Roofline:
    """The ``Roofline`` of ``spec`` under ``layout`` (shards built and the layout checked).

    Raises:
        ConfigError: the layout cannot run the model (named), or ``tp`` does not divide its heads.
    """
    layout.check(spec)
    attention = shard_spec(spec, layout.attention_tp) if layout.attention_dp > 1 else None
    return Roofline(
        shard_spec(spec, layout.tp),
        hardware,
        layout.tp,
        dtype,
        engine,
        ep=layout.ep,
        attention_dp=layout.attention_dp,
        attention_shard=attention,
    )


def analytic_tables(
    spec: ModelSpec,
    hardware: Hardware,
    *,
    tp: int = 1,
    dtype: str | None = None,
    engine: str = DEFAULT_ENGINE,
    layout: Layout | None = None,
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
    layout = layout or Layout(tp=tp)
    roof = roofline(spec, hardware, layout, chosen, engine)
    dp, pp = roof.attention_dp, layout.pp
    budget = kv_budget_bytes(spec, hardware, tp, chosen, engine, dp, pp)
    budget_tokens = budget // kv_bytes_per_token_per_gpu(spec, tp, pp, chosen, dp)
    send = PipelineSend.of(spec, hardware, tp, pp, chosen)
    overhead = get_engine(engine).step_overhead_ms
    max_len = spec.max_position_embeddings
    prefill_rows: list[tuple[int, int, float]] = []
    decode_rows: list[tuple[int, int, float]] = []
    op_rows: list[tuple[str, int | None, int | None, int | None, int | None, str, float]] = []
    for seq_len in PREFILL_SEQ_LENS:
        for num_seqs in PREFILL_NUM_SEQS:
            tokens = num_seqs * seq_len
            if seq_len > max_len or tokens > min(MAX_PREFILL_TOKENS, budget_tokens):
                continue
            cost = _through_stages(roof.prefill(num_seqs, seq_len), pp, overhead, send.ms(tokens))
            prefill_rows.append((num_seqs, seq_len, cost.total_ms))
            op_rows += [("prefill", num_seqs, seq_len, None, None, op, ms) for op, ms in cost.by_op().items()]
    for context_len in DECODE_CONTEXTS:
        for batch_size in DECODE_BATCHES:
            if context_len + 1 > max_len or batch_size * (context_len + 1) > budget_tokens:
                continue
            micro = micro_batch(batch_size, pp)
            cost = _through_stages(roof.decode(micro, context_len), pp, overhead, send.ms(micro))
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


def _through_stages(full: StepCost, pp: int, overhead_ms: float, send_ms: float) -> StepCost:
    """A step of the whole model passed through ``pp`` equal stages: ``pp`` stage steps of
    (full − overhead)/pp + overhead each, plus the sends (counted with the collectives); the
    identity when ``pp = 1`` (``pdplan.profiles.pipeline``)."""
    if pp == 1:
        return full
    other = full.other_ms + (pp - 1) * overhead_ms
    return StepCost(full.gemm_ms, full.attention_ms, other, full.allreduce_ms + send_ms)


def analytic_profile(
    spec: ModelSpec,
    hardware: Hardware | str,
    *,
    tp: int = 1,
    dtype: str | None = None,
    engine: str = DEFAULT_ENGINE,
    ep: int = 1,
    attention_dp: int = 1,
    pp: int = 1,
) -> Profile:
    """A ``method: analytic`` Profile of ``spec`` on one GPU of a ``tp``-way group of ``hardware``,
    with ``ep``-way expert parallelism and ``attention_dp`` data-parallel attention groups inside
    the group (:class:`pdplan.profiles.moe_cost.Layout`).

    Raises:
        ConfigError: unknown hardware name, ``tp`` does not divide the heads, bad dtype, a layout
            the model cannot use.
        ProfileError: the model does not fit ("needs X GiB per GPU, has Y GiB").
    """
    hw = get_hardware(hardware) if isinstance(hardware, str) else hardware
    chosen = resolve_dtype(spec, hw, dtype)
    layout = Layout(tp=tp, ep=ep, attention_dp=attention_dp, pp=pp)
    prefill, decode, ops = analytic_tables(spec, hw, tp=tp, dtype=chosen, engine=engine, layout=layout)
    fit = kernel_fit(hw.kernel_family)
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
        ep=ep,
        attention_dp=attention_dp,
        pp=pp,
        pp_send=PipelineSend.of(spec, hw, tp, pp, chosen) if pp > 1 else None,
        notes=(
            f"kernel model (pdplan.profiles.analytic): GEMM t0={fit.gemm_t0_us} us, "
            f"MFU={fit.mfu}, MBU={fit.mbu} ({fit_source(hw.name, hw.kernel_family)}), "
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

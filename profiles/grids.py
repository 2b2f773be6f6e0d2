"""The grids a measured profile times, and whether a grid fits the device's memory.

A :class:`Grid` names the prefill shapes (num_seqs, seq_len) and decode shapes (batch_size,
context_len) :mod:`pdplan.profiles.profiler` measures, with a timing budget per phase;
:func:`default_grid` picks one by device and ``--quick``; :func:`fit_grid` drops the points whose KV
does not fit beside the weights and activations (and contexts beyond the model's length).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pdplan.profiles.errors import ProfileError
from pdplan.profiles.kv_cache import aligned_capacity
from pdplan.profiles.model_spec import DTYPE_BYTES, ModelSpec
from pdplan.profiles.timing import TimingBudget

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Head-room kept free of the grid's KV for allocator slack and temporaries.
MEMORY_UTILISATION = 0.9
_MIN_PREFILL_POINTS, _MIN_DECODE_POINTS = 4, 3


@dataclass(frozen=True)
class Grid:
    """The shapes measured, and how long each is timed (per phase: decode steps are cheap, and
    their many points pin three coefficients, so they get more samples for the same wall time)."""

    prefill: tuple[tuple[int, int], ...]  # (num_seqs, seq_len)
    decode: tuple[tuple[int, int], ...]  # (batch_size, context_len)
    prefill_budget: TimingBudget
    decode_budget: TimingBudget


def _pairs(
    firsts: tuple[int, ...], seconds: tuple[int, ...], keep: Callable[[int, int], bool]
) -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for b in seconds for a in firsts if keep(a, b))


# CPU (one thread by default, see ``measure_profile``): the regime a CPU instance serves, prefill
# batches up to 2k tokens and decode batches of 1-64 sequences with up to 2k context each, in about
# a minute for tiny-llama (40M parameters). Decode starts at batch 1, the batch a lightly loaded
# local worker runs most: at one row BLAS runs matrix-vector kernels ~2× cheaper per step than the
# packed GEMMs of larger batches, which the latency model's small-batch ramp describes (a grid from
# batch 4 left the model ~1.75× too slow at batch 1: ``bench/local_runtime.py``). The smallest token
# count (64) and every batch each appear in two or more points, so that leaving one out (the fit's
# LOO error) never leaves the low end to a knee or a ramp.
CPU_GRID = Grid(
    prefill=(
        *((2, 32), (1, 64), (2, 64), (1, 128), (2, 128), (4, 64), (1, 256), (1, 512), (8, 64)),
        *((1, 1024), (2, 512), (4, 256), (8, 128), (1, 1536), (1, 2048)),
    ),
    decode=_pairs((1, 2, 4, 8, 16, 32, 64), (16, 256, 1024, 2048), lambda b, c: b * c <= 32768),
    prefill_budget=TimingBudget(point_budget_s=0.8, min_repeats=4, max_repeats=30, passes=5),
    decode_budget=TimingBudget(point_budget_s=1.0, min_repeats=5, max_repeats=40, passes=5),
)
# The quick grid's prefill reaches 1,536-token prompts: prompts up to a 2,048-token prefill batch
# are what a CPU instance serves, and a grid that ended at 512 left the quadratic pair term to be
# extrapolated up to 9× (long prompts of 768-1,536 tokens were priced +28 … +132 % too slow,
# ``bench/local_steps.py``). The two long points cost about as much as the rest of the prefill
# grid together, so every point gets at least 3 timed repeats (the long ones exactly 3) instead of 4.
# (8, 192) is a batch of several prompts at 1,536 tokens, beside the one prompt of 1,536 tokens
# timed in the same rounds: the two differ only in pairs (Σn², 8× apart), so per-token and per-pair
# cost are told apart by a difference at one token count instead of by the curvature across single
# prompts, which a per-token cost that rises with the tokens (caches, page faults above 1,024) passes
# off as pairs; and it sits inside the local runtime's batches of 3-8 chat prompts (1,000-2,400
# tokens). Fits on the grid's rows without such a row priced those batches −18 … +2 % off their
# measured cost, with one −10 … +4 % (four measurements, ``bench/prefill_mix.py``); about 9 s more.
CPU_QUICK_GRID = Grid(
    prefill=(
        (2, 32),
        (1, 64),
        (2, 64),
        (4, 64),
        (1, 128),
        (2, 128),
        (1, 256),
        (1, 512),
        (1, 1024),
        (8, 192),
        (1, 1536),
    ),
    decode=(*_pairs((1, 2, 4, 8, 16, 32), (16, 512), lambda b, c: True), (1, 1024), (4, 1024), (8, 1024)),
    prefill_budget=TimingBudget(point_budget_s=0.35, min_repeats=3, max_repeats=16, passes=5),
    # 15 decode points at 0.35 s each: about the timed time of the 10 at 0.45 s before batches 1-2
    decode_budget=TimingBudget(point_budget_s=0.35, min_repeats=6, max_repeats=24, passes=5),
)
# CUDA: realistic serving shapes for 7-70B models on one H100-class GPU (prefill batches up to
# 16k tokens, decode batches up to 256 with contexts up to 8k); trimmed to the memory first.
_CUDA_BUDGET = TimingBudget(0.5, min_repeats=5, max_repeats=50, passes=2, warmup=2, breakdown_repeats=3)
_CUDA_QUICK_BUDGET = TimingBudget(0.2, min_repeats=5, max_repeats=20, passes=1, warmup=2)
_CONTEXTS = (128, 512, 1024, 2048, 4096, 8192)
CUDA_GRID = Grid(
    prefill=_pairs((1, 2, 4, 8, 16), (128, 256, 512, 1024, 2048, 4096, 8192), lambda s, n: s * n <= 16384),
    decode=_pairs((1, 8, 16, 32, 64, 128, 256), _CONTEXTS, lambda b, c: b * c <= 262144),
    prefill_budget=_CUDA_BUDGET,
    decode_budget=_CUDA_BUDGET,
)
CUDA_QUICK_GRID = Grid(
    prefill=_pairs((1, 4, 16), (256, 1024, 4096), lambda s, n: s * n <= 16384),
    decode=_pairs((1, 16, 64, 256), (512, 2048, 8192), lambda b, c: b * c <= 262144),
    prefill_budget=_CUDA_QUICK_BUDGET,
    decode_budget=_CUDA_QUICK_BUDGET,
)


def default_grid(device: torch.device, quick: bool) -> Grid:
    if device.type == "cuda":
        return CUDA_QUICK_GRID if quick else CUDA_GRID
    return CPU_QUICK_GRID if quick else CPU_GRID


# --- memory -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryNeed:
    """Bytes the measurement holds at its peak on the device (per GPU for a TP shard)."""

    weights_bytes: int
    kv_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes

    def describe(self) -> str:
        w, kv, act = (b / (1 << 30) for b in (self.weights_bytes, self.kv_bytes, self.activation_bytes))
        gib = f"{w + kv + act:.2f} GiB: weights {w:.2f} + KV {kv:.2f} + activations {act:.2f}"
        return f"{self.total_bytes} bytes ({gib})"


def _kv_tokens(phase: str, a: int, b: int) -> int:
    """Cache positions held by one grid point (capacity, aligned) — decode adds the source block."""
    if phase == "prefill":
        return a * aligned_capacity(b + 1)
    return a * aligned_capacity(b + 1) + b


def _activation_bytes(shard: ModelSpec, tokens: int, seqs: int, dtype: str) -> int:
    """Peak live activations of one forward: the residual stream, norm output, q/k/v, attention
    output, gate/up and SwiGLU product for ``tokens`` tokens, RoPE tables (float32), and float32
    logits of one token per sequence (a conservative sum: several are freed before others exist)."""
    width = 4 * shard.hidden_size + shard.q_size + 2 * shard.kv_size + 3 * shard.intermediate_size
    rope = 4 * tokens * shard.head_dim * 4
    return tokens * width * DTYPE_BYTES[dtype] + rope + 4 * seqs * shard.vocab_size


def memory_need(shard: ModelSpec, grid: Grid, dtype: str) -> MemoryNeed:
    """Weights + the grid's largest KV + its largest activations, for ``shard`` in ``dtype``."""
    kv_per_token = shard.kv_bytes_per_token(dtype)
    kv = max(
        [_kv_tokens("prefill", s, n) for s, n in grid.prefill]
        + [_kv_tokens("decode", b, c) for b, c in grid.decode]
    )
    act = max(
        [_activation_bytes(shard, s * n, s, dtype) for s, n in grid.prefill]
        + [_activation_bytes(shard, b, b, dtype) for b, _ in grid.decode]
    )
    return MemoryNeed(shard.weight_bytes(dtype), kv * kv_per_token, act)


def fit_grid(shard: ModelSpec, grid: Grid, dtype: str, memory_bytes: int, model: str) -> Grid:
    """``grid`` without the points whose KV does not fit next to the weights and activations, and
    without contexts beyond the model's ``max_position_embeddings``.

    Raises:
        ProfileError: the weights and the smallest points do not fit (bytes needed vs available).
    """
    usable = int(memory_bytes * MEMORY_UTILISATION)
    base = memory_need(shard, grid, dtype)
    kv_budget = usable - base.weights_bytes - base.activation_bytes
    kv_per_token = shard.kv_bytes_per_token(dtype)
    max_len = shard.max_position_embeddings

    def fits(phase: str, a: int, b: int) -> bool:
        return b + 1 <= max_len and _kv_tokens(phase, a, b) * kv_per_token <= kv_budget

    prefill = tuple((s, n) for s, n in grid.prefill if fits("prefill", s, n))
    decode = tuple((b, c) for b, c in grid.decode if fits("decode", b, c))
    if len(prefill) < _MIN_PREFILL_POINTS or len(decode) < _MIN_DECODE_POINTS:
        smallest = sorted(_kv_tokens("decode", b, c) for b, c in grid.decode)[_MIN_DECODE_POINTS - 1]
        need = MemoryNeed(base.weights_bytes, smallest * kv_per_token, base.activation_bytes)
        raise ProfileError(
            f"model {model!r} does not fit for profiling: needs at least {need.describe()} "
            f"(× 1/{MEMORY_UTILISATION} head-room), hardware memory_bytes is {memory_bytes} "
            f"({memory_bytes / (1 << 30):.2f} GiB)"
        )
    dropped = len(grid.prefill) + len(grid.decode) - len(prefill) - len(decode)
    if dropped:
        log.info("left out %d grid points whose KV does not fit in memory", dropped)
    return dataclasses.replace(grid, prefill=prefill, decode=decode)

"""Measured profiles: time the executor on a grid of prefill and decode shapes.

``measure_profile`` builds an :class:`~pdplan.profiles.executor.Executor` (real or seeded random
weights; cost depends on shapes) and times

- one prefill forward of ``num_seqs`` random prompts of ``seq_len`` tokens each (new KV caches
  included), for every (num_seqs, seq_len) of the grid;
- one decode step of ``batch_size`` sequences whose caches hold ``context_len`` tokens each, for
  every (batch_size, context_len) of the grid (caches are filled with random keys and values and
  truncated back to ``context_len`` before every timed step, so every repeat sees the same shape).

Discipline (as gpt-fast/nanoGPT; ``timing.py``): warm-up calls; the device synchronised around each
timed call (CUDA events; on the CPU the thread's CPU time when torch runs one thread, the default
here); repeats sized so each point gets about the same timed time and spread over several rounds
of the grid; the garbage collector paused; the **median** as ``latency_ms``, ``p10_ms``/``p90_ms``
and ``repeats`` as the spread. Separate instrumented calls give the ``gemm | attention | other``
breakdown in ``ops`` (attention includes the KV cache writes).

Tensor parallelism on one device (``tp > 1``): the executor runs rank 0's shard, and the two
all-reduces per layer of Megatron-style TP (after attention, after the MLP; Shoeybi et al. 2019)
are added from a link model, ring all-reduce of ``T·hidden·dtype_bytes`` bytes (``T`` tokens in the
step) over ``tp`` ranks (Patarasuk & Yuan 2009)::

    t_allreduce = latency + 2·(tp − 1)/tp · bytes / bandwidth         (per all-reduce)
    allreduce_ms = 2 · num_layers · t_allreduce
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.executor import TORCH_DTYPES, Executor, default_dtype, parse_device
from pdplan.profiles.kv_cache import aligned_capacity
from pdplan.profiles.model_spec import DTYPE_BYTES, ModelSpec, shard_spec
from pdplan.profiles.profile import Profile
from pdplan.profiles.timing import Calls, OpTimer, Samples, TimingBudget, cpu_clock, measure_rounds

log = logging.getLogger(__name__)

#: Fixed cost of one all-reduce when neither the caller nor the hardware gives one: NVLink's
#: small-message all-reduce latency (see ``profiles/hardware.py``, derived from gpt-fast's TP runs).
DEFAULT_LINK_LATENCY_US = 20.0
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


# --- all-reduce model -------------------------------------------------------------------------
@dataclass(frozen=True)
class AllReduceModel:
    """Ring all-reduce cost of Megatron TP: two all-reduces of the hidden states per layer."""

    tp: int
    num_layers: int
    hidden_size: int
    dtype_bytes: int
    bandwidth_gbps: float
    latency_us: float

    def step_ms(self, tokens: int) -> float:
        """All-reduce milliseconds of one forward over ``tokens`` tokens (0 when ``tp`` is 1)."""
        if self.tp == 1:
            return 0.0
        num_bytes = tokens * self.hidden_size * self.dtype_bytes
        one = self.latency_us * 1e-6 + 2 * (self.tp - 1) / self.tp * num_bytes / (self.bandwidth_gbps * 1e9)
        return 2 * self.num_layers * one * 1e3

    def describe(self) -> str:
        return (
            f"all-reduce per layer ×2, ring: t = {self.latency_us:g} us + 2·(tp−1)/tp · "
            f"tokens·{self.hidden_size}·{self.dtype_bytes} B / {self.bandwidth_gbps:g} GB/s (tp={self.tp})"
        )


# --- measuring --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    """One grid point."""

    phase: str  # prefill | decode
    first: int  # num_seqs | batch_size
    second: int  # seq_len | context_len

    @property
    def keys(self) -> dict[str, int]:
        if self.phase == "prefill":
            return {"num_seqs": self.first, "seq_len": self.second}
        return {"batch_size": self.first, "context_len": self.second}

    @property
    def tokens(self) -> int:
        """Tokens through the GEMMs (and so through the all-reduces) in one forward."""
        return self.first * self.second if self.phase == "prefill" else self.first


class _Bench:
    """Builds the inputs of a shape's forward: random prompts, or caches filled with random KV.

    Decode caches are kept for the next rounds while they fit in ``keep_bytes`` (memory the grid's
    largest point leaves free), and rebuilt otherwise: filling them costs more than a step.
    """

    def __init__(self, ex: Executor, keep_bytes: int) -> None:
        self.ex = ex
        self.rng = np.random.default_rng(0)
        self.gen = torch.Generator(device=ex.device)
        self.gen.manual_seed(0)
        self.keep_bytes = keep_bytes
        self.kept: dict[_Shape, Calls] = {}

    def instrument(self, timer: OpTimer | None) -> None:
        self.ex.op_timer = timer

    def calls_of(self, shapes: list[_Shape]) -> Callable[[int], Calls]:
        return lambda i: self.calls(shapes[i])

    def calls(self, shape: _Shape) -> Calls:
        """One forward of ``shape`` on new inputs."""
        ex, vocab = self.ex, self.ex.full_spec.vocab_size
        if shape.phase == "prefill":
            prompts = self.rng.integers(0, vocab, size=(shape.first, shape.second)).tolist()
            return Calls(lambda: ex.prefill(prompts), before=None)
        if shape in self.kept:
            return self.kept[shape]
        caches = ex.filled_caches(shape.first, shape.second, generator=self.gen)
        tokens = self.rng.integers(0, vocab, size=shape.first).tolist()

        def rewind() -> None:
            for cache in caches:
                cache.truncate(shape.second)

        calls = Calls(lambda: ex.decode(tokens, caches), before=rewind)
        held = sum(cache.nbytes for cache in caches)
        if held <= self.keep_bytes:
            self.keep_bytes -= held
            self.kept[shape] = calls
        return calls


# --- the profile ------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for package in ("pdplan", "transformers", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def _check_hardware(hardware: dict[str, Any]) -> int:
    missing = [k for k in ("name", "memory_bytes") if k not in hardware]
    if missing:
        raise ConfigError(f"hardware lacks {', '.join(missing)}; expected at least name and memory_bytes")
    memory = hardware["memory_bytes"]
    if not isinstance(memory, int) or memory <= 0:
        raise ConfigError(f"hardware memory_bytes={memory!r}; expected a positive integer")
    return memory


@dataclass(frozen=True)
class _Run:
    """Everything one measurement needs, resolved and validated."""

    spec: ModelSpec
    device: torch.device
    dtype: str
    tp: int
    grid: Grid
    allreduce: AllReduceModel
    weights: Path | None
    threads: int
    quick: bool
    keep_bytes: int = 0
    clock: str = ""


def measure_profile(
    spec: ModelSpec,
    *,
    hardware: dict[str, Any],
    device: str = "cpu",
    tp: int = 1,
    dtype: str | None = None,
    quick: bool = False,
    weights: Path | None = None,
    link_bandwidth_gbps: float | None = None,
    link_latency_us: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    grid: Grid | None = None,
    threads: int | None = None,
) -> Profile:
    """Measure ``spec`` (rank 0's shard when ``tp > 1``) on ``device`` and return a measured Profile.

    Args:
        spec: the full model.
        hardware: at least ``name`` and ``memory_bytes`` (per device); copied into the profile.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        tp: tensor parallelism; the all-reduces are modelled (module docstring) with
            ``link_bandwidth_gbps`` (else ``hardware["link_bandwidth_gbps"]``) and
            ``link_latency_us`` (else ``hardware["link_latency_us"]``, else 20 µs).
        dtype: float32 | float16 | bfloat16; default float32 on CPU, bfloat16 on CUDA.
        quick: a smaller grid with fewer repeats (seconds instead of a minute on a CPU).
        weights: an HF model directory (real weights); ``None`` for seeded random weights.
        progress: called with ``(done, total)`` measurement steps (grid points × rounds), first
            with ``(0, total)``.
        grid: the shapes and timing budget; default :func:`default_grid` for the device and ``quick``.
        threads: CPU threads for the measurement (``torch.set_num_threads``, restored afterwards);
            default 1 on the CPU (one core per CPU instance, as when a prefill and a decode worker
            share a small machine; it also lets the clock leave out other processes' time, see
            ``timing.py``), torch's current setting on a GPU. Recorded as
            ``hardware["cpu_threads"]``; serve with the same count.

    Raises:
        ConfigError: bad device, dtype, tp, threads, weights or hardware dict.
        ProfileError: the model and the smallest grid do not fit ``hardware["memory_bytes"]`` (the
            message gives bytes needed and available); tp > 1 without a link bandwidth.
    """
    memory = _check_hardware(hardware)
    dev = parse_device(device)
    dtype_name = dtype or default_dtype(dev)
    if dtype_name not in TORCH_DTYPES:
        raise ConfigError(f"dtype {dtype_name!r}: expected one of {', '.join(TORCH_DTYPES)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: expected a positive integer")
    shard = shard_spec(spec, tp)
    grid = fit_grid(shard, grid or default_grid(dev, quick), dtype_name, memory, spec.name)
    bandwidth = link_bandwidth_gbps or hardware.get("link_bandwidth_gbps")
    if tp > 1 and not bandwidth:
        raise ProfileError(f"--tp {tp} needs a link bandwidth (GB/s) to model the all-reduces")
    latency = link_latency_us if link_latency_us is not None else hardware.get("link_latency_us")
    allreduce = AllReduceModel(
        tp=tp,
        num_layers=shard.num_layers,
        hidden_size=shard.hidden_size,
        dtype_bytes=DTYPE_BYTES[dtype_name],
        bandwidth_gbps=float(bandwidth or 1.0),
        latency_us=float(DEFAULT_LINK_LATENCY_US if latency is None else latency),
    )
    saved_threads = torch.get_num_threads()
    if threads is None:
        threads = 1 if dev.type == "cpu" else saved_threads
    # Decode inputs may stay allocated between rounds in what the largest point leaves free.
    spare = int(memory * MEMORY_UTILISATION) - memory_need(shard, grid, dtype_name).total_bytes
    keep = max(0, min(spare, memory // 4))
    run = _Run(spec, dev, dtype_name, tp, grid, allreduce, weights, threads, quick, keep)
    torch.set_num_threads(run.threads)
    run = dataclasses.replace(run, clock=cpu_clock()[0])
    try:
        measured = _measure_grid(run, progress)
    finally:
        torch.set_num_threads(saved_threads)
    return _build_profile(run, hardware, _tables(run, measured))


def _measure_grid(run: _Run, progress: Callable[[int, int], None] | None) -> list[tuple[_Shape, Samples]]:
    """Every grid shape with its samples (``timing.measure_rounds``)."""
    grid = run.grid
    phases = [
        ([_Shape("prefill", *p) for p in grid.prefill], grid.prefill_budget),
        ([_Shape("decode", *d) for d in grid.decode], grid.decode_budget),
    ]
    ex = Executor(run.spec, device=str(run.device), dtype=run.dtype, weights=run.weights, tp=run.tp)
    bench = _Bench(ex, run.keep_bytes)
    ex.decode([0], ex.prefill([[0] * 16])[1])  # first calls of the process: library set-up, page-ins
    total = sum(len(shapes) * (1 + budget.passes) for shapes, budget in phases)
    done = [0]

    def step() -> None:
        if progress is not None:
            progress(done[0], total)
        done[0] += 1

    step()
    measured: list[tuple[_Shape, Samples]] = []
    for shapes, budget in phases:
        calls = bench.calls_of(shapes)
        samples = measure_rounds(
            len(shapes), calls, ex.device, budget, instrument=bench.instrument, step=step
        )
        measured += zip(shapes, samples, strict=True)
    return measured


def _tables(run: _Run, measured: list[tuple[_Shape, Samples]]) -> dict[str, pd.DataFrame]:
    """The prefill, decode and ops tables; the modelled all-reduce is added to every time."""
    rows: dict[str, list[dict[str, Any]]] = {"prefill": [], "decode": [], "ops": []}
    for shape, sample in measured:
        extra = run.allreduce.step_ms(shape.tokens)
        t = np.asarray(sample.times_ms)
        rows[shape.phase].append(
            {
                **shape.keys,
                "latency_ms": float(np.median(t)) + extra,
                "p10_ms": float(np.percentile(t, 10)) + extra,
                "p90_ms": float(np.percentile(t, 90)) + extra,
                "repeats": len(t),
            }
        )
        for op, ms in [*sample.ops_ms.items(), ("allreduce", extra)]:
            rows["ops"].append({"phase": shape.phase, **shape.keys, "op": op, "latency_ms": ms})
    ops = pd.DataFrame(
        rows["ops"], columns=["phase", "num_seqs", "seq_len", "batch_size", "context_len", "op", "latency_ms"]
    )
    for col in ("num_seqs", "seq_len", "batch_size", "context_len"):
        ops[col] = ops[col].astype("Int64")
    return {"prefill": pd.DataFrame(rows["prefill"]), "decode": pd.DataFrame(rows["decode"]), "ops": ops}


def _build_profile(run: _Run, hardware: dict[str, Any], tables: dict[str, pd.DataFrame]) -> Profile:
    hw = dict(hardware)
    hw.setdefault("device", str(run.device))
    on_cpu = run.device.type == "cpu"
    if on_cpu:
        hw["cpu_threads"] = run.threads
    pre, dec = run.grid.prefill_budget, run.grid.decode_budget
    notes = (
        f"measured executor on {run.device} ({'quick' if run.quick else 'default'} grid"
        + (f", {run.threads} CPU threads, clock: {run.clock}" if on_cpu else ", clock: CUDA events")
        + f"); latency_ms = median of {pre.min_repeats}-{pre.max_repeats} (prefill) and "
        f"{dec.min_repeats}-{dec.max_repeats} (decode) repeats spread over {1 + pre.passes} and "
        f"{1 + dec.passes} rounds of the grid, p10_ms/p90_ms = spread; ops = medians of separate "
        "instrumented calls"
    )
    if run.tp > 1:
        notes += f"; tp={run.tp}: rank-0 shard measured + modelled {run.allreduce.describe()}"
    return Profile(
        method="measured",
        model=run.spec,
        hardware=hw,
        dtype=run.dtype,
        tp=run.tp,
        prefill=tables["prefill"],
        decode=tables["decode"],
        ops=tables["ops"],
        versions=_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )

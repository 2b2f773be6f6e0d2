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
from pdplan.profiles.grids import MEMORY_UTILISATION, Grid, default_grid, fit_grid, memory_need
from pdplan.profiles.model_spec import DTYPE_BYTES, ModelSpec, shard_spec
from pdplan.profiles.profile import Profile
from pdplan.profiles.timing import Calls, OpTimer, Samples, cpu_clock, measure_rounds

log = logging.getLogger(__name__)

#: Fixed cost of one all-reduce when neither the caller nor the hardware gives one: NVLink's
#: small-message all-reduce latency (see ``profiles/hardware.py``, derived from gpt-fast's TP runs).
DEFAULT_LINK_LATENCY_US = 20.0


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

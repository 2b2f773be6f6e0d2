"""Timing discipline for the profiler: device synchronisation, repeated timing, op sections.

``time_call`` warms up, then times each repeat on its own (CUDA events on a GPU, the device
synchronised before and after), as gpt-fast and nanoGPT do. On the CPU the clock is
``perf_counter`` (wall time), except when torch runs on **one thread**: then it is the calling
thread's CPU time (``time.thread_time``), which is where all the forward's work runs. On an idle
machine the two agree; on a shared one the thread clock leaves out the time the OS gave to other
processes (their contention for caches and memory bandwidth still shows, in the spread).

``OpTimer`` is the optional hook the executor uses to attribute time to op categories: every
section synchronises the device on entry and exit, so it is for a separate breakdown pass, never
for the headline time.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

#: The op categories of a forward pass (``ops.csv``'s ``op`` column; ``allreduce`` is modelled).
OP_CATEGORIES = ("gemm", "attention", "other", "allreduce")


def synchronize(device: torch.device) -> None:
    """Wait until every queued kernel on ``device`` has finished (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_clock() -> tuple[str, Callable[[], float]]:
    """The CPU clock (name, seconds function) for torch's current thread count (module docstring)."""
    if torch.get_num_threads() == 1:
        return "thread CPU time", time.thread_time
    return "wall time", time.perf_counter


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    before: Callable[[], object] | None = None,
) -> list[float]:
    """Milliseconds of ``repeats`` separate calls of ``fn`` after ``warmup`` untimed ones.

    ``before`` runs (untimed) ahead of every call, to restore state such as a KV cache's length.
    Python's garbage collector is paused meanwhile (as ``timeit`` does), so a collection of the
    whole heap never lands inside one timed call.
    """
    assert repeats >= 1 and warmup >= 0, f"repeats={repeats}, warmup={warmup}"
    with _gc_paused():
        return _time_calls(fn, device, warmup, repeats, before)


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _time_calls(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    repeats: int,
    before: Callable[[], object] | None,
) -> list[float]:
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    synchronize(device)
    clock = cpu_clock()[1]
    times: list[float] = []
    for _ in range(repeats):
        if before is not None:
            before()
        synchronize(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            t0 = clock()
            fn()
            times.append((clock() - t0) * 1e3)
    return times


class OpTimer:
    """Accumulates milliseconds per op category across sections (device synchronised around each)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clock = time.perf_counter if device.type == "cuda" else cpu_clock()[1]
        self.totals_ms: dict[str, float] = dict.fromkeys(OP_CATEGORIES, 0.0)

    @contextmanager
    def section(self, category: str) -> Iterator[None]:
        assert category in self.totals_ms, f"unknown op category {category!r}"
        synchronize(self.device)
        t0 = self.clock()
        try:
            yield
        finally:
            synchronize(self.device)
            self.totals_ms[category] += (self.clock() - t0) * 1e3

    def reset(self) -> None:
        for key in self.totals_ms:
            self.totals_ms[key] = 0.0


@dataclass(frozen=True)
class TimingBudget:
    """How each shape of a grid is timed.

    A first round over the grid runs ``warmup`` untimed calls of each shape and one timed call
    that sizes its repeats (enough for about ``point_budget_s`` of timed calls, clamped to
    ``[min_repeats, max_repeats]``). The remaining repeats are spread over ``passes`` further
    rounds over the whole grid, so a burst of outside load lands on a few samples of many shapes
    (and is voted out by the medians) instead of on every sample of one shape. The second round
    (the first when ``passes`` is 0) also runs ``breakdown_repeats`` instrumented calls.
    """

    point_budget_s: float
    min_repeats: int
    max_repeats: int
    passes: int
    warmup: int = 1
    breakdown_repeats: int = 1

    def repeats_for(self, first_ms: float) -> int:
        wanted = math.ceil(self.point_budget_s * 1e3 / max(first_ms, 1e-3))
        return min(max(wanted, self.min_repeats), self.max_repeats)


def op_breakdown(
    fn: Callable[[], object],
    device: torch.device,
    *,
    repeats: int,
    instrument: Callable[[OpTimer | None], None],
    before: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median milliseconds per op category over ``repeats`` instrumented calls of ``fn``;
    ``instrument(timer)`` attaches the op timer to the executor (``None`` detaches it)."""
    timer = OpTimer(device)
    samples: dict[str, list[float]] = {op: [] for op in ("gemm", "attention", "other")}
    instrument(timer)
    try:
        for _ in range(repeats):
            if before is not None:
                before()
            timer.reset()
            fn()
            for op, values in samples.items():
                values.append(timer.totals_ms[op])
    finally:
        instrument(None)
    return {op: statistics.median(v) for op, v in samples.items()}


@dataclass(frozen=True)
class Calls:
    """How to run one shape: ``fn`` is one forward; ``before`` restores state ahead of each call."""

    fn: Callable[[], object]
    before: Callable[[], object] | None


@dataclass
class Samples:
    """Timed milliseconds of one shape and its op breakdown."""

    repeats: int = 0
    times_ms: list[float] = field(default_factory=list)
    ops_ms: dict[str, float] = field(default_factory=dict)


def _share(remaining: int, passes: int, round_: int) -> int:
    """Round ``round_``'s (1..passes) share of ``remaining`` repeats, spread evenly over the rounds
    (2 repeats over 5 rounds go to rounds 3 and 5), so a shape's samples span the whole phase."""
    return remaining * round_ // passes - remaining * (round_ - 1) // passes


def measure_rounds(
    num_shapes: int,
    calls: Callable[[int], Calls],
    device: torch.device,
    budget: TimingBudget,
    *,
    instrument: Callable[[OpTimer | None], None],
    step: Callable[[], None] | None = None,
) -> list[Samples]:
    """Time shapes ``0 .. num_shapes-1`` in rounds (see :class:`TimingBudget`).

    ``calls(i)`` builds shape ``i``'s inputs afresh (it is called once per round that times it)
    and must leave nothing cold for the first call (page faults, lazy allocation): later rounds
    time it without a warm-up. ``step()`` is called after each shape of each round.
    """
    samples = [Samples() for _ in range(num_shapes)]
    run: Calls | None = None
    breakdown_round = min(1, budget.passes)  # a warm shape: round 0 already ran it
    for round_ in range(1 + budget.passes):
        for i, sample in enumerate(samples):
            count = 1 if round_ == 0 else _share(sample.repeats - 1, budget.passes, round_)
            if count or round_ == breakdown_round:
                run = None  # free the previous shape's inputs (KV caches) before building these
                run = calls(i)
                warmup = budget.warmup if round_ == 0 else 0
                if count:
                    sample.times_ms += time_call(
                        run.fn, device, warmup=warmup, repeats=count, before=run.before
                    )
                if round_ == 0:
                    sample.repeats = budget.repeats_for(sample.times_ms[0])
                if round_ == breakdown_round:
                    sample.ops_ms = op_breakdown(
                        run.fn,
                        device,
                        repeats=budget.breakdown_repeats,
                        instrument=instrument,
                        before=run.before,
                    )
            if step is not None:
                step()
    assert all(len(s.times_ms) == s.repeats for s in samples), "every shape got its repeats"
    return samples

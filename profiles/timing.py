"""Timing discipline for the profiler: device synchronisation, repeated timing, op sections.

``time_call`` warms up, then times each repeat on its own (CUDA events on a GPU, ``perf_counter``
on the CPU, the device synchronised before and after), as gpt-fast and nanoGPT do. ``OpTimer`` is
the optional hook the executor uses to attribute time to op categories: every section synchronises
the device on entry and exit, so it is for a separate breakdown pass, never for the headline time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

#: The op categories of a forward pass (``ops.csv``'s ``op`` column; ``allreduce`` is modelled).
OP_CATEGORIES = ("gemm", "attention", "other", "allreduce")


def synchronize(device: torch.device) -> None:
    """Wait until every queued kernel on ``device`` has finished (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """
    assert repeats >= 1 and warmup >= 0, f"repeats={repeats}, warmup={warmup}"
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    synchronize(device)
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
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


class OpTimer:
    """Accumulates milliseconds per op category across sections (device synchronised around each)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals_ms: dict[str, float] = dict.fromkeys(OP_CATEGORIES, 0.0)

    @contextmanager
    def section(self, category: str) -> Iterator[None]:
        assert category in self.totals_ms, f"unknown op category {category!r}"
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.totals_ms[category] += (time.perf_counter() - t0) * 1e3

    def reset(self) -> None:
        for key in self.totals_ms:
            self.totals_ms[key] = 0.0


@dataclass(frozen=True)
class TimingBudget:
    """How one shape is timed: ``warmup`` untimed calls, one sizing call, then repeats chosen so
    the timed calls take about ``point_budget_s`` (clamped to ``[min_repeats, max_repeats]``), then
    ``breakdown_repeats`` instrumented calls for the op breakdown."""

    warmup: int
    point_budget_s: float
    min_repeats: int
    max_repeats: int
    breakdown_repeats: int


@dataclass(frozen=True)
class PointTiming:
    """Timed milliseconds of one shape, and its op breakdown (medians of instrumented calls)."""

    times_ms: list[float]
    ops_ms: dict[str, float]


def time_point(
    fn: Callable[[], object],
    device: torch.device,
    budget: TimingBudget,
    *,
    instrument: Callable[[OpTimer | None], None],
    before: Callable[[], object] | None = None,
) -> PointTiming:
    """Time ``fn`` under ``budget``; ``instrument(timer)`` attaches the op timer (``None`` detaches)."""
    first = time_call(fn, device, warmup=budget.warmup, repeats=1, before=before)[0]
    wanted = math.ceil(budget.point_budget_s * 1e3 / max(first, 1e-3))
    repeats = min(max(wanted, budget.min_repeats), budget.max_repeats)
    times = time_call(fn, device, warmup=0, repeats=repeats, before=before)
    timer = OpTimer(device)
    samples: dict[str, list[float]] = {op: [] for op in ("gemm", "attention", "other")}
    instrument(timer)
    try:
        for _ in range(budget.breakdown_repeats):
            if before is not None:
                before()
            timer.reset()
            fn()
            for op, values in samples.items():
                values.append(timer.totals_ms[op])
    finally:
        instrument(None)
    return PointTiming(times, {op: statistics.median(v) for op, v in samples.items()})

"""Closed-loop clients: ``concurrency`` users, each sending its next request when its previous one
ends plus ``think_time_s`` — the fixed-concurrency benchmark (SGLang ``bench_serving
--max-concurrency C`` or vLLM ``benchmark_serving --max-concurrency C`` at an infinite request
rate) that most published serving numbers come from.

The request list keeps its lengths; its arrival times are *made* during the run: requests
``0..C-1`` arrive at 0, and each time a request ends (finishes, or is rejected at arrival) the
next request in list order arrives ``think_time_s`` later. With a constant think time the arrivals
stay in list order, so the runs' own arrival handling is reused unchanged: the run asks
``schedule_arrival(i)`` for the next wake-up, and this module answers only once request ``i`` has
been issued. A request never issued (the run stopped first) has a NaN arrival and is
``unfinished``.

How a run learns that a request ended without touching the instance code: the ledger's
``finish_s`` and ``rejected`` arrays are replaced by array subclasses that call back on write
(every instance writes an end through them exactly once).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.disagg import Run
from pdplan.sim.kernel import ARRIVAL


@dataclass(frozen=True)
class ClosedLoop:
    """``concurrency`` clients (≥ 1) with ``think_time_s`` (≥ 0) between a reply and the next request."""

    concurrency: int
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise ConfigError(f"arrival.concurrency={self.concurrency!r}; expected an integer ≥ 1")
        think = self.think_time_s
        if (
            isinstance(think, bool)
            or not isinstance(think, (int, float))
            or not (math.isfinite(think) and think >= 0)
        ):
            raise ConfigError(f"arrival.think_time_s={think!r}; expected a number of seconds ≥ 0")


class _OnWrite(array):  # type: ignore[type-arg]
    """An ``array`` that calls ``hook(index, value)`` after each item write."""

    hook: Callable[[int, Any], None]

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self.hook(index, value)


class _Clients:
    """The closed-loop state bolted onto one run (disaggregated or colocated)."""

    def __init__(self, run: Run | ColocatedRun, loop: ClosedLoop) -> None:
        self.run, self.think = run, float(loop.think_time_s)
        n = run.num_requests
        first = min(loop.concurrency, n)
        self.issued = first
        self.idle = False  # the arrival chain waits for an issue
        for i in range(n):
            t = 0.0 if i < first else math.inf
            run.arrival[i] = t
            run.arrival_np[i] = t
        ledger = run.ledger
        finish = _OnWrite("d", ledger.finish_s)
        finish.hook = self._ended
        rejected = _OnWrite("b", ledger.rejected)
        rejected.hook = lambda i, v: self._ended(i, run.env.now) if v else None
        ledger.finish_s, ledger.rejected = finish, rejected

    def _ended(self, rid: int, now: float) -> None:
        run = self.run
        j = self.issued
        if j >= run.num_requests:
            return
        self.issued += 1
        t = now + self.think
        run.arrival[j] = t
        run.arrival_np[j] = t
        if self.idle and run.next_arrival == j:
            self.idle = False
            run.env.at(t, ARRIVAL, run.on_arrival)

    def schedule(self, i: int) -> None:
        t = self.run.arrival[i]
        if math.isfinite(t):
            self.run.env.at(t, ARRIVAL, self.run.on_arrival)
        else:
            self.idle = True

    def unissued_to_nan(self) -> None:
        arrival = self.run.arrival_np
        arrival[~np.isfinite(arrival)] = math.nan


class ClosedRun(Run):
    """A disaggregated run driven by closed-loop clients."""

    def __init__(self, *args: Any, loop: ClosedLoop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients = _Clients(self, loop)

    def schedule_arrival(self, i: int) -> None:
        self.clients.schedule(i)

    def run(self, until_s: float | None):  # type: ignore[no-untyped-def]
        result = super().run(until_s)
        self.clients.unissued_to_nan()
        return result


class ClosedColocatedRun(ColocatedRun):
    """A colocated run driven by closed-loop clients."""

    def __init__(self, *args: Any, loop: ClosedLoop, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clients = _Clients(self, loop)

    def schedule_arrival(self, i: int) -> None:
        self.clients.schedule(i)

    def run(self, until_s: float | None):  # type: ignore[no-untyped-def]
        result = super().run(until_s)
        self.clients.unissued_to_nan()
        return result

"""The event kernel: a SimPy ``Environment`` that schedules callbacks at *absolute* times.

SimPy orders events by (time, priority, insertion sequence), so runs are repeatable. The
simulator uses three priorities, which fix what happens first when events share a time:

1. ``ARRIVAL``: requests reach the router (so a batch formed at time t sees every request that
   arrived at t);
2. ``PREFILL``: prefill batches start and end (so KV that is ready at t can join a decode step
   that starts at t);
3. ``INSTANCE``: decode and colocated instances reach a step boundary.

SimPy's public ``schedule`` takes a *delay*; ``now + (t − now)`` can differ from ``t`` by one
ulp, and a closed-form step-boundary time must be hit exactly (the coalesced decode and the
one-event-per-step reference must agree bit for bit). ``Kernel.at`` therefore pushes the event at
the absolute time, as ``Environment.schedule`` does internally. Events carry plain callbacks;
there are no generator processes, which keeps an event at about a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.core import StopSimulation
from simpy.events import Event

ARRIVAL = 0
PREFILL = 1
INSTANCE = 2

#: A step count that stands for "never" (decode steps that take no time cannot reach a later time).
NEVER_STEPS = 1 << 62


class _Wake(Event):
    """An already-triggered event with one callback (what ``Timeout`` is, minus the delay).

    ``_ok``/``_value`` are class attributes and ``env`` is unset: the kernel's ``step`` reads only
    ``callbacks`` and ``_ok``, and setting one attribute per event instead of four is measurable at
    millions of events. These events are never yielded or triggered by user code.
    """

    _ok = True
    _value = None

    def __init__(self, callback: Callable[[Event], None]) -> None:
        self.callbacks = [callback]


class Kernel(simpy.Environment):
    """``simpy.Environment`` plus scheduling at an absolute time."""

    def at(self, time_s: float, priority: int, callback: Callable[[Event], None]) -> Event:
        """Run ``callback(event)`` at ``time_s`` (≥ now) with ``priority``; returns the event."""
        assert time_s >= self._now, f"event at {time_s} is in the past (now {self._now})"
        event = _Wake(callback)
        heappush(self._queue, (time_s, priority, next(self._eid), event))  # type: ignore[misc]
        return event

    def run(self, until: Any = None) -> Any:
        """``Environment.run``; without ``until``, SimPy's ``step`` loop inlined (the run's own
        events are ``_Wake``s that never fail; any other event is checked as ``step`` checks it).
        Same events in the same order: only the per-event call overhead goes."""
        if until is not None:
            return super().run(until)
        queue = self._queue
        try:
            while queue:
                self._now, _, _, event = heappop(queue)  # type: ignore[misc]
                callbacks, event.callbacks = event.callbacks, None  # type: ignore[assignment]
                for callback in callbacks:  # type: ignore[union-attr]
                    callback(event)
                if not event._ok and not hasattr(event, "_defused"):
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    raise exc
        except StopSimulation as stop:
            return stop.args[0]
        return None

    def events_scheduled(self) -> int:
        """Events scheduled so far (SimPy numbers them; call when the run is over)."""
        return next(self._eid)


def boundary_s(t0: float, first: float, q: float, k: int) -> float:
    """Time of the k-th step boundary of a decode segment that started at ``t0``.

    With an unchanged batch of B sequences holding C context tokens, step j (0-based) costs
    ``first + 2·q·j`` where ``first = e + f·B + g·C`` and ``q = g·B/2``, so k steps cost
    ``k·first + q·k(k−1)`` (``LatencyModel.decode_steps_ms``). Every boundary time in the simulator
    (and its test reference) is computed by this one expression, from the segment start.
    """
    return t0 + (k * first + q * (k * (k - 1)))


def first_boundary_at_or_after(t0: float, first: float, q: float, time_s: float) -> int:
    """The smallest k ≥ 1 with ``boundary_s(t0, first, q, k) >= time_s`` (``NEVER_STEPS`` when
    steps take no time).

    Inverts the closed form for a guess, then settles rounding with exact comparisons: gallop
    from the guess to a bracket, then bisect (``boundary_s`` is monotone in k, in floats too).
    ``boundary_s`` is inlined here (the same expression, so the same floats): this runs once per
    join.
    """
    rel = time_s - t0
    if q > 0:
        lin = first - q
        guess = (-lin + (lin * lin + 4.0 * q * rel) ** 0.5) / (2.0 * q)
    elif first > 0:
        guess = rel / first
    else:
        return NEVER_STEPS
    k = int(guess) if guess < NEVER_STEPS else NEVER_STEPS
    if k < 1:
        k = 1
    # Bracket: boundary(lo) < time_s (lo = 0 stands for "before the first boundary") ≤ boundary(hi).
    if t0 + (k * first + q * (k * (k - 1))) >= time_s:
        if k == 1:
            return 1
        j = k - 1
        if t0 + (j * first + q * (j * (j - 1))) < time_s:
            return k  # the usual case: the guess was exact
        hi, lo, step = j, j - 1, 1
        while lo >= 1 and boundary_s(t0, first, q, lo) >= time_s:
            hi, step = lo, step * 2
            lo = max(hi - step, 0)
    else:
        lo, hi, step = k, k + 1, 1
        while hi < NEVER_STEPS and boundary_s(t0, first, q, hi) < time_s:
            lo, step = hi, step * 2
            hi = min(lo + step, NEVER_STEPS)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if boundary_s(t0, first, q, mid) >= time_s:
            hi = mid
        else:
            lo = mid
    return hi

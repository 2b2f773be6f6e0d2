"""The event kernel: a ``simpy.Environment`` whose hot path schedules plain callbacks at *absolute*
times.

Events are ordered by (time, priority, insertion sequence), SimPy's rule, so runs are repeatable.
The simulator uses three priorities, which fix what happens first when events share a time:

1. ``ARRIVAL``: requests reach the router (so a batch formed at time t sees every request that
   arrived at t);
2. ``PREFILL``: prefill batches start and end (so KV that is ready at t can join a decode step
   that starts at t);
3. ``INSTANCE``: decode and colocated instances reach a step boundary.

An event is an entry ``(time_s, priority, event_id, callback)`` of SimPy's own heap
(``Environment._queue``); the kernel calls ``callback(event_id)`` at its time, and ``at`` returns
the id (an instance that re-plans its next wake compares ids to skip a superseded one). The
simulator's entities schedule no SimPy event objects: a run schedules millions of events, and the
heap push, pop and call are all an event costs. SimPy's events and processes still run on the
kernel — ``Kernel.schedule`` (what ``Timeout``, ``Event.succeed`` and ``Process`` call) puts them on
the same heap with the same id sequence, and they are processed as ``Environment.step`` processes
them — so a SimPy process (a workload generator, an autoscaler loop) can share a run with the
simulator's callbacks, in the one (time, priority, id) order.

The open-loop arrival chain (one pending arrival at a time, always scheduled by the arrival
callback or before the run) is kept beside the heap (``at_arrival``) rather than in it: it takes an
id like any event and runs exactly where the heap would have put it, without a push and a pop.

A closed-form step-boundary time must be hit exactly (the coalesced decode and the
one-event-per-step reference must agree bit for bit), so events take an absolute time, never a
delay (``now + (t − now)`` can differ from ``t`` by one ulp).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.core import EmptySchedule
from simpy.events import NORMAL

ARRIVAL = 0
PREFILL = 1
INSTANCE = 2

#: A step count that stands for "never" (decode steps that take no time cannot reach a later time).
NEVER_STEPS = 1 << 62

#: An event's id (what a callback receives, and ``at`` returns).
Event = int
Callback = Callable[[Event], None]


class StopRun(Exception):
    """Raised by a callback to end the run now (the time stays at the event's)."""


def _stop(event: Event) -> None:
    raise StopRun


def _process_simpy_event(event: Any, _event_id: Event) -> None:
    """Process a SimPy event taken from the heap, as ``simpy.Environment.step`` does."""
    callbacks, event.callbacks = event.callbacks, None
    for callback in callbacks:
        callback(event)
    if not event._ok and not hasattr(event, "_defused"):
        exc = type(event._value)(*event._value.args)
        exc.__cause__ = event._value
        raise exc


class Kernel(simpy.Environment):
    """A ``simpy.Environment`` with absolute-time callback scheduling; see the module docstring.

    ``now`` is a plain attribute here (a slot, set once per event) where SimPy's is a property
    over ``_now``; ``_now`` reads and writes it, for SimPy's own code."""

    __slots__ = ("_arrival_callback", "_arrival_id", "_arrival_s", "_n", "_queue", "now")
    now: float  # type: ignore[misc]  # a slot, where SimPy's is a read-only property
    _queue: list[tuple[float, int, int, Any]]  # type: ignore[assignment]  # entries hold callbacks

    def __init__(self) -> None:
        super().__init__(0.0)
        self._queue = []
        self._n = 0  # the next event id, shared by callbacks and SimPy events
        self._arrival_s = math.inf  # the pending arrival of the chain (inf: none)
        self._arrival_id = 0
        self._arrival_callback: Callback = _stop

    @property  # type: ignore[override]
    def _now(self) -> float:
        return self.now

    @_now.setter
    def _now(self, value: float) -> None:
        self.now = float(value)

    def schedule(self, event: simpy.Event, priority: int = NORMAL, delay: float = 0) -> None:
        """SimPy's ``Environment.schedule``: a SimPy event on the same heap, with the next id."""
        eid = self._n
        self._n = eid + 1
        heappush(self._queue, (self.now + delay, priority, eid, partial(_process_simpy_event, event)))

    def step(self) -> None:
        """Run the next event (SimPy's ``Environment.step``); ``EmptySchedule`` when none is left."""
        queue = self._queue
        arrival_s = self._arrival_s
        if queue:
            entry = queue[0]
            time_s = entry[0]
            if not (
                arrival_s < time_s
                or (arrival_s == time_s and (entry[1] > ARRIVAL or entry[2] > self._arrival_id))
            ):
                heappop(queue)
                self.now = time_s
                entry[3](entry[2])
                return
        if arrival_s < math.inf:
            self.now = arrival_s
            self._arrival_s = math.inf
            self._arrival_callback(self._arrival_id)
            return
        raise EmptySchedule

    def at(self, time_s: float, priority: int, callback: Callback) -> Event:
        """Run ``callback(event)`` at ``time_s`` (≥ now) with ``priority``; returns the event."""
        assert time_s >= self.now, f"event at {time_s} is in the past (now {self.now})"
        eid = self._n
        self._n = eid + 1
        heappush(self._queue, (time_s, priority, eid, callback))
        return eid

    def at_arrival(self, time_s: float, callback: Callback) -> Event:
        """``at(time_s, ARRIVAL, callback)`` for the arrival chain: at most one is pending, and the
        next is scheduled only by its callback (or before the run)."""
        assert time_s >= self.now, f"event at {time_s} is in the past (now {self.now})"
        assert self._arrival_s == math.inf, "one arrival of the chain is pending already"
        eid = self._n
        self._n = eid + 1
        self._arrival_s, self._arrival_id, self._arrival_callback = time_s, eid, callback
        return eid

    def peek(self) -> float:
        """The time of the next event (``inf`` when none is left)."""
        top = self._queue[0][0] if self._queue else math.inf
        return top if top < self._arrival_s else self._arrival_s

    def run(self, until: float | None = None) -> None:  # type: ignore[override]
        """Run the events in order until none is left, a callback raises ``StopRun``, or (with
        ``until``) time ``until`` is reached: as ``simpy.Environment.run(until)``, a stop event at
        ``until`` with the lowest priority value, scheduled now, so the time ends at ``until`` and
        no event at ``until`` scheduled later runs."""
        queue = self._queue
        if until is not None:
            assert until > self.now, f"until ({until}) must be after now ({self.now})"
            self.at(float(until), ARRIVAL, _stop)
        inf = math.inf
        try:
            while True:
                arrival_s = self._arrival_s
                if queue:
                    entry = queue[0]
                    time_s = entry[0]
                    # the heap's order, (time, priority, id), with the arrival as (t, ARRIVAL, id)
                    if arrival_s < time_s or (
                        arrival_s == time_s and (entry[1] > ARRIVAL or entry[2] > self._arrival_id)
                    ):
                        self.now = arrival_s
                        self._arrival_s = inf
                        self._arrival_callback(self._arrival_id)
                        continue
                    heappop(queue)
                    self.now = time_s
                    entry[3](entry[2])
                elif arrival_s < inf:
                    self.now = arrival_s
                    self._arrival_s = inf
                    self._arrival_callback(self._arrival_id)
                else:
                    return
        except StopRun:
            if until is not None:
                # SimPy's ``step`` (which ``run(until)`` used) re-queues the stopping event: count it
                # so that ``events_scheduled`` stays what it was
                self._n += 1
            return

    def events_scheduled(self) -> int:
        """Events scheduled so far (the stop event of ``run(until)`` included, as SimPy counts)."""
        return self._n


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

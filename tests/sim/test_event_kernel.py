"""The event kernel runs events in SimPy's order, (time, priority, insertion id), whether an event
sits in the heap or is the arrival chain's pending arrival beside it (``Kernel.at_arrival``)."""

from __future__ import annotations

import numpy as np

from pdplan.sim.kernel import ARRIVAL, INSTANCE, PREFILL, Callback, Event, Kernel, StopRun


class _AllInHeap(Kernel):
    """The reference: the arrival chain in the heap too, as an ordinary ``ARRIVAL`` event."""

    __slots__ = ()

    def at_arrival(self, time_s: float, callback: Callback) -> Event:
        return self.at(time_s, ARRIVAL, callback)


def _scenario(kernel: Kernel, seed: int) -> list[tuple[float, int]]:
    """Events at few distinct times and every priority, some scheduling more at the same instant,
    and an arrival chain that schedules its next arrival; returns (time, id) in the order run."""
    rng = np.random.default_rng(seed)
    log: list[tuple[float, int]] = []

    def spawn(event: Event) -> None:
        log.append((kernel.now, event))
        if rng.random() < 0.5:
            kernel.at(kernel.now + float(rng.integers(0, 2)), int(rng.integers(0, 3)), spawn)

    arrivals = sorted(float(t) for t in rng.integers(0, 6, size=12))

    def arrive(event: Event) -> None:
        log.append((kernel.now, event))
        if arrivals:
            kernel.at_arrival(arrivals.pop(0), arrive)

    for t in rng.integers(0, 6, size=40):
        kernel.at(float(t), int(rng.choice([ARRIVAL, PREFILL, INSTANCE])), spawn)
    kernel.at_arrival(arrivals.pop(0), arrive)
    kernel.run()
    assert kernel.events_scheduled() == len(log)
    return log


def test_the_arrival_chain_runs_where_the_heap_would_run_it() -> None:
    for seed in range(100):
        log = _scenario(Kernel(), seed)
        assert log == _scenario(_AllInHeap(), seed), f"seed {seed}"
        times = [t for t, _ in log]
        assert times == sorted(times) and len(set(times)) > 1


def test_until_stops_before_later_events_at_that_time() -> None:
    """``run(until)`` as SimPy's: the stop event takes the lowest priority value and the next id,
    so an arrival scheduled earlier at ``until`` runs and one scheduled later does not; the time
    ends at ``until`` and the re-queued stop event is counted."""
    kernel = Kernel()
    ran: list[str] = []
    kernel.at(2.0, ARRIVAL, lambda e: ran.append("early arrival"))
    kernel.at(2.0, INSTANCE, lambda e: ran.append("instance"))

    def chain(event: int) -> None:
        ran.append("chain")
        kernel.at_arrival(2.0, lambda e: ran.append("late arrival"))

    kernel.at_arrival(1.0, chain)
    kernel.run(until=2.0)
    assert ran == ["chain", "early arrival"]
    assert kernel.now == 2.0
    assert kernel.events_scheduled() == 6  # 4 scheduled + the stop event + SimPy's re-queue of it


def test_a_callback_stops_the_run_at_its_time() -> None:
    kernel = Kernel()

    def stop(event: int) -> None:
        raise StopRun

    kernel.at(1.5, INSTANCE, stop)
    kernel.at(3.0, INSTANCE, lambda e: None)
    kernel.run()
    assert kernel.now == 1.5 and kernel.peek() == 3.0


def test_simpy_processes_share_the_run_in_the_same_order() -> None:
    """The kernel is a ``simpy.Environment``: a SimPy process's timeouts take ids from the same
    sequence and run in the one (time, priority, id) order with the simulator's callbacks; a failed
    SimPy event crashes the run as in SimPy."""
    import pytest
    import simpy

    kernel = Kernel()
    assert isinstance(kernel, simpy.Environment)
    ran: list[tuple[str, float]] = []

    def process(env: simpy.Environment):
        yield env.timeout(1.0)
        ran.append(("process", env.now))
        yield env.timeout(1.0)
        ran.append(("process", env.now))
        return "done"

    proc = kernel.process(process(kernel))  # Initialize (id 0), then Timeout(1.0) at id 1 when it runs
    kernel.at(1.5, INSTANCE, lambda e: ran.append(("callback", kernel.now)))
    kernel.at(2.0, ARRIVAL, lambda e: ran.append(("arrival", kernel.now)))  # before the process's 2.0
    kernel.run()
    assert ran == [("process", 1.0), ("callback", 1.5), ("arrival", 2.0), ("process", 2.0)]
    assert proc.value == "done" and kernel.now == 2.0
    assert kernel.events_scheduled() == 6  # Initialize, 2 timeouts, 2 callbacks, the process's end

    failing = Kernel()

    def crash(env: simpy.Environment):
        yield env.timeout(1.0)
        raise ValueError("boom")

    failing.process(crash(failing))
    with pytest.raises(ValueError, match="boom"):
        failing.run()

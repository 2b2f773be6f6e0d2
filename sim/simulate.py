"""``simulate``: one pure call from a request list and a cluster to per-request records.

No file or network I/O and no global state: values in, values out. The request list is fixed
before the call, so every cluster evaluated on it sees identical traffic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.closed_loop import ClosedColocatedRun, ClosedLoop, ClosedRun
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.decode import DecodeInstance
from pdplan.sim.disagg import Run
from pdplan.sim.kernel import INSTANCE, StopRun
from pdplan.sim.records import SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.router import ROUTERS

log = logging.getLogger(__name__)
#: Early-stop checks run after every other event at their time.
_CHECK = INSTANCE + 1


@dataclass(frozen=True)
class EarlyStop:
    """Stop a run once too many measured requests have certainly missed a per-request threshold.

    A measured request (index ``measured_from`` on, in arrival order) has certainly missed when,
    at a check at time ``now`` (after every other event at ``now``, so what has not happened yet
    happens later): it was rejected; or its TTFT, taking a first token not yet delivered as
    delivered at ``now``, exceeds ``ttft_ms``; or its E2E, taking an unfinished request as
    finishing at ``now``, exceeds ``e2e_ms``; or, with more than one output token and its first
    token delivered, its TPOT taking it as finishing at ``now`` exceeds ``tpot_ms``. Each is a
    lower bound of the figure the run will end with, computed in the same floating-point
    expression as ``pdplan.sim.summary`` (monotone in the finish or first-token time), so no later
    event can undo a miss. Once more than ``max_late`` have missed, the run stops; requests not
    finished then are ``unfinished``. Checked every ``every_s`` of simulated time while the run
    has events left. A threshold that is ``None`` is not checked.
    """

    max_late: int
    measured_from: int
    every_s: float
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def __post_init__(self) -> None:
        assert self.every_s > 0 and self.max_late >= 0, "early-stop values"
        limits = (self.ttft_ms, self.tpot_ms, self.e2e_ms)
        assert any(x is not None for x in limits), "an early stop checks at least one threshold"
        assert all(x is None or x > 0 for x in limits), "thresholds are positive"


@dataclass(frozen=True)
class SimOptions:
    """How to run: the ``router`` policy (round_robin | least_loaded | random) and an optional
    ``max_time_s`` after which the run stops (requests not finished by then are ``unfinished``;
    ``None`` runs until every request is done — every accepted request always finishes).
    ``closed_loop`` replaces the request list's arrival times by closed-loop clients
    (``pdplan.sim.closed_loop``)."""

    router: str = "least_loaded"
    max_time_s: float | None = None
    closed_loop: ClosedLoop | None = None

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise choices_error("router", self.router, ROUTERS)
        if self.max_time_s is not None and not (
            isinstance(self.max_time_s, (int, float))
            and math.isfinite(self.max_time_s)
            and self.max_time_s > 0
        ):
            raise ConfigError(f"max_time_s={self.max_time_s!r}; expected a positive number")


def simulate(
    requests: Requests,
    cluster: DisaggregatedCluster | ColocatedCluster,
    options: SimOptions | None = None,
    rng: np.random.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    stop: EarlyStop | None = None,
) -> SimResult:
    """Simulate ``requests`` on ``cluster``.

    Args:
        requests: the request list (arrival times are taken relative to the first).
        cluster: a ``DisaggregatedCluster`` or a ``ColocatedCluster`` (``pdplan.sim.costs``
            builds them from profiles).
        options: router and time limit.
        rng: the generator the ``random`` router draws from (``default_rng(0)`` when omitted);
            nothing else in a run is random.
        progress: called as ``progress(arrived, total)`` about every 1% of arrivals.
        stop: stop early once a TTFT threshold is certainly missed too often (the SLO search's
            failing probes need not run to the end).

    Returns:
        ``SimResult``: the records, per-role busy time, and the per-request details the time
        series needs. Deterministic: equal inputs give equal results.
    """
    options = options or SimOptions()
    rng = np.random.default_rng(0) if rng is None else rng
    run: Run | ColocatedRun
    loop = options.closed_loop
    if isinstance(cluster, DisaggregatedCluster):
        if loop is None:
            run = Run(requests, cluster, options.router, rng)
        else:
            run = ClosedRun(requests, cluster, options.router, rng, loop=loop)
    elif isinstance(cluster, ColocatedCluster):
        if loop is None:
            run = ColocatedRun(requests, cluster, options.router, rng)
        else:
            run = ClosedColocatedRun(requests, cluster, options.router, rng, loop=loop)
    else:
        raise TypeError(f"cluster must be a DisaggregatedCluster or ColocatedCluster, not {type(cluster)}")
    run.progress = progress
    if stop is not None and len(requests):
        _install_stop(run, stop)
    result = run.run(options.max_time_s)
    log.debug("simulated %d requests with %d events", len(requests), result.events)
    return result


def simulate_prefill_side(
    requests: Requests, cluster: DisaggregatedCluster, stop: EarlyStop | None = None
) -> SimResult:
    """The prefill side of a disaggregated run alone (router ``least_loaded``).

    A prefill instance never waits on the decode side (it hands a finished prompt's KV on, or
    queues it there, and goes on), and the router picks its prefill instance by prefill load
    alone, so the prefill timeline — rejections, ``prefill_start_s``, ``prefill_end_s`` — is
    exactly the full run's. Decode instances are replaced by a sink (no request is routed to one:
    the result's decode instances are -1) that takes every hand-off at once and writes the prefill
    end into ``first_token_s``: a *lower bound* of each request's first
    token (it joins a decode batch no earlier than its KV is ready, which is no earlier than its
    prefill end), not a first token. Nothing decodes (every request ends ``unfinished``), so only a
    TTFT threshold may be checked by ``stop``. Without a prefix cache (a shared store is read by
    the decode side too).
    """
    assert stop is None or (stop.tpot_ms is None and stop.e2e_ms is None), "only TTFT has a bound here"
    assert cluster.cache is None, "a prefix store is shared with the decode side"
    rng = np.random.default_rng(0)
    run = _PrefillSideRun(requests, cluster, "least_loaded", rng, decode_factory=_PrefillSink)
    if stop is not None and len(requests):
        _install_stop(run, stop)
    return run.run(None)


class _PrefillSideRun(Run):
    """A run whose requests are not routed to a decode instance: the sinks are all alike, and
    routing by decode load would cost as much as the prefill routing for nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # set on the instance: a class attribute would not override a compiled class's default
        self.routes_decode = False


class _PrefillSink(DecodeInstance):
    """Stands in for a decode instance in ``simulate_prefill_side``: only the two calls the
    prefill side makes on a decode instance, and its busy time (``DecodeInstance.__init__`` is
    not run: nothing else of it is read)."""

    def __init__(self, run: Run, index: int) -> None:
        self.first_token_s = run.ledger.first_token_s
        self.busy_s = 0.0

    def offer(self, rid: int, now: float, prefill_end: float, prefill_index: int) -> bool:
        self.first_token_s[rid] = prefill_end  # the first token comes no earlier
        return True

    def wait(self, rid: int) -> None:
        raise AssertionError("the sink takes every hand-off")


def _install_stop(run: Run | ColocatedRun, stop: EarlyStop) -> None:
    """Schedule the early-stop checks (``EarlyStop``) on ``run``'s kernel."""
    arrival = run.arrival_np
    ledger = run.ledger
    # live views of the ledger's arrays (they are written in place during the run)
    first = np.frombuffer(ledger.first_token_s, dtype=np.float64)
    finish = np.frombuffer(ledger.finish_s, dtype=np.float64)
    rejected = np.frombuffer(ledger.rejected, dtype=np.int8)
    outputs = run.requests.output_tokens
    steps = np.maximum(outputs - 1, 1)  # summary's TPOT denominator
    lo = stop.measured_from
    env = run.env

    def check(_event: object) -> None:
        now = env.now
        hi = int(np.searchsorted(arrival, now, side="right"))  # arrived by now
        if hi - lo > stop.max_late:
            rows = slice(lo, hi)
            missed = _certain_misses(stop, now, rows, arrival, first, finish, rejected, outputs, steps)
            if missed > stop.max_late:
                log.debug("early stop at %.3f s: more than %d certain misses", now, stop.max_late)
                raise StopRun
        if env.peek() < math.inf:  # other events are left: check again later
            env.at(now + stop.every_s, _CHECK, check)

    env.at(stop.every_s, _CHECK, check)


def _certain_misses(
    stop: EarlyStop,
    now: float,
    rows: slice,
    arrival: np.ndarray,
    first: np.ndarray,
    finish: np.ndarray,
    rejected: np.ndarray,
    outputs: np.ndarray,
    steps: np.ndarray,
) -> int:
    """How many requests of ``rows`` have certainly missed a threshold at ``now`` (``EarlyStop``)."""
    a, f, e = arrival[rows], first[rows], finish[rows]
    missed = rejected[rows] != 0
    with np.errstate(invalid="ignore"):
        if stop.ttft_ms is not None:
            missed |= (np.where(np.isnan(f), now, f) - a) * 1000.0 > stop.ttft_ms
        done = np.where(np.isnan(e), now, e)
        if stop.e2e_ms is not None:
            missed |= (done - a) * 1000.0 > stop.e2e_ms
        if stop.tpot_ms is not None:  # NaN first token compares False: no TPOT known yet
            tpot_ms = (done - f) / steps[rows] * 1000.0
            missed |= (outputs[rows] > 1) & (tpot_ms > stop.tpot_ms)
    return int(np.count_nonzero(missed))

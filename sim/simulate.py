"""``simulate``: one pure call from a request list and a cluster to per-request records.

No file or network I/O and no global state: values in, values out. The request list is fixed
before the call, so every cluster evaluated on it sees identical traffic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.closed_loop import ClosedColocatedRun, ClosedLoop, ClosedRun
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.disagg import Run
from pdplan.sim.kernel import INSTANCE
from pdplan.sim.records import SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.router import ROUTERS

log = logging.getLogger(__name__)
#: Early-stop checks run after every other event at their time.
_CHECK = INSTANCE + 1


@dataclass(frozen=True)
class EarlyStop:
    """Stop a run once it has certainly missed a TTFT threshold for too many requests.

    ``max_late`` requests among those from index ``measured_from`` on (in arrival order) may wait more than
    ``ttft_s`` for their first token; once more have (they got it late, or are still waiting past
    it), no later event can undo that, and the run stops. Checked every ``every_s`` of simulated
    time up to the last arrival. Requests not finished when it stops are ``unfinished``.
    """

    ttft_s: float
    max_late: int
    measured_from: int
    every_s: float

    def __post_init__(self) -> None:
        assert self.ttft_s > 0 and self.every_s > 0 and self.max_late >= 0, "early-stop values"


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


def _install_stop(run: Run | ColocatedRun, stop: EarlyStop) -> None:
    """Schedule the early-stop checks (``EarlyStop``) on ``run``'s kernel."""
    arrival = run.arrival_np
    first = np.frombuffer(run.ledger.first_token_s, dtype=np.float64)  # live view of the ledger
    measured = np.arange(arrival.size) >= stop.measured_from

    def check(_event: object) -> None:
        now = run.env.now
        waited = np.where(np.isnan(first), now, first) - arrival
        late = int(np.count_nonzero(measured & (arrival <= now) & (waited > stop.ttft_s)))
        if late > stop.max_late:
            log.debug("early stop at %.3f s: %d late first tokens > %d", now, late, stop.max_late)
            raise simpy.core.StopSimulation(None)

    last = float(arrival[-1])
    t = stop.every_s
    while t <= last + stop.ttft_s:
        run.env.at(t, _CHECK, check)
        t += stop.every_s

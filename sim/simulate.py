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

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.closed_loop import ClosedColocatedRun, ClosedLoop, ClosedRun
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster
from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.disagg import Run
from pdplan.sim.records import SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.router import ROUTERS

log = logging.getLogger(__name__)


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
    result = run.run(options.max_time_s)
    log.debug("simulated %d requests with %d events", len(requests), result.events)
    return result

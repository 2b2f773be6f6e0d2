"""The search's request list: drawn (or cut from a trace) once, then time-scaled for every probe.

A search compares candidates on common random numbers: one request list, seeded, whose prefixes
every probe replays at its own rate (``Requests.head(n).at_rate(r)``). A candidate simulates the
prefix that spans a fixed time window at its capacity bound (``pdplan.planner.search``), so big
and small clusters are judged over the same simulated duration.

From a synthetic workload the list is simply drawn with enough requests. From a trace it is the
trace *rotated* to start at a seeded position and *detrended*: production traces swing over the
hour (the Azure conversation trace runs from 191 to 507 requests per minute), so prefixes of
different lengths would otherwise see different mean rates and peaks. Detrending warps time within
each ``bin_s`` bin by the bin's rate relative to the mean, which keeps the order, the lengths and
the second-scale burstiness of the trace while making every prefix's mean rate the trace's mean.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.requests import Requests
from pdplan.sim.workload import Workload, draw_requests

log = logging.getLogger(__name__)

#: Most requests a search list holds (a 30-s window at 1,600 req/s).
DEFAULT_MAX_REQUESTS = 50_000
DETREND_BIN_S = 60.0


def workload_list(workload: Workload, num_requests: int = DEFAULT_MAX_REQUESTS) -> Requests:
    """``num_requests`` requests drawn from ``workload`` with its own seed."""
    return draw_requests(replace(workload, num_requests=num_requests, duration_s=None))


def trace_list(trace: Requests, seed: int, *, bin_s: float = DETREND_BIN_S) -> Requests:
    """The trace detrended over ``bin_s`` bins and rotated to start at a position drawn with ``seed``.

    Raises:
        ConfigError: fewer than two requests or all at one instant (no rate to scale).
    """
    flat = detrend(trace, bin_s)
    n = len(flat)
    start = int(np.random.default_rng(seed).integers(0, n))
    if start == 0:
        return flat
    t = flat.arrival_s
    gap = flat.span_s / (n - 1)  # the seam gets the mean gap
    arrival = np.concatenate((t[start:] - t[start], t[:start] + (t[-1] - t[start]) + gap))
    order = np.r_[start:n, 0:start]
    return Requests(arrival, flat.prompt_tokens[order], flat.output_tokens[order])


def detrend(trace: Requests, bin_s: float = DETREND_BIN_S) -> Requests:
    """Arrival times warped so each ``bin_s`` bin runs at the trace's mean rate (see module doc).

    Within bin b holding c_b arrivals, time advances at c_b / (bin_s · mean rate) of real time,
    so the bin's arrivals keep their relative spacing and the bin lasts c_b / mean rate.
    """
    n = len(trace)
    if n < 2 or trace.span_s <= 0:
        raise ConfigError(
            f"trace: a search needs ≥ 2 requests spread in time; got {n} spanning {trace.span_s} s"
        )
    t = trace.arrival_s - trace.arrival_s[0]
    span = float(t[-1])
    edges = np.arange(0.0, span, bin_s)
    width = np.diff(np.append(edges, span))
    width[width <= 0] = bin_s
    which = np.minimum(np.searchsorted(edges, t, side="right") - 1, edges.size - 1)
    counts = np.bincount(which, minlength=edges.size).astype(np.float64)
    mean_rate = (n - 1) / span
    speed = counts / (width * mean_rate)  # warped seconds per real second in each bin
    start = np.concatenate(([0.0], np.cumsum(speed * width)[:-1]))
    warped = start[which] + (t - edges[which]) * speed[which]
    log.debug("detrended %d arrivals over %d bins of %.0f s", n, edges.size, bin_s)
    return Requests(warped, trace.prompt_tokens, trace.output_tokens)

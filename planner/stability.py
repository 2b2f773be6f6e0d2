"""The stability test: is the cluster keeping up with stationary traffic, or is its queue growing?

A finite simulation of an overloaded cluster can meet a latency SLO simply because it ends before
the queue has grown long: at 1.15× capacity the backlog grows by 13 % of the arrivals, but over a
short replay the requests that wait longest may still be few. Queueing theory separates the two
cases by the backlog's trend: below capacity the number of requests in the system is a stationary
process (it fluctuates around a finite mean, Loynes 1962); above it, it grows linearly at
(λ − μ) requests per second.

The test fits a least-squares line to the backlog B(t) (requests that arrived and have not left)
sampled evenly over the measured arrivals (after the warm-up, up to the last arrival) and calls the
run *unstable* when the line's rise over that span exceeds ``MAX_GROWTH`` of the requests that
arrived in it. A regression rather than the end-point difference, so one burst at the end does not
decide it. It applies to stationary traffic only (synthetic workloads, or a trace's stationary
view): a trace replayed as recorded has real swings, and a backlog built in a busy minute is part
of the user's traffic, judged by the attainment alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The backlog may rise by at most this share of the measured arrivals (overload by ~5 % or more).
MAX_GROWTH = 0.05
_SAMPLES = 256


@dataclass(frozen=True)
class Stability:
    """``growth_fraction``: the fitted backlog rise over the measured span ÷ arrivals in it."""

    growth_fraction: float
    stable: bool

    @property
    def violation(self) -> str:
        """The SLO-violation text of an unstable run (empty when stable)."""
        if self.stable:
            return ""
        return (
            f"unstable: the backlog grows by {self.growth_fraction:.0%} of the arrivals "
            f"(limit {MAX_GROWTH:.0%}): the cluster does not keep up"
        )


def backlog_growth(table: Mapping[str, Any], warmup_fraction: float) -> Stability:
    """The stability test on a requests table (``requests.csv`` columns).

    A request leaves the system at ``finish_s`` when ``ok``; one that was rejected or failed
    leaves at its arrival (it holds nothing); one left ``unfinished`` never leaves.
    """
    arrival = np.asarray(table["arrival_s"], dtype=np.float64)
    n = arrival.size
    if n < 10:
        return Stability(0.0, True)
    finish = np.asarray(table["finish_s"], dtype=np.float64)
    status = np.asarray(table["status"]).astype(str)
    leave = np.where(status == "ok", finish, np.where(status == "unfinished", np.inf, arrival))
    leave = np.where(np.isnan(leave), np.inf, leave)
    order = np.sort(arrival, kind="stable")
    first = order[min(n - 1, math.floor(warmup_fraction * n))]
    last = order[-1]
    if not last > first:
        return Stability(0.0, True)
    t = np.linspace(first, last, _SAMPLES)
    backlog = np.searchsorted(order, t, side="right") - np.searchsorted(np.sort(leave), t, side="right")
    slope = float(np.polyfit(t - first, backlog.astype(np.float64), 1)[0])
    arrived = int(np.count_nonzero((arrival >= first) & (arrival <= last)))
    growth = slope * (last - first) / max(1, arrived)
    return Stability(round(float(growth), 6), bool(growth <= MAX_GROWTH))

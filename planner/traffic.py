"""The traffic a search judges plans on, and the replays that define a plan's promise.

A plan's goodput is the user's (DESIGN.md): the highest mean rate R at which
``pdplan simulate --plan plan.yaml <the same traffic> --rate R`` meets the SLO attainment. This
module says what "the same traffic" is for each kind of input, and what the search replays:

- ``as-recorded`` (the default for a trace): the trace is replayed *whole*, time-scaled so its
  mean rate is R, with its own swings (the Azure conversation trace runs from 191 to 507 requests
  a minute). A search probe is then exactly the user's replay (same requests, same warm-up, same
  judgement). A trace longer than ``max_probe_requests`` is probed on its busiest stretch of that
  many consecutive requests (the same time scale), and the chosen plan is confirmed on the whole
  trace (``pdplan.planner.confirm``).
- ``stationary`` (asked for explicitly, ``--traffic stationary``): the trace *detrended* — time
  warped within each minute so every minute runs at the mean rate, which keeps the order, the
  lengths and the second-scale burstiness but removes the minute-scale swings — and rotated to
  start at a seeded position. Judged like a synthetic workload.
- ``synthetic`` (a workload YAML or a preset): a probe is the user's replay — the workload's own
  request count (10,000 for a preset), drawn with its seed at the probe's rate (the same draws
  rescaled: common random numbers) — and the chosen plan's promise is confirmed on five more
  seeds, with a margin for the seed-to-seed spread. Stationary and synthetic traffic apply the stability test
  (``pdplan.planner.stability``), so an overloaded plan cannot pass because the replay ended
  before its queue grew.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.requests import Requests
from pdplan.sim.workload import Workload, draw_requests

log = logging.getLogger(__name__)

AS_RECORDED, STATIONARY, SYNTHETIC = "as-recorded", "stationary", "synthetic"
TRAFFIC_KINDS = (AS_RECORDED, STATIONARY, SYNTHETIC)
#: What ``--traffic`` accepts for a trace (a synthetic workload is always ``synthetic``).
TRACE_TRAFFIC = (AS_RECORDED, STATIONARY)
#: Requests ``workload_list`` draws by default (tests and bounds that want a long stationary list).
DEFAULT_MAX_REQUESTS = 50_000
#: Traces longer than this are probed on their busiest stretch of this many requests.
MAX_PROBE_REQUESTS = 200_000
#: Requests one replay of a preset draws (``pdplan simulate --plan --preset P`` draws as many).
PRESET_REPLAY_REQUESTS = 10_000
#: The warm-up ``pdplan simulate --plan`` leaves out of its figures by default.
REPLAY_WARMUP = 0.05
#: Seeds a synthetic promise is confirmed on, after the workload's own (``pdplan.planner.confirm``).
EXTRA_REPLAY_SEEDS = 5
DETREND_BIN_S = 60.0


@dataclass(frozen=True, eq=False)
class Traffic:
    """What the search probes, and how the user's replays are drawn.

    ``requests``: the list probes replay (the whole trace, its busiest stretch, the stationary view,
    or the synthetic workload's draw with its first seed, at its own rate). ``base_rate_rps``: the
    mean rate a probe's rate refers to (the whole trace's, for ``as-recorded``). ``whole``: the
    whole trace when ``requests`` is only a stretch.
    ``workload``/``replay_requests``/``seeds``: how a synthetic or stationary replay is drawn.
    ``warmup_fraction``: what a probe leaves out; ``stability``: whether the stability test applies.
    """

    kind: str
    requests: Requests
    base_rate_rps: float
    warmup_fraction: float
    stability: bool
    seeds: tuple[int, ...] = (0,)
    workload: Workload | None = None
    replay_requests: int | None = None
    whole: Requests | None = None
    trace: Requests | None = None  # stationary: the trace before detrending

    def __post_init__(self) -> None:
        if self.kind not in TRAFFIC_KINDS:
            raise choices_error("--traffic", self.kind, TRAFFIC_KINDS)
        assert self.base_rate_rps > 0, "a traffic has a mean rate"
        assert 0 <= self.warmup_fraction < 1, "warm-up is a fraction"

    @property
    def probes_are_replays(self) -> bool:
        """A probe is already the user's replay: the trace whole, judged the same way."""
        return self.kind == AS_RECORDED and self.whole is None

    def probe_list(self, rate_rps: float) -> Requests:
        """What one probe at mean rate ``rate_rps`` simulates."""
        if self.kind == SYNTHETIC:
            assert self.workload is not None
            return draw_requests(replace(self.workload, seed=self.seeds[0]).with_rate(rate_rps))
        return self.requests.scaled(self.base_rate_rps / rate_rps)

    def replays(self, rate_rps: float) -> list[Requests]:
        """The user's replays at ``rate_rps``: what ``pdplan simulate --plan ... --rate R`` draws
        for each seed of ``seeds``."""
        if self.kind == AS_RECORDED:
            source = self.whole if self.whole is not None else self.requests
            return [source.at_rate(rate_rps)]
        if self.kind == STATIONARY:
            assert self.trace is not None, "a stationary traffic keeps its trace"
            return [trace_list(self.trace, seed).at_rate(rate_rps) for seed in self.seeds]
        assert self.workload is not None, "a synthetic traffic keeps its workload"
        return [draw_requests(replace(self.workload, seed=s).with_rate(rate_rps)) for s in self.seeds]

    def describe(self) -> dict[str, Any]:
        """What ``plan.yaml`` records about how the traffic was judged."""
        out: dict[str, Any] = {"kind": self.kind, "warmup_fraction": self.warmup_fraction}
        if self.kind != AS_RECORDED:
            out["replay_seeds"] = list(self.seeds)
            out["stability_test"] = True
        if self.kind == STATIONARY:
            out["detrended_bin_s"] = DETREND_BIN_S
        if self.replay_requests is not None:
            out["replay_requests"] = self.replay_requests
        if self.whole is not None:
            out["probed_stretch_requests"] = len(self.requests)
        return out


def as_recorded(trace: Requests, max_probe_requests: int = MAX_PROBE_REQUESTS) -> Traffic:
    """The trace replayed whole (or probed on its busiest stretch when it is very long)."""
    _check_spread(trace)
    base = trace.mean_rate_rps
    if len(trace) <= max_probe_requests:
        return Traffic(AS_RECORDED, trace, base, REPLAY_WARMUP, stability=False)
    stretch = busiest_stretch(trace, max_probe_requests)
    log.info("trace of %d requests: probing its busiest %d consecutive requests", len(trace), len(stretch))
    return Traffic(AS_RECORDED, stretch, base, REPLAY_WARMUP, stability=False, whole=trace)


def stationary(trace: Requests, seed: int) -> Traffic:
    """The detrended view of ``trace`` (explicit choice), judged like a synthetic workload."""
    _check_spread(trace)
    seeds = tuple(seed + i for i in range(EXTRA_REPLAY_SEEDS + 1))
    flat = trace_list(trace, seed)
    return Traffic(
        STATIONARY,
        flat,
        flat.mean_rate_rps,
        REPLAY_WARMUP,
        stability=True,
        seeds=seeds,
        replay_requests=len(trace),
        trace=trace,
    )


def synthetic(workload: Workload) -> Traffic:
    """A synthetic workload, replayed as the user gives it (its own request count or duration)."""
    listed = draw_requests(workload)
    seeds = tuple(workload.seed + i for i in range(EXTRA_REPLAY_SEEDS + 1))
    count = workload.num_requests
    return Traffic(
        SYNTHETIC,
        listed,
        listed.mean_rate_rps,
        REPLAY_WARMUP,
        stability=True,
        seeds=seeds,
        workload=workload,
        replay_requests=count,
    )


def workload_list(workload: Workload, num_requests: int = DEFAULT_MAX_REQUESTS) -> Requests:
    """``num_requests`` requests drawn from ``workload`` with its own seed."""
    return draw_requests(replace(workload, num_requests=num_requests, duration_s=None))


def busiest_stretch(trace: Requests, num_requests: int) -> Requests:
    """The ``num_requests`` consecutive requests of ``trace`` that arrive in the shortest time
    (the highest mean rate), on the trace's own clock."""
    n = len(trace)
    assert 2 <= num_requests < n, "a stretch is shorter than the trace"
    t = trace.arrival_s
    spans = t[num_requests - 1 :] - t[: n - num_requests + 1]
    start = int(np.argmin(spans))
    stop = start + num_requests
    prefix = None if trace.prefix is None else trace.prefix.take(np.arange(start, stop))
    return Requests(
        t[start:stop] - t[start], trace.prompt_tokens[start:stop], trace.output_tokens[start:stop], prefix
    )


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
    prefix = None if flat.prefix is None else flat.prefix.take(order)  # prompts keep their prefixes
    return Requests(arrival, flat.prompt_tokens[order], flat.output_tokens[order], prefix)


def detrend(trace: Requests, bin_s: float = DETREND_BIN_S) -> Requests:
    """Arrival times warped so each ``bin_s`` bin runs at the trace's mean rate (see module doc).

    Within bin b holding c_b arrivals, time advances at c_b / (bin_s · mean rate) of real time,
    so the bin's arrivals keep their relative spacing and the bin lasts c_b / mean rate.
    """
    _check_spread(trace)
    n = len(trace)
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
    return Requests(warped, trace.prompt_tokens, trace.output_tokens, trace.prefix)


def _check_spread(trace: Requests) -> None:
    if len(trace) < 2 or trace.span_s <= 0:
        raise ConfigError(
            f"trace: a search needs ≥ 2 requests spread in time; got {len(trace)} spanning {trace.span_s} s"
        )

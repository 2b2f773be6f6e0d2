"""Whether a trace's promise lasts: the chosen plan on the trace repeated, at the promised rate.

A trace is judged as recorded (``pdplan.planner.traffic``): replayed whole, time-scaled to the rate
R. At large budgets that replay is short — the Azure conversation trace (19,366 requests in an
hour) lasts 15.5 s at 1,250 req/s and 5.3 s at 3,640 req/s, about one request's own life of
prefill and a few hundred decode steps — so it ends while the cluster, started empty, is still
filling: the replay measures a start-up, not the load the cluster would carry for the next hour.
Measured on the standard search's plans (``bench/search_speed.py``): the 16-GPU plan's replay
(119 s) holds the same attainment with the trace repeated 4× (0.901 → 0.902), the 64- and
128-GPU plans' do not (0.901 → 0.804, 0.906 → 0.043).

So when the replay at the operating rate lasts less than ``MIN_SUSTAINED_S``, the chosen plan is
also simulated on the trace repeated back to back, whole, with its own swings each time, until it
lasts that long, at the same rate, and judged as the search judges (``Sustained``); the verdict,
``plan.yaml`` (``sustained:``) and the report say whether the promise lasts. The search itself
and the user's replay (``pdplan simulate --plan --rate R``) are unchanged: this is a check of the
promise, not a second definition of goodput. A trace whose prompts share prefixes is not
repeated (its copies would hit the prefix cache as the real traffic would not): the check says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdplan.planner.probe import Probe, SloTargets, judge, simulate_requests
from pdplan.planner.traffic import AS_RECORDED, Traffic
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster
from pdplan.sim.requests import Requests

#: Replays shorter than this at the operating rate are checked on the trace repeated. A minute:
#: several lifetimes of a request under a ``tpot=50ms`` SLO (a few hundred output tokens), and
#: the 16-GPU standard plan's 119-s replay is already steady.
MIN_SUSTAINED_S = 60.0


@dataclass(frozen=True)
class Sustained:
    """The chosen plan at ``rate_rps`` on the trace replayed once (``once_span_s``) and repeated
    ``copies`` times (``span_s``): ``probe`` is the repeated run's judgement (``None``: not
    checked, ``skipped`` says why)."""

    rate_rps: float
    once_span_s: float
    copies: int
    span_s: float
    probe: Probe | None
    skipped: str = ""

    @property
    def holds(self) -> bool | None:
        return None if self.probe is None else self.probe.meets_slo

    def describe(self) -> dict[str, Any]:
        """``plan.yaml``'s ``sustained:`` note."""
        out: dict[str, Any] = {
            "rate_rps": round(self.rate_rps, 6),
            "replay_once_s": round(self.once_span_s, 3),
            "min_replay_s": MIN_SUSTAINED_S,
        }
        if self.probe is None:
            out["checked"] = False
            out["why"] = self.skipped
            return out
        out.update(
            {
                "copies": self.copies,
                "replay_s": round(self.span_s, 3),
                "attainment": round(self.probe.attainment, 6),
                "holds": self.probe.meets_slo,
            }
        )
        if not self.probe.meets_slo:
            out["violated"] = self.probe.violated
        return out

    def sentence(self) -> str:
        """What the verdict adds."""
        once = (
            f"The trace replayed at {self.rate_rps:.4g} req/s lasts only {self.once_span_s:.3g} s "
            f"(under {MIN_SUSTAINED_S:g} s: the cluster is still filling when it ends)"
        )
        if self.probe is None:
            return f"{once}; not checked on the trace repeated: {self.skipped}."
        if self.probe.meets_slo:
            return (
                f"{once}; repeated {self.copies}× ({self.span_s:.3g} s) at that rate the plan still "
                f"holds (attainment {self.probe.attainment:.3f})."
            )
        return (
            f"{once}; repeated {self.copies}× ({self.span_s:.3g} s) at that rate the plan does NOT hold "
            f"(attainment {self.probe.attainment:.3f}): this promise is the start-up of an empty "
            "cluster, not a rate it sustains — give a longer trace for this budget, or search fewer GPUs."
        )


def repeated(requests: Requests, copies: int) -> Requests:
    """``requests`` back to back ``copies`` times, each copy one mean inter-arrival gap after the
    previous one's last arrival (so the repeated list keeps the mean rate)."""
    assert copies >= 1 and len(requests) >= 2, "a repeat of a list with a rate"
    if copies == 1:
        return requests
    t = requests.arrival_s - requests.arrival_s[0]
    period = requests.span_s * len(requests) / (len(requests) - 1)  # span + one mean gap
    arrival = np.concatenate([t + k * period for k in range(copies)])
    return Requests(arrival, np.tile(requests.prompt_tokens, copies), np.tile(requests.output_tokens, copies))


def check_sustained(
    cluster: DisaggregatedCluster | ColocatedCluster,
    traffic: Traffic,
    slo: SloTargets,
    rate_rps: float,
    once: Requests | None = None,
) -> Sustained | None:
    """The chosen plan at ``rate_rps`` on the trace repeated to ``MIN_SUSTAINED_S``, or ``None``
    where nothing needs checking (not a trace as recorded, or its replay is long enough).
    ``once``: the user's replay at ``rate_rps`` when the caller has drawn it already."""
    if traffic.kind != AS_RECORDED:
        return None
    if once is None:
        once = traffic.replays(rate_rps)[0]
    if len(once) < 2 or once.span_s >= MIN_SUSTAINED_S:
        return None
    period = once.span_s * len(once) / (len(once) - 1)
    copies = max(2, math.ceil(MIN_SUSTAINED_S / period))
    if once.prefix is not None:
        why = "its prompts share prefixes, and the copies would hit the prefix cache as new traffic would not"
        return Sustained(rate_rps, once.span_s, copies, copies * period, None, why)
    long = repeated(once, copies)
    # run to the end (no early stop): the attainment it reports is the run's, not a bound
    probe, _ = judge(simulate_requests(cluster, long), rate_rps, slo, traffic.warmup_fraction)
    return Sustained(rate_rps, once.span_s, copies, long.span_s, probe)

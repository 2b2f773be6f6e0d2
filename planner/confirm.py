"""Confirming a promise on the user's own replays, and scaling a unit to fill the GPU budget.

The search ranks candidates on its probe traffic (``pdplan.planner.traffic``). What a plan
promises is checked here the way a user checks it: ``pdplan simulate --plan plan.yaml <same
traffic> --rate R`` — the trace whole, or the synthetic workload's own request count drawn with
its seed and five more — judged with that command's warm-up and the stability test. The goodput
written into ``plan.yaml`` is the highest rate at which *every* replay holds, bracketed by a rate
at which one of them misses (``pdplan.planner.rate.find_goodput``).

A user's replay is one more draw, so every replay holding is not enough: near a queue's cliff the
attainment of one seed can fall far below the others'. A rate also needs the replays' mean
attainment minus ``SPREAD_Z`` standard deviations to meet the target: with six seeds that is a
one-sided prediction bound (Student's t, 5 degrees of freedom, × √(1 + 1/6)) that a new seed
holds with probability ≈ 0.98. Where the search's probes
already are the replay (a trace of ≤ 200k requests, as recorded), nothing is re-simulated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from pdplan.planner.evaluation import Evaluation
from pdplan.planner.probe import Probe, SloTargets, probe_requests
from pdplan.planner.rate import OK, RatePolicy, find_goodput
from pdplan.planner.space import Candidate
from pdplan.planner.traffic import Traffic
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster

Cluster = DisaggregatedCluster | ColocatedCluster
#: Standard deviations of the replays' attainment kept as a margin (see the module doc).
SPREAD_Z = 3.0


@dataclass(frozen=True)
class Confirmation:
    """``goodput_rps``: the highest rate at which every replay held (``None``: none held down to
    the floor); ``fails_at_rps``: the lowest rate at which one missed; ``probes``: the worst replay
    at each rate tried; ``seeds``: the replays' seeds."""

    goodput_rps: float | None
    fails_at_rps: float | None
    probes: tuple[Probe, ...]
    seeds: tuple[int, ...]
    replayed: bool  # False: the search's own probes were the replays

    def describe(self) -> dict[str, object]:
        """What ``plan.yaml`` records under ``confirmed``."""
        return {
            "rate_rps": None if self.goodput_rps is None else round(self.goodput_rps, 6),
            "fails_at_rps": None if self.fails_at_rps is None else round(self.fails_at_rps, 6),
            "seeds": list(self.seeds),
            "replays_simulated": self.replayed,
        }


def replay_probe(
    cluster: Cluster, traffic: Traffic, slo: SloTargets, router: str = "least_loaded"
) -> Callable[[float], Probe]:
    """A probe that simulates every user replay at a rate (routed by ``router``) and returns the
    worst (the first that misses the SLO, or the lowest attainment)."""

    def probe(rate: float) -> Probe:
        worst: Probe | None = None
        attained: list[float] = []
        for requests in traffic.replays(rate):
            got = probe_requests(
                cluster, requests, rate, slo, traffic.warmup_fraction, traffic.stability, router
            )
            attained.append(got.attainment)
            if worst is None or got.attainment < worst.attainment or not got.meets_slo:
                worst = got
            if not got.meets_slo:
                return got
        assert worst is not None, "a traffic has at least one replay"
        if len(attained) > 1 and slo.per_request_ms:
            mean, spread = float(np.mean(attained)), float(np.std(attained, ddof=1))
            if mean - SPREAD_Z * spread < slo.attainment:
                why = (
                    f"seed-to-seed spread: attainment mean {mean:.3f} − {SPREAD_Z:g} × sd {spread:.3f} "
                    f"< {slo.attainment:g} over {len(attained)} replays"
                )
                return replace(worst, meets_slo=False, violated=why)
        return worst

    return probe


def confirm(
    cluster: Cluster, traffic: Traffic, slo: SloTargets, evaluation: Evaluation, policy: RatePolicy
) -> Confirmation:
    """The promise of ``evaluation``'s candidate on the user's replays (see the module doc)."""
    assert evaluation.goodput_rps is not None and evaluation.bound_rps, "confirm a candidate with a goodput"
    if traffic.probes_are_replays:
        failing = [
            p.rate_rps for p in evaluation.probes if not p.meets_slo and p.rate_rps > evaluation.goodput_rps
        ]
        return Confirmation(
            evaluation.goodput_rps, min(failing) if failing else None, evaluation.probes, traffic.seeds, False
        )
    return goodput_on_replays(cluster, traffic, slo, evaluation.bound_rps, evaluation.goodput_rps, policy)


def goodput_on_replays(
    cluster: Cluster,
    traffic: Traffic,
    slo: SloTargets,
    upper_rps: float,
    start_rps: float,
    policy: RatePolicy,
) -> Confirmation:
    """The highest rate at which every replay holds, searched from ``start_rps``."""
    outcome = find_goodput(
        replay_probe(cluster, traffic, slo),
        upper_rps,
        target_attainment=slo.attainment,
        policy=policy,
        start_rps=start_rps,
    )
    goodput = outcome.goodput_rps if outcome.status == OK else None
    failing = [p.rate_rps for p in outcome.probes if not p.meets_slo and p.rate_rps > (goodput or 0.0)]
    return Confirmation(goodput, min(failing) if failing else None, outcome.probes, traffic.seeds, True)


def holds_at(cluster: Cluster, traffic: Traffic, slo: SloTargets, rate_rps: float) -> Probe:
    """The worst replay at ``rate_rps`` (rate mode: is the target held?)."""
    return replay_probe(cluster, traffic, slo)(rate_rps)


def scaled(candidate: Candidate, replicas: int) -> Candidate:
    """``candidate`` with every pool's instance count multiplied by ``replicas``."""
    assert replicas >= 1, "at least one replica"
    pools = {
        role: replace(pool, instances=pool.instances * replicas) for role, pool in candidate.pools.items()
    }
    return Candidate(f"{candidate.candidate_id}x{replicas}", candidate.mode, **pools)  # type: ignore[arg-type]

"""The screen: what the search knows about a candidate before simulating it.

For each candidate: does it fit in memory (``pdplan.planner.space.memory_fit``), its capacity
bound and the latency floors that rule it out at any rate (``pdplan.planner.bounds``), and the
request prefix it will be simulated on. Bounds and floors depend only on TP and batch limits (one
instance per role: bounds scale linearly with instance counts) and on the prefix, so they are
computed once per (TP, limits, prefix) and shared by every instance count.

Every probe replays the whole request list of the search's traffic (``pdplan.planner.traffic``).
The bound prunes (``max_utilisation`` × the bound is the rate a candidate must be able to reach
to matter) and tells the rate search where to look for a failing rate; it is never a result:
a finite window cannot resolve queueing close to saturation — the relaxation time of a queue
grows like 1/(1 − √ρ)² (Morse 1955; an M/M/1 queue at ρ = 0.99 needs ~40,000 service times to
forget its start) — which is why synthetic probes apply the stability test and a plan's promise
is confirmed on the user's replays (``pdplan.planner.confirm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pdplan.planner.bounds import Bound, Demand, capacity_bound, scaled, static_infeasibility
from pdplan.planner.evaluation import STATUS_INFEASIBLE, Evaluation
from pdplan.planner.space import (
    Candidate,
    CostCache,
    Fit,
    SpaceGrid,
    build_cluster,
    enumerate_candidates,
    memory_fit,
)
from pdplan.profiles.errors import ConfigError
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster

if TYPE_CHECKING:
    from pdplan.planner.search import SearchSpec


@dataclass(frozen=True)
class Screened:
    """A candidate that passed the screen: its bound, the bisection's ceiling (``max_utilisation``
    × bound) and the request prefix it is simulated on."""

    candidate: Candidate
    fit: Fit
    bound: Bound
    ceiling_rps: float
    num_requests: int

    @property
    def bound_per_gpu(self) -> float:
        return self.bound.rate_rps / self.candidate.gpus


class Screen:
    """Memory fit, bounds and latency floors of candidates, cached per (TP, limits, prefix)."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.costs = CostCache(spec.profiles.profiles, spec.profiles.unfit)
        self.demand = Demand.of(spec.traffic.requests)
        self._bounds: dict[tuple[Candidate, int], Bound] = {}
        self._floors: dict[tuple[Candidate, int], str] = {}

    def screen(self, candidate: Candidate) -> Evaluation | Screened:
        """An ``infeasible`` evaluation, or the candidate ready to simulate."""
        fit = memory_fit(candidate, self.costs)
        if not fit.fits:
            return Evaluation(candidate, STATUS_INFEASIBLE, fit.reason)
        unit = candidate.unit()
        whole = scaled(self._unit_bound(unit, fit, len(self.demand)), candidate.instances)
        n = self.prefix_for(whole.rate_rps)
        bound = scaled(self._unit_bound(unit, fit, n), candidate.instances)
        why = self._floor(unit, fit, n)
        if why:
            return Evaluation(candidate, STATUS_INFEASIBLE, why, bound_rps=bound.rate_rps)
        return Screened(candidate, fit, bound, bound.rate_rps * self.spec.max_utilisation, n)

    def prefix_for(self, bound_rps: float) -> int:
        """Requests a probe replays: the whole list (a probe is the user's replay, ``traffic``)."""
        return len(self.spec.requests)

    def cluster(self, candidate: Candidate) -> DisaggregatedCluster | ColocatedCluster:
        """The cluster ``simulate`` takes (the candidate must fit)."""
        return build_cluster(
            candidate,
            memory_fit(candidate, self.costs),
            self.spec.link,
            kv_bytes_per_token=self.spec.profiles.kv_bytes_per_token,
            num_layers=self.spec.profiles.num_layers,
        )

    def fewest_gpus(self, rate_rps: float, grid: SpaceGrid) -> int:
        """The fewest GPUs any layout of the grid needs to hold ``rate_rps`` under its ceiling,
        with the best mix of roles (GPUs per req/s add up over roles).

        Raises:
            ConfigError: no layout of the grid fits in memory.
        """
        spec = self.spec
        best_per_gpu = 0.0
        for candidate in enumerate_candidates(2 * max(grid.tps), modes=spec.modes, grid=grid):
            if any(n != 1 for n in candidate.instances.values()):
                continue
            fit = memory_fit(candidate, self.costs)
            if not fit.fits:
                continue
            per_instance = self._unit_bound(candidate, fit, len(self.demand)).by_role
            tps = {role: pool.tp * pool.pp for role, pool in candidate.pools.items()}  # GPUs per instance
            gpus_per_rps = sum(tp / per_instance[role] for role, tp in tps.items())
            best_per_gpu = max(best_per_gpu, spec.max_utilisation / gpus_per_rps)
        if best_per_gpu <= 0:
            raise ConfigError("no layout of the search grid fits in memory; nothing can hold --rate")
        return max(1, math.ceil(rate_rps / best_per_gpu))

    def _unit_bound(self, unit: Candidate, fit: Fit, n: int) -> Bound:
        key = (unit, n)
        if key not in self._bounds:
            self._bounds[key] = capacity_bound(unit, fit.costs, self._head(n))
        return self._bounds[key]

    def _floor(self, unit: Candidate, fit: Fit, n: int) -> str:
        key = (unit, n)
        if key not in self._floors:
            self._floors[key] = static_infeasibility(
                unit,
                fit.costs,
                self._head(n),
                self.spec.slo,
                link=self.spec.link,
                kv_bytes_per_token=self.spec.profiles.kv_bytes_per_token,
            )
        return self._floors[key]

    def _head(self, n: int) -> Demand:
        if n >= len(self.demand):
            return self.demand
        return Demand(self.demand.prompt[:n], self.demand.output[:n])

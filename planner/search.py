"""The search: which layout gives the most goodput per GPU (or holds a rate on the fewest GPUs).

``run_search(SearchSpec) -> SearchResult`` takes values and returns values (apart from its worker
processes); the CLI (``pdplan.planner.cli.search_cmd``) reads the inputs and writes the files.

The algorithm (DESIGN.md, "The search"):

1. **Enumerate** every layout of the grid on the budget (``pdplan.planner.space``): prefill and
   decode instance counts, TP per role, batch limits, and colocated layouts on the same budget.
2. **Screen** each (``pdplan.planner.screen``): memory fit, the closed-form capacity bound and the
   latency floors (``pdplan.planner.bounds``). Layouts that do not fit, or whose floors rule out
   the SLO at any rate (TTFT/TPOT/E2E bound, KV capacity), are *infeasible*. Latency models and
   KV capacities are priced once per (TP, limits) and shared.
3. **Simulate** the rest, best bound first, in deterministic waves over worker processes
   (``pdplan.planner.waves``), finding each one's goodput by bisection on rate with early stops
   (``pdplan.planner.rate``). Candidates that cannot beat the best of their mode are *pruned*:
   by bound without a probe, or after one probe at the rate they would need.
4. **Rank** by goodput per GPU (or, with ``target_rate_rps``, by fewest GPUs holding that rate),
   keep the best of each mode for the verdict, and re-simulate the chosen plan at its operating
   point for its ``requests.csv``, ``summary.yaml`` and time series.

What the probes replay is the search's ``Traffic`` (``pdplan.planner.traffic``): a trace whole,
as recorded (a probe *is* the user's replay), its stationary view when asked for, or a synthetic
workload's own request count drawn with its seed, these two with the stability test. The
chosen plan's goodput is then confirmed on the user's own replays (``pdplan.planner.confirm``):
that confirmed rate is the promise in ``plan.yaml``. Candidates whose goodput per GPU is within
the rate search's resolution of the best are a tie, broken toward fewer GPUs and simpler layouts.
With a GPU budget, the chosen unit is also scaled to fill it and its goodput searched the same way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pdplan.planner.evaluation import STATUS_OK, STATUS_PRUNED, Evaluation, rank_key
from pdplan.planner.probe import SloTargets, judge, simulate_requests
from pdplan.planner.profileset import ProfileSet
from pdplan.planner.promise import BudgetUse, Promise, Settler
from pdplan.planner.rate import RatePolicy
from pdplan.planner.screen import Screen, Screened
from pdplan.planner.space import MODES, Candidate, SpaceGrid, enumerate_candidates
from pdplan.planner.sustained import Sustained, check_sustained
from pdplan.planner.traffic import Traffic
from pdplan.planner.waves import Scheduler, executor
from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.cluster import KvLink
from pdplan.sim.records import SimResult
from pdplan.sim.requests import Requests

if TYPE_CHECKING:
    from pdplan.planner.cache_choice import CacheChoice

log = logging.getLogger(__name__)

#: In rate mode, layouts up to this multiple of the fewest GPUs the bounds allow are enumerated.
RATE_MODE_GPU_FACTOR = 2.0


@dataclass(frozen=True)
class SearchSpec:
    """What to search. Exactly one of ``max_gpus`` (best goodput per GPU within the budget) and
    ``target_rate_rps`` (fewest GPUs — or lowest cost — holding that rate) is set.

    ``traffic`` is what probes replay and how the user's replays are drawn
    (``pdplan.planner.traffic``); ``max_utilisation`` × the capacity bound is the most a candidate
    is credited with when pruning (``pdplan.planner.screen``); ``confirm`` re-checks the chosen
    plans on the user's replays.
    """

    profiles: ProfileSet
    traffic: Traffic
    slo: SloTargets
    link: KvLink
    max_gpus: int | None = None
    target_rate_rps: float | None = None
    modes: tuple[str, ...] = MODES
    grid: SpaceGrid = field(default_factory=SpaceGrid)
    price_per_gpu_hour: float | None = None
    max_utilisation: float = 1.0
    rate_policy: RatePolicy = field(default_factory=RatePolicy)
    workers: int = 1
    confirm: bool = True
    #: where rate searches run: ``local`` (processes) or ``ray`` / ``ray://HOST:PORT``
    executor: str = "local"

    def __post_init__(self) -> None:
        if (self.max_gpus is None) == (self.target_rate_rps is None):
            raise ConfigError("set exactly one of --gpus (a budget) and --rate (a target rate)")
        if self.max_gpus is not None and (
            not isinstance(self.max_gpus, int) or isinstance(self.max_gpus, bool) or self.max_gpus < 1
        ):
            raise ConfigError(f"--gpus {self.max_gpus!r}; expected an integer ≥ 1")
        if self.target_rate_rps is not None and not (
            math.isfinite(self.target_rate_rps) and self.target_rate_rps > 0
        ):
            raise ConfigError(f"--rate {self.target_rate_rps!r}; expected a positive number of req/s")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise choices_error("--mode", ",".join(self.modes), MODES)
        if self.price_per_gpu_hour is not None and not (
            math.isfinite(self.price_per_gpu_hour) and self.price_per_gpu_hour > 0
        ):
            raise ConfigError(f"--price-per-gpu-hour {self.price_per_gpu_hour!r}; expected a positive number")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"--workers {self.workers!r}; expected an integer ≥ 1")
        if len(self.requests) < 2:
            raise ConfigError(f"the search needs ≥ 2 requests; got {len(self.requests)}")
        assert 0 < self.max_utilisation <= 1, "max_utilisation is a fraction"

    @property
    def requests(self) -> Requests:
        """The list probes replay (prefixes of it for synthetic traffic)."""
        return self.traffic.requests

    @property
    def warmup_fraction(self) -> float:
        return self.traffic.warmup_fraction


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Every candidate's evaluation (in id order), the chosen one, the best of each mode, and the
    chosen plan's run at its operating point: ``operating_rate_rps`` (its confirmed goodput, or the
    target rate in rate mode) on the user's default replay (``operating_requests`` requests); and
    the promise (confirmations, tie, target check, budget use: ``pdplan.planner.promise``)."""

    spec: SearchSpec
    evaluations: tuple[Evaluation, ...]
    chosen: Evaluation | None
    best_by_mode: Mapping[str, Evaluation]
    operating: SimResult | None
    operating_summary: Mapping[str, Any] | None
    operating_requests: int
    operating_rate_rps: float | None
    wall_s: float
    promise: Promise | None = None
    #: the chosen layout's router and cache tiers (``pdplan.planner.cache_choice``), when chosen
    cache_choice: CacheChoice | None = None
    #: the chosen plan on the trace repeated, when its replay at the rate is short (``planner.sustained``)
    sustained: Sustained | None = None

    @property
    def tie_with(self) -> Evaluation | None:
        """The top plan by goodput per GPU, when the chosen one won a tie against it."""
        return None if self.promise is None else self.promise.tie_with

    @property
    def budget(self) -> BudgetUse | None:
        return None if self.promise is None else self.promise.budget

    def count(self, status: str) -> int:
        return sum(1 for e in self.evaluations if e.status == status)

    @property
    def num_probes(self) -> int:
        return sum(len(e.probes) for e in self.evaluations)

    def ranked(self, mode: str | None = None) -> list[Evaluation]:
        """Feasible evaluations, best first by the search's objective."""
        ok = [e for e in self.evaluations if e.status == STATUS_OK and mode in (None, e.candidate.mode)]
        return sorted(ok, key=rank_key(self.spec.target_rate_rps))


Progress = Callable[[int, int], None]


def run_search(spec: SearchSpec, progress: Progress | None = None) -> SearchResult:
    """Search ``spec``'s space (see the module docstring).

    Args:
        spec: what to search.
        progress: called as ``progress(decided, total)`` whenever candidates are decided.

    Raises:
        ConfigError: in rate mode, when no layout of the grid fits in memory.
    """
    start = time.perf_counter()
    screen = Screen(spec)
    candidates = _candidates(spec, screen)
    decided: dict[str, Evaluation] = {}
    screened: list[Screened] = []
    for candidate in candidates:
        item = screen.screen(candidate)
        if isinstance(item, Evaluation):
            decided[candidate.candidate_id] = item
        else:
            screened.append(item)
    total = len(candidates)

    def tick() -> None:
        if progress is not None:
            progress(len(decided), total)

    tick()
    log.debug("search: %d candidates, %d infeasible before simulating", total, len(decided))
    with executor(spec.workers, spec.executor) as pool:
        Scheduler(spec, screen, pool, decided, tick).run(screened)
        promise = Settler(spec, screen, tuple(decided[c.candidate_id] for c in candidates)).settle()
        while spec.target_rate_rps is not None and promise.chosen is None:
            # Rate mode prunes every layout larger than the fewest-GPU one that held the target in
            # the search. If the replays then demote that one (it misses the target on the user's
            # other seeds), the layouts pruned because of it were never judged: search them again,
            # without it. Each round demotes at least one more candidate, so this ends.
            demoted = _demoted(decided, promise.evaluations)
            reopen = [s for s in screened if decided[s.candidate.candidate_id].status == STATUS_PRUNED]
            if not demoted or not reopen:
                break
            log.info(
                "rate mode: %s missed the target on the replays; %d pruned layouts searched again",
                ", ".join(demoted),
                len(reopen),
            )
            decided.update(
                {
                    e.candidate.candidate_id: e
                    for e in promise.evaluations
                    if e.candidate.candidate_id in demoted
                }
            )
            Scheduler(spec, screen, pool, decided, tick).run(reopen)
            promise = Settler(spec, screen, tuple(decided[c.candidate_id] for c in candidates)).settle()
    evaluations = promise.evaluations
    ranked = sorted((e for e in evaluations if e.status == STATUS_OK), key=rank_key(spec.target_rate_rps))
    best_by_mode: dict[str, Evaluation] = {}
    for evaluation in ranked:
        best_by_mode.setdefault(evaluation.candidate.mode, evaluation)
    chosen = promise.chosen
    if chosen is not None:
        best_by_mode[chosen.candidate.mode] = chosen
    operating, summary, count, rate = None, None, 0, None
    sustained: Sustained | None = None
    if chosen is not None:
        assert chosen.goodput_rps is not None, "an ok evaluation has a goodput"
        rate = spec.target_rate_rps or chosen.goodput_rps
        replay = spec.traffic.replays(rate)[0]  # what `pdplan simulate --plan` draws by default
        count = len(replay)
        cluster = screen.cluster(chosen.candidate)
        operating = simulate_requests(cluster, replay)
        traffic = spec.traffic
        _, summary = judge(operating, rate, spec.slo, traffic.warmup_fraction, traffic.stability)
        sustained = check_sustained(cluster, traffic, spec.slo, rate, replay)
    return SearchResult(
        spec=spec,
        evaluations=evaluations,
        chosen=chosen,
        best_by_mode=best_by_mode,
        operating=operating,
        operating_summary=summary,
        operating_requests=count,
        operating_rate_rps=rate,
        wall_s=time.perf_counter() - start,
        promise=promise,
        sustained=sustained,
    )


def _demoted(before: Mapping[str, Evaluation], after: tuple[Evaluation, ...]) -> list[str]:
    """Candidates the search found ok and the promise (its replays) made infeasible."""
    return [
        e.candidate.candidate_id
        for e in after
        if e.status != STATUS_OK and before[e.candidate.candidate_id].status == STATUS_OK
    ]


def _candidates(spec: SearchSpec, screen: Screen) -> list[Candidate]:
    # TPs with a profile, and those tried that cannot serve the model (reported as infeasible)
    known = set(spec.profiles.profiles) | set(spec.profiles.unfit)
    grid = replace(spec.grid, tps=tuple(tp for tp in spec.grid.tps if tp in known))
    if not grid.tps:
        raise ConfigError(
            f"no profile at any TP of the search grid {list(spec.grid.tps)}; "
            f"profiles given at tp={sorted(spec.profiles.profiles)}"
        )
    if spec.max_gpus is not None:
        return enumerate_candidates(spec.max_gpus, modes=spec.modes, grid=grid)
    assert spec.target_rate_rps is not None
    fewest = screen.fewest_gpus(spec.target_rate_rps, grid)
    cap = max(fewest + 4, math.ceil(RATE_MODE_GPU_FACTOR * fewest))
    log.info("rate mode: the bounds need ≥ %d GPUs; enumerating layouts of up to %d", fewest, cap)
    return enumerate_candidates(cap, modes=spec.modes, grid=grid)

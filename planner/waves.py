"""Running screened candidates over worker processes in waves, with deterministic pruning.

Candidates are taken best bound first (by bound per GPU, larger layouts first among equal bounds
since pooling serves bursts better, so a strong incumbent comes early; with a target rate,
fewest GPUs first).
The first wave holds the top candidate of each mode, so each mode has a best plan ("incumbent")
early; later waves hold ``WAVE_SIZE`` candidates. Before a wave starts, each of its candidates
gets the rate it must hold to matter (``need``): the incumbent's goodput per GPU × its GPUs,
raised by the rate search's tolerance (beating the best by less than the search's resolution is
not a finding) — or lowered by it for a simpler layout, which wins a tie
(``evaluation.choose``), as far as a tie with the best plan of either mode allows (a layout
further below the overall best can never be chosen, and matters only as its mode's best for the
verdict, which it must then beat like any other). A candidate whose ceiling is below that is
*pruned* without a probe. The wave's rate searches then run in parallel (``concurrent.futures``;
one worker runs them inline), and their outcomes are recorded in submission order. Decisions use
only what was known when the wave started, so the outcome is the same whatever the number of
workers and however they are timed. Most waves hold one or two rate searches (the rest are pruned
by their bound), so while a wave runs, idle workers start the searches of later waves at the needs
they will get if the best plans do not change; a search started so is used only when its wave
computes the same need, so this changes the wall time and nothing else. Likewise a failure at
the need proven on the prefill side alone (``probe.prefill_side_probe``) is the outcome of every
candidate with the same prefill side (``probe.prefill_side_key``: e.g. layouts that differ only in
the decode batch limit) at the same need, so it is proven once and reused (exactly the outcome the
candidate's own rate search would return).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from pdplan.planner.evaluation import (
    STATUS_INFEASIBLE,
    STATUS_OK,
    STATUS_PRUNED,
    Evaluation,
    rank_key,
    simplicity_key,
)
from pdplan.planner.probe import Probe, SloTargets, prefill_side_key, prefill_side_probe, probe_requests
from pdplan.planner.rate import BELOW_NEED, OK, RateOutcome, RatePolicy, find_goodput
from pdplan.planner.screen import Screen, Screened
from pdplan.planner.space import MODES
from pdplan.planner.traffic import SYNTHETIC, Traffic
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster

if TYPE_CHECKING:
    from pdplan.planner.search import SearchSpec

#: Candidates per wave after the first. Fixed (not tied to the worker count) so results are too.
WAVE_SIZE = 8
#: Rate searches started ahead of their wave, per worker (``Scheduler._look_ahead``).
LOOK_AHEAD_PER_WORKER = 2
#: Rate searches started ahead, by (candidate id, need), with their prefill side (``_side``).
Ahead = dict[tuple[str, float], tuple["Future[RateOutcome]", Any]]
#: What a wave holds for a candidate: its rate search, an outcome already proven for its prefill
#: side, or the prefill side of an earlier candidate of the wave whose outcome decides it.
Started = Union["Future[RateOutcome]", RateOutcome, tuple[Any, ...]]


@dataclass(frozen=True)
class Task:
    """Everything one worker needs to find one candidate's goodput (picklable)."""

    cluster: DisaggregatedCluster | ColocatedCluster
    traffic: Traffic
    upper_rps: float
    need_rps: float
    slo: SloTargets
    policy: RatePolicy


def evaluate(task: Task) -> RateOutcome:
    """The rate search of one candidate (in a worker process, or inline with one worker)."""
    traffic = task.traffic

    def probe(rate: float) -> Probe:
        requests = traffic.probe_list(rate)
        if rate == task.need_rps:  # most need probes fail: try to prove it on the prefill side
            failed = prefill_side_probe(task.cluster, requests, rate, task.slo, traffic.warmup_fraction)
            if failed is not None:
                return failed
        return probe_requests(
            task.cluster, requests, rate, task.slo, traffic.warmup_fraction, traffic.stability
        )

    return find_goodput(
        probe,
        task.upper_rps,
        target_attainment=task.slo.attainment,
        need_rps=task.need_rps,
        policy=task.policy,
    )


class InlineExecutor(Executor):
    """Runs each task when it is submitted, in this process (``--workers 1``: no start-up cost)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def executor(workers: int, backend: str = "local") -> Executor:
    """``workers`` processes, or the inline executor for one worker; with ``backend`` ``ray`` or
    ``ray://HOST:PORT``, Ray tasks (``pdplan.planner.ray_executor``).

    Workers are forked where the platform can (Linux): they start in milliseconds with the
    planner already imported, where a fork server or spawned interpreters take seconds to import
    it. Forking is safe because the search runs no threads of its own and the CLI's progress bar
    refreshes from the calling thread (``auto_refresh=False``); elsewhere they are spawned.
    """
    if backend != "local":
        from pdplan.planner.ray_executor import RayExecutor

        return RayExecutor(backend, workers)
    if workers == 1:
        return InlineExecutor()
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def default_workers() -> int:
    """One worker per core this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Scheduler:
    """Runs screened candidates in waves; records each decision in ``decided`` and calls ``tick``."""

    def __init__(
        self,
        spec: SearchSpec,
        screen: Screen,
        pool: Executor,
        decided: dict[str, Evaluation],
        tick: Callable[[], None],
    ) -> None:
        self.spec, self.screen, self.pool, self.decided, self.tick = spec, screen, pool, decided, tick
        self.best: dict[str, Evaluation] = {}  # per mode, by the search's objective
        self.rank = rank_key(spec.target_rate_rps)
        #: failures at a need proven on the prefill side alone, by (prefill side, need)
        self.proven: dict[tuple[Any, ...], RateOutcome] = {}
        self.reused = 0  # rate searches answered by ``proven`` instead of run
        self._live: list[tuple[int, Screened]] | None = None
        # the largest prompt + output a probe replays, where every probe replays the same tokens
        # (a trace, time-scaled; a synthetic workload is drawn again for each rate)
        requests = spec.traffic.requests
        same_tokens = spec.traffic.kind != SYNTHETIC and len(requests) > 0
        self.footprint = int((requests.prompt_tokens + requests.output_tokens).max()) if same_tokens else None

    def run(self, screened: Sequence[Screened]) -> None:
        def order(s: Screened) -> tuple[Any, ...]:
            c = s.candidate
            if self.spec.target_rate_rps is not None:
                return (c.gpus, -s.bound.rate_rps, c.candidate_id)
            return (-s.bound_per_gpu, -c.gpus, c.candidate_id)  # ties: pooling favours the larger

        ordered = sorted(screened, key=order)
        first = []
        for mode in MODES:
            top = next((s for s in ordered if s.candidate.mode == mode), None)
            if top is not None:
                first.append(top)
        rest = [s for s in ordered if s not in first]
        waves = [first] + [rest[i : i + WAVE_SIZE] for i in range(0, len(rest), WAVE_SIZE)]
        ahead: Ahead = {}  # started before their wave
        self._live = None  # later waves' candidates still worth a look ahead (``_look_ahead``)
        for w, wave in enumerate(waves):
            if not wave:
                continue
            tasks = []
            for item in wave:
                need, why = self._need(item)
                if why:
                    bound = item.bound.rate_rps
                    self._decide(Evaluation(item.candidate, STATUS_PRUNED, why, bound_rps=bound))
                else:  # the plan it must beat, as known when the wave starts
                    tasks.append((item, need, self.best.get(item.candidate.mode)))
            leaders: set[tuple[Any, ...]] = set()
            started = [self._begin(item, need, ahead, leaders) for item, need, _ in tasks]
            self._discard(wave, ahead)
            self._look_ahead(waves, w + 1, ahead, leaders)
            for (item, need, against), begun in zip(tasks, started, strict=True):
                self._record(item, need, against, self._outcome(item, need, begun))
        for future, _ in ahead.values():
            future.cancel()

    def _begin(self, item: Screened, need: float, ahead: Ahead, leaders: set[tuple[Any, ...]]) -> Started:
        """Start ``item``'s rate search at ``need`` — unless a failure there is already proven for
        its prefill side (that outcome), or an earlier candidate of the wave with the same prefill
        side is being searched at the same need (its side: ``_outcome`` waits for that one)."""
        side = self._side(item, need)
        if side is not None:
            if side in self.proven:
                self.reused += 1
                return self.proven[side]
            if side in leaders:
                return side
            leaders.add(side)
        return self._start(item, need, ahead)

    def _outcome(self, item: Screened, need: float, begun: Started) -> RateOutcome:
        """The outcome of what ``_begin`` started; remembers a prefill-side proof for reuse."""
        if isinstance(begun, tuple):  # follows an earlier candidate with the same prefill side
            if begun in self.proven:
                self.reused += 1
                return self.proven[begun]
            begun = self._start(item, need, {})  # that one was not proven there: search this one
        if isinstance(begun, RateOutcome):
            return begun
        outcome = begun.result()
        side = self._side(item, need)
        if side is not None and outcome.status == BELOW_NEED and outcome.probes[-1].prefill_side:
            self.proven[side] = outcome
        return outcome

    def _side(self, item: Screened, need: float) -> tuple[Any, ...] | None:
        """(prefill side, need) when ``evaluate`` tries a prefill-side proof first (``need`` > 0)."""
        if need <= 0:
            return None
        key = prefill_side_key(self.screen.cluster(item.candidate), self.footprint)
        return None if key is None else (key, need)

    def _start(self, item: Screened, need: float, ahead: Ahead) -> Future[RateOutcome]:
        """The rate search of ``item`` at ``need``: the one started ahead when it is the same task
        (same candidate, same need: ``evaluate`` is deterministic), or a new one."""
        started = ahead.pop((item.candidate.candidate_id, need), None)
        return started[0] if started is not None else self.pool.submit(evaluate, self._task(item, need))

    def _discard(self, wave: Sequence[Screened], ahead: Ahead) -> None:
        """Drop what was started ahead for ``wave`` with a need that turned out different."""
        ids = {item.candidate.candidate_id for item in wave}
        for key in [k for k in ahead if k[0] in ids]:
            ahead.pop(key)[0].cancel()

    def _look_ahead(
        self,
        waves: Sequence[Sequence[Screened]],
        start: int,
        ahead: Ahead,
        running: set[tuple[Any, ...]],
    ) -> None:
        """Keep the workers busy while a wave runs: start the rate searches of later waves with
        the needs they would get if no plan of this wave improves on the best (the usual case:
        most probes only prune). When a wave starts, a search started ahead is used only if its
        need is the one the wave computes (``_start``) and dropped otherwise (``_discard``), so
        every outcome is exactly the one the waves alone would record, whatever the number of
        workers — only idle time is saved. One worker runs inline and looks nowhere ahead. A
        candidate whose prefill side is already proven, or is being tried by the running wave
        (``running``) or a search started ahead, is left out: that proof may decide it.

        The later waves' candidates are walked from a list of those still worth a look
        (``_live``): a candidate found pruned by its ceiling (the needs seldom fall as the best
        plans improve) or whose wave has begun leaves it for good, so each is judged pruned once
        and a search of tens of thousands of candidates, nearly all pruned, does not scan them
        all again for every wave (that scan cost minutes of the main process at 64 GPUs). Which
        searches start ahead changes the wall time only, never an outcome.
        """
        room = LOOK_AHEAD_PER_WORKER * self.spec.workers if self.spec.workers > 1 else 0
        if len(ahead) >= room:
            return
        if self._live is None:
            self._live = [(w, item) for w in range(start, len(waves)) for item in waves[w]]
        live, kept = self._live, []
        sides = {side for _, side in ahead.values() if side is not None} | running
        i = 0
        while i < len(live) and len(ahead) < room:
            w, item = live[i]
            i += 1
            if w < start:
                continue  # its wave has begun
            need, why = self._need(item)
            if why:
                continue
            kept.append((w, item))
            key = (item.candidate.candidate_id, need)
            if key in ahead:
                continue
            side = self._side(item, need)
            if side is not None and (side in self.proven or side in sides):
                continue
            ahead[key] = (self.pool.submit(evaluate, self._task(item, need)), side)
            if side is not None:
                sides.add(side)
        kept.extend(live[i:])
        self._live = kept

    def _need(self, item: Screened) -> tuple[float, str]:
        """The rate ``item`` must hold to matter, or why it cannot (pruned by its ceiling).

        Reasons name the plan to beat, not the candidate's own figures, so that ``candidates.csv``
        groups them (its probes and bound are in ``probes.csv`` and the evaluation)."""
        c, ceiling = item.candidate, item.ceiling_rps
        best = self.best.get(c.mode)
        target = self.spec.target_rate_rps
        margin = 1.0 + self.spec.rate_policy.tolerance
        if target is not None:
            if ceiling <= target:
                return 0.0, f"capacity bound ({self._util()}) below the target {target:g} req/s"
            if best is None or c.gpus < best.candidate.gpus:
                return target, ""
            if c.gpus > best.candidate.gpus:
                return 0.0, (
                    f"uses more GPUs than {best.candidate.candidate_id} ({best.candidate.gpus}), "
                    f"which holds {target:g} req/s"
                )
            need = max(target, (best.goodput_rps or 0.0) * margin)
        elif best is None:
            return 0.0, ""
        else:
            even = (best.goodput_rps_per_gpu or 0.0) * c.gpus
            if simplicity_key(c) < simplicity_key(best.candidate):
                need = self._tie_need(c.gpus, even, margin)
            else:
                need = even * margin
        if ceiling <= need:
            return 0.0, f"capacity bound ({self._util()}) cannot beat {self._name(best)}"
        return need, ""

    def _tie_need(self, gpus: int, even: float, margin: float) -> float:
        """What a layout simpler than its mode's best must hold: a tie within the search's
        resolution, which ``evaluation.choose`` breaks toward it — but only where a tie can choose
        it, i.e. within the resolution of the best plan of either mode (the final top is at least
        that, so a plan below ``top / margin`` is never in the chosen tie). Below that it matters
        only as its mode's best (the verdict's comparison), which it must beat like any other."""
        top = max((e.goodput_rps_per_gpu or 0.0) for e in self.best.values()) * gpus
        return min(even * margin, max(even, top) / margin)

    def _name(self, best: Evaluation | None) -> str:
        """The plan to beat, e.g. ``c0100 (17.6 req/s per GPU)``."""
        assert best is not None, "a need comes from a best plan"
        c = best.candidate
        if self.spec.target_rate_rps is not None:
            return f"{c.candidate_id} ({best.goodput_rps or 0:.3g} req/s on {c.gpus} GPUs)"
        return f"{c.candidate_id} ({best.goodput_rps_per_gpu or 0:.3g} req/s per GPU)"

    def _util(self) -> str:
        return f"at {self.spec.max_utilisation:.0%} utilisation"

    def _task(self, item: Screened, need: float) -> Task:
        return Task(
            cluster=self.screen.cluster(item.candidate),
            traffic=self.spec.traffic,
            upper_rps=item.ceiling_rps,
            need_rps=need,
            slo=self.spec.slo,
            policy=self.spec.rate_policy,
        )

    def _record(self, item: Screened, need: float, against: Evaluation | None, outcome: RateOutcome) -> None:
        c = item.candidate
        common: dict[str, Any] = {
            "bound_rps": item.bound.rate_rps,
            "bound_role": item.bound.limit,
            "probes": outcome.probes,
            "num_requests": item.num_requests,
        }
        last = outcome.probes[-1]
        target = self.spec.target_rate_rps
        if outcome.status == OK:
            evaluation = Evaluation(c, STATUS_OK, goodput_rps=outcome.goodput_rps, **common)
            best = self.best.get(c.mode)
            if best is None or self.rank(evaluation) < self.rank(best):
                self.best[c.mode] = evaluation
        elif outcome.status == BELOW_NEED and target is not None and need <= target:
            why = f"misses the SLO at the target {target:g} req/s"
            evaluation = Evaluation(c, STATUS_INFEASIBLE, why, **common)
        elif outcome.status == BELOW_NEED:
            why = f"misses the SLO at the rate needed to beat {self._name(against)}"
            evaluation = Evaluation(c, STATUS_PRUNED, why, **common)
        else:
            why = f"misses the SLO at every rate tried, down to {last.rate_rps:.3g} req/s ({last.violated})"
            evaluation = Evaluation(c, STATUS_INFEASIBLE, why, **common)
        self._decide(evaluation)

    def _decide(self, evaluation: Evaluation) -> None:
        self.decided[evaluation.candidate.candidate_id] = evaluation
        self.tick()

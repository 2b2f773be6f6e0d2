"""What a search promises: the chosen plan confirmed on the user's replays, ties, and the budget.

After the waves (``pdplan.planner.waves``) every candidate has the goodput its probes found. This
module turns that ranking into promises a user can check:

1. **Confirm** (``pdplan.planner.confirm``): the candidate about to be chosen — and the best of the
   other mode, which the verdict compares it with — has its goodput re-searched on the user's own
   replays. The confirmed rate replaces the search's figure; a candidate that holds no rate on the
   replays becomes infeasible, and the next is chosen.
2. **Tie**: candidates within the rate search's resolution of the best goodput per GPU are a tie,
   broken toward the simplest (``pdplan.planner.evaluation.choose``), and the tie is stated.
3. **Target** (``--rate``): the fewest-GPU candidate whose replays hold the target rate.
4. **Budget** (``--gpus N``): the chosen unit scaled to as many replicas as fit in N GPUs, its
   goodput searched on the replays like any promise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pdplan.planner.confirm import Confirmation, confirm, goodput_on_replays, holds_at, scaled
from pdplan.planner.evaluation import STATUS_INFEASIBLE, STATUS_OK, Evaluation, choose, rank_key
from pdplan.planner.probe import Probe
from pdplan.planner.screen import Screen, Screened
from pdplan.planner.space import Candidate

if TYPE_CHECKING:
    from pdplan.planner.search import SearchSpec

log = logging.getLogger(__name__)
#: Confirmations before the choice is settled among the confirmed only. A confirmed goodput is at
#: most the search's failing rate (the search's replay is one of the confirmation's), so the loop
#: converges: each round confirms the best unconfirmed candidate that could still win or tie.
MAX_TRIES = 32


@dataclass(frozen=True)
class BudgetUse:
    """The chosen unit × ``replicas`` on the budget, and the goodput its replays hold."""

    unit: Candidate
    replicas: int
    candidate: Candidate
    goodput_rps: float | None
    fails_at_rps: float | None
    probes: tuple[Probe, ...]

    @property
    def gpus_used(self) -> int:
        return self.candidate.gpus


@dataclass(frozen=True, eq=False)
class Promise:
    """The evaluations after confirmation (same order), the chosen one, the top plan it tied with
    (if it is not the top), the confirmations by candidate id, the target check, the budget use."""

    evaluations: tuple[Evaluation, ...]
    chosen: Evaluation | None
    tie_with: Evaluation | None
    confirmations: dict[str, Confirmation]
    target_probe: Probe | None
    budget: BudgetUse | None


class Settler:
    """Confirms, chooses and scales (see the module doc)."""

    def __init__(self, spec: SearchSpec, screen: Screen, evaluations: tuple[Evaluation, ...]) -> None:
        self.spec, self.screen = spec, screen
        self.by_id = {e.candidate.candidate_id: e for e in evaluations}
        self.order = [e.candidate.candidate_id for e in evaluations]
        self.confirmations: dict[str, Confirmation] = {}
        self.tolerance = spec.rate_policy.tolerance

    def settle(self) -> Promise:
        spec = self.spec
        target_probe: Probe | None = None
        tie: Evaluation | None = None
        if spec.target_rate_rps is not None:
            chosen, target_probe = self._hold_target(spec.target_rate_rps)
        else:
            chosen, tie = self._best()
        if chosen is not None:
            others = [e for e in self._ranked() if e.candidate.mode != chosen.candidate.mode]
            if others:
                self._confirmed(others[0])
            chosen = self.by_id[chosen.candidate.candidate_id]
        budget = self._budget(chosen) if chosen is not None and spec.max_gpus is not None else None
        return Promise(
            evaluations=tuple(self.by_id[i] for i in self.order),
            chosen=chosen,
            tie_with=tie,
            confirmations=self.confirmations,
            target_probe=target_probe,
            budget=budget,
        )

    def _ranked(self) -> list[Evaluation]:
        ok = [e for e in self.by_id.values() if e.status == STATUS_OK]
        return sorted(ok, key=rank_key(self.spec.target_rate_rps))

    def _best(self) -> tuple[Evaluation | None, Evaluation | None]:
        """Choose by goodput per GPU with ties, confirming until the choice is stable."""
        for _ in range(MAX_TRIES):
            ranked = self._ranked()
            if not ranked:
                return None, None
            chosen, tie = choose(ranked, self.tolerance)
            if chosen.candidate.candidate_id in self.confirmations:
                return chosen, tie
            self._confirmed(chosen)
        # still moving after MAX_TRIES confirmations: choose among the confirmed only
        ranked = [e for e in self._ranked() if e.candidate.candidate_id in self.confirmations]
        if not ranked:
            return None, None
        return choose(ranked, self.tolerance)

    def _hold_target(self, target: float) -> tuple[Evaluation | None, Probe | None]:
        """The fewest-GPU candidate whose replays hold ``target``."""
        for evaluation in self._ranked()[:MAX_TRIES]:
            probe = self._probe_at(evaluation, target)
            if probe.meets_slo:
                return self._confirmed(evaluation), probe
            why = f"misses the SLO at the target {target:g} req/s on the user's replays ({probe.violated})"
            self._demote(evaluation, why)
        return None, None

    def _probe_at(self, evaluation: Evaluation, rate: float) -> Probe:
        if self.spec.traffic.probes_are_replays:
            same = [p for p in evaluation.probes if p.rate_rps == rate]
            if same:
                return same[0]
        return holds_at(self.screen.cluster(evaluation.candidate), self.spec.traffic, self.spec.slo, rate)

    def _confirmed(self, evaluation: Evaluation) -> Evaluation:
        """``evaluation`` with its goodput confirmed on the replays (recorded in ``by_id``)."""
        cid = evaluation.candidate.candidate_id
        if cid in self.confirmations or not self.spec.confirm:
            return self.by_id[cid]
        cluster = self.screen.cluster(evaluation.candidate)
        result = confirm(cluster, self.spec.traffic, self.spec.slo, evaluation, self.spec.rate_policy)
        self.confirmations[cid] = result
        if result.goodput_rps is None:
            self._demote(evaluation, "holds no rate on the user's replays, down to the search's floor")
            return self.by_id[cid]
        if result.replayed:
            log.info(
                "%s: search %.4g req/s, replays %.4g req/s", cid, evaluation.goodput_rps, result.goodput_rps
            )
            self.by_id[cid] = replace(evaluation, goodput_rps=result.goodput_rps, probes=result.probes)
        return self.by_id[cid]

    def _demote(self, evaluation: Evaluation, why: str) -> None:
        cid = evaluation.candidate.candidate_id
        self.by_id[cid] = replace(evaluation, status=STATUS_INFEASIBLE, reason=why, goodput_rps=None)

    def _budget(self, chosen: Evaluation) -> BudgetUse | None:
        """The chosen unit scaled to fill the budget (itself when one replica is all that fits)."""
        assert self.spec.max_gpus is not None and chosen.goodput_rps is not None
        replicas = self.spec.max_gpus // chosen.candidate.gpus
        if replicas < 2:  # one unit is all the budget holds: it is the budget's plan
            conf = self.confirmations.get(chosen.candidate.candidate_id)
            fails = conf.fails_at_rps if conf is not None else None
            return BudgetUse(chosen.candidate, 1, chosen.candidate, chosen.goodput_rps, fails, ())
        big = scaled(chosen.candidate, replicas)
        item = self.screen.screen(big)
        if not isinstance(item, Screened):
            log.info("budget: %s does not screen: %s", big.candidate_id, item.reason)
            return BudgetUse(chosen.candidate, replicas, big, None, None, ())
        cluster = self.screen.cluster(big)
        found = goodput_on_replays(
            cluster,
            self.spec.traffic,
            self.spec.slo,
            item.bound.rate_rps,
            chosen.goodput_rps * replicas,
            self.spec.rate_policy,
        )
        return BudgetUse(chosen.candidate, replicas, big, found.goodput_rps, found.fails_at_rps, found.probes)

"""``Evaluation``: what the search decided about one candidate, and how evaluations are ranked.

A candidate ends ``ok`` (with its goodput: the highest simulated rate that met the SLO),
``infeasible`` (no rate can meet the SLO: it does not fit in memory, a latency floor or the KV
capacity rules it out, or it missed the SLO at every rate tried) or ``pruned`` (it cannot beat the
best plan of its mode found so far: by its capacity bound, or by missing the SLO at the rate it
would need). ``row`` is its line of ``candidates.csv`` (notes/RUNDIR.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pdplan.planner.probe import Probe
from pdplan.planner.space import Candidate

STATUS_OK, STATUS_INFEASIBLE, STATUS_PRUNED = "ok", "infeasible", "pruned"
CANDIDATE_COLUMNS = (
    "candidate_id",
    "mode",
    "prefill_instances",
    "prefill_tp",
    "prefill_pp",
    "decode_instances",
    "decode_tp",
    "decode_pp",
    "colocated_instances",
    "colocated_tp",
    "colocated_pp",
    "policy",
    "max_batch_size",
    "max_batch_tokens",
    "chunk_tokens",
    "gpus",
    "goodput_rps",
    "goodput_rps_per_gpu",
    "status",
    "reason",
)


@dataclass(frozen=True)
class Evaluation:
    """One candidate's fate: ``ok`` with its goodput, ``infeasible`` or ``pruned`` with why.

    ``bound_rps`` is its capacity bound (when computed) and ``bound_role`` the role that sets it;
    ``num_requests`` is the request prefix its probes replayed.
    """

    candidate: Candidate
    status: str
    reason: str = ""
    bound_rps: float | None = None
    goodput_rps: float | None = None
    probes: tuple[Probe, ...] = ()
    num_requests: int = 0
    bound_role: str = ""  # the role whose capacity bound binds (prefill, decode, colocated)

    def __post_init__(self) -> None:
        assert self.status in (STATUS_OK, STATUS_INFEASIBLE, STATUS_PRUNED), f"status {self.status}"
        assert (self.status == STATUS_OK) == (self.goodput_rps is not None), "goodput iff ok"
        assert self.status == STATUS_OK or self.reason, "a candidate that is not ok says why"

    @property
    def goodput_rps_per_gpu(self) -> float | None:
        return None if self.goodput_rps is None else self.goodput_rps / self.candidate.gpus

    @property
    def operating_probe(self) -> Probe | None:
        """The passing probe at the goodput (its operating point)."""
        passing = [p for p in self.probes if p.meets_slo]
        return max(passing, key=lambda p: p.rate_rps) if passing else None

    @property
    def limit(self) -> str:
        """What stopped its goodput from going higher, from the lowest failing probe above it:
        the SLO term that failed, or the capacity ceiling when no probe above it failed."""
        above = [p for p in self.probes if not p.meets_slo and p.rate_rps > (self.goodput_rps or 0.0)]
        if not above:
            top = max((p.rate_rps for p in self.probes), default=0.0)
            return f"none found: it held the SLO at every rate tried, up to {top:.3g} req/s"
        return min(above, key=lambda p: p.rate_rps).violated

    def row(self) -> dict[str, Any]:
        """One ``candidates.csv`` row."""
        out = {
            **self.candidate.row(),
            "goodput_rps": self.goodput_rps,
            "goodput_rps_per_gpu": self.goodput_rps_per_gpu,
            "status": self.status,
            "reason": self.reason,
        }
        return {name: out[name] for name in CANDIDATE_COLUMNS}


def rank_key(target_rate_rps: float | None) -> Callable[[Evaluation], tuple[Any, ...]]:
    """Sort key, best first: most goodput per GPU (ties: fewer GPUs, then id); with a target
    rate, fewest GPUs (ties: more goodput, then id)."""
    if target_rate_rps is not None:
        return lambda e: (e.candidate.gpus, -(e.goodput_rps or 0.0), e.candidate.candidate_id)
    return lambda e: (-(e.goodput_rps_per_gpu or 0.0), e.candidate.gpus, e.candidate.candidate_id)


def simplicity_key(candidate: Candidate) -> tuple[Any, ...]:
    """Simpler first: fewer GPUs, fewer instances, smaller TP, colocated before disaggregated."""
    return (
        candidate.gpus,
        sum(candidate.instances.values()),
        max(candidate.tps),
        candidate.mode != "colocated",
        candidate.candidate_id,
    )


def choose(ranked: list[Evaluation], tolerance: float) -> tuple[Evaluation, Evaluation | None]:
    """The plan to recommend from evaluations ranked by goodput per GPU, and — when it is not the
    top one — the top one it tied with.

    Candidates within the rate search's resolution of the best goodput per GPU (``1 + tolerance``)
    cannot be told apart by the search; among them the simplest wins (``simplicity_key``).
    """
    assert ranked, "choose among at least one evaluation"
    best = ranked[0]
    top = best.goodput_rps_per_gpu or 0.0
    tied = [e for e in ranked if (e.goodput_rps_per_gpu or 0.0) * (1.0 + tolerance) >= top]
    chosen = min(tied, key=lambda e: simplicity_key(e.candidate))
    return chosen, (best if chosen is not best else None)

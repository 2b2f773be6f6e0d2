"""The verdict of a search in words: what won, by how much over the other mode, and why.

For a GPU budget: "disaggregated 2P:1D (TP1) gives 1.8× the goodput per GPU of the best colocated
plan (4× colocated (TP1), chunked 2048): 19.2 vs 10.7 req/s per GPU". For a target rate: "…
holds 80 req/s on 5 GPUs; the best colocated plan needs 7 GPUs (1.4× as many)". A ratio within
twice the rate search's tolerance is called a tie: the search cannot tell the two apart. "Why"
names what limits each plan just above its goodput (the failing SLO term, or its capacity).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from pdplan.planner.evaluation import STATUS_INFEASIBLE, Evaluation
from pdplan.planner.space import MODES

if TYPE_CHECKING:
    from pdplan.planner.search import SearchResult


def verdict(result: SearchResult) -> str:
    """One or two sentences: the chosen plan against the best of the other mode, and why."""
    spec = result.spec
    chosen = result.chosen
    if chosen is None:
        return infeasible_reason(result)
    others = [m for m in MODES if m in spec.modes and m != chosen.candidate.mode]
    other = result.best_by_mode.get(others[0]) if others else None
    if spec.target_rate_rps is not None:
        text = _rate_sentence(result, chosen, other, others)
    else:
        text = _budget_sentence(result, chosen, other, others)
    text = f"{text}. {_why(chosen, other)}"
    if result.sustained is not None:
        text += " " + result.sustained.sentence()
    return text


def _budget_sentence(
    result: SearchResult, chosen: Evaluation, other: Evaluation | None, others: list[str]
) -> str:
    ours = chosen.goodput_rps_per_gpu or 0.0
    head = chosen.candidate.label
    if other is None:
        figures = f"{ours:.3g} req/s per GPU ({chosen.goodput_rps:.3g} req/s on {chosen.candidate.gpus} GPUs)"
        if not others:
            return f"{head} gives the most goodput per GPU: {figures}"
        return (
            f"{head} gives {figures}; no {others[0]} layout within {result.spec.max_gpus} GPUs "
            f"holds the SLO ({_top_reason(result, others[0])})"
        )
    theirs = other.goodput_rps_per_gpu or 0.0
    ratio = ours / theirs if theirs > 0 else float("inf")
    text = (
        f"{head} gives {ratio:.2f}× the goodput per GPU of the best {other.candidate.mode} plan "
        f"({other.candidate.description}): {ours:.3g} vs {theirs:.3g} req/s per GPU"
    )
    if ratio < 1.0 + 2 * result.spec.rate_policy.tolerance:
        text += f" — within the search's resolution (±{result.spec.rate_policy.tolerance:.1%}), a tie"
    return text


def _rate_sentence(
    result: SearchResult, chosen: Evaluation, other: Evaluation | None, others: list[str]
) -> str:
    spec = result.spec
    assert spec.target_rate_rps is not None
    gpus = chosen.candidate.gpus
    head = chosen.candidate.label
    text = f"{head} holds {spec.target_rate_rps:g} req/s on {gpus} GPUs"
    if spec.price_per_gpu_hour is not None:
        text += f" (${gpus * spec.price_per_gpu_hour:,.2f}/hour)"
    if other is not None:
        theirs = other.candidate.gpus
        text += (
            f"; the best {other.candidate.mode} plan ({other.candidate.shape}) needs {theirs} GPUs "
            f"({theirs / gpus:.2f}× as many)"
        )
    elif others:
        text += f"; no {others[0]} layout the search tried holds it ({_top_reason(result, others[0])})"
    return text


def _why(chosen: Evaluation, other: Evaluation | None) -> str:
    text = f"Chosen: {chosen.candidate.description}; above its goodput it is limited by {chosen.limit}"
    if other is not None:
        text += f"; the {other.candidate.mode} plan by {other.limit}"
    return text + "."


def infeasible_reason(result: SearchResult) -> str:
    """Why nothing holds the SLO: the commonest reason over the candidates, with an example."""
    spec = result.spec
    where = f"within {spec.max_gpus} GPUs" if spec.max_gpus is not None else "the search tried"
    target = f" at {spec.target_rate_rps:g} req/s" if spec.target_rate_rps is not None else ""
    return (
        f"no layout {where} holds {spec.slo.slo.spec} for {spec.slo.attainment:.0%} of requests"
        f"{target}: {_top_reason(result, None)}"
    )


def _top_reason(result: SearchResult, mode: str | None) -> str:
    rejected = [
        e for e in result.evaluations if e.status == STATUS_INFEASIBLE and mode in (None, e.candidate.mode)
    ] or [e for e in result.evaluations if e.status != "ok" and mode in (None, e.candidate.mode)]
    if not rejected:
        return "no candidate"
    kinds = Counter(e.reason.split(":")[0] for e in rejected)
    kind, count = kinds.most_common(1)[0]
    example = next(e for e in rejected if e.reason.split(":")[0] == kind)
    return f"{count} of {len(rejected)} candidates: {example.reason} (e.g. {example.candidate.candidate_id})"

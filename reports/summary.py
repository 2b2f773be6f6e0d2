"""Section 1, Summary: the recommended plan in one sentence, and a table with the best colocated
plan (or, when colocated won, the best disaggregated one) beside it.

Reads ``plan.yaml`` (the plan, its ``predicted`` figures, ``feasible``/``reason``),
``candidates.csv`` + ``probes.csv`` (the alternative and its latencies at goodput) and
``summary.yaml`` (what a single-plan simulation or a bench measured); the promise lines (target,
budget, cost, traffic, tie: ``promise.py``) and, for a deployment, its processes (``deployment.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdplan.reports.deployment import deploy_items
from pdplan.reports.plans import SUMMARY_HEADER, candidate_view, plan_view, ranked
from pdplan.reports.promise import promise_lines
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Heading, Item, Paragraph, Section, Table
from pdplan.reports.units import fmt_count, fmt_ms, fmt_num, fmt_pct, fmt_rps


def build_summary(runs: Sequence[RunData]) -> Section:
    """The Summary section over every run that has a ``plan.yaml``."""
    with_plan = [run for run in runs if run.plan is not None]
    if not with_plan:
        why = "; ".join(run.why_absent("plan.yaml") for run in runs)
        return Section("summary", "Summary", absent=f"No plan to summarise: {why}.")
    items: list[Item] = []
    notes: list[str] = []
    for run in with_plan:
        if len(with_plan) > 1:
            items.append(Heading(f"{run.label} ({run.kind})"))
        items.extend(_run_summary(run, notes))
        if run.deploy is not None:
            items.extend(deploy_items(run))
    return Section("summary", "Summary", items=tuple(items), notes=tuple(notes))


def _run_summary(run: RunData, notes: list[str]) -> list[Item]:
    plan = run.plan
    assert plan is not None
    headline, lines, problems = promise_lines(plan)
    notes.extend(f"{run.label}: {p}" for p in problems)
    lead_items: list[Item] = [Paragraph(headline)] if headline else []
    if plan.get("feasible") is False:
        reason = plan.get("reason") or "no reason given"
        items: list[Item] = [*lead_items, Paragraph(f"No plan meets the SLO within this budget: {reason}.")]
        items.extend(Paragraph(line) for line in lines)
        if run.candidates is not None:
            items.append(Paragraph(_candidate_counts(run)))
        return items
    view = plan_view(plan)
    # a search recommends; a simulate, deploy or bench run was handed its plan
    lead = "Recommended" if run.candidates is not None else "Plan"
    rows = [view.cells(lead.lower())]
    sentence = f"{lead}: {view.phrase} on {fmt_num(view.gpus)} GPUs"
    if np.isfinite(view.goodput_rps):
        # not "sustaining" where the trace repeated at that rate says it does not last
        lasts = plan.get("sustained")
        verb = "holding" if isinstance(lasts, dict) and lasts.get("holds") is False else "sustaining"
        sentence += (
            f", {verb} {fmt_num(view.goodput_rps)} req/s within the SLO "
            f"({fmt_num(view.goodput_rps_per_gpu)} req/s per GPU)"
        )
        if verb == "holding":
            sentence += " on the trace replayed once (see the short replay below)"
    if run.candidates is not None:
        other_mode = "disaggregated" if view.mode == "colocated" else "colocated"
        alternatives = ranked(run.candidates, other_mode)
        if alternatives.empty:
            sentence += f"; no {other_mode} plan met the SLO on this budget"
        else:
            alt = candidate_view(alternatives.iloc[0], run.probes)
            rows.append(alt.cells(f"best {other_mode}"))
            ratio = view.goodput_rps_per_gpu / alt.goodput_rps_per_gpu
            if np.isfinite(ratio) and alt.goodput_rps_per_gpu > 0:
                sentence += (
                    f", {ratio:.2f}× the goodput per GPU of the best {other_mode} plan "
                    f"({alt.phrase}, {fmt_num(alt.goodput_rps_per_gpu)} req/s per GPU)"
                )
    items = [
        *lead_items,
        Paragraph(sentence + "."),
        *(Paragraph(line) for line in lines),
        Table(
            "The recommended plan and the best plan of the other mode, predicted at their goodput."
            if run.candidates is not None
            else "The plan and its predicted latencies.",
            SUMMARY_HEADER,
            tuple(rows),
            highlight=(0,),
        ),
    ]
    if run.candidates is not None:
        items.append(Paragraph(_candidate_counts(run)))
    if run.summary is not None:
        items.append(Paragraph(_measured_sentence(run)))
    return items


def _candidate_counts(run: RunData) -> str:
    assert run.candidates is not None
    counts = run.candidates["status"].value_counts()
    parts = [f"{fmt_count(counts[s])} {s}" for s in ("ok", "infeasible", "pruned") if s in counts]
    return f"Chosen among {fmt_count(len(run.candidates))} candidates ({', '.join(parts)})."


def _measured_sentence(run: RunData) -> str:
    summary = run.summary or {}
    verb = "measured" if run.kind == "bench" else "simulated"
    ttft = summary.get("ttft_ms") if isinstance(summary.get("ttft_ms"), dict) else {}
    tpot = summary.get("tpot_ms") if isinstance(summary.get("tpot_ms"), dict) else {}
    assert isinstance(ttft, dict) and isinstance(tpot, dict)
    text = (
        f"The {verb} run served {fmt_rps(summary.get('throughput_rps'))} with TTFT p90 "
        f"{fmt_ms(ttft.get('p90'))} and TPOT p90 {fmt_ms(tpot.get('p90'))}"
    )
    attainment = summary.get("attainment")
    if isinstance(attainment, (int, float)) and not isinstance(attainment, bool):
        text += f"; {fmt_pct(attainment)} of requests met the SLO"
        target = (run.plan or {}).get("attainment")
        if isinstance(target, (int, float)) and not isinstance(target, bool) and 0 < target <= 1:
            if attainment >= target:
                text += f", at or above the {fmt_pct(target, 0)} target: the plan holds at this rate"
            else:
                text += f", below the {fmt_pct(target, 0)} target: the plan does NOT hold at this rate"
    return text + "."

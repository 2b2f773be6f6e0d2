"""What a plan promises, in the Summary's words: the target rate and whether it is held, how a GPU
budget is used, what the plan costs, how the traffic was judged, and how a tie was broken.

Reads the optional ``plan.yaml`` fields ``target: {rate_rps, held, gpus}``, ``budget: {gpus,
replicas, gpus_used, goodput_rps, layout}``, ``cost: {price_per_gpu_hour, gpus, per_hour,
per_million_output_tokens}``, ``traffic`` (``as-recorded`` | ``stationary`` | ``synthetic``) and
``tie`` (a sentence), ``sustained`` (the promise on the trace repeated, when its replay once is
short), and ``cache_choice`` (the router and cache tiers chosen on prefix
traffic). Each is shown only when present; a field of the wrong type is named in a note rather
than guessed at.
"""

from __future__ import annotations

import math
from typing import Any

from pdplan.reports.units import fmt_money, fmt_num, fmt_rps

#: How each ``traffic`` value judged a candidate, as the report states it.
TRAFFIC_WORDS = {
    "as-recorded": "the trace replayed whole, time-scaled to each rate, with its own swings",
    "stationary": (
        "stationary view of the trace (detrended), chosen explicitly: the minute-scale swings of the "
        "recorded traffic are not part of this promise"
    ),
    "synthetic": (
        "synthetic workload, replayed at its own request count with its seed and five more, "
        "with a stability test and a margin for the seed-to-seed spread"
    ),
}


def _number(block: dict[str, Any], key: str) -> float | None:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _block(plan: dict[str, Any], key: str, notes: list[str]) -> dict[str, Any] | None:
    value = plan.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        notes.append(f"plan.yaml's {key!r} is not a mapping ({type(value).__name__}); not shown.")
        return None
    return value


def target_sentence(plan: dict[str, Any], notes: list[str]) -> str | None:
    """'Target 40 req/s: held by this plan on 6 GPUs.' (rate mode's headline)."""
    target = _block(plan, "target", notes)
    if target is None:
        return None
    rate = _number(target, "rate_rps")
    if rate is None:
        notes.append("plan.yaml's target has no numeric rate_rps; not shown.")
        return None
    gpus = _number(target, "gpus")
    on = f" on {fmt_num(gpus)} GPUs" if gpus is not None else ""
    held = target.get("held")
    if held is True:
        return f"Target {fmt_rps(rate)}: held by this plan{on}."
    if held is False:
        return f"Target {fmt_rps(rate)}: NOT held by the best plan found{on}."
    return f"Target {fmt_rps(rate)}{on} (plan.yaml does not say whether it is held)."


def budget_sentence(plan: dict[str, Any], notes: list[str]) -> str | None:
    """'Budget of 16 GPUs: 5 replicas of the 3-GPU unit (colocated 3× TP1) on 15 of 16 GPUs: 274 req/s.'"""
    budget = _block(plan, "budget", notes)
    if budget is None:
        return None
    gpus, replicas = _number(budget, "gpus"), _number(budget, "replicas")
    used, goodput = _number(budget, "gpus_used"), _number(budget, "goodput_rps")
    layout = budget.get("layout")
    text = f"Budget of {fmt_num(gpus)} GPUs" if gpus is not None else "Budget"
    if replicas is not None and used is not None and replicas > 0:
        unit = used / replicas
        noun = "replica" if replicas == 1 else "replicas"
        what = f"the {fmt_num(unit)}-GPU unit" if unit == int(unit) else "the unit"
        if isinstance(layout, str) and layout:
            what += f" ({layout})"
        text += f": {fmt_num(replicas)} {noun} of {what} on {fmt_num(used)}"
        text += f" of {fmt_num(gpus)} GPUs" if gpus is not None else " GPUs"
    elif isinstance(layout, str) and layout:
        text += f": {layout}"
        if used is not None:
            text += f" on {fmt_num(used)} GPUs"
    if goodput is not None:
        text += f": {fmt_rps(goodput)} in total"
        if isinstance(plan.get("cache_choice"), dict):  # the budget is scaled from the cache-less ranking
            text += " without a prefix cache"
    file = budget.get("plan")
    if isinstance(file, str) and file and file != "plan.yaml":
        text += f", confirmed on its own replays (the layout is {file})"
    return text + "."


def cost_sentence(plan: dict[str, Any], notes: list[str]) -> str | None:
    """'Cost at $2.50 per GPU-hour: $15.00 per hour for 6 GPUs, $0.81 per million output tokens.'"""
    cost = _block(plan, "cost", notes)
    if cost is None:
        return None
    price, gpus = _number(cost, "price_per_gpu_hour"), _number(cost, "gpus")
    per_hour, per_million = _number(cost, "per_hour"), _number(cost, "per_million_output_tokens")
    if per_hour is None and price is not None and gpus is not None:
        per_hour = price * gpus
    parts = []
    if per_hour is not None:
        parts.append(f"{fmt_money(per_hour)} per hour" + (f" for {fmt_num(gpus)} GPUs" if gpus else ""))
    if per_million is not None:
        parts.append(f"{fmt_money(per_million)} per million output tokens")
    if not parts:
        notes.append("plan.yaml's cost has neither per_hour nor per_million_output_tokens; not shown.")
        return None
    lead = f"Cost at {fmt_money(price)} per GPU-hour" if price is not None else "Cost"
    pools = _pools_words(cost.get("pools"))
    if pools:
        parts[0] += f" ({pools})"
    return f"{lead}: {', '.join(parts)}."


def _pools_words(pools: Any) -> str:
    """'prefill 2 × h100-sxm at $2.50, decode 6 × a100-80g at $1.30' from ``cost.pools``."""
    if not isinstance(pools, dict):
        return ""
    words = []
    for role, pool in pools.items():
        if not isinstance(pool, dict):
            continue
        gpus, price = _number(pool, "gpus"), _number(pool, "price_per_gpu_hour")
        if gpus is None or price is None:
            continue
        words.append(f"{role} {fmt_num(gpus)} × {pool.get('hardware', '?')} at {fmt_money(price)}")
    return ", ".join(words)


def traffic_sentence(plan: dict[str, Any]) -> str | None:
    """How the search judged the traffic, from ``traffic``."""
    value = plan.get("traffic")
    if isinstance(value, dict):  # the search writes {kind, warmup_fraction, replay_seeds, ...}
        value = value.get("kind")
    if value is None or value == "":
        return None
    words = TRAFFIC_WORDS.get(str(value))
    text = f"Traffic: {words} (traffic: {value})." if words else f"Traffic: {value}."
    confirmed = plan.get("confirmed")
    if isinstance(confirmed, dict) and confirmed.get("rate_rps") is not None:
        seeds = confirmed.get("seeds") or []
        fails = confirmed.get("fails_at_rps")
        text += (
            f" The promise was checked as a user checks it (pdplan simulate --plan on the same traffic"
            f"{f', seeds {min(seeds)}-{max(seeds)}' if len(seeds) > 1 else ''}): it holds at "
            f"{fmt_rps(float(confirmed['rate_rps']))}"
        )
        text += f" and misses at {fmt_rps(float(fails))}." if fails is not None else "."
    return text


def sustained_sentence(plan: dict[str, Any], notes: list[str]) -> str | None:
    """Whether the promise lasts on the trace repeated (``sustained``, ``pdplan.planner.sustained``),
    written only when the trace replayed once at the promised rate is short."""
    block = _block(plan, "sustained", notes)
    if block is None:
        return None
    rate, once = _number(block, "rate_rps"), _number(block, "replay_once_s")
    if rate is None or once is None:
        notes.append("plan.yaml's sustained lacks rate_rps or replay_once_s; not shown.")
        return None
    head = (
        f"Short replay: at {fmt_rps(rate)} the trace lasts only {once:.3g} s, so the promise above is "
        "judged while the cluster, started empty, is still filling"
    )
    if block.get("checked") is False:
        return f"{head}; it was not checked on the trace repeated ({block.get('why', '')})."
    copies, attained = _number(block, "copies"), _number(block, "attainment")
    long = _number(block, "replay_s")
    repeated = f"on the trace repeated {fmt_num(copies)}× ({long:.3g} s)" if copies and long else "repeated"
    share = f" (attainment {attained:.3f})" if attained is not None else ""
    if block.get("holds") is True:
        return f"{head}; {repeated} at that rate it still holds{share}."
    return (
        f"{head}; {repeated} at that rate it does NOT hold{share}: the figure is a start-up, not a rate "
        "this plan sustains."
    )


def tie_sentence(plan: dict[str, Any]) -> str | None:
    value = plan.get("tie")
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    return text if text.endswith(".") else text + "."


def cache_sentence(plan: dict[str, Any], notes: list[str]) -> str | None:
    """The router and cache tiers the search chose on prefix traffic (``cache_choice``,
    ``pdplan.planner.cache_choice``): what they hold on the replays, against no prefix cache."""
    choice = _block(plan, "cache_choice", notes)
    if choice is None:
        return None
    goodput, fails = _number(choice, "goodput_rps"), _number(choice, "fails_at_rps")
    without = _number(choice, "without_cache_rps")
    rates = choice.get("hit_rate")
    if goodput is None or without is None or not isinstance(rates, dict):
        notes.append("plan.yaml's cache_choice lacks goodput_rps, without_cache_rps or hit_rate; not shown.")
        return None
    options = choice.get("options")
    tried = (
        f" ({len(options)} router/tier options tried, simplest first)" if isinstance(options, list) else ""
    )
    tiers = ", ".join(f"{t.upper()} {float(rates.get(t) or 0.0):.1%}" for t in ("l1", "l2", "l3"))
    text = (
        f"Prefix traffic: the search then chose this layout's routing ({choice.get('router')}) and cache "
        f"tiers{tried}; with them it holds {fmt_rps(goodput)} on the same replays"
    )
    text += f" and misses at {fmt_rps(fails)}" if fails is not None else ""
    return text + (
        f", against {fmt_rps(without)} without a prefix cache (the rate the layouts were ranked at); "
        f"prefix cache hit rate {float(rates.get('total') or 0.0):.1%} ({tiers})."
    )


def promise_lines(plan: dict[str, Any]) -> tuple[str | None, list[str], list[str]]:
    """(the target headline or None, the lines that follow the recommendation, notes)."""
    notes: list[str] = []
    headline = target_sentence(plan, notes)
    lines = [
        line
        for line in (
            tie_sentence(plan),
            budget_sentence(plan, notes),
            cost_sentence(plan, notes),
            traffic_sentence(plan),
            sustained_sentence(plan, notes),
            cache_sentence(plan, notes),
        )
        if line
    ]
    return headline, lines, notes

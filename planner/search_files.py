"""Writing a search's run directory (notes/RUNDIR.md) from a ``SearchResult``.

``plan.yaml`` (the chosen plan with ``predicted`` filled, or ``feasible: false`` with the reason),
``candidates.csv`` (every candidate with its goodput or why not), ``probes.csv`` (every simulated
probe), and — when a plan was chosen — ``requests.csv``, ``summary.yaml`` and ``timeseries.csv``
of that plan at its operating point; then ``run.yaml``. Each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pdplan.planner.evaluation import CANDIDATE_COLUMNS
from pdplan.planner.plan import Plan, save_plan
from pdplan.planner.probe import PROBE_COLUMNS
from pdplan.planner.profileset import ProfileSet
from pdplan.planner.rundir import write_csv, write_run_yaml, write_yaml
from pdplan.planner.search import SearchResult
from pdplan.planner.space import Candidate
from pdplan.planner.verdict import infeasible_reason
from pdplan.sim.cluster import KvLink
from pdplan.sim.timeseries import timeseries

if TYPE_CHECKING:
    from pdplan.realrun.targets.layout import LaunchSettings

_LATENCY_KEYS = ("ttft", "tpot")
#: The chosen unit scaled to fill the GPU budget, written beside plan.yaml.
BUDGET_PLAN = "plan_budget.yaml"


def candidates_frame(result: SearchResult) -> pd.DataFrame:
    """``candidates.csv``: one row per candidate, in id order."""
    return pd.DataFrame([e.row() for e in result.evaluations], columns=list(CANDIDATE_COLUMNS))


def probes_frame(result: SearchResult) -> pd.DataFrame:
    """``probes.csv``: every probe, by candidate id, in the order they ran."""
    rows = [p.row(e.candidate.candidate_id) for e in result.evaluations for p in e.probes]
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


def plan_of(result: SearchResult, workload: str | dict[str, Any] | None) -> Plan:
    """The chosen plan with its predicted figures, or an infeasible plan saying why."""
    spec = result.spec
    common: dict[str, Any] = {
        "model": spec.profiles.model,
        "hardware": spec.profiles.hardware,
        "slo": spec.slo.slo,
        "attainment": spec.slo.attainment,
        "workload": workload,
        **serving_dtypes(spec.profiles),
    }
    chosen = result.chosen
    if chosen is None:
        mode = "disaggregated" if "disaggregated" in spec.modes else "colocated"
        return Plan(mode=mode, feasible=False, reason=infeasible_reason(result), **common)
    c = chosen.candidate
    summary = result.operating_summary or {}
    goodput = chosen.goodput_rps
    choice = result.cache_choice  # the router and cache tiers chosen for it (pdplan.planner.cache_choice)
    if choice is not None:
        goodput = choice.chosen.goodput_rps
        common.update(router=choice.router, cache=choice.cache)
    predicted: dict[str, float | None] = {
        "goodput_rps": _round(goodput),
        "goodput_rps_per_gpu": _round(None if goodput is None else goodput / c.gpus),
        "rate_rps": _round(result.operating_rate_rps),
        "attainment": summary.get("attainment"),
    }
    for metric in _LATENCY_KEYS:
        stats = summary.get(f"{metric}_ms") or {}
        for q in ("p50", "p90", "p99"):
            predicted[f"{metric}_{q}_ms"] = stats.get(q)
    common["notes"] = notes_of(result)
    launch = launch_of(c, spec.profiles)
    if launch is not None:
        common["launch"] = launch
    return _layout_plan(c, spec.link, predicted, common)


def serving_dtypes(profiles: ProfileSet) -> dict[str, str]:
    """``dtype``/``kv_dtype`` for plan.yaml when the profiles serve other than what the model config
    gives by default (its dtype; float16 for a float32 checkpoint on a GPU)."""
    first = profiles.any
    gpu = first.hardware.get("name") != "cpu"
    default = "float16" if gpu and first.model.dtype == "float32" else first.model.dtype
    out = {"dtype": first.dtype} if first.dtype != default else {}
    return out | ({"kv_dtype": first.model.kv_dtype} if first.model.kv_dtype else {})


def launch_of(c: Candidate, profiles: ProfileSet) -> LaunchSettings | None:
    """The plan's ``launch:`` parallelism when the chosen roles' profiles run expert parallelism or
    DP attention inside their instances (``pdplan.profiles.layouts``), else None."""
    from pdplan.realrun.targets.layout import LaunchSettings, RoleParallel

    parallel = {}
    for role, pool in c.pools.items():
        prof = profiles.profiles.get(pool.tp * pool.pp)  # keyed by instance width
        if prof is not None and (prof.ep > 1 or prof.attention_dp > 1):
            parallel[role] = RoleParallel(
                dp=prof.attention_dp, ep=prof.ep, dp_attention=prof.attention_dp > 1
            )
    if not parallel:
        return None
    per_node = profiles.any.hardware.get("gpus_per_node", 8)
    return LaunchSettings(parallel=parallel, gpus_per_node=per_node if isinstance(per_node, int) else 8)


def _layout_plan(
    c: Candidate, link: KvLink, predicted: dict[str, float | None], common: dict[str, Any]
) -> Plan:
    if c.colocated is not None:
        return Plan(mode=c.mode, colocated=c.colocated, predicted=predicted, **common)
    return Plan(
        mode=c.mode, prefill=c.prefill, decode=c.decode, kv_transfer=link, predicted=predicted, **common
    )


def notes_of(result: SearchResult) -> dict[str, Any]:
    """``plan.yaml``'s notes on the promise (``pdplan.planner.plan.NOTE_KEYS``)."""
    spec, chosen, promise = result.spec, result.chosen, result.promise
    assert chosen is not None and chosen.goodput_rps is not None
    notes: dict[str, Any] = {"traffic": spec.traffic.describe()}
    cid = chosen.candidate.candidate_id
    if promise is not None and cid in promise.confirmations:
        notes["confirmed"] = promise.confirmations[cid].describe()
    if result.sustained is not None:
        notes["sustained"] = result.sustained.describe()
    if result.tie_with is not None:
        top = result.tie_with
        notes["tie"] = (
            f"{top.candidate.label} ({top.candidate.gpus} GPUs) reached {top.goodput_rps_per_gpu:.4g} req/s "
            f"per GPU, within the search's resolution (±{spec.rate_policy.tolerance:.1%}) of this plan's "
            f"{chosen.goodput_rps_per_gpu:.4g}: a tie, broken toward "
            f"{_tie_break(chosen.candidate, top.candidate)}"
        )
    if spec.target_rate_rps is not None:
        probe = promise.target_probe if promise is not None else None
        notes["target"] = {
            "rate_rps": spec.target_rate_rps,
            "held": bool(probe is not None and probe.meets_slo),
            "gpus": chosen.candidate.gpus,
            "attainment": None if probe is None else round(probe.attainment, 6),
        }
    budget = result.budget
    if budget is not None:
        notes["budget"] = {
            "gpus": spec.max_gpus,
            "replicas": budget.replicas,
            "gpus_used": budget.gpus_used,
            "layout": budget.candidate.description,
            "goodput_rps": _round(budget.goodput_rps),
            "goodput_rps_per_gpu": _round(
                None if budget.goodput_rps is None else budget.goodput_rps / budget.gpus_used
            ),
            "fails_at_rps": _round(budget.fails_at_rps),
            "plan": BUDGET_PLAN if budget.replicas > 1 else "plan.yaml",
        }
    if spec.price_per_gpu_hour is not None:
        notes["cost"] = _cost(result)
    if result.cache_choice is not None:
        notes["cache_choice"] = result.cache_choice.describe()
    return notes


def _tie_break(chosen: Candidate, top: Candidate) -> str:
    """What decided a tie (``pdplan.planner.evaluation.simplicity_key``), in words."""
    reasons = (
        (chosen.gpus, top.gpus, "fewer GPUs"),
        (sum(chosen.instances.values()), sum(top.instances.values()), "fewer instances"),
        (max(chosen.tps), max(top.tps), "the smaller TP"),
        (chosen.mode != "colocated", top.mode != "colocated", "colocated (one pool to run)"),
    )
    for ours, theirs, words in reasons:
        if ours != theirs:
            return words
    return "the first in candidate order (they differ only in batch limits)"


def _cost(result: SearchResult) -> dict[str, Any]:
    spec, chosen = result.spec, result.chosen
    assert chosen is not None and spec.price_per_gpu_hour is not None
    per_hour = chosen.candidate.gpus * spec.price_per_gpu_hour
    tokens_per_s = float((result.operating_summary or {}).get("output_tokens_per_s") or 0.0)
    per_million = per_hour / (tokens_per_s * 3600.0) * 1e6 if tokens_per_s > 0 else None
    return {
        "price_per_gpu_hour": spec.price_per_gpu_hour,
        "gpus": chosen.candidate.gpus,
        "per_hour": round(per_hour, 6),
        "rate_rps": _round(result.operating_rate_rps),
        "per_million_output_tokens": _round(per_million),
    }


def budget_plan(result: SearchResult, workload: str | dict[str, Any] | None) -> Plan | None:
    """The chosen unit scaled to the budget, as a plan of its own (``plan_budget.yaml``)."""
    budget, spec = result.budget, result.spec
    if budget is None or budget.goodput_rps is None or budget.replicas < 2:
        return None
    predicted: dict[str, float | None] = {
        "goodput_rps": _round(budget.goodput_rps),
        "goodput_rps_per_gpu": _round(budget.goodput_rps / budget.gpus_used),
        "rate_rps": _round(budget.goodput_rps),
    }
    common: dict[str, Any] = {
        "model": spec.profiles.model,
        "hardware": spec.profiles.hardware,
        "slo": spec.slo.slo,
        "attainment": spec.slo.attainment,
        "workload": workload,
        "notes": {"traffic": spec.traffic.describe()},
    }
    return _layout_plan(budget.candidate, spec.link, predicted, common)


def write_search_run(
    out: Path, result: SearchResult, *, workload: str | dict[str, Any] | None, command: str | None = None
) -> Plan:
    """Write every file of the search's run directory into ``out`` (which must exist)."""
    write_csv(out / "candidates.csv", candidates_frame(result))
    write_csv(out / "probes.csv", probes_frame(result))
    plan = plan_of(result, workload)
    save_plan(plan, out / "plan.yaml")
    scaled = budget_plan(result, workload)
    if scaled is not None:
        save_plan(scaled, out / BUDGET_PLAN)
    if result.operating is not None and result.operating_summary is not None:
        write_csv(out / "requests.csv", result.operating.records.to_frame())
        write_yaml(out / "summary.yaml", dict(result.operating_summary))
        write_csv(out / "timeseries.csv", timeseries(result.operating))
    write_run_yaml(out, "search", command)
    return plan


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)

"""Writing a search's run directory (notes/RUNDIR.md) from a ``SearchResult``.

``plan.yaml`` (the chosen plan with ``predicted`` filled, or ``feasible: false`` with the reason),
``candidates.csv`` (every candidate with its goodput or why not), ``probes.csv`` (every simulated
probe), and — when a plan was chosen — ``requests.csv``, ``summary.yaml`` and ``timeseries.csv``
of that plan at its operating point; then ``run.yaml``. Each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pdplan.planner.evaluation import CANDIDATE_COLUMNS
from pdplan.planner.plan import Plan, save_plan
from pdplan.planner.probe import PROBE_COLUMNS
from pdplan.planner.rundir import write_csv, write_run_yaml, write_yaml
from pdplan.planner.search import SearchResult
from pdplan.planner.verdict import infeasible_reason
from pdplan.sim.timeseries import timeseries

_LATENCY_KEYS = ("ttft", "tpot")


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
    }
    chosen = result.chosen
    if chosen is None:
        mode = "disaggregated" if "disaggregated" in spec.modes else "colocated"
        return Plan(mode=mode, feasible=False, reason=infeasible_reason(result), **common)
    c = chosen.candidate
    summary = result.operating_summary or {}
    predicted: dict[str, float | None] = {
        "goodput_rps": _round(chosen.goodput_rps),
        "goodput_rps_per_gpu": _round(chosen.goodput_rps_per_gpu),
        "rate_rps": _round(result.operating_rate_rps),
        "attainment": summary.get("attainment"),
    }
    for metric in _LATENCY_KEYS:
        stats = summary.get(f"{metric}_ms") or {}
        for q in ("p50", "p90", "p99"):
            predicted[f"{metric}_{q}_ms"] = stats.get(q)
    if c.colocated is not None:
        return Plan(mode=c.mode, colocated=c.colocated, predicted=predicted, **common)
    return Plan(
        mode=c.mode,
        prefill=c.prefill,
        decode=c.decode,
        kv_transfer=spec.link,
        predicted=predicted,
        **common,
    )


def write_search_run(
    out: Path, result: SearchResult, *, workload: str | dict[str, Any] | None, command: str | None = None
) -> Plan:
    """Write every file of the search's run directory into ``out`` (which must exist)."""
    write_csv(out / "candidates.csv", candidates_frame(result))
    write_csv(out / "probes.csv", probes_frame(result))
    plan = plan_of(result, workload)
    save_plan(plan, out / "plan.yaml")
    if result.operating is not None and result.operating_summary is not None:
        write_csv(out / "requests.csv", result.operating.records.to_frame())
        write_yaml(out / "summary.yaml", dict(result.operating_summary))
        write_csv(out / "timeseries.csv", timeseries(result.operating))
    write_run_yaml(out, "search", command)
    return plan


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)

"""What ``pdplan simulate --plan`` reports about one simulated run: ``summary.yaml`` (the SLO
judged as the search judges it), the ``predicted`` figures written into plan.yaml, and the table it
prints. Nothing heavy at module level (``pdplan --help`` loads the simulate command)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdplan.planner.inputs import RequestSource
    from pdplan.planner.plan import Plan
    from pdplan.sim.records import SimResult


def summary_of(plan: Plan, result: SimResult, warmup: float, stability: bool = False) -> dict[str, Any]:
    """summary.yaml; the SLO judged as the search judges it (stability test for stationary traffic)."""
    from pdplan.planner.stability import backlog_growth
    from pdplan.sim.summary import summarize

    slo = plan.slo
    columns = result.records.columns()
    summary: dict[str, Any] = {"schema_version": 1, "mode": result.mode}
    summary.update(
        summarize(
            columns,
            slo_ms=slo.per_request_ms if slo else None,
            warmup_fraction=warmup,
            utilisation=result.utilisation,
            percentiles=slo.percentiles if slo else (50.0, 90.0, 99.0),
        )
    )
    summary["kv_capacity_tokens"] = dict(result.kv_capacity_tokens)
    summary["simulated_s"] = round(result.end_s, 6)
    if result.cache is not None:  # per-tier hit rates and bytes moved (pdplan.sim.prefix_cache)
        summary["prefix_cache"] = result.cache.as_dict()
    if stability:
        test = backlog_growth(columns, warmup)
        summary["backlog_growth_fraction"] = test.growth_fraction
    if slo is not None:
        missed = slo.violations(summary, plan.attainment, columns, warmup)
        if stability and not test.stable:
            missed.append(test.violation)
        summary.update({"slo": slo.spec, "attainment_target": plan.attainment, "meets_slo": not missed})
        if missed:
            summary["slo_missed"] = "; ".join(missed)
    return summary


def predicted_of(summary: dict[str, Any], source: RequestSource) -> dict[str, float | None]:
    out: dict[str, float | None] = {"rate_rps": source.description.get("rate_rps")}
    for metric in ("ttft", "tpot"):
        stats = summary.get(f"{metric}_ms") or {}
        for q in ("p50", "p90", "p99"):
            out[f"{metric}_{q}_ms"] = stats.get(q)
    out["attainment"] = summary.get("attainment")
    return out


def print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"pdplan simulate → {out}", show_header=True)
    table.add_column("metric")
    for column in ("mean", "p50", "p90", "p99"):
        table.add_column(column, justify="right")
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        stats = summary.get(metric) or {}
        table.add_row(
            metric[:-3].upper() + " (ms)", *(fmt(stats.get(c)) for c in ("mean", "p50", "p90", "p99"))
        )
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    util = ", ".join(f"{k} {v:.0%}" for k, v in summary["utilisation"].items())
    console.print(f"requests: {counts} (warm-up excluded {summary['warmup_excluded']})")
    rps, tokens = summary["throughput_rps"], summary["output_tokens_per_s"]
    console.print(f"throughput {rps:.3f} req/s, {tokens:.1f} output tok/s; utilisation {util}")
    if "prefix_cache" in summary:
        rates = summary["prefix_cache"]["hit_rate"]
        tiers = ", ".join(f"{tier.upper()} {rates[tier]:.1%}" for tier in ("l1", "l2", "l3"))
        console.print(f"prefix cache hit rate {rates['total']:.1%} ({tiers})")
    if "slo" in summary:
        verdict = "meets" if summary["meets_slo"] else f"misses ({summary.get('slo_missed')})"
        console.print(f"SLO {summary['slo']}: attainment {summary['attainment']} → {verdict}")


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"

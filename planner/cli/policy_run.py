"""The cluster-policy side of ``pdplan simulate --plan``: ``--diurnal`` (a trace stretched to a day)
and ``--policy FILE`` (the run under ``pdplan.sim.autoscale``, with ``fleet_minutes.csv`` and
``fleet.yaml`` beside the usual files; the report draws them).

``summary.yaml``'s utilisation of a policy run divides busy time by every unit the policy may use
(all slots of a role for the whole run), so it reads low; ``fleet_minutes.csv`` has the units that
were actually active and allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pdplan.profiles.errors import ConfigError

if TYPE_CHECKING:
    from pdplan.planner.inputs import RequestSource
    from pdplan.planner.plan import Plan


def diurnal_source(source: RequestSource, text: str, rate: float | None) -> RequestSource:
    """The trace of ``source`` repeated and stretched to a day (``pdplan.sim.diurnal``)."""
    from pdplan.planner.inputs import RequestSource
    from pdplan.planner.policy_file import parse_diurnal
    from pdplan.sim.diurnal import diurnal_day

    if source.description.get("traffic") != "as-recorded":
        raise ConfigError("--diurnal stretches a trace as recorded (--trace, or a trace workload)")
    if rate is not None:
        raise ConfigError("--diurnal sets the day's mean rate (mean=...); leave out --rate")
    profile = parse_diurnal(text)
    day = diurnal_day(source.requests, profile)
    described = {
        **source.description,
        "rate_rps": profile.mean_rate_rps,
        "diurnal": {
            "mean_rate_rps": profile.mean_rate_rps,
            "peak_to_trough": profile.peak_to_trough,
            "peak_hour": profile.peak_hour,
            "hours": profile.duration_s / 3600.0,
            "requests": len(day),
        },
    }
    return RequestSource(day, described)


def checked_policy(path: Path, plan: Plan, source: RequestSource) -> Any:
    """The cluster policy of ``--policy`` for this plan (disaggregated, one GPU type, an SLO)."""
    from pdplan.planner.policy_file import load_policy

    if plan.mode != "disaggregated":
        raise ConfigError("--policy changes prefill and decode pools; this plan is colocated")
    if plan.pool_hardware:
        raise ConfigError("--policy with hardware per pool is not supported; give a plan on one GPU type")
    if plan.slo is None:
        raise ConfigError("--policy judges the SLO per minute; give --slo or a plan with an slo")
    if source.closed_loop is not None:
        raise ConfigError("--policy replays open-loop arrivals; a closed-loop workload has none")
    return load_policy(path)


def write_policy_files(
    staging: Path, plan: Plan, elastic: Any, prices: Any, described: dict[str, Any]
) -> None:
    """``fleet_minutes.csv`` and ``fleet.yaml`` of a ``--policy`` run (``pdplan.planner.fleet``)."""
    from pdplan.planner.fleet import outcome, per_minute
    from pdplan.planner.probe import SloTargets
    from pdplan.planner.rundir import write_csv, write_yaml

    assert plan.slo is not None
    slo = SloTargets(plan.slo, plan.attainment)
    price = prices.of(plan.hardware) if prices is not None else 0.0
    write_csv(staging / "fleet_minutes.csv", per_minute(elastic, slo, price))
    day = outcome(elastic, slo, price)
    changes = [
        {"time_s": c.time_s, "unit": c.unit, "role": c.role, "state": c.state} for c in elastic.changes
    ]
    write_yaml(
        staging / "fleet.yaml",
        {
            "schema_version": 1,
            "policies": [day.row()],
            "description": {
                "attainment": plan.attainment,
                "price_per_gpu_hour": price,
                "workload": described,
            },
            "changes": changes,
        },
    )
    typer.echo(
        f"policy {day.policy}: {day.gpu_hours:,.1f} GPU-hours, attainment {day.attainment:.3f} "
        f"(worst hour {day.worst_hour_attainment:.3f}), {day.changes} changes"
    )

"""What a cluster policy did over a day: SLO attainment per minute, instances per role, GPU-hours and
cost; the search for a policy's thresholds and delays against the best static plan on the same
trace.

Inputs are ``pdplan.sim.autoscale.ElasticResult`` values (the simulator's); the SLO is judged per
request as ``pdplan.sim.summary`` judges it (status ok and every per-request threshold met).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdplan.planner.probe import SloTargets
from pdplan.sim.autoscale import ElasticResult, Policy

MINUTE_S = 60.0
MINUTE_COLUMNS = (
    "policy",
    "minute",
    "arrivals",
    "attainment",
    "prefill_instances",
    "decode_instances",
    "allocated_gpus",
    "gpu_hours",
    "cost",
)


def meets(result: ElasticResult, slo: SloTargets) -> np.ndarray:
    """Per request: status ok and within every per-request threshold (TPOT for > 1 output token)."""
    rec = result.result.records
    ok = rec.status_code == 0
    limits = slo.attainment_thresholds_ms
    with np.errstate(invalid="ignore", divide="ignore"):
        if "ttft" in limits:
            ok &= (rec.first_token_s - rec.arrival_s) * 1000.0 <= limits["ttft"]
        if "e2e" in limits:
            ok &= (rec.finish_s - rec.arrival_s) * 1000.0 <= limits["e2e"]
        if "tpot" in limits:
            tpot = (rec.finish_s - rec.first_token_s) / np.maximum(rec.output_tokens - 1, 1) * 1000.0
            ok &= (rec.output_tokens <= 1) | (tpot <= limits["tpot"])
    return np.asarray(ok, dtype=bool)


def per_minute(result: ElasticResult, slo: SloTargets, price_per_gpu_hour: float) -> pd.DataFrame:
    """One row per minute of the horizon: arrivals, the share of them that met the SLO (NaN for a
    minute without arrivals), units active per role and GPUs allocated at the minute's middle,
    cumulative GPU-hours and cost (exact: allocated GPUs change only at recorded state changes)."""
    minutes = max(1, math.ceil(result.horizon_s / MINUTE_S))
    rec = result.result.records
    index = np.minimum((rec.arrival_s // MINUTE_S).astype(np.int64), minutes - 1)
    arrivals = np.bincount(index, minlength=minutes)
    met = np.bincount(index, weights=meets(result, slo).astype(np.float64), minlength=minutes)
    with np.errstate(invalid="ignore", divide="ignore"):
        attainment = np.where(arrivals > 0, met / np.maximum(arrivals, 1), np.nan)
    mids = (np.arange(minutes) + 0.5) * MINUTE_S
    counts = result.counts_at(mids.tolist())
    edges = np.minimum((np.arange(minutes) + 1) * MINUTE_S, result.horizon_s)
    gpu_hours = gpu_seconds_until(result, edges) / 3600.0
    return pd.DataFrame(
        {
            "policy": result.policy,
            "minute": np.arange(minutes),
            "arrivals": arrivals,
            "attainment": attainment,
            "prefill_instances": counts["prefill"],
            "decode_instances": counts["decode"],
            "allocated_gpus": counts["allocated"] * result.tp,
            "gpu_hours": gpu_hours,
            "cost": gpu_hours * price_per_gpu_hour,
        },
        columns=list(MINUTE_COLUMNS),
    )


def gpu_seconds_until(result: ElasticResult, times: np.ndarray) -> np.ndarray:
    """Cumulative GPU-seconds allocated from 0 to each of ``times`` (sorted)."""
    points = sorted({0.0, *(c.time_s for c in result.changes if c.time_s < result.horizon_s)})
    alloc = result.counts_at(points)["allocated"] * result.tp
    starts = np.asarray(points)
    cum = np.concatenate([[0.0], np.cumsum(alloc[:-1] * np.diff(starts))])
    k = np.searchsorted(starts, times, side="right") - 1
    return cum[k] + alloc[k] * (np.asarray(times) - starts[k])


@dataclass(frozen=True)
class PolicyOutcome:
    """A policy's day in numbers."""

    policy: str
    attainment: float
    minutes_meeting_target: float  # share of minutes with arrivals whose attainment ≥ target
    worst_hour_attainment: float  # the lowest attainment of any hour (the peak's, usually)
    gpu_hours: float
    cost: float
    changes: int
    settings: dict[str, Any]

    def meets(self, target: float) -> bool:
        """Every hour of the day meets the attainment target (what a plan sized for the peak
        promises; the day's mean alone would let quiet hours pay for a missed peak)."""
        return self.worst_hour_attainment >= target

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "attainment": round(self.attainment, 6),
            "minutes_meeting_target": round(self.minutes_meeting_target, 6),
            "worst_hour_attainment": round(self.worst_hour_attainment, 6),
            "gpu_hours": round(self.gpu_hours, 6),
            "cost": round(self.cost, 6),
            "changes": self.changes,
            **{f"setting_{k}": v for k, v in self.settings.items()},
        }


def outcome(
    result: ElasticResult, slo: SloTargets, price_per_gpu_hour: float, settings: dict[str, Any] | None = None
) -> PolicyOutcome:
    """The day's attainment (every request), minutes at target, GPU-hours and cost of ``result``."""
    met = meets(result, slo)
    frame = per_minute(result, slo, price_per_gpu_hour)
    active = frame[frame.arrivals > 0]
    at_target = float((active.attainment >= slo.attainment).mean()) if len(active) else math.nan
    hour = frame.minute // 60
    met_per_hour = (frame.attainment.fillna(0.0) * frame.arrivals).groupby(hour).sum()
    per_hour = met_per_hour / frame.arrivals.groupby(hour).sum().replace(0, np.nan)
    gpu_hours = result.gpu_s / 3600.0
    return PolicyOutcome(
        policy=result.policy,
        attainment=float(met.mean()) if met.size else math.nan,
        minutes_meeting_target=at_target,
        worst_hour_attainment=float(per_hour.min()) if per_hour.notna().any() else math.nan,
        gpu_hours=gpu_hours,
        cost=gpu_hours * price_per_gpu_hour,
        changes=len(result.changes),
        settings=dict(settings or {}),
    )


Runner = Callable[[Policy], ElasticResult]


def search_policy(
    candidates: Sequence[tuple[dict[str, Any], Policy]],
    run: Runner,
    slo: SloTargets,
    price_per_gpu_hour: float,
) -> tuple[PolicyOutcome | None, list[PolicyOutcome]]:
    """Every candidate policy run on the same trace (``run``); the chosen one is the cheapest in
    GPU-hours among those that meet the target in every hour (``PolicyOutcome.meets``; ties: the
    first given). Returns
    (chosen or None, every outcome in the order given)."""
    outcomes = [outcome(run(policy), slo, price_per_gpu_hour, settings) for settings, policy in candidates]
    passing = [o for o in outcomes if o.meets(slo.attainment)]
    chosen = min(passing, key=lambda o: o.gpu_hours) if passing else None
    return chosen, outcomes


def write_fleet_run(
    out: Path, minutes: pd.DataFrame, outcomes: Sequence[PolicyOutcome], description: dict[str, Any]
) -> Path:
    """A run directory of policies over a day (written whole or not at all): ``fleet_minutes.csv``
    (``MINUTE_COLUMNS``, one block per policy), ``fleet.yaml`` (each policy's day and what was
    simulated) and ``run.yaml`` (kind ``simulate``); ``pdplan report`` draws them."""
    from pdplan.planner.rundir import replacing_dir, write_csv, write_run_yaml, write_yaml

    out.mkdir(parents=True, exist_ok=True)
    with replacing_dir(out) as staging:
        write_csv(staging / "fleet_minutes.csv", minutes)
        write_yaml(
            staging / "fleet.yaml",
            {"schema_version": 1, "policies": [o.row() for o in outcomes], "description": description},
        )
        write_run_yaml(staging, "simulate")  # a simulation of policies (pdplan.planner.rundir kinds)
    return out

"""Plans and search candidates as the report describes them (shared by Summary and Search).

A plan comes from ``plan.yaml`` (DESIGN.md Plan schema), a candidate from one ``candidates.csv``
row; both are turned into the same ``PlanView`` so the two can sit in one table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from pdplan.reports.units import fmt_ms_list, fmt_num

LATENCY_KEYS = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms")


@dataclass(frozen=True)
class PlanView:
    """One plan, flattened for display. Counts are 0 for roles the mode does not have."""

    mode: str
    prefill_instances: int = 0
    prefill_tp: int = 0
    decode_instances: int = 0
    decode_tp: int = 0
    colocated_instances: int = 0
    colocated_tp: int = 0
    limits: str = ""
    gpus: int = 0
    goodput_rps: float = float("nan")
    goodput_rps_per_gpu: float = float("nan")
    latency_ms: tuple[float, ...] = (float("nan"),) * 6  # in LATENCY_KEYS order
    #: pipeline stages per instance (plan.yaml's ``pp``; candidates.csv has none: 1)
    prefill_pp: int = 1
    decode_pp: int = 1
    colocated_pp: int = 1

    @property
    def instances(self) -> str:
        if self.mode == "colocated":
            return f"{self.colocated_instances} colocated"
        return f"{self.prefill_instances} P + {self.decode_instances} D"

    @property
    def tp(self) -> str:
        if self.mode == "colocated":
            return f"TP{self.colocated_tp}{_pp(self.colocated_pp)}"
        return f"P TP{self.prefill_tp}{_pp(self.prefill_pp)} / D TP{self.decode_tp}{_pp(self.decode_pp)}"

    @property
    def phrase(self) -> str:
        """The plan in words, e.g. '2 prefill instances (TP 2) + 4 decode instances (TP 1)'."""
        if self.mode == "colocated":
            tp = f"TP {self.colocated_tp}{_pp(self.colocated_pp)}"
            return f"{_count(self.colocated_instances, 'colocated instance')} ({tp})"
        prefill = f"TP {self.prefill_tp}{_pp(self.prefill_pp)}"
        decode = f"TP {self.decode_tp}{_pp(self.decode_pp)}"
        return (
            f"{_count(self.prefill_instances, 'prefill instance')} ({prefill}) + "
            f"{_count(self.decode_instances, 'decode instance')} ({decode})"
        )

    def cells(self, name: str) -> tuple[str, ...]:
        """The row of the Summary table."""
        return (
            name,
            self.mode,
            self.instances,
            self.tp,
            self.limits or "—",
            fmt_num(self.gpus),
            fmt_num(self.goodput_rps),
            fmt_num(self.goodput_rps_per_gpu),
            fmt_ms_list(self.latency_ms[:3]),
            fmt_ms_list(self.latency_ms[3:]),
        )


SUMMARY_HEADER = (
    "plan",
    "mode",
    "instances",
    "TP",
    "batch limits",
    "GPUs",
    "goodput (req/s)",
    "goodput per GPU (req/s)",
    "TTFT p50 / p90 / p99",
    "TPOT p50 / p90 / p99",
)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _int(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if np.isfinite(number) else 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _limits(pairs: list[tuple[str, Any]]) -> str:
    return ", ".join(
        f"{name} {fmt_num(value)}"
        for name, value in pairs
        if value is not None and np.isfinite(_float(value))
    )


def plan_view(plan: dict[str, Any]) -> PlanView:
    """A ``plan.yaml`` mapping as a ``PlanView`` (missing fields show as blanks, never raise)."""
    mode = str(plan.get("mode") or "disaggregated")
    predicted = plan.get("predicted") if isinstance(plan.get("predicted"), dict) else {}
    assert isinstance(predicted, dict)
    latency = tuple(_float(predicted.get(k)) for k in LATENCY_KEYS)
    common: dict[str, Any] = {
        "gpus": _int(plan.get("gpus")),
        "goodput_rps": _float(predicted.get("goodput_rps")),
        "goodput_rps_per_gpu": _float(predicted.get("goodput_rps_per_gpu")),
        "latency_ms": latency,
    }
    if mode == "colocated":
        colo = plan.get("colocated") or {}
        limits = _limits([("max batch", colo.get("max_batch_size")), ("chunk", colo.get("chunk_tokens"))])
        if colo.get("policy"):
            limits = f"{colo['policy']}; {limits}" if limits else str(colo["policy"])
        view = PlanView(
            mode,
            colocated_instances=_int(colo.get("instances")),
            colocated_tp=_int(colo.get("tp")),
            colocated_pp=_int(colo.get("pp")) or 1,
            limits=limits,
            **common,
        )
    else:
        pre = plan.get("prefill") or {}
        dec = plan.get("decode") or {}
        limits = _limits(
            [
                ("P max tokens", pre.get("max_batch_tokens")),
                ("P max batch", pre.get("max_batch_size")),
                ("D max batch", dec.get("max_batch_size")),
                ("D max KV tokens", dec.get("max_kv_tokens")),
            ]
        )
        view = PlanView(
            mode,
            prefill_instances=_int(pre.get("instances")),
            prefill_tp=_int(pre.get("tp")),
            decode_instances=_int(dec.get("instances")),
            decode_tp=_int(dec.get("tp")),
            prefill_pp=_int(pre.get("pp")) or 1,
            decode_pp=_int(dec.get("pp")) or 1,
            limits=limits,
            **common,
        )
    if view.gpus == 0:
        gpus = (
            view.prefill_instances * view.prefill_tp * view.prefill_pp
            + view.decode_instances * view.decode_tp * view.decode_pp
            + view.colocated_instances * view.colocated_tp * view.colocated_pp
        )
        view = replace(view, gpus=gpus)
    return view


def candidate_view(row: pd.Series, probes: pd.DataFrame | None) -> PlanView:
    """A ``candidates.csv`` row as a ``PlanView``; latencies from its best SLO-meeting probe."""
    mode = str(row["mode"])
    limits = _limits(
        [
            ("max batch", row["max_batch_size"]),
            ("max tokens", row["max_batch_tokens"]),
            ("chunk", row["chunk_tokens"]),
        ]
    )
    if mode == "colocated" and row["policy"]:
        limits = f"{row['policy']}; {limits}" if limits else str(row["policy"])
    probe = goodput_probe(probes, str(row["candidate_id"]))
    latency = tuple(_float(probe[k]) if probe is not None else float("nan") for k in LATENCY_KEYS)
    return PlanView(
        mode,
        prefill_instances=_int(row["prefill_instances"]),
        prefill_tp=_int(row["prefill_tp"]),
        prefill_pp=_int(row.get("prefill_pp", 1)) or 1,
        decode_instances=_int(row["decode_instances"]),
        decode_tp=_int(row["decode_tp"]),
        decode_pp=_int(row.get("decode_pp", 1)) or 1,
        colocated_instances=_int(row["colocated_instances"]),
        colocated_tp=_int(row["colocated_tp"]),
        colocated_pp=_int(row.get("colocated_pp", 1)) or 1,
        limits=limits,
        gpus=_int(row["gpus"]),
        goodput_rps=_float(row["goodput_rps"]),
        goodput_rps_per_gpu=_float(row["goodput_rps_per_gpu"]),
        latency_ms=latency,
    )


def goodput_probe(probes: pd.DataFrame | None, candidate_id: str) -> pd.Series | None:
    """The highest-rate probe of a candidate that met the SLO (its operating point at goodput)."""
    if probes is None:
        return None
    mine = probes[(probes["candidate_id"] == candidate_id) & probes["meets_slo"]]
    if mine.empty:
        return None
    return mine.sort_values("rate_rps", kind="stable").iloc[-1]


def ranked(candidates: pd.DataFrame, mode: str | None = None) -> pd.DataFrame:
    """Feasible (status ok) candidates by goodput per GPU, best first; optionally one mode only."""
    ok = candidates[candidates["status"] == "ok"]
    if mode is not None:
        ok = ok[ok["mode"] == mode]
    ok = ok[np.isfinite(ok["goodput_rps_per_gpu"])]
    return ok.sort_values(["goodput_rps_per_gpu", "gpus"], ascending=[False, True], kind="stable")


def chosen_candidate(plan: dict[str, Any] | None, candidates: pd.DataFrame) -> str | None:
    """The candidate id of the plan in ``plan.yaml``: the best-ranked candidate with its shape.

    Falls back to the best-ranked candidate overall when no row has the plan's shape, and to
    ``None`` when the search found nothing feasible.
    """
    best = ranked(candidates)
    if best.empty or (plan is not None and plan.get("feasible") is False):
        return None
    if plan is None:
        return str(best.iloc[0]["candidate_id"])
    view = plan_view(plan)
    same = best[best["mode"] == view.mode]
    if view.mode == "colocated":
        same = same[
            (same["colocated_instances"] == view.colocated_instances)
            & (same["colocated_tp"] == view.colocated_tp)
            & (_stages(same, "colocated_pp") == view.colocated_pp)
        ]
    else:
        same = same[
            (same["prefill_instances"] == view.prefill_instances)
            & (same["prefill_tp"] == view.prefill_tp)
            & (same["decode_instances"] == view.decode_instances)
            & (same["decode_tp"] == view.decode_tp)
            & (_stages(same, "prefill_pp") == view.prefill_pp)
            & (_stages(same, "decode_pp") == view.decode_pp)
        ]
    rate = view.goodput_rps
    if not same.empty and np.isfinite(rate):  # several batch limits share a shape: closest goodput
        same = same.iloc[np.argsort(np.abs(same["goodput_rps"].to_numpy() - rate), kind="stable")]
    return str((same if not same.empty else best).iloc[0]["candidate_id"])


def _stages(table: pd.DataFrame, column: str) -> pd.Series:
    """A pp column of candidates, 1 where it is absent (tables built before pipeline parallelism)."""
    if column not in table.columns:
        return pd.Series(1, index=table.index)
    return table[column].fillna(1)


def _pp(pp: int) -> str:
    """`` × PP2`` for a pipelined instance, nothing otherwise."""
    return f" × PP{pp}" if pp > 1 else ""

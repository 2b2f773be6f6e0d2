"""Validation: a predicted and a measured run, compared per metric with the error's sign.

Both requests tables are summarised by the same function (``pdplan.sim.summary.summarize``) with
the same warm-up and SLO, so a difference is a difference in latencies, not in bookkeeping. The
error is ``predicted / measured − 1`` (positive: the prediction is too slow / too high). The error
over time compares the median TTFT and TPOT of the requests arriving in each of ``windows``
equal slices of the measured run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pdplan.planner.measured import ok_latencies
from pdplan.sim.summary import summarize

STATS = ("mean", "p50", "p90", "p99")
LATENCIES = ("ttft", "tpot", "itl", "e2e")
RATES = ("throughput_rps", "output_tokens_per_s", "attainment", "goodput_rps")


def flatten(summary: Mapping[str, Any]) -> dict[str, float]:
    """``{ttft_p50_ms: ..., throughput_rps: ...}`` from a summary dict."""
    out: dict[str, float] = {}
    for metric in LATENCIES:
        block = summary.get(f"{metric}_ms")
        if isinstance(block, Mapping):
            for stat in STATS:
                if isinstance(block.get(stat), (int, float)):
                    out[f"{metric}_{stat}_ms"] = float(block[stat])
    for name in RATES:
        value = summary.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def error_table(predicted: Mapping[str, float], measured: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per metric either side has: predicted, measured, signed error % (None when one side
    lacks it or the measurement is 0)."""
    names = [f"{m}_{s}_ms" for m in LATENCIES for s in STATS] + list(RATES)
    rows = []
    for name in names:
        if name not in predicted and name not in measured:
            continue
        p, m = predicted.get(name), measured.get(name)
        err = None if p is None or m is None or m == 0 else round((p / m - 1.0) * 100.0, 2)
        rows.append({"metric": name, "predicted": p, "measured": m, "error_pct": err})
    return rows


def summaries(
    predicted: pd.DataFrame,
    measured: pd.DataFrame,
    *,
    slo_ms: Mapping[str, float] | None = None,
    warmup_fraction: float = 0.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two runs summarised alike (goodput = attaining requests / duration, as vLLM's)."""
    out = []
    for table in (predicted, measured):
        s = summarize(_as_columns(table), slo_ms=slo_ms, warmup_fraction=warmup_fraction)
        if s.get("attainment") is not None and s["duration_s"] > 0:
            s["goodput_rps"] = round(s["attainment"] * s["measured"] / s["duration_s"], 6)
        out.append(s)
    return out[0], out[1]


def error_over_time(
    predicted: pd.DataFrame, measured: pd.DataFrame, windows: int = 10
) -> list[dict[str, Any]]:
    """Per arrival window of the measured run: median TTFT/TPOT predicted vs measured (matched
    by ``req_id``) and the signed error %."""
    joined = _joined(predicted, measured)
    if joined.empty:
        return []
    t = joined["arrival_s"].to_numpy(dtype=float)
    edges = np.linspace(np.nanmin(t), np.nanmax(t), windows + 1)
    rows = []
    for i in range(windows):
        inside = (t >= edges[i]) & ((t < edges[i + 1]) if i < windows - 1 else (t <= edges[i + 1]))
        row: dict[str, Any] = {"start_s": round(float(edges[i]), 3), "requests": int(inside.sum())}
        for metric in ("ttft", "tpot"):
            p = joined[f"{metric}_pred"].to_numpy()[inside]
            m = joined[f"{metric}_meas"].to_numpy()[inside]
            both = np.isfinite(p) & np.isfinite(m)
            if both.sum() == 0:
                row[f"{metric}_error_pct"] = None
                continue
            mp, mm = float(np.median(p[both])), float(np.median(m[both]))
            row[f"{metric}_p50_pred_ms"], row[f"{metric}_p50_meas_ms"] = round(mp, 3), round(mm, 3)
            row[f"{metric}_error_pct"] = round((mp / mm - 1) * 100, 2) if mm > 0 else None
        rows.append(row)
    return rows


def _joined(predicted: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    def side(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
        lat = ok_latencies(frame)
        return pd.DataFrame(
            {
                "req_id": frame["req_id"].to_numpy(),
                **{f"{k}_{suffix}": v for k, v in lat.items() if k != "e2e"},
            }
        )

    joined = side(predicted, "pred").merge(side(measured, "meas"), on="req_id")
    arrival = measured.set_index("req_id")["arrival_s"]
    joined["arrival_s"] = arrival.reindex(joined["req_id"]).to_numpy()
    return joined


def _as_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {str(name): frame[name].to_numpy() for name in frame.columns}

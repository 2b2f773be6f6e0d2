"""``summarize``: the ``summary.yaml`` figures from a requests table — a pure function.

The same function serves the simulator (``SimResult.records``), the planner (once per probe) and
the benchmark (a measured ``requests.csv``), so predictions and measurements are summarised
identically. Definitions (DESIGN.md): TTFT = first_token − arrival; TPOT = (finish − first_token)
/ (output_tokens − 1), for requests with more than one output token; E2E = finish − arrival.

Warm-up: the first ``warmup_fraction`` of requests by arrival are left out of every figure (the
system starts empty, so they see less queueing than in steady state). Latency percentiles cover
``ok`` requests; attainment covers every measured request — a rejected, failed or unfinished
request does not attain the SLO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.records import STATUS_NAMES

DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)
SLO_METRICS = ("ttft", "tpot", "e2e")


def percentile_key(q: float) -> str:
    """``p50``, ``p99``, ``p99.9``."""
    return f"p{q:g}"


def summarize(
    table: Mapping[str, Any],
    *,
    slo_ms: Mapping[str, float] | None = None,
    warmup_fraction: float = 0.0,
    utilisation: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
    """The summary of a requests table (a DataFrame or a mapping of column → array).

    Args:
        table: columns ``arrival_s, output_tokens, first_token_s, finish_s, status`` at least.
        slo_ms: per-request thresholds in ms by metric (``ttft``, ``tpot``, ``e2e``); sets
            ``attainment``.
        warmup_fraction: share of the earliest arrivals to leave out, in [0, 1).
        utilisation: busy fraction per role, copied into the summary (the table cannot know it).
        percentiles: which percentiles to report for each latency (mean is always there).

    Returns:
        A plain dict: ``num_requests``, ``counts`` (by status, all requests), ``warmup_excluded``,
        ``measured``, ``ttft_ms``/``tpot_ms``/``e2e_ms`` ({mean, p50, ...}; None when no ok
        request), ``attainment`` (None without ``slo_ms``), ``throughput_rps``,
        ``output_tokens_per_s``, ``duration_s``, ``utilisation``.

    Raises:
        ConfigError: a missing column, an unknown status or SLO metric, a bad warm-up fraction.
    """
    if not (0.0 <= warmup_fraction < 1.0):
        raise ConfigError(f"warmup_fraction={warmup_fraction!r}; expected a number in [0, 1)")
    cols = _columns(table)
    status = cols["status"]
    n = int(status.size)
    counts = {name: int(np.count_nonzero(status == name)) for name in STATUS_NAMES}
    unknown = n - sum(counts.values())
    if unknown:
        seen = sorted({str(s) for s in np.unique(status)} - set(STATUS_NAMES))
        raise ConfigError(f"requests: unknown status values {seen}; expected {list(STATUS_NAMES)}")
    excluded = math.floor(warmup_fraction * n)
    keep = np.ones(n, dtype=bool)
    if excluded:
        keep[np.argsort(cols["arrival_s"], kind="stable")[:excluded]] = False
    ok = keep & (status == "ok")
    arrival, first, finish = cols["arrival_s"], cols["first_token_s"], cols["finish_s"]
    outputs = cols["output_tokens"]
    ttft = (first - arrival)[ok] * 1000.0
    e2e = (finish - arrival)[ok] * 1000.0
    multi = ok & (outputs > 1)
    tpot = ((finish - first)[multi] / (outputs[multi] - 1)) * 1000.0
    summary: dict[str, Any] = {
        "num_requests": n,
        "counts": counts,
        "warmup_excluded": excluded,
        "measured": int(np.count_nonzero(keep)),
        "ttft_ms": _stats(ttft, percentiles),
        "tpot_ms": _stats(tpot, percentiles),
        "e2e_ms": _stats(e2e, percentiles),
        "attainment": None,
    }
    if slo_ms:
        summary["attainment"] = _attainment(
            slo_ms,
            keep,
            ok,
            first - arrival,
            finish - arrival,
            (finish - first) / np.maximum(outputs - 1, 1),
            outputs,
        )
    duration = float(np.max(finish[ok]) - np.min(arrival[keep])) if ok.any() else 0.0
    summary["duration_s"] = round(duration, 6)
    summary["throughput_rps"] = round(int(ok.sum()) / duration, 6) if duration > 0 else 0.0
    summary["output_tokens_per_s"] = round(float(outputs[ok].sum()) / duration, 6) if duration > 0 else 0.0
    summary["utilisation"] = {k: round(float(v), 6) for k, v in (utilisation or {}).items()}
    return summary


def _columns(table: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in ("arrival_s", "output_tokens", "first_token_s", "finish_s", "status"):
        try:
            column = table[name]
        except KeyError:
            raise ConfigError(f"requests table lacks column {name!r}") from None
        if name == "status":
            values = np.asarray(column)
            out[name] = values if values.dtype.kind == "U" else values.astype(str)
        else:
            out[name] = np.asarray(column, dtype=np.float64)
    return out


def _stats(values_ms: np.ndarray, percentiles: Sequence[float]) -> dict[str, float] | None:
    if values_ms.size == 0:
        return None
    qs = np.percentile(values_ms, list(percentiles))
    out = {"mean": round(float(values_ms.mean()), 4)}
    out.update({percentile_key(q): round(float(v), 4) for q, v in zip(percentiles, qs, strict=True)})
    return out


def _attainment(
    slo_ms: Mapping[str, float],
    keep: np.ndarray,
    ok: np.ndarray,
    ttft_s: np.ndarray,
    e2e_s: np.ndarray,
    tpot_s: np.ndarray,
    outputs: np.ndarray,
) -> float | None:
    unknown = [m for m in slo_ms if m not in SLO_METRICS]
    if unknown:
        raise ConfigError(f"slo: unknown per-request metrics {unknown}; valid: {list(SLO_METRICS)}")
    measured = int(np.count_nonzero(keep))
    if measured == 0:
        return None
    meets = ok.copy()
    with np.errstate(invalid="ignore"):
        if "ttft" in slo_ms:
            meets &= ttft_s * 1000.0 <= slo_ms["ttft"]
        if "e2e" in slo_ms:
            meets &= e2e_s * 1000.0 <= slo_ms["e2e"]
        if "tpot" in slo_ms:  # a one-token request has no TPOT and cannot miss it
            meets &= (outputs <= 1) | (tpot_s * 1000.0 <= slo_ms["tpot"])
    return round(int(np.count_nonzero(meets)) / measured, 6)

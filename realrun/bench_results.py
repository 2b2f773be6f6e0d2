"""A measured run as the shared schema: ``requests.csv``, ``itl.csv`` and ``summary.yaml``.

Metric definitions are those of SGLang's ``python/sglang/bench_serving.py`` and vLLM's
``benchmarks/benchmark_serving.py`` (``calculate_metrics``), so figures compare one to one:

- TTFT = first chunk received − request sent;
- TPOT = (last chunk − first chunk) / (output tokens − 1), per request with > 1 output token;
- ITL = every gap between two consecutive chunks of one request, pooled over requests;
- E2E = last chunk − request sent;
- goodput = requests that meet every SLO threshold / benchmark duration (vLLM's ``--goodput``);
- prefix cache hit rate = Σ cached prompt tokens / Σ prompt tokens over the requests whose server
  reported ``cached_tokens`` (SGLang's ``meta_info``, OpenAI's ``usage.prompt_tokens_details``),
  the simulator's definition (``pdplan.sim.prefix_cache.CacheStats.hit_rate``).

The request-level columns and statistics come from ``pdplan.sim.summary.summarize``, the same
function that summarises a simulation, so a prediction and a measurement are summarised alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pdplan.realrun.bench_client import BenchRun
from pdplan.sim.records import REQUEST_COLUMNS
from pdplan.sim.summary import DEFAULT_PERCENTILES, percentile_key, summarize

ITL_COLUMNS = ("req_id", "chunk", "time_s", "tokens")
_WORKER_FIELDS = {
    "prefill_start_s": "prefill_start_ts",
    "prefill_end_s": "prefill_end_ts",
    "decode_start_s": "decode_start_ts",
}


def requests_frame(run: BenchRun) -> pd.DataFrame:
    """``requests.csv``: one row per request in the simulator's schema, plus ``cached_tokens`` (the
    server's count; empty where it gave none) and ``error``.

    ``arrival_s`` is when the request was sent (its scheduled arrival when it never was), relative
    to the first send; token counts are the server's (usage fields) when it reported them.
    """
    req = run.requests
    scheduled = req.arrival_s - (req.arrival_s[0] if len(req) else 0.0)
    rows: dict[str, list[Any]] = {name: [] for name in (*REQUEST_COLUMNS, "cached_tokens", "error")}
    for rid, out in enumerate(run.outcomes):
        rows["req_id"].append(rid)
        rows["arrival_s"].append(out.sent_s if math.isfinite(out.sent_s) else float(scheduled[rid]))
        rows["prompt_tokens"].append(out.prompt_tokens or int(req.prompt_tokens[rid]))
        output = (
            out.output_tokens if out.status == "ok" and out.output_tokens else int(req.output_tokens[rid])
        )
        rows["output_tokens"].append(output)
        rows["first_token_s"].append(out.first_token_s)
        rows["finish_s"].append(out.finish_s)
        worker = out.worker or {}
        for column, key in _WORKER_FIELDS.items():
            value = worker.get(key)
            rows[column].append(
                float(value) - run.started_unix if isinstance(value, (int, float)) else math.nan
            )
        rows["status"].append(out.status)
        rows["cached_tokens"].append(math.nan if out.cached_tokens is None else out.cached_tokens)
        rows["error"].append(out.error)
    return pd.DataFrame(rows)


def itl_frame(run: BenchRun) -> pd.DataFrame:
    """``itl.csv``: every chunk of every request (``time_s`` on the run's clock, ``tokens`` in it)."""
    rid: list[int] = []
    chunk: list[int] = []
    times: list[float] = []
    tokens: list[int] = []
    for r, out in enumerate(run.outcomes):
        n = len(out.chunk_s)
        rid.extend([r] * n)
        chunk.extend(range(n))
        times.extend(out.chunk_s)
        tokens.extend(out.chunk_tokens)
    return pd.DataFrame({"req_id": rid, "chunk": chunk, "time_s": times, "tokens": tokens})


def itl_ms(itl: pd.DataFrame, keep: np.ndarray | None = None) -> np.ndarray:
    """All inter-chunk gaps (ms) of the requests in ``keep`` (a boolean mask by req_id)."""
    if itl.empty:
        return np.zeros(0)
    frame = itl.sort_values(["req_id", "chunk"])
    rid = frame["req_id"].to_numpy()
    t = frame["time_s"].to_numpy(dtype=float)
    same = rid[1:] == rid[:-1]
    if keep is not None:
        same &= keep[rid[1:]]
    return np.diff(t)[same] * 1000.0


def bench_summary(
    requests: pd.DataFrame,
    itl: pd.DataFrame,
    *,
    slo_ms: Mapping[str, float] | None = None,
    warmup_fraction: float = 0.0,
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
    """``summary.yaml`` of a measured run: ``summarize``'s figures plus ITL and goodput."""
    columns = {str(name): requests[name].to_numpy() for name in requests.columns}
    summary = summarize(columns, slo_ms=slo_ms, warmup_fraction=warmup_fraction, percentiles=percentiles)
    n = len(requests)
    keep = np.ones(n, dtype=bool)
    excluded = summary["warmup_excluded"]
    if excluded:
        keep[np.argsort(requests["arrival_s"].to_numpy(), kind="stable")[:excluded]] = False
    keep &= (requests["status"] == "ok").to_numpy()
    gaps = itl_ms(itl, keep)
    if gaps.size:
        qs = np.percentile(gaps, list(percentiles))
        summary["itl_ms"] = {"mean": round(float(gaps.mean()), 4)}
        summary["itl_ms"].update(
            {percentile_key(q): round(float(v), 4) for q, v in zip(percentiles, qs, strict=True)}
        )
    else:
        summary["itl_ms"] = None
    cache = prefix_cache_summary(requests)
    if cache is not None:
        summary["prefix_cache"] = cache
    if slo_ms and summary.get("attainment") is not None and summary["duration_s"] > 0:
        good = summary["attainment"] * summary["measured"]
        summary["goodput_rps"] = round(good / summary["duration_s"], 6)
    return summary


def prefix_cache_summary(requests: pd.DataFrame) -> dict[str, Any] | None:
    """``summary.yaml``'s ``prefix_cache`` of a measured run: prompt tokens and cached tokens of the
    requests whose server reported ``cached_tokens``, and their ratio (``hit_rate.total``, the key
    the simulator's summary uses); ``None`` when no request reported it."""
    if "cached_tokens" not in requests.columns:
        return None
    cached = pd.to_numeric(requests["cached_tokens"], errors="coerce").to_numpy(dtype=float)
    reported = np.isfinite(cached)
    if not reported.any():
        return None
    prompt = int(requests["prompt_tokens"].to_numpy()[reported].sum())
    hit = int(cached[reported].sum())
    return {
        "prompt_tokens": prompt,
        "hit_tokens": {"total": hit},
        "hit_rate": {"total": round(hit / prompt, 6) if prompt else 0.0},
        "requests_reported": int(reported.sum()),
    }

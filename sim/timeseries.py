"""Per-instance time series (``timeseries.csv``), computed after the run from request intervals.

Queue length, batch size and KV use of an instance at time t are counts (or token sums) of
requests whose interval [start, end) holds t, so they follow from the records exactly, with no
sampling events during the run: sort starts and ends per instance and ``searchsorted`` the sample
times (O(n log n), vectorised). Intervals per role:

- prefill: queued [arrival, prefill_start), in a batch [prefill_start, prefill_end), KV (prompt
  tokens) [prefill_start, transfer_end) — the KV stays until it has crossed the link;
- decode: queued [prefill_end, decode_start) (transferring or waiting for KV or a batch slot),
  in the batch [decode_start, finish), KV (prompt + output tokens) [kv_start, finish);
- colocated: queued [arrival, kv_start) (waiting for admission), in the batch [kv_start, finish),
  KV (prompt + output) [kv_start, finish).

An end that never happened (NaN) counts as +inf; a start that never happened leaves the request
out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pdplan.sim.records import SimResult

TIMESERIES_COLUMNS = (
    "time_s",
    "role",
    "instance",
    "queue_len",
    "batch_size",
    "kv_used_tokens",
    "kv_capacity_tokens",
)
DEFAULT_MAX_SAMPLES = 1000


def occupancy(
    starts: np.ndarray, ends: np.ndarray, weights: np.ndarray | None, times: np.ndarray
) -> np.ndarray:
    """Σ weight (or count) of intervals [start, end) that contain each of ``times``."""
    has = ~np.isnan(starts)
    s = starts[has]
    e = np.where(np.isnan(ends[has]), np.inf, ends[has])
    if weights is None:
        s.sort()
        e.sort()
        return np.searchsorted(s, times, "right") - np.searchsorted(e, times, "right")
    w = np.asarray(weights)[has]
    s_order, e_order = np.argsort(s, kind="stable"), np.argsort(e, kind="stable")
    zero = np.zeros(1, dtype=w.dtype)
    s_cum = np.concatenate((zero, np.cumsum(w[s_order])))
    e_cum = np.concatenate((zero, np.cumsum(w[e_order])))
    return (
        s_cum[np.searchsorted(s[s_order], times, "right")]
        - e_cum[np.searchsorted(e[e_order], times, "right")]
    )


def nice_interval(span_s: float, max_samples: int = DEFAULT_MAX_SAMPLES) -> float:
    """The smallest 1/2/5 × 10^k seconds that samples ``span_s`` in at most ``max_samples`` points."""
    if span_s <= 0:
        return 1.0
    raw = span_s / max(1, max_samples - 1)
    exponent = math.floor(math.log10(raw))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        step = mantissa * 10.0**exponent
        if step >= raw:
            return step
    return 10.0 ** (exponent + 1)


def timeseries(result: SimResult, interval_s: float | None = None) -> pd.DataFrame:
    """The ``timeseries.csv`` table, sampled every ``interval_s`` from 0 to the run's end
    (``None``: a 1/2/5 step giving at most 1000 samples)."""
    step = interval_s if interval_s is not None else nice_interval(result.end_s)
    assert step > 0, "sample interval must be positive"
    times = np.arange(0.0, result.end_s + step / 2, step)
    rec = result.records
    prompt = rec.prompt_tokens
    footprint = prompt + rec.output_tokens
    if result.mode == "disaggregated":
        roles = {
            "prefill": (
                (rec.arrival_s, rec.prefill_start_s),
                (rec.prefill_start_s, rec.prefill_end_s),
                (rec.prefill_start_s, result.transfer_end_s, prompt),
            ),
            "decode": (
                (rec.prefill_end_s, rec.decode_start_s),
                (rec.decode_start_s, rec.finish_s),
                (result.kv_start_s, rec.finish_s, footprint),
            ),
        }
    else:
        roles = {
            "colocated": (
                (rec.arrival_s, result.kv_start_s),
                (result.kv_start_s, rec.finish_s),
                (result.kv_start_s, rec.finish_s, footprint),
            ),
        }
    frames = []
    for role, (queue, batch, kv) in roles.items():
        owner = result.instance[role]
        for index in range(result.instances[role]):
            mine = owner == index
            frames.append(
                pd.DataFrame(
                    {
                        "time_s": times,
                        "role": role,
                        "instance": index,
                        "queue_len": occupancy(queue[0][mine], queue[1][mine], None, times),
                        "batch_size": occupancy(batch[0][mine], batch[1][mine], None, times),
                        "kv_used_tokens": occupancy(kv[0][mine], kv[1][mine], kv[2][mine], times),
                        "kv_capacity_tokens": result.kv_capacity_tokens[role],
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=list(TIMESERIES_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(TIMESERIES_COLUMNS)]

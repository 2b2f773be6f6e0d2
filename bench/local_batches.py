"""Part of ``local_runtime.py``: what the decode and colocated engines did in a local run — each
worker's logged steps (``/server_info``), a colocated worker's mixed steps among them, the batches
by size and their share of busy time — and the same view of the simulation of the run's traffic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

BUCKETS = (("1", 1, 1), ("2-3", 2, 3), ("4-8", 4, 8), ("9-16", 9, 16))


def _logged_steps(
    run: Path,
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """The decode steps each decode/colocated worker of the deployment logged, the prefill
    forwards of every prefill/colocated worker (``/server_info``; a colocated worker's mixed steps
    among them, with ``decode_batch`` > 0), and each colocated worker's prefill forwards alone."""
    import httpx

    record = json.loads((run / "deploy.json").read_text())
    out, prefills, by_worker = [], [], []
    for proc in record["processes"]:
        if proc["role"] in ("decode", "colocated", "prefill"):
            state = httpx.get(proc["url"] + "/server_info", timeout=10).json()["internal_states"][0]
            if proc["role"] != "prefill":
                out.append(state["recent_decode_steps"])
            if proc["role"] != "decode":
                prefills += state.get("recent_prefill_batches", [])
            if proc["role"] == "colocated":
                by_worker.append(state.get("recent_prefill_batches", []))
    return out, prefills, by_worker


def _with_mixed_steps(
    logged: list[list[dict[str, Any]]], by_worker: list[list[dict[str, Any]]]
) -> list[list[dict[str, Any]]]:
    """Each colocated worker's decode steps with its mixed steps beside them, as steps of their
    decode batch (the batches view counts every step that produced decode tokens)."""
    if not by_worker:
        return logged
    out = []
    for steps, prefills in zip(logged, by_worker, strict=True):
        mixed = [
            {
                "batch_size": p["decode_batch"],
                "context_tokens": p.get("decode_context", 0),
                "step_ms": p["step_ms"],
                "start_s": p["start_s"],
                "running_after": p["decode_batch"],
            }
            for p in prefills
            if p.get("decode_batch")
        ]
        out.append(sorted([*steps, *mixed], key=lambda s: s["start_s"]))
    return out


def _worker_steps(steps: list[dict[str, Any]], latency: Any) -> dict[str, Any]:
    """Decode steps (batch, context, wall ms) against the profile's decode model, by batch: median
    measured / model."""
    out: dict[str, Any] = {}
    for name, lo, hi in BUCKETS:
        ratios = [
            s["step_ms"] / latency.decode_ms(s["batch_size"], s["context_tokens"])
            for s in steps
            if lo <= s["batch_size"] <= hi
        ]
        if ratios:
            out[name] = {"steps": len(ratios), "measured_over_model": round(float(np.median(ratios)), 3)}
    return out


def _bucket_shares(batch: np.ndarray, seconds: np.ndarray) -> dict[str, float]:
    total = float(seconds.sum())
    return {
        name: round(float(seconds[(batch >= lo) & (batch <= hi)].sum()) / total, 3) if total else 0.0
        for name, lo, hi in BUCKETS
    }


def _measured_batches(per_worker: list[list[dict[str, Any]]], t0: float, t1: float) -> dict[str, Any]:
    """What the decode/colocated engines did in one bench run (steps that started in ``[t0, t1]``):
    the decode steps by batch (a colocated worker's mixed steps among them, :func:`_with_mixed_steps`),
    the busy seconds (steps, and the gaps after a step that left requests running: the engine's own
    work between steps — emitting tokens, admitting — plus, on a colocated worker, its prefill
    forwards without decodes), and the share of busy time spent at each batch size."""
    batches, seconds = [], []
    step_s = gap_s = 0.0
    gaps = []
    for log in per_worker:
        steps = sorted((s for s in log if t0 <= s["start_s"] <= t1), key=lambda s: s["start_s"])
        for s, nxt in zip(steps, [*steps[1:], None], strict=True):
            ms = s["step_ms"] / 1000
            gap = (nxt["start_s"] - s["start_s"] - ms) if nxt is not None and s["running_after"] > 0 else 0.0
            step_s += ms
            gap_s += max(gap, 0.0)
            if gap > 0:
                gaps.append(gap * 1000)
            batches.append(s["batch_size"])
            seconds.append(ms + max(gap, 0.0))
    b, sec = np.asarray(batches), np.asarray(seconds)
    return {
        "steps": {name: int(((b >= lo) & (b <= hi)).sum()) for name, lo, hi in BUCKETS},
        "step_s": round(step_s, 3),
        "gap_s": round(gap_s, 3),
        "gap_ms_p50_p90": [round(float(np.percentile(gaps, q)), 2) for q in (50, 90)] if gaps else None,
        "busy_s": round(step_s + gap_s, 3),
        "mean_batch": round(float((b * sec).sum() / sec.sum()), 2) if sec.sum() else 0.0,
        "time_share": _bucket_shares(b, sec),
    }


def _simulated_batches(reqs: Any, cluster: Any) -> dict[str, Any]:
    """The same view of the simulation of the run's traffic: each decode/colocated instance's batch
    is the requests between their decode start and finish; busy seconds from the simulator."""
    from pdplan.sim.simulate import simulate

    result = simulate(reqs, cluster)
    role = "colocated" if result.mode == "colocated" else "decode"
    rec = result.records
    ok = rec.status_code == 0
    batches, seconds = [], []
    for k in range(result.instances[role]):
        mine = ok & (result.instance[role] == k)
        start, end = rec.decode_start_s[mine], rec.finish_s[mine]
        times = np.concatenate([start, end])
        delta = np.concatenate([np.ones(start.size), -np.ones(end.size)])
        order = np.lexsort((delta, times))  # a finish before a start at the same time
        level = np.cumsum(delta[order])
        span = np.diff(times[order])
        batches += list(level[:-1])
        seconds += list(span)
    b, sec = np.asarray(batches), np.asarray(seconds)
    busy = sec[b > 0]
    return {
        "busy_s": round(float(result.busy_s[role]), 3),
        "occupied_s": round(float(busy.sum()), 3),
        "mean_batch": round(float((b * sec).sum() / busy.sum()), 2) if busy.sum() else 0.0,
        "time_share": _bucket_shares(b[b > 0], sec[b > 0]),  # of the occupied time, as measured
    }

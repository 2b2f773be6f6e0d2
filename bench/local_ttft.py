"""The local runtime's first-token path, measured against the simulator's, segment by segment
(``bench/local_runtime.py`` calls it for every run).

A request's TTFT is cut into segments that add up to it, each measured from the timestamps the
workers return in ``meta_info.pdplan`` (``pdplan.realrun.responses.Timeline``) and the client's own
send and receive times, and each charged by the simulator from its request records:

================  ==========================================  ==========================================
segment           measured (worker and client clocks)         simulated
================  ==========================================  ==========================================
``to_queue``      client send → the prompt queued at its      0 (the simulator queues on arrival)
                  engine: gateway, router, and in PD the
                  decode side's claim and READY
``queue``         → prefill start                             arrival → prefill start
``prefill``       → prefill end (the forward that completed   prefill start → end
                  the prompt)
``handoff``       → the KV in the decode worker's cache (PD)  prefill end → transfer end (PD)
``join``          → the engine emits the first token (a       → first token (the first decode step
                  decode engine: between two steps)           boundary at or after the transfer)
``to_client``     → the client reads it (worker's HTTP         0
                  server, router, gateway, client)
================  ==========================================  ==========================================

Means add up to the mean TTFT, so the table says where the time goes. Four parts of the two
outer segments are measured alone (:data:`DETAILS`): ``in`` (client send → the first worker got
the request: gateway and router), ``ready_wait`` (→ the prompt queued: in PD the prefill waits for
the decode side's READY), ``loop_out`` (first token emitted by the engine thread → the worker's event
loop begins writing it: the loop's wait for the core and the GIL) and ``out`` (→ the client reads it:
HTTP, router, gateway, client). :func:`step_prices` compares
every prefill forward and decode step the workers logged with the profile's price, by wall time
and by the engine thread's CPU time: wall above CPU is time the OS gave to other threads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SEGMENTS = ("to_queue", "queue", "prefill", "handoff", "join", "to_client")
DETAILS = ("in", "ready_wait", "loop_out", "out")


def measured_segments(outcomes: list[Any], started_unix: float) -> dict[str, np.ndarray]:
    """Per request (ms; NaN where a time is missing or the request failed): the segments of the
    module docstring from each ``Outcome`` (``sent_s``/``first_token_s`` on the run's clock, whose
    time 0 is ``started_unix``) and its worker timeline (UNIX seconds)."""
    out = {name: np.full(len(outcomes), math.nan) for name in (*SEGMENTS, *DETAILS)}
    for i, o in enumerate(outcomes):
        w = o.worker or {}
        if o.status != "ok" or not w:
            continue
        queued = w.get("prefill_queued_ts") or w.get("arrival_ts")
        received = w.get("kv_received_ts")
        stamps = {
            "send": started_unix + o.sent_s,
            "arrived": w.get("prefill_arrival_ts") or w.get("arrival_ts"),
            "sent": w.get("first_token_sent_ts"),
            "queued": queued,
            "start": w.get("prefill_start_ts"),
            "end": w.get("prefill_end_ts"),
            "received": received,
            "first": w.get("first_token_ts"),
            "client": started_unix + o.first_token_s,
        }
        spans = {
            "to_queue": ("send", "queued"),
            "queue": ("queued", "start"),
            "prefill": ("start", "end"),
            "handoff": ("end", "received"),
            "join": ("received" if received else "end", "first"),
            "to_client": ("first", "client"),
            "in": ("send", "arrived"),
            "ready_wait": ("arrived", "queued"),
            "loop_out": ("first", "sent"),
            "out": ("sent", "client"),
        }
        for name, (a, b) in spans.items():
            if isinstance(stamps[a], float) and isinstance(stamps[b], float):
                out[name][i] = (stamps[b] - stamps[a]) * 1000.0
    return out


def simulated_segments(result: Any) -> dict[str, np.ndarray]:
    """The same segments (ms) from a ``SimResult``'s records (0 where the simulator charges
    nothing; ``handoff`` only in disaggregated runs)."""
    rec = result.records
    n = len(rec.arrival_s)
    ok = rec.status_code == 0
    disagg = result.mode == "disaggregated"
    ready = result.transfer_end_s if disagg else rec.prefill_end_s
    seg = {
        "to_queue": np.zeros(n),
        "queue": rec.prefill_start_s - rec.arrival_s,
        "prefill": rec.prefill_end_s - rec.prefill_start_s,
        "handoff": (ready - rec.prefill_end_s) if disagg else np.full(n, math.nan),
        "join": rec.first_token_s - ready,
        "to_client": np.zeros(n),
    }
    return {name: np.where(ok, v * 1000.0, math.nan) for name, v in seg.items()}


def _stats(v: np.ndarray) -> dict[str, float] | None:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return {
        "mean": round(float(v.mean()), 1),
        "p50": round(float(np.percentile(v, 50)), 1),
        "p90": round(float(np.percentile(v, 90)), 1),
    }


def path_table(measured: dict[str, np.ndarray], simulated: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean / p50 / p90 (ms) of every segment, measured and simulated, on the same requests."""
    table: dict[str, Any] = {}
    for name in SEGMENTS:
        m, s = _stats(measured[name]), _stats(simulated[name])
        if m is not None or s is not None:
            table[name] = {"measured": m, "simulated": s}
    details = {name: _stats(measured[name]) for name in DETAILS if name in measured}
    table["details_measured"] = {k: v for k, v in details.items() if v is not None}
    return table


def step_price_ms(p: dict[str, Any], latency: Any) -> float:
    """The profile's price of one logged prefill forward: ``LatencyModel.prefill_ms``, or for a
    colocated worker's mixed step (its ``decode_batch`` decodes rode in it) the simulator's price
    of that step, ``StepCoef.mixed_s`` (``pdplan.sim.costs``)."""
    batch = int(p.get("decode_batch", 0))
    if batch == 0:
        return float(latency.prefill_ms(p["new_tokens"], p["prior_tokens"]))
    from pdplan.sim.costs import StepCoef

    new, prior = p["new_tokens"], p["prior_tokens"]
    pairs = sum(n * n + 2 * n * q for n, q in zip(new, prior, strict=True))
    coef = StepCoef.of(latency)
    return coef.mixed_s(len(new), sum(new), pairs, batch, int(p.get("decode_context", 0))) * 1000.0


def step_prices(
    prefills: list[dict[str, Any]], steps: list[dict[str, Any]], latency: Any, t0: float, t1: float
) -> dict[str, Any]:
    """Prefill forwards, mixed steps (a colocated worker's prompt slice with decodes riding in it)
    and decode steps that started in ``[t0, t1]`` against the profile's price
    (:func:`step_price_ms`, ``LatencyModel.decode_ms``): total wall / total model and total CPU /
    total model (ratios of sums, so the long steps that make the time weigh most), and how many."""
    out: dict[str, Any] = {}
    chosen = [p for p in prefills if t0 <= p["start_s"] <= t1]
    chosen_p = [p for p in chosen if not p.get("decode_batch")]
    chosen_m = [p for p in chosen if p.get("decode_batch")]
    chosen_d = [s for s in steps if t0 <= s["start_s"] <= t1]
    model_p = [step_price_ms(p, latency) for p in chosen_p]
    model_m = [step_price_ms(p, latency) for p in chosen_m]
    model_d = [latency.decode_ms(s["batch_size"], s["context_tokens"]) for s in chosen_d]
    for name, picked, model in (
        ("prefill", chosen_p, model_p),
        ("mixed", chosen_m, model_m),
        ("decode", chosen_d, model_d),
    ):
        total = float(sum(model))
        if not picked or total <= 0:
            continue
        wall = sum(float(c["step_ms"]) for c in picked)
        cpu = [float(c.get("cpu_ms", math.nan)) for c in picked]
        out[name] = {
            "count": len(picked),
            "wall_over_model": round(wall / total, 3),
            "cpu_over_model": round(sum(cpu) / total, 3) if all(map(math.isfinite, cpu)) else None,
        }
    return out


def thread_cpu_s(processes: dict[str, int]) -> dict[tuple[str, int], float]:
    """CPU seconds (user + system) of every thread of the named processes so far (``/proc``)."""
    return {key: stats[0] for key, stats in thread_stats(processes).items()}


def cores_by_process(
    before: dict[tuple[str, int], float], after: dict[tuple[str, int], float], wall_s: float
) -> dict[str, dict[str, float]]:
    """Cores each process kept busy between two :func:`thread_cpu_s` snapshots: in all, and its
    busiest thread alone (a worker's engine thread; the rest is its event loop and hand-off pools)."""
    out: dict[str, dict[str, float]] = {}
    for (name, tid), cpu in after.items():
        used = (cpu - before.get((name, tid), 0.0)) / wall_s
        row = out.setdefault(name, {"all": 0.0, "busiest_thread": 0.0})
        row["all"] += used
        row["busiest_thread"] = max(row["busiest_thread"], used)
    return {name: {k: round(v, 3) for k, v in row.items()} for name, row in out.items()}


#: Prefill forwards by prompts in the forward, and by the share of the forward's wall time a
#: decode step ran beside it on another worker (the neighbour core: shared L3 and memory bandwidth).
PROMPT_BUCKETS = (("1", 1, 1), ("2-3", 2, 3), ("4-8", 4, 8))
OVERLAP_BUCKETS = (("<20%", 0.0, 0.2), ("20-80%", 0.2, 0.8), (">=80%", 0.8, 1.01))


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def decode_overlap(start_s: float, ms: float, busy: list[tuple[float, float]]) -> float:
    """Share (0-1) of ``[start_s, start_s + ms]`` covered by the disjoint sorted ``busy`` intervals."""
    end = start_s + ms / 1000.0
    covered = sum(max(0.0, min(hi, end) - max(lo, start_s)) for lo, hi in busy if lo < end and hi > start_s)
    return covered / max(end - start_s, 1e-12)


def prefill_breakdown(
    prefills: list[dict[str, Any]], steps: list[dict[str, Any]], latency: Any, t0: float, t1: float
) -> dict[str, Any]:
    """The prefill forwards that started in ``[t0, t1]``, engine-thread CPU / model (ratio of sums)
    and wall / model, by prompts in the forward and by the share of the forward a decode step ran
    beside it (:data:`OVERLAP_BUCKETS`; ``steps`` are the decode workers' steps): does the excess go
    with the batch's composition (the profile's price) or with a busy neighbour core (co-tenancy)?"""
    busy = _union([(s["start_s"], s["start_s"] + s["step_ms"] / 1000.0) for s in steps])
    rows = []
    for p in prefills:
        if not t0 <= p["start_s"] <= t1 or p.get("decode_batch"):  # prefill forwards alone
            continue
        model = latency.prefill_ms(p["new_tokens"], p["prior_tokens"])
        share = decode_overlap(p["start_s"], float(p["step_ms"]), busy)
        rows.append(
            (len(p["new_tokens"]), share, model, float(p["step_ms"]), float(p.get("cpu_ms", math.nan)))
        )

    def bucket(chosen: list[tuple[int, float, float, float, float]]) -> dict[str, Any] | None:
        model = sum(r[2] for r in chosen)
        if not chosen or model <= 0:
            return None
        cpu = sum(r[4] for r in chosen)
        return {
            "count": len(chosen),
            "cpu_over_model": round(cpu / model, 3) if math.isfinite(cpu) else None,
            "wall_over_model": round(sum(r[3] for r in chosen) / model, 3),
        }

    out: dict[str, Any] = {"by_prompts": {}, "by_decode_overlap": {}}
    for name, lo, hi in PROMPT_BUCKETS:
        out["by_prompts"][name] = bucket([r for r in rows if lo <= r[0] <= hi])
    for name, lo, hi in OVERLAP_BUCKETS:
        out["by_decode_overlap"][name] = bucket([r for r in rows if lo <= r[1] < hi])
    out["mean_decode_overlap"] = round(float(np.mean([r[1] for r in rows])), 3) if rows else None
    return out


def thread_stats(processes: dict[str, int]) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(CPU seconds, of which system, minor page faults) of every thread of the named processes so
    far (``/proc/PID/task/TID/stat``: minflt, utime, stime; proc(5))."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[str, int], tuple[float, float, int]] = {}
    for name, pid in processes.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            user, system = int(fields[11]) / tick, int(fields[12]) / tick
            out[(name, int(tid))] = (user + system, system, int(fields[7]))
    return out


def engine_threads(
    before: dict[tuple[str, int], tuple[float, float, int]],
    after: dict[tuple[str, int], tuple[float, float, int]],
) -> dict[str, dict[str, float]]:
    """Each process's busiest thread between two :func:`thread_stats` snapshots (a worker's engine
    thread): its CPU seconds, the share of them in the kernel, and its minor page faults — memory
    the allocator took fresh from the system (first touch), which a profile's repeated shapes reuse."""
    best: dict[str, tuple[float, float, int]] = {}
    for key, (cpu, system, faults) in after.items():
        cpu0, system0, faults0 = before.get(key, (0.0, 0.0, 0))
        delta = (cpu - cpu0, system - system0, faults - faults0)
        if delta[0] > best.get(key[0], (-1.0, 0.0, 0))[0]:
            best[key[0]] = delta
    return {
        name: {
            "cpu_s": round(cpu, 2),
            "sys_share": round(system / cpu, 3) if cpu > 0 else 0.0,
            "minor_faults": faults,
        }
        for name, (cpu, system, faults) in best.items()
    }


def forward_scale(prefills: list[dict[str, Any]], latency: Any, t0: float, t1: float) -> float | None:
    """Wall / model of every prefill-side forward that started in ``[t0, t1]`` — prefill forwards
    and mixed steps together (:func:`step_price_ms`): the compute scale at the measured prices."""
    chosen = [p for p in prefills if t0 <= p["start_s"] <= t1]
    model = sum(step_price_ms(p, latency) for p in chosen)
    return round(sum(float(p["step_ms"]) for p in chosen) / model, 3) if chosen and model > 0 else None


def routing_check(
    outcomes: list[Any], started_unix: float, prefills_by_worker: list[list[dict[str, Any]]]
) -> dict[str, int] | None:
    """How the router spread a colocated run: each request's worker is the one that logged the
    forward ending at its ``prefill_end_ts`` (within 5 ms), and at the moment the client sent it,
    was that worker the one with fewer of the run's requests in flight (sent, not finished),
    as many, or more? ``None`` with fewer than two workers or no timelines."""
    if len(prefills_by_worker) < 2:
        return None
    ends = [
        (p["start_s"] + float(p["step_ms"]) / 1000.0, k)
        for k, log in enumerate(prefills_by_worker)
        for p in log
    ]
    if not ends:
        return None
    end_s = np.array([e for e, _ in ends])
    worker_of = np.array([k for _, k in ends])
    sent, finish, where = [], [], []
    for o in outcomes:
        stamp = (o.worker or {}).get("prefill_end_ts")
        if o.status != "ok" or not isinstance(stamp, float) or not o.chunk_s:
            continue
        j = int(np.argmin(np.abs(end_s - stamp)))
        if abs(end_s[j] - stamp) > 0.005:
            continue
        sent.append(started_unix + o.sent_s)
        finish.append(started_unix + o.chunk_s[-1])
        where.append(int(worker_of[j]))
    out = {"matched": len(where), "to_fewer": 0, "to_equal": 0, "to_more": 0}
    num = len(prefills_by_worker)
    for i, t in enumerate(sent):
        inflight = [0] * num
        for j, (s, f) in enumerate(zip(sent, finish, strict=True)):
            if j != i and s < t < f:
                inflight[where[j]] += 1
        mine, least = inflight[where[i]], min(inflight)
        key = (
            "to_fewer"
            if mine == least and inflight.count(least) == 1
            else "to_equal"
            if mine == least
            else "to_more"
        )
        out[key] += 1
    return out


def neighbour_breakdown(
    steps_by_worker: list[list[dict[str, Any]]],
    prefills_by_worker: list[list[dict[str, Any]]],
    latency: Any,
    t0: float,
    t1: float,
) -> dict[str, Any] | None:
    """Co-tenancy in a colocated run, in engine-thread CPU time: every step of each worker
    (decode steps, and prefill forwards with mixed steps) that started in ``[t0, t1]``, CPU / model
    (ratio of sums; :func:`step_price_ms`, ``LatencyModel.decode_ms``) by the share of its wall time
    the *other* workers were running a step of their own (:data:`OVERLAP_BUCKETS`): the neighbour
    core shares the last-level cache and the memory bandwidth, which the profile — measured with
    the other core idle — does not pay (``bench/cotenancy.py`` times it alone). ``None`` with fewer
    than two workers."""
    if len(steps_by_worker) < 2 or len(prefills_by_worker) != len(steps_by_worker):
        return None
    busy = [
        [(s["start_s"], s["start_s"] + float(s["step_ms"]) / 1000.0) for s in [*steps, *prefills]]
        for steps, prefills in zip(steps_by_worker, prefills_by_worker, strict=True)
    ]
    rows: dict[str, list[tuple[float, float, float]]] = {"decode": [], "prefill_or_mixed": []}
    for k, (steps, prefills) in enumerate(zip(steps_by_worker, prefills_by_worker, strict=True)):
        others = _union([iv for j, ivs in enumerate(busy) if j != k for iv in ivs])
        for kind, chosen in (("decode", steps), ("prefill_or_mixed", prefills)):
            for s in chosen:
                if not t0 <= s["start_s"] <= t1:
                    continue
                if kind == "decode":
                    model = float(latency.decode_ms(s["batch_size"], s["context_tokens"]))
                else:
                    model = step_price_ms(s, latency)
                share = decode_overlap(s["start_s"], float(s["step_ms"]), others)
                rows[kind].append((share, model, float(s.get("cpu_ms", math.nan))))
    out: dict[str, Any] = {}
    for kind, chosen in rows.items():
        out[kind] = {}
        for name, lo, hi in OVERLAP_BUCKETS:
            picked = [r for r in chosen if lo <= r[0] < hi]
            model = sum(r[1] for r in picked)
            cpu = sum(r[2] for r in picked)
            out[kind][name] = (
                {
                    "count": len(picked),
                    "cpu_over_model": round(cpu / model, 3) if math.isfinite(cpu) else None,
                }
                if picked and model > 0
                else None
            )
        out[kind]["mean_overlap"] = round(float(np.mean([r[0] for r in chosen])), 3) if chosen else None
    return out

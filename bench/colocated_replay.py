"""Where the colocated plan's prediction gap came from (issue 11, sixth pass): the same traffic
replayed through the worker's own scheduler and through the simulator, and the router's choices.

- ``routers``: the simulator alone — the colocated-2x plan of ``bench/local_runtime.py`` at 60 / 90 %
  of its capacity, chat and long prompts, 8 seeds: TTFT/TPOT p50/p90 under ``round_robin`` and
  ``random`` routing against ``least_loaded`` (what a router that spreads load blind costs).
- ``run``: deploy colocated-2x (``pdplan deploy``), bench one workload at one load through the
  router, and write everything raw to a JSON file: the requests, each request's times and worker
  timeline, and each worker's logged forwards (``/server_info``).
- ``analyse``: from such a file, each request's worker (the forward that ended at its
  ``prefill_end_ts``), each worker's forwards priced by the profile (CPU and wall / model), then
  every worker's own share of the traffic replayed through :func:`engine_replay` — the worker's
  ``--schedule chunked`` loop, with a prompt slice and the decodes as two forwards (``alternate``,
  the worker before this pass) or one (``mixed``, now) — and through the simulator (one instance
  each), with every step priced by the profile, by the run's CPU / model and by its wall / model:
  what is left at the wall prices is not the steps' price.

    nice .venv/bin/python bench/colocated_replay.py routers
    nice .venv/bin/python bench/colocated_replay.py run --workload chat --load 0.6 --out /tmp/c.json
    .venv/bin/python bench/colocated_replay.py analyse /tmp/c.json --profile DIR

``run`` measures a quick CPU profile first unless ``--profile`` names one (``analyse`` needs it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def engine_replay(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    coef: Any,
    *,
    mixed: bool,
    chunk: int = 512,
    max_batch: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """First-token and finish times of one colocated worker's requests under its chunked schedule
    (``realrun/engine.py``), each step priced by ``coef`` (a ``StepCoef``): FIFO prompt slices of
    up to ``chunk`` tokens (less one a running decode when ``mixed``) while the batch has room;
    ``mixed``: the decodes ride in the slice's forward (``mixed_s``); else a slice forward
    (``prefill_s``) and a decode step (``decode_s``) alternate. A prompt's first token comes at
    the end of its last slice; arrivals join at the next step boundary."""
    n = len(arrival)
    order = np.argsort(arrival, kind="stable")
    first, finish = np.full(n, math.nan), np.full(n, math.nan)
    waiting: list[list[int]] = []  # [rid, tokens prefilled]
    running: dict[int, tuple[int, int]] = {}  # rid -> (tokens out, context)
    t, i, sliced_last = 0.0, 0, False
    while i < n or waiting or running:
        while i < n and arrival[order[i]] <= t:
            waiting.append([int(order[i]), 0])
            i += 1
        if not waiting and not running:
            t = float(arrival[order[i]])
            continue
        budget = chunk - (len(running) if mixed else 0)
        slice_now = bool(waiting) and len(running) < max_batch and budget > 0
        if slice_now and (mixed or not (sliced_last and running)):
            items: list[tuple[list[int], int]] = []
            room = max(max_batch - len(running), 1)
            for w in waiting:
                if budget <= 0 or len(items) >= room:
                    break
                take = min(budget, int(prompt[w[0]]) - w[1])
                items.append((w, take))
                budget -= take
            tokens = sum(k for _, k in items)
            pairs = sum(k * k + 2 * k * w[1] for w, k in items)
            riders = list(running) if mixed else []
            context = sum(running[r][1] for r in riders)
            t += coef.mixed_s(len(items), tokens, pairs, len(riders), context)
            _emit(riders, running, output, finish, t)
            for w, k in items:
                w[1] += k
                if w[1] == prompt[w[0]]:
                    rid = w[0]
                    waiting.remove(w)
                    first[rid] = t
                    if output[rid] <= 1:
                        finish[rid] = t
                    else:
                        running[rid] = (1, int(prompt[rid]) + 1)
            sliced_last = True
        else:
            t += coef.decode_s(len(running), sum(c for _, c in running.values()))
            _emit(list(running), running, output, finish, t)
            sliced_last = False
    return first, finish


def _emit(rids: list[int], running: dict[int, tuple[int, int]], output: Any, finish: Any, t: float) -> None:
    for rid in rids:
        done, context = running[rid]
        if done + 1 >= output[rid]:
            finish[rid] = t
            del running[rid]
        else:
            running[rid] = (done + 1, context + 1)


def _plan(instances: int) -> Any:
    from local_runtime import PLANS

    from pdplan.planner.plan import load_plan

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(PLANS["colocated-2x"].replace("instances: 2", f"instances: {instances}"))
        return load_plan(path)


def _pcts(ttft: np.ndarray, tpot: np.ndarray) -> list[float]:
    return [float(np.nanpercentile(v, q)) * 1000 for v in (ttft, tpot) for q in (50, 90)]


def routers(profile_dir: Path | None) -> None:
    from local_runtime import _capacity_rps, _pdplan, _workloads

    from pdplan.profiles.profile import load_profile
    from pdplan.sim.simulate import SimOptions, simulate
    from pdplan.sim.workload import draw_requests

    with tempfile.TemporaryDirectory() as tmp:
        if profile_dir is None:
            profile_dir = Path(tmp) / "profile"
            _pdplan(
                "profile", "--model", "tiny-llama", "--device", "cpu", "--quick", "--out", str(profile_dir)
            )
        profile = load_profile(profile_dir)
    plan = _plan(2)
    cluster = plan.cluster({r: profile for r in plan.tps})
    print(
        "TTFT p50/p90, TPOT p50/p90 under least_loaded (ms), and the other routers' change (%), "
        "mean of 8 seeds"
    )
    for name, workload in _workloads().items():
        capacity = _capacity_rps(cluster, workload)
        for load in (0.6, 0.9):
            got: dict[str, list[list[float]]] = {}
            for seed in range(8):
                reqs = draw_requests(replace(workload, seed=100 + seed).with_rate(load * capacity))
                for router in ("least_loaded", "round_robin", "random"):
                    rec = simulate(
                        reqs, cluster, SimOptions(router=router), np.random.default_rng(seed)
                    ).records
                    tpot = (rec.finish_s - rec.first_token_s) / np.maximum(rec.output_tokens - 1, 1)
                    got.setdefault(router, []).append(_pcts(rec.first_token_s - rec.arrival_s, tpot))
            base = np.mean(got["least_loaded"], axis=0)
            change = {r: np.round((np.mean(v, axis=0) / base - 1) * 100).tolist() for r, v in got.items()}
            print(f"{name} {int(load * 100)} %: {np.round(base).tolist()} ms")
            print(f"  round_robin {change['round_robin']} %, random {change['random']} %")


def run(workload_name: str, load: float, out: Path, profile_dir: Path | None) -> None:
    import httpx
    from local_runtime import (
        PLANS,
        _capacity_rps,
        _cpu_seconds,
        _deployed,
        _deployment_pids,
        _pdplan,
        _workloads,
    )

    from pdplan.profiles.profile import load_profile
    from pdplan.realrun.bench_apis import ApiSpec
    from pdplan.realrun.bench_client import BenchConfig, run_bench
    from pdplan.sim.workload import draw_requests

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if profile_dir is None:
            profile_dir = out.with_suffix(".profile")
            _pdplan(
                "profile", "--model", "tiny-llama", "--device", "cpu", "--quick", "--out", str(profile_dir)
            )
        profile = load_profile(profile_dir)
        plan = _plan(2)
        cluster = plan.cluster({r: profile for r in plan.tps})
        workload = _workloads()[workload_name]
        reqs = draw_requests(workload.with_rate(load * _capacity_rps(cluster, workload)))
        (tmp / "plan.yaml").write_text(PLANS["colocated-2x"])
        with _deployed(tmp / "plan.yaml", tmp / "dep") as url:
            pids = _deployment_pids(tmp / "dep")
            busy0, ours0 = _cpu_seconds(pids)
            t0 = time.time()
            bench = run_bench(reqs, BenchConfig(url, ApiSpec("sglang-generate"), timeout_s=120))
            wall = time.time() - t0
            busy1, ours1 = _cpu_seconds(pids)
            workers = {}
            for proc in json.loads((tmp / "dep" / "deploy.json").read_text())["processes"]:
                if proc["role"] == "colocated":
                    state = httpx.get(proc["url"] + "/server_info", timeout=10).json()["internal_states"][0]
                    workers[proc["name"]] = {
                        "steps": state["recent_decode_steps"],
                        "prefills": state["recent_prefill_batches"],
                    }
    record = {
        "workload": workload_name, "load": load, "profile": str(profile_dir), "t0": t0,
        "started_unix": bench.started_unix, "loadavg": os.getloadavg()[0],
        "cores": {"ours": (ours1 - ours0) / wall, "others": (busy1 - busy0 - (ours1 - ours0)) / wall},
        "prompt": reqs.prompt_tokens.tolist(), "output": reqs.output_tokens.tolist(),
        "outcomes": [
            {"sent_s": o.sent_s, "chunk_s": o.chunk_s, "status": o.status, "worker": o.worker}
            for o in bench.outcomes
        ],
        "workers": workers,
    }  # fmt: skip
    out.write_text(json.dumps(record))
    print(f"wrote {out} (cores ours {record['cores']['ours']:.2f}, others {record['cores']['others']:.2f})")


def analyse(path: Path, profile_dir: Path) -> None:
    from local_ttft import routing_check, step_price_ms

    from pdplan.planner.calibrate import Params, apply
    from pdplan.profiles.profile import load_profile
    from pdplan.sim.costs import StepCoef
    from pdplan.sim.requests import Requests
    from pdplan.sim.simulate import simulate

    r = json.loads(path.read_text())
    latency = load_profile(profile_dir).latency
    start, t0 = r["started_unix"], r["t0"]
    logs = [r["workers"][k] for k in sorted(r["workers"])]
    sums = np.zeros((2, 3))  # (prefill-side, decode) x (cpu, wall, model)
    for log in logs:
        for p in log["prefills"]:
            if p["start_s"] >= t0:
                sums[0] += (p["cpu_ms"], p["step_ms"], step_price_ms(p, latency))
        for s in log["steps"]:
            if s["start_s"] >= t0:
                sums[1] += (
                    s["cpu_ms"],
                    s["step_ms"],
                    latency.decode_ms(s["batch_size"], s["context_tokens"]),
                )
    outcomes = [
        type(
            "O",
            (),
            {"status": o["status"], "sent_s": o["sent_s"], "chunk_s": o["chunk_s"], "worker": o["worker"]},
        )
        for o in r["outcomes"]
    ]
    cores = r["cores"]
    print(f"{path.name}: {r['workload']} at {int(r['load'] * 100)} %, cores ours {cores['ours']:.2f}")
    print(f"  other jobs {cores['others']:.2f} cores")
    prices = sums[:, :2] / sums[:, 2:]
    print(f"  prefill-side forwards CPU / wall / model {prices[0, 0]:.3f} / {prices[0, 1]:.3f}")
    print(f"  decode steps CPU / wall / model {prices[1, 0]:.3f} / {prices[1, 1]:.3f}")
    spread = routing_check(outcomes, start, [w["prefills"] for w in logs])
    print(f"  routing (fewer / as many / more in flight): {spread}")
    ends = [(p["start_s"] + p["step_ms"] / 1000, k) for k, w in enumerate(logs) for p in w["prefills"]]
    sent = np.array([start + o["sent_s"] for o in r["outcomes"]])
    first = np.array([start + (o["chunk_s"][0] if o["chunk_s"] else math.nan) for o in r["outcomes"]])
    finish = np.array([start + (o["chunk_s"][-1] if o["chunk_s"] else math.nan) for o in r["outcomes"]])
    where = np.full(len(sent), -1)
    for i, o in enumerate(r["outcomes"]):
        stamp = (o["worker"] or {}).get("prefill_end_ts")
        if o["status"] == "ok" and stamp is not None:
            e, k = min(ends, key=lambda x: abs(x[0] - stamp))
            where[i] = k if abs(e - stamp) < 0.005 else -1
    prompt, output = np.array(r["prompt"]), np.array(r["output"])
    tpot = lambda f, e, out: (e - f) / np.maximum(out - 1, 1)  # noqa: E731
    measured = _pcts((first - sent)[where >= 0], tpot(first, finish, output)[where >= 0])
    print("  TTFT p50/p90, TPOT p50/p90 (ms): measured " + " / ".join(f"{x:.0f}" for x in measured))
    plan = _plan(1)
    base = plan.cluster({x: load_profile(profile_dir) for x in plan.tps})
    for label, scales in (
        ("model", (1.0, 1.0)),
        ("CPU", (sums[0, 0] / sums[0, 2], sums[1, 0] / sums[1, 2])),
        ("wall", (sums[0, 1] / sums[0, 2], sums[1, 1] / sums[1, 2])),
    ):
        cluster = apply(base, Params(compute_scale=scales[0], bandwidth_scale=scales[1]))
        coef = StepCoef.of(cluster.cost.latency)
        cells = {}
        for name in ("alternate", "mixed", "simulator"):
            tt, tp = [], []
            for k in range(len(logs)):
                mine = where == k
                a = sent[mine] - sent.min()
                if name == "simulator":
                    rec = simulate(Requests(a, prompt[mine], output[mine]), cluster).records
                    a = rec.arrival_s  # the simulator counts from the first arrival
                    f, e = rec.first_token_s, rec.finish_s
                else:
                    f, e = engine_replay(a, prompt[mine], output[mine], coef, mixed=name == "mixed")
                tt += list(f - a)
                tp += list(tpot(f, e, output[mine]))
            cells[name] = _pcts(np.array(tt), np.array(tp))
        print(
            f"  at {label} prices (prefill x{scales[0]:.2f}, decode x{scales[1]:.2f}), error % of measured: "
            + "; ".join(
                f"{n} " + " / ".join(f"{(v / m - 1) * 100:+.0f}" for v, m in zip(c, measured, strict=True))
                for n, c in cells.items()
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("routers")
    p.add_argument("--profile", type=Path)
    p = sub.add_parser("run")
    p.add_argument("--workload", choices=("chat", "long-prompt"), default="chat")
    p.add_argument("--load", type=float, default=0.6)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", type=Path)
    p = sub.add_parser("analyse")
    p.add_argument("file", type=Path)
    p.add_argument("--profile", type=Path, required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # local_runtime, local_ttft
    if args.cmd == "routers":
        routers(args.profile)
    elif args.cmd == "run":
        run(args.workload, args.load, args.out, args.profile)
    else:
        analyse(args.file, args.profile)


if __name__ == "__main__":
    main()

"""The closed loop's figures (issue 11): how far predictions are from real runs before and after
``pdplan calibrate``, and how good the benchmark client itself is.

1. **vllm** — the shared vLLM run (Llama-3.1-8B bf16, one RTX 4090, 300 ShareGPT requests at
   ~10 req/s, chunked prefill 2048, ``max_num_seqs`` 256, 41,408 KV tokens from its ``meta.json``;
   ``../shared/data/measurements/vllm_rtx4090_llama-3.1-8b``) replayed on the matching colocated plan
   with the analytic RTX 4090 profile (before), then calibrated on the first 150 requests by
   arrival and judged on the last 150 (the whole run is simulated each time: the second half's
   queue depends on the first). Goal: held-out TTFT and TPOT p50/p90 within 10 %, p99 within 20 %.
2. **client** — the benchmark client against ``pdplan.realrun.token_server`` (another process on
   this host): the most streamed requests per second it completes (closed loop, 64 clients,
   8 tokens each, no server delay) and the client's CPU time per request (what one core it has to
   itself sustains, whatever else the shared machine runs), an open-loop run at 500 req/s, and the
   accuracy of its token
   timestamps: receive stamp − the server's send stamp (both ``CLOCK_MONOTONIC``) at a moderate
   load (50 req/s, 32 tokens 5 ms apart) and at saturation. Goal: ≥ 500 req/s, ≤ 1 ms.
3. **local** — ``pdplan deploy`` of a 1P1D and a colocated tiny-llama plan on this CPU, benched at
   30/60/90 % of each plan's predicted capacity with two workloads (chat-like and long-prompt),
   predicted from a CPU profile measured just before (``--quick``); calibrated on the 60 % runs and
   judged on 30 % and 90 %. Slow (minutes) and the machine is shared: run it on its own.

Prints tables and writes ``bench/results/calibration.json`` (the parts run are merged into it).

    .venv/bin/python bench/calibration.py [--part vllm|client|local|all]
        [--local-plans 1P1D,colocated-2x] [--local-workloads chat,long-prompt] [--local-loads 0.3,0.6,0.9]

One case alone (e.g. 1P1D chat at 60 %, ~2 min): ``--part local --local-plans 1P1D
--local-workloads chat --local-loads 0.6`` (no held-out loads: calibration is fitted, not judged).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "calibration.json"
VLLM_RUN = SHARED / "measurements" / "vllm_rtx4090_llama-3.1-8b"
METRICS = ("ttft_mean", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_mean", "tpot_p50", "tpot_p90", "tpot_p99")


def load_note() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


# --- 1. the vLLM run -------------------------------------------------------------------------
def vllm_part(bootstrap: int) -> dict[str, Any]:
    import json as _json

    from pdplan.planner.calibrate import DEFAULT_FIT, MeasuredRun, calibrate, latencies
    from pdplan.planner.measured import read_run
    from pdplan.planner.plan import Plan
    from pdplan.profiles.analytic import analytic_profile
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.sim.cluster import ColocatedPool
    from pdplan.sim.requests import Requests

    meta = _json.loads((VLLM_RUN / "meta.json").read_text())
    kw = meta["engine_kwargs"]
    plan = Plan(
        mode="colocated",
        colocated=ColocatedPool(
            1,
            tp=int(kw["tensor_parallel_size"]),
            policy="chunked",
            max_batch_size=int(kw["max_num_seqs"]),
            max_batch_tokens=int(kw["max_num_batched_tokens"]),
            chunk_tokens=int(kw["max_num_batched_tokens"]),
            max_kv_tokens=int(meta["kv_cache"]["num_kv_tokens"]),
        ),
        model="llama-3.1-8b",
        hardware="rtx-4090",
    )
    profile = analytic_profile(load_model_spec("llama-3.1-8b"), "rtx-4090", tp=1)
    cluster = plan.cluster({"colocated": profile})
    frame = read_run(VLLM_RUN).requests
    reqs = Requests(frame["arrival_s"], frame["prompt_tokens"], frame["output_tokens"])
    ok = (frame["status"] == "ok").to_numpy()
    ttft, tpot = latencies(
        reqs.arrival_s,
        frame["first_token_s"].to_numpy(),
        frame["finish_s"].to_numpy(),
        reqs.output_tokens,
        ok,
    )
    mask = np.arange(len(reqs)) < len(reqs) // 2
    run = MeasuredRun("vllm-rtx4090", reqs, ttft, tpot, mask, cluster)
    started = time.perf_counter()
    result = calibrate([run], DEFAULT_FIT, bootstrap=bootstrap)
    report = result.runs[0]
    return {
        "plan": plan.to_dict(),
        "profile": "analytic llama-3.1-8b on rtx-4090, tp 1",
        "parameters": result.params.to_dict(),
        "uncertainty_std": result.uncertainty,
        "at_bounds": result.at_bounds,
        "fit_requests": int(mask.sum()),
        "held_out_requests": int((~mask).sum()),
        "fit": report["fit"],
        "held_out": report["held_out"],
        "wall_s": round(time.perf_counter() - started, 1),
        "goal": "held-out |error| <= 10% on TTFT and TPOT p50/p90, <= 20% on p99",
        "load": load_note(),
    }


def print_vllm(r: dict[str, Any]) -> None:
    print("\n== vLLM RTX 4090 run: error = predicted / measured - 1 ==")
    print(f"parameters: {r['parameters']}  (bootstrap std {r['uncertainty_std']})")
    if r.get("at_bounds"):
        print(f"at a bound: {r['at_bounds']}")
    heads = ("metric", "held-out measured ms", "fit: before", "fit: after", "held-out: before", "after")
    print(" | ".join(heads))
    fit, held = r["fit"], r["held_out"]
    nan = float("nan")
    for m in METRICS:
        cells = [
            f"{held['measured_ms'].get(m, nan):,.1f}",
            f"{fit['error_before_pct'].get(m, nan):+.1f}%",
            f"{fit['error_after_pct'].get(m, nan):+.1f}%",
            f"{held['error_before_pct'].get(m, nan):+.1f}%",
            f"{held['error_after_pct'].get(m, nan):+.1f}%",
        ]
        print(" | ".join([m, *cells]))


# --- 2. the client ---------------------------------------------------------------------------
def _token_server(first_ms: float, token_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pdplan.realrun.token_server",
            "--first-token-ms",
            str(first_ms),
            "--token-ms",
            str(token_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"token server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def _client_run(url: str, n: int, tokens: int, rate: float | None, concurrency: int | None) -> dict[str, Any]:
    from pdplan.realrun.bench_apis import ApiSpec
    from pdplan.realrun.bench_client import BenchConfig, run_bench
    from pdplan.sim.requests import Requests

    arrival = np.zeros(n) if rate is None else np.arange(n) / rate
    reqs = Requests(arrival, np.full(n, 16), np.full(n, tokens))
    config = BenchConfig(url, ApiSpec("sglang-generate"), concurrency=concurrency, max_in_flight=1024)
    cpu0 = time.process_time()
    run = run_bench(reqs, config)
    cpu_s = time.process_time() - cpu0  # this process = the client (the server is another one)
    ok = [o for o in run.outcomes if o.status == "ok"]
    lag = np.concatenate([np.subtract(o.chunk_s, o.chunk_sent_s) for o in ok if o.chunk_sent_s]) * 1000
    sent = np.array([o.sent_s for o in run.outcomes])
    span = max(o.chunk_s[-1] for o in ok) - float(np.nanmin(sent)) if ok else float("nan")
    out = {
        "requests": n,
        "tokens_each": tokens,
        "ok": len(ok),
        "wall_s": round(run.wall_s, 3),
        "completed_rps": round(len(ok) / span, 1),
        "chunks_per_s": round(len(ok) * tokens / span, 1),
        # CPU the client spent per request: what one dedicated core could sustain, whatever else
        # runs on a shared machine
        "client_cpu_ms_per_request": round(cpu_s / n * 1000, 3),
        "client_rps_per_core": round(n / cpu_s, 1),
        "timestamp_lag_ms": {
            "p50": round(float(np.percentile(lag, 50)), 4),
            "p99": round(float(np.percentile(lag, 99)), 4),
            "max": round(float(lag.max()), 4),
        },
    }
    if rate is not None:
        send_lag = (sent - arrival) * 1000
        out["offered_rps"] = rate
        out["send_lag_ms"] = {
            "p50": round(float(np.percentile(send_lag, 50)), 3),
            "p99": round(float(np.percentile(send_lag, 99)), 3),
        }
    if concurrency is not None:
        out["concurrency"] = concurrency
    return out


def client_part() -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": load_note()}
    proc, url = _token_server(0.0, 0.0)
    try:
        _client_run(url, 200, 8, None, 32)  # warm-up: connections, imports
        out["saturation_closed_64"] = _client_run(url, 4000, 8, None, 64)
        out["open_500rps"] = _client_run(url, 2500, 8, 500.0, None)
    finally:
        proc.terminate()
        proc.wait(10)
    proc, url = _token_server(5.0, 5.0)
    try:
        out["moderate_open_50rps"] = _client_run(url, 500, 32, 50.0, None)
    finally:
        proc.terminate()
        proc.wait(10)
    out["load_after"] = load_note()
    out["goal"] = ">= 500 streamed req/s; timestamps within 1 ms"
    return out


def print_client(r: dict[str, Any]) -> None:
    print("\n== benchmark client vs a local token server ==")
    for name in ("saturation_closed_64", "open_500rps", "moderate_open_50rps"):
        x = r[name]
        lag = x["timestamp_lag_ms"]
        extra = f", send lag p99 {x['send_lag_ms']['p99']} ms" if "send_lag_ms" in x else ""
        print(
            f"{name:<22} ok {x['ok']}/{x['requests']}: {x['completed_rps']} req/s "
            f"({x['chunks_per_s']} chunks/s; client CPU {x['client_cpu_ms_per_request']} ms/request "
            f"= {x['client_rps_per_core']} req/s per core); "
            f"timestamp lag p50/p99/max {lag['p50']}/{lag['p99']}/{lag['max']} ms{extra}"
        )
    print(f"({r['load_before']} before, {r['load_after']} after)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("vllm", "client", "local", "all"), default="all")
    parser.add_argument("--bootstrap", type=int, default=8)
    parser.add_argument("--local-plans", default="1P1D,colocated-2x", help="local: which plans")
    parser.add_argument("--local-workloads", default="chat,long-prompt", help="local: which workloads")
    parser.add_argument("--local-requests", type=int, default=40, help="local: requests per run")
    parser.add_argument(
        "--local-loads", default="0.3,0.6,0.9", help="local: loads, fractions of capacity (calibrated on 0.6)"
    )
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.part in ("vllm", "all"):
        if not VLLM_RUN.is_dir():
            print(f"skipping vllm: {VLLM_RUN} not found")
        else:
            results["vllm"] = vllm_part(args.bootstrap)
            print_vllm(results["vllm"])
    if args.part in ("client", "all"):
        results["client"] = client_part()
        print_client(results["client"])
    if args.part in ("local", "all"):
        from local_runtime import local_part, print_local  # bench/local_runtime.py

        results["local"] = local_part(
            tuple(args.local_plans.split(",")),
            tuple(args.local_workloads.split(",")),
            args.local_requests,
            tuple(float(x) for x in args.local_loads.split(",")),
        )
        print_local(results["local"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""The local runtime's prefix cache against the simulator's (issue 16): a multi-turn workload on a
real colocated worker (tiny-llama, CPU), measured hit rate and TTFT against the prediction from the
measured CPU profile, with the cache on and off.

Scenario: one colocated worker (``python -m pdplan.realrun.worker``, one torch thread, prefill-first,
``--max-kv-tokens 16384``, reserve admission as the worker does), with and without
``--prefix-cache`` (16-token pages). The workload is a ``multi_turn`` prefix workload (12
conversations of 4 turns, a shared 256-token system prompt, 64-token blocks, ~96-token user
messages, 8-24 output tokens) at ``--rate`` req/s, open loop. Each run is ``pdplan bench
--workload W --plan P --profile DIR``: the very request list is sent to the worker (prompts share
the token ids of their shared blocks) and simulated on the plan (``cache: {l1: true}`` or none)
with a CPU profile of tiny-llama measured first (``pdplan profile --quick``: one thread, as the
worker runs). The worker gets two warm-up requests whose tokens the workload never uses.

Writes bench/results/prefix_cache_local.json; prints a table with errors as predicted / measured − 1.

    .venv/bin/python bench/prefix_cache_local.py [--rate 0.8] [--num-requests 60] [--result FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "prefix_cache_local.json"
MODEL = "tiny-llama"
KV_TOKENS = 16384
PLAN = {
    "schema_version": 1,
    "mode": "colocated",
    "model": MODEL,
    "hardware": "cpu",
    "colocated": {
        "instances": 1, "tp": 1, "policy": "prefill-first", "max_batch_size": 16,
        "max_batch_tokens": 2048, "max_kv_tokens": KV_TOKENS, "admission": "reserve",
    },
}  # fmt: skip
PREFIX = {
    "kind": "multi_turn", "turns": 4, "conversations": 12, "system_prompt_tokens": 256, "block_tokens": 64,
}  # fmt: skip


def workload(rate: float, num_requests: int) -> dict[str, Any]:
    return {
        "num_requests": num_requests,
        "seed": 3,
        "arrival": {"process": "poisson", "rate_rps": rate},
        "prompt_tokens": {"dist": "lognormal", "mean": 96, "cv": 0.5, "min": 16, "max": 256},
        "output_tokens": {"dist": "uniform", "min": 8, "max": 24},
        "prefix": PREFIX,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pdplan(*args: str) -> None:
    script = Path(sys.executable).parent / "pdplan"
    subprocess.run([str(script), *args], check=True, capture_output=True, timeout=600)


@contextlib.contextmanager
def _worker(cache: bool):
    import httpx

    port = _free_port()
    argv = [
        sys.executable, "-m", "pdplan.realrun.worker", "--role", "colocated", "--model", MODEL,
        "--port", str(port), "--threads", "1", "--max-kv-tokens", str(KV_TOKENS),
        "--max-batch-size", "16", "--max-batch-tokens", "2048",
    ]  # fmt: skip
    if cache:
        argv += ["--prefix-cache", "--prefix-cache-page-tokens", "16"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("worker did not start")
            time.sleep(0.2)
        for n in (300, 600):  # warm-up: token ids ≥ 300, which the bench's prompts never use
            body = {"input_ids": list(range(300, 300 + n)), "sampling_params": {"max_new_tokens": 4}}
            httpx.post(f"{url}/generate", json=body, timeout=120).raise_for_status()
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def run_one(tmp: Path, cache: bool, rate: float, num_requests: int) -> dict[str, Any]:
    plan = dict(PLAN, cache={"l1": True}) if cache else PLAN
    name = "cache" if cache else "no-cache"
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(plan))
    (tmp / "workload.yaml").write_text(yaml.safe_dump(workload(rate, num_requests)))
    out = tmp / f"run-{name}"
    load = os.getloadavg()[0]
    with _worker(cache) as url:
        _pdplan(
            "bench", "--endpoint", url, "--workload", str(tmp / "workload.yaml"),
            "--plan", str(tmp / f"{name}.yaml"), "--profile", str(tmp / "profile"), "--out", str(out),
        )  # fmt: skip
    measured = yaml.safe_load((out / "summary.yaml").read_text())
    predicted = yaml.safe_load((out / "predicted" / "summary.yaml").read_text())
    row: dict[str, Any] = {"cache": cache, "load_1min_before": round(load, 2)}
    for side, summary in (("measured", measured), ("predicted", predicted)):
        row[side] = {
            "hit_rate": (summary.get("prefix_cache") or {}).get("hit_rate", {}).get("total", 0.0),
            **{f"ttft_{k}_ms": summary["ttft_ms"][k] for k in ("mean", "p50", "p90")},
            **{f"tpot_{k}_ms": summary["tpot_ms"][k] for k in ("mean", "p50")},
            "ok": summary["counts"].get("ok", 0),
        }
    if cache:
        row["per_request"] = _hits_per_request(tmp, out)
    row["error_pct"] = {
        k: round(100 * (row["predicted"][k] / row["measured"][k] - 1), 1)
        for k in row["measured"]
        if k != "ok" and row["measured"][k]
    }
    return row


def _hits_per_request(tmp: Path, out: Path) -> dict[str, Any]:
    """Per request: the simulator's cached tokens (the same plan, profile and request list,
    simulated here) against the worker's ``cached_tokens``; where they differ, and by how much."""
    import numpy as np
    import pandas as pd

    from pdplan.planner.inputs import load_workload
    from pdplan.planner.plan import load_plan
    from pdplan.profiles.profile import load_profile
    from pdplan.sim.simulate import simulate

    reqs = load_workload(tmp / "workload.yaml", seed=None, rate_rps=None).requests
    plan, profile = load_plan(tmp / "cache.yaml"), load_profile(tmp / "profile")
    result = simulate(reqs, plan.cluster({role: profile for role in plan.tps}))
    assert result.cache is not None
    predicted = result.cache.cached_tokens
    measured = pd.read_csv(out / "requests.csv")["cached_tokens"].to_numpy(dtype=float)
    differ = np.flatnonzero(predicted != measured)
    return {
        "requests": len(reqs),
        "differ": len(differ),
        "measured_minus_predicted_tokens": int(np.nansum(measured - predicted)),
        "examples": [
            {"req_id": int(i), "predicted": int(predicted[i]), "measured": float(measured[i])}
            for i in differ[:5]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.8)
    parser.add_argument("--num-requests", type=int, default=60)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--result", type=Path, default=RESULT, help="the JSON to write")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
        "scenario": {"model": MODEL, "plan": PLAN, "workload": workload(args.rate, args.num_requests)},
    }
    with tempfile.TemporaryDirectory() as name:
        tmp = args.keep or Path(name)
        tmp.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _pdplan("profile", "--model", MODEL, "--device", "cpu", "--quick", "--out", str(tmp / "profile"))
        result["profile_wall_s"] = round(time.perf_counter() - started, 1)
        result["runs"] = [run_one(tmp, cache, args.rate, args.num_requests) for cache in (False, True)]
    result["machine_after"] = f"load average {os.getloadavg()[0]:.2f} at the end"
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    print(f"== prefix cache, local worker vs simulator ({MODEL}, CPU, {args.rate} req/s multi-turn) ==")
    print(f"{'cache':<9}{'metric':<15}{'measured':>10}{'predicted':>11}{'error':>8}")
    for row in result["runs"]:
        for key in ("hit_rate", "ttft_mean_ms", "ttft_p50_ms", "ttft_p90_ms", "tpot_mean_ms"):
            m, p = row["measured"][key], row["predicted"][key]
            err = row["error_pct"].get(key)
            cell = "—" if err is None else f"{err:+.1f}%"
            tag = "on" if row["cache"] else "off"
            print(f"{tag:<9}{key:<15}{m:>10.3f}{p:>11.3f}{cell:>8}")
    hits = result["runs"][1]["per_request"]
    print(
        f"cached tokens per request: {hits['differ']} of {hits['requests']} requests differ, "
        f"measured − predicted = {hits['measured_minus_predicted_tokens']:+,} tokens"
    )
    print(f"({result['machine']}; {result['machine_after']}; profile {result['profile_wall_s']} s)")
    print(f"wrote {args.result}")


if __name__ == "__main__":
    main()

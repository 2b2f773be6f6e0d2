"""Simulator speed: simulated requests per second of wall time, and peak memory (issue 3).

Scenario (issue 3): Llama-3.1-8B on H100-SXM (the analytic profile, tp=1), lognormal prompt and
output lengths around 1000 and 250 tokens (CV 0.6), Poisson arrivals at 80% of the prefill
side's capacity (4 instances, one mean prompt per batch — batching only adds capacity), on

- ``disaggregated``: 4 prefill + 4 decode instances over InfiniBand (least-loaded routing);
- ``colocated``: 8 chunked-prefill instances on the same 8 GPUs, same requests.

Each size runs in a fresh process (so peak RSS is that run's), timing ``simulate`` alone; the
request draw, the summary and the time series are timed separately. Prints a table and writes
bench/results/sim_speed.json. Targets: ≥ 20,000 req/s (aim 50,000) and ≤ 1 GB at 1M requests.

    .venv/bin/python bench/sim_speed.py [--quick] [--sizes 10000,100000] [--modes colocated]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sim_speed.json"
SIZES = (10_000, 100_000, 1_000_000)
MODES = ("disaggregated", "colocated")
LOAD = 0.8
TARGET_RPS, AIM_RPS, MEMORY_LIMIT_MB = 20_000, 50_000, 1024


def scenario(num_requests: int, mode: str):
    """(requests, cluster, arrival rate) of the benchmark scenario."""
    import numpy as np

    from pdplan.profiles.analytic import analytic_profile
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.sim import (
        Arrival,
        ColocatedPool,
        DecodePool,
        KvLink,
        Lengths,
        PrefillPool,
        Workload,
        colocated_cluster,
        disaggregated_cluster,
        draw_requests,
    )

    profile = analytic_profile(load_model_spec("llama-3.1-8b"), "h100-sxm", tp=1)
    mean_prompt = 1000
    one_prompt_s = profile.latency.prefill_ms([mean_prompt]) / 1000
    rate = LOAD * 4 / one_prompt_s
    workload = Workload(
        arrival=Arrival("poisson", rate),
        prompt_tokens=Lengths("lognormal", mean=mean_prompt, cv=0.6, min=16, max=8192),
        output_tokens=Lengths("lognormal", mean=250, cv=0.6, min=1, max=2048),
        num_requests=num_requests,
        seed=0,
    )
    started = time.perf_counter()
    requests = draw_requests(workload, np.random.default_rng(0))
    draw_s = time.perf_counter() - started
    if mode == "disaggregated":
        link = KvLink(50.0, 0.01, link="infiniband")
        cluster = disaggregated_cluster(PrefillPool(4), DecodePool(4), link, (profile, profile))
    else:
        cluster = colocated_cluster(ColocatedPool(8, policy="chunked", chunk_tokens=2048), profile)
    return requests, cluster, rate, draw_s


def measure(num_requests: int, mode: str) -> dict:
    """One run in this process (called in a child process by ``main``)."""
    from pdplan.sim import simulate, summarize, timeseries
    from pdplan.sim.compiled import status

    requests, cluster, rate, draw_s = scenario(num_requests, mode)
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = simulate(requests, cluster)
    wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    started = time.perf_counter()
    summary = summarize(
        result.records.columns(),
        slo_ms={"ttft": 1000, "tpot": 50},
        warmup_fraction=0.05,
        utilisation=result.utilisation,
    )
    summary_s = time.perf_counter() - started
    started = time.perf_counter()
    series = timeseries(result)
    timeseries_s = time.perf_counter() - started
    return {
        "mode": mode,
        "simulator": status(),  # compiled (mypyc) or python (PDPLAN_SIM_COMPILED=0, or no build)
        "requests": num_requests,
        "rate_rps": round(rate, 3),
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 3),
        "req_per_s_wall": round(num_requests / wall_s),
        "req_per_s_cpu": round(num_requests / cpu_s),
        "events_per_request": round(result.events / num_requests, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_run_mb": round(base_rss_mb, 1),
        "draw_s": round(draw_s, 3),
        "summary_s": round(summary_s, 3),
        "timeseries_s": round(timeseries_s, 3),
        "timeseries_rows": len(series),
        "ok": summary["counts"]["ok"],
        "utilisation": summary["utilisation"],
        "ttft_p50_ms": summary["ttft_ms"]["p50"],
        "tpot_p50_ms": summary["tpot_ms"]["p50"],
    }


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1M-request runs")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1])))
        return
    sizes = [int(s) for s in args.sizes.split(",") if not (args.quick and int(s) >= 1_000_000)]
    rows = []
    header = (
        f"{'mode':<14}{'requests':>10}{'wall s':>9}{'cpu s':>8}{'req/s':>9}{'req/s cpu':>11}{'RSS MB':>9}"
        f"{'ev/req':>8}{'summary s':>11}{'series s':>10}"
    )
    print(header)
    for mode in args.modes.split(","):
        for n in sizes:
            child = subprocess.run(
                [sys.executable, __file__, "--one", str(n), mode], capture_output=True, text=True, check=True
            )
            row = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{mode:<14}{n:>10,}{row['wall_s']:>9.2f}{row['cpu_s']:>8.2f}{row['req_per_s_wall']:>9,}"
                f"{row['req_per_s_cpu']:>11,}{row['peak_rss_mb']:>9.0f}{row['events_per_request']:>8.2f}"
                f"{row['summary_s']:>11.2f}{row['timeseries_s']:>10.2f}",
                flush=True,
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "sim_speed",
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": "python bench/sim_speed.py" + (" --quick" if args.quick else ""),
                "machine": machine(),
                "scenario": {
                    "model": "llama-3.1-8b (analytic profile)",
                    "hardware": "h100-sxm",
                    "load": LOAD,
                    "prompt_tokens": "lognormal mean 1000 cv 0.6 [16, 8192]",
                    "output_tokens": "lognormal mean 250 cv 0.6 [1, 2048]",
                    "disaggregated": "4 prefill + 4 decode, tp 1, infiniband",
                    "colocated": "8 chunked, tp 1",
                },
                "targets": {
                    "req_per_s": TARGET_RPS,
                    "aim_req_per_s": AIM_RPS,
                    "peak_rss_mb_at_1m": MEMORY_LIMIT_MB,
                },
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

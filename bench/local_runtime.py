"""Part 3 of ``bench/calibration.py``: the local runtime, predicted then measured, before and after
calibration.

A CPU profile of tiny-llama is measured first (``pdplan profile --quick``, one thread, as each
worker runs). Two plans — 1 prefill + 1 decode, and 2 colocated chunked instances (both two
workers, one core each) — are deployed with ``pdplan deploy`` and benched through the router
(``/generate`` with ``input_ids``, open loop, Poisson) at 30 / 60 / 90 % of the plan's predicted
capacity (the simulator's throughput when overloaded) with two workloads: chat-like and
long-prompt. Each run is predicted on the same request list. Calibration (step overhead, compute
and bandwidth scales) is fitted on the 60 % runs and judged on the 30 % and 90 % runs.

Each run is also predicted from the same measurement priced as the quick grid did before its
multi-prompt row at 1,536 tokens (the rows of ``prefill_mix.OLD_QUICK_ROWS``:
``error_old_quick_grid_pct``, ``step_prices_old_quick_grid``), so the effect of the row is judged on
the same measured traffic, whatever the machine's load did to it; every
decode step the workers logged (``/server_info``: batch, context, wall ms) is compared with the
profile's model by batch (``decode_steps_vs_profile``), and each run's decode batches and busy time
with the simulator's (``batches``). The load average is recorded per run.

Each run's TTFT is also cut into the segments of its first-token path, measured and simulated
(``first_token_path``, :mod:`local_ttft`), every prefill forward and decode step of the run is priced
against the profile by wall and by engine-thread CPU time (``step_prices``), and the run is
predicted once more with each step priced at its measured wall time (``error_at_measured_prices_pct``:
compute scale = the prefill forwards' wall / model, bandwidth scale = the decode steps'): what is
left there is the path outside the steps, what it removes was the steps' price. The prefill forwards
are also priced by prompts per forward and by how much of each a decode step ran beside it on the
other worker (``prefill_breakdown``, :func:`local_ttft.prefill_breakdown`).

Colocated runs (sixth pass): a worker's mixed steps — a prompt slice with the running decodes in one
forward — are priced as the simulator prices them (``StepCoef.mixed_s``; ``step_prices["mixed"]``)
and counted in the batches view; every step is also priced by the share of it the other worker was
busy (``neighbour``, :func:`local_ttft.neighbour_breakdown`: co-tenancy in CPU time), and the
router's spread is checked (``routing``: requests sent to the worker with fewer / as many / more of
the run's requests in flight, :func:`local_ttft.routing_check`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

LOADS = (0.3, 0.6, 0.9)
NUM_REQUESTS = 40
PLANS = {
    "1P1D": (
        "schema_version: 1\nmode: disaggregated\nmodel: tiny-llama\nhardware: cpu\n"
        "prefill: {instances: 1, tp: 1, max_batch_tokens: 2048, max_batch_size: 8}\n"
        "decode: {instances: 1, tp: 1, max_batch_size: 16, max_kv_tokens: 32768}\n"
        "kv_transfer: {link: loopback}\n"
    ),
    "colocated-2x": (
        "schema_version: 1\nmode: colocated\nmodel: tiny-llama\nhardware: cpu\n"
        "colocated: {instances: 2, tp: 1, policy: chunked, chunk_tokens: 512, max_batch_size: 16, "
        "max_kv_tokens: 32768}\n"
    ),
}
FIT_KEYS = ("step_overhead_ms", "compute_scale", "bandwidth_scale")


def _workloads() -> dict[str, Any]:
    from pdplan.sim.workload import Arrival, Lengths, Workload

    return {
        "chat": Workload(
            Arrival("poisson", 1.0),
            Lengths("lognormal", mean=256, cv=0.6, min=32, max=1024),
            Lengths("uniform", min=8, max=64),
            num_requests=NUM_REQUESTS,
            seed=11,
        ),
        "long-prompt": Workload(
            Arrival("poisson", 1.0),
            Lengths("uniform", min=768, max=1536),
            Lengths("uniform", min=8, max=24),
            num_requests=NUM_REQUESTS,
            seed=12,
        ),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pdplan(*args: str, timeout: float = 600) -> None:
    script = Path(sys.executable).parent / "pdplan"
    subprocess.run([str(script), *args], check=True, capture_output=True, timeout=timeout)


def _cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(CPU-seconds the whole machine has been busy, those of ``pids`` and of this process — the
    client) so far, from ``/proc``: a run's difference tells its own CPU from the other jobs' on a
    shared machine, which the load average mixes."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    ours = time.process_time()
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (proc(5))
    return (user + nice + system + irq + softirq + steal) / tick, ours


def _deployment_pids(run: Path) -> list[int]:
    record = json.loads((run / "deploy.json").read_text())
    return [int(record["supervisor_pid"]), *(int(p["pid"]) for p in record["processes"])]


def _named_pids(run: Path) -> dict[str, int]:
    """The deployment's processes by name (workers, router, gateway) and this one (the client)."""
    record = json.loads((run / "deploy.json").read_text())
    return {**{p["name"]: int(p["pid"]) for p in record["processes"]}, "client": os.getpid()}


@contextlib.contextmanager
def _deployed(plan: Path, run: Path):
    script = Path(sys.executable).parent / "pdplan"
    port = _free_port()
    proc = subprocess.Popen(
        [str(script), "deploy", str(plan), "--port", str(port), "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record: dict[str, Any] = {}
    deadline = time.monotonic() + 180
    while proc.poll() is None and record.get("status") != "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((run / "deploy.json").read_text())
    try:
        if record.get("status") != "ready":
            raise RuntimeError(f"deployment of {plan} did not become ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _pdplan("deploy", "--stop", str(run), timeout=60)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def _capacity_rps(cluster: Any, workload: Any) -> float:
    """The simulator's throughput when overloaded: the rate the plan can sustain."""
    from dataclasses import replace

    from pdplan.sim.simulate import simulate
    from pdplan.sim.summary import summarize
    from pdplan.sim.workload import draw_requests

    reqs = draw_requests(replace(workload, num_requests=300).with_rate(1000.0))
    return float(summarize(simulate(reqs, cluster).records.columns())["throughput_rps"])


def _measured_run(name: str, reqs: Any, frame: Any, cluster: Any) -> Any:
    from pdplan.planner.calibrate import MeasuredRun, latencies

    ok = (frame["status"] == "ok").to_numpy()
    ttft, tpot = latencies(
        frame["arrival_s"].to_numpy(dtype=float),
        frame["first_token_s"].to_numpy(dtype=float),
        frame["finish_s"].to_numpy(dtype=float),
        frame["output_tokens"].to_numpy(),
        ok,
    )
    from pdplan.sim.requests import Requests

    measured_reqs = Requests(frame["arrival_s"].to_numpy(dtype=float), reqs.prompt_tokens, reqs.output_tokens)
    return MeasuredRun(name, measured_reqs, ttft, tpot, np.zeros(len(reqs), dtype=bool), cluster)


def local_part(
    plans: tuple[str, ...] = tuple(PLANS),
    workloads: tuple[str, ...] = ("chat", "long-prompt"),
    num_requests: int = NUM_REQUESTS,
    loads: tuple[float, ...] = LOADS,
) -> dict[str, Any]:
    """Profile, deploy, bench and predict every plan × workload × load (module docstring);
    calibration is fitted on the 60 % runs when ``loads`` has them."""
    from local_batches import (  # bench/local_batches.py
        _logged_steps,
        _measured_batches,
        _simulated_batches,
        _with_mixed_steps,
        _worker_steps,
    )
    from local_ttft import (
        cores_by_process,
        engine_threads,
        forward_scale,
        measured_segments,
        neighbour_breakdown,
        path_table,
        prefill_breakdown,
        routing_check,
        simulated_segments,
        step_prices,
        thread_cpu_s,
        thread_stats,
    )
    from prefill_mix import OLD_QUICK_ROWS

    from pdplan.planner.calibrate import Params, calibrate, errors_pct, metrics, predict
    from pdplan.planner.plan import load_plan
    from pdplan.profiles.profile import load_profile
    from pdplan.realrun.bench_apis import ApiSpec
    from pdplan.realrun.bench_client import BenchConfig, run_bench
    from pdplan.realrun.bench_results import requests_frame
    from pdplan.sim.simulate import simulate
    from pdplan.sim.workload import draw_requests

    out: dict[str, Any] = {"load_before": f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        _pdplan(
            "profile", "--model", "tiny-llama", "--device", "cpu", "--quick", "--out", str(tmp / "profile")
        )
        out["profile_wall_s"] = round(time.perf_counter() - started, 1)
        profile = load_profile(tmp / "profile")
        # The same measurement as the quick grid priced it before its multi-prompt row at 1,536
        # tokens, to compare on the same runs.
        pre = profile.prefill
        in_old = [(s, n) in OLD_QUICK_ROWS for s, n in zip(pre["num_seqs"], pre["seq_len"], strict=True)]
        old = replace(profile, prefill=pre[in_old].reset_index(drop=True))
        out["prefill_coefficients"] = {
            "quick_grid": profile.latency.to_dict()["prefill"],
            "old_quick_grid": old.latency.to_dict()["prefill"],
        }
        for plan_name in plans:
            text = PLANS[plan_name]
            plan_file = tmp / f"{plan_name}.yaml"
            plan_file.write_text(text)
            plan = load_plan(plan_file)
            cluster = plan.cluster({role: profile for role in plan.tps})
            old_cluster = plan.cluster({role: old for role in plan.tps})
            runs: dict[tuple[str, float], Any] = {}
            rows = []
            all_steps: list[dict[str, Any]] = []
            with _deployed(plan_file, tmp / f"deploy-{plan_name}") as url:
                for wl_name in workloads:
                    workload = replace(_workloads()[wl_name], num_requests=num_requests)
                    capacity = _capacity_rps(cluster, workload)
                    for load in loads:
                        rate = load * capacity
                        reqs = draw_requests(workload.with_rate(rate))
                        pids = _deployment_pids(tmp / f"deploy-{plan_name}")
                        named = _named_pids(tmp / f"deploy-{plan_name}")
                        threads0, stats0 = thread_cpu_s(named), thread_stats(named)
                        busy0, ours0 = _cpu_seconds(pids)
                        t0 = time.time()
                        bench = run_bench(reqs, BenchConfig(url, ApiSpec("sglang-generate"), timeout_s=120))
                        wall = time.time() - t0
                        busy1, ours1 = _cpu_seconds(pids)
                        by_process = cores_by_process(threads0, thread_cpu_s(named), wall)
                        engines = engine_threads(stats0, thread_stats(named))
                        t1 = time.time()
                        logged, prefills, by_worker = _logged_steps(tmp / f"deploy-{plan_name}")
                        all_steps += [s for log in logged for s in log if s["start_s"] >= t0]
                        frame = requests_frame(bench)
                        name = f"{plan_name}/{wl_name}/{int(load * 100)}%"
                        run = _measured_run(name, reqs, frame, cluster)
                        runs[(wl_name, load)] = run
                        steps_flat = [s for log in logged for s in log]
                        prices = step_prices(prefills, steps_flat, profile.latency, t0, t1)
                        breakdown = {
                            name: prefill_breakdown(prefills, steps_flat, lat, t0, t1)
                            for name, lat in (
                                ("quick_grid", profile.latency),
                                ("old_quick_grid", old.latency),
                            )
                        }
                        path = path_table(
                            measured_segments(bench.outcomes, bench.started_unix),
                            simulated_segments(simulate(run.requests, cluster)),
                        )
                        rows.append(
                            {
                                "run": name,
                                "capacity_rps": round(capacity, 3),
                                "rate_rps": round(rate, 3),
                                "failed": int((frame["status"] != "ok").sum()),
                                "load": round(os.getloadavg()[0], 2),
                                # cores busy on average during the run: the deployment and the
                                # client, and everything else on the machine
                                "cores_busy": {
                                    "ours": round((ours1 - ours0) / wall, 2),
                                    "others": round((busy1 - busy0 - (ours1 - ours0)) / wall, 2),
                                },
                                "batches": {
                                    "measured": _measured_batches(
                                        _with_mixed_steps(logged, by_worker), t0, t1
                                    ),
                                    "simulated": _simulated_batches(run.requests, cluster),
                                },
                                "cores_by_process": by_process,
                                "engine_threads": {
                                    k: v
                                    for k, v in engines.items()
                                    if k.startswith(("prefill", "decode", "colocated"))
                                },
                                "step_prices": prices,
                                "step_prices_old_quick_grid": step_prices(
                                    prefills, steps_flat, old.latency, t0, t1
                                ),
                                "prefill_breakdown": breakdown,
                                "first_token_path": path,
                                "forward_scale": forward_scale(prefills, profile.latency, t0, t1),
                                "routing": routing_check(bench.outcomes, bench.started_unix, by_worker),
                                "neighbour": neighbour_breakdown(
                                    logged if by_worker else [], by_worker, profile.latency, t0, t1
                                ),
                            }
                        )
                steps = _worker_steps(all_steps, profile.latency)
            fit_runs = []
            for (_, load), run in runs.items():
                if load == 0.6:
                    fit_runs.append(replace(run, fit_mask=np.isfinite(run.ttft_s)))
            held = [run for (_, load), run in runs.items() if load != 0.6]
            out["requests_per_run"] = num_requests
            result = calibrate([*fit_runs, *held], FIT_KEYS, bootstrap=4) if fit_runs else None
            for row, run in zip(rows, runs.values(), strict=True):
                every = np.isfinite(run.ttft_s)
                measured = metrics(run.ttft_s, run.tpot_s, every)
                row["used_for_fit"] = row["run"].endswith("/60%")
                row["measured_ms"] = {k: round(v, 2) for k, v in measured.items()}
                row["error_before_pct"] = errors_pct(metrics(*predict(run, Params()), every), measured)
                before_row = predict(replace(run, cluster=old_cluster), Params())
                row["error_old_quick_grid_pct"] = errors_pct(metrics(*before_row, every), measured)
                if result is not None:
                    after = metrics(*predict(run, result.params), every)
                    row["error_after_pct"] = errors_pct(after, measured)
                prices = row["step_prices"]
                at_measured = Params(
                    compute_scale=row["forward_scale"] or 1.0,
                    bandwidth_scale=prices.get("decode", {}).get("wall_over_model", 1.0),
                )
                row["error_at_measured_prices_pct"] = errors_pct(
                    metrics(*predict(run, at_measured), every), measured
                )
            out[plan_name] = {
                "decode_steps_vs_profile": steps,
                "parameters": result.params.to_dict() if result is not None else None,
                "uncertainty_std": result.uncertainty if result is not None else None,
                "runs": rows,
            }
    out["load_after"] = f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    return out


def print_local(r: dict[str, Any]) -> None:

    print(
        "\n== local runtime (tiny-llama, CPU): error = predicted / measured - 1: quick prefill grid before "
        "its 8 x 192-token row | now, before -> after calibration =="
    )
    print(f"prefill fits: {r.get('prefill_coefficients')}")
    keys = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")
    nan = float("nan")
    for plan_name in [p for p in PLANS if p in r]:
        block = r[plan_name]
        print(f"{plan_name}: calibrated {block['parameters']}")
        print(
            f"  worker decode steps (wall) / profile model, by batch: {block.get('decode_steps_vs_profile')}"
        )
        for row in block["runs"]:
            before, after = row["error_before_pct"], row.get("error_after_pct", {})
            old = row.get("error_old_quick_grid_pct", {})
            cells = [
                f"{k} {old.get(k, nan):+.0f} | {before.get(k, nan):+.0f}->{after.get(k, nan):+.0f}%"
                for k in keys
            ]
            tag = " (fit)" if row["used_for_fit"] else ""
            load = f" (load {row['load']})" if "load" in row else ""
            if "cores_busy" in row:
                load += (
                    f" (cores busy: ours {row['cores_busy']['ours']}, others {row['cores_busy']['others']})"
                )
            print(f"  {row['run']:<28}{tag:<6} {row['rate_rps']:.2f} req/s{load}  " + "  ".join(cells))
            if "step_prices" in row:
                _print_prices(row)
            if "batches" in row:
                m, sim = row["batches"]["measured"], row["batches"]["simulated"]
                print(
                    f"    decode busy s measured {m['busy_s']} (steps {m['step_s']} + gaps {m['gap_s']}) "
                    f"vs simulated {sim['busy_s']}; mean batch {m['mean_batch']} vs {sim['mean_batch']}; "
                    f"time at batch {m['time_share']} vs {sim['time_share']}"
                )
    print(f"({r['load_before']} before, {r['load_after']} after; profile {r['profile_wall_s']} s)")


def _print_prices(row: dict[str, Any]) -> None:
    from local_ttft import SEGMENTS

    keys = ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90")
    nan = float("nan")
    at = row["error_at_measured_prices_pct"]
    for label, key in (("", "step_prices"), (" (old quick grid)", "step_prices_old_quick_grid")):
        if key in row:
            print(
                f"    steps / profile{label} (wall, cpu): "
                + ", ".join(
                    f"{k} {v['wall_over_model']}, {v['cpu_over_model']} ({v['count']})"
                    for k, v in row[key].items()
                )
            )
    for name, b in row.get("prefill_breakdown", {}).items():
        cells = [
            f"{group} "
            + ", ".join(f"{k}: {v['cpu_over_model']} ({v['count']})" for k, v in b[group].items() if v)
            for group in ("by_prompts", "by_decode_overlap")
        ]
        print(
            f"    prefill CPU / {name} model: "
            + "; ".join(cells)
            + f"; mean overlap {b['mean_decode_overlap']}"
        )
    print("    at the measured step prices: " + "  ".join(f"{k} {at.get(k, nan):+.0f}%" for k in keys))
    print(f"    cores by process (all, busiest thread): {row['cores_by_process']}")
    if row.get("neighbour"):
        print(f"    CPU / model by the other worker's busy share of each step: {row['neighbour']}")
    if row.get("routing"):
        print(f"    routing (the request's worker had fewer / as many / more in flight): {row['routing']}")
    print(f"    engine threads (cpu s, kernel share, minor faults): {row.get('engine_threads')}")
    path = row["first_token_path"]
    print(
        "    first-token path, mean ms measured / simulated: "
        + ", ".join(
            f"{k} {(m or {}).get('mean', nan)} / {(s or {}).get('mean', nan)}"
            for k, (m, s) in ((k, (v["measured"], v["simulated"])) for k, v in path.items() if k in SEGMENTS)
        )
        + "; parts (p50 ms): "
        + ", ".join(f"{k} {v['p50']}" for k, v in path.get("details_measured", {}).items())
    )

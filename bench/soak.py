"""Soak test of a local disaggregated deployment: mixed traffic at a fraction of capacity while a
worker is killed at a fixed interval (issue 14).

1. Starts 1 prefill + 2 decode workers (tiny-llama, random weights, CPU) behind sglang-router and
   the pdplan gateway, exactly as ``pdplan deploy --target local`` does (``Supervisor``).
2. Calibrates capacity: a closed loop of ``--calib-concurrency`` clients for ``--calib-s`` seconds
   of the same request mix gives the completed requests per second.
3. Soaks: open-loop Poisson arrivals at ``--load`` × capacity for ``--duration-s`` seconds, a mix of
   ``/generate`` (streamed and not), ``/v1/completions`` and ``/v1/chat/completions`` with prompts
   of 16–256 tokens and 8–64 new tokens; every ``--kill-every-s`` seconds one worker (decode-0,
   decode-1, prefill-0 in turn) gets SIGKILL and the supervisor restarts it.
4. Counts every request's end: ``ok``; ``error`` = an explicit error (an HTTP error with a JSON
   body, or a stream that ends with an ``error`` event); ``lost`` = anything else (a connection cut
   without an error event, a malformed reply, no answer within ``--request-timeout-s``). Samples
   each worker's memory every 2 s (``memory_bytes``): its private memory (RssAnon), judged per
   process from ``--warmup-s`` after it appeared to its end (a restarted worker is a new process
   with its own warm-up), and the deployment's memory, the sum of the workers' PSS, in which each
   shared KV buffer counts once. VmRSS is reported but not judged: a prefill's VmRSS includes the
   decode workers' KV buffers it keeps mapped (``kv_shm.SharedWriter``, bounded by
   ``MAX_MAPPED_BYTES``), memory it does not own, so it climbs towards that bound by design.
   Growth is the median of the last tenth of the samples over the median of the first tenth.
   Ends by waiting for the deployment to be ``ready`` with every worker healthy in the router.

Targets: 0 lost, worker private memory and deployment memory flat within 10 %, healthy at the
end. Prints a table and writes
``bench/results/soak.json`` (``--out``). State the machine load (``uptime``) with the figures.

    .venv/bin/python bench/soak.py --duration-s 600 --kill-every-s 120     # the full soak
    .venv/bin/python bench/soak.py --duration-s 90 --kill-every-s 30       # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from pdplan.realrun.deployment import DeploymentSpec, InstanceGroup, LaunchOptions, build_launch
from pdplan.realrun.supervisor import Supervisor, read_deployment

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("generate", "generate_stream", "completions_stream", "chat", "chat_stream")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_request(rng: random.Random) -> tuple[str, dict[str, Any], bool]:
    kind = rng.choice(KINDS)
    prompt = [rng.randrange(10, 900) for _ in range(rng.randint(16, 256))]
    new = rng.randint(8, 64)
    stream = kind.endswith("stream")
    if kind.startswith("generate"):
        body = {
            "input_ids": prompt,
            "sampling_params": {"max_new_tokens": new, "temperature": 0, "ignore_eos": True},
            "stream": stream,
        }
        return "/generate", body, stream
    if kind.startswith("completions"):
        text = " ".join(str(t) for t in prompt[: len(prompt) // 3])
        body = {
            "model": "tiny-llama", "prompt": text, "max_tokens": new, "temperature": 0, "ignore_eos": True,
            "stream": stream,
        }  # fmt: skip
        return "/v1/completions", body, stream
    text = " ".join(str(t) for t in prompt[: len(prompt) // 3])
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": new,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    return "/v1/chat/completions", body, stream


async def one(
    session: aiohttp.ClientSession, endpoint: str, rng: random.Random, timeout_s: float
) -> tuple[str, str]:
    """``(ok | error | lost, detail)``: ``error`` is explicit; the detail is its HTTP status and type."""
    path, body, stream = make_request(rng)

    def kind(payload: Any) -> str:
        error = payload.get("error") if isinstance(payload, dict) else None
        return str(error.get("type", "?")) if isinstance(error, dict) else str(error)

    async def exchange() -> tuple[str, str]:
        async with session.post(f"{endpoint}{path}", json=body) as reply:
            if reply.status != 200:
                try:
                    payload = await reply.json(content_type=None)
                except (ValueError, aiohttp.ClientError):
                    return "lost", f"{reply.status} not JSON"
                if isinstance(payload, dict) and "error" in payload:
                    return "error", f"{reply.status} {kind(payload)}"
                return "lost", f"{reply.status} no error field"
            if not stream:
                payload = await reply.json(content_type=None)
                if isinstance(payload, dict) and "error" not in payload:
                    return "ok", "200"
                return "error", f"200 {kind(payload)}"
            last = ""
            async for raw in reply.content:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("data: "):
                    last = line[6:]
            if last == "[DONE]":
                return "ok", "200"
            if last.startswith('{"error"'):
                return "error", f"stream {kind(json.loads(last))}"
            return "lost", "stream cut"

    try:
        return await asyncio.wait_for(exchange(), timeout_s)
    except (TimeoutError, asyncio.TimeoutError) as err:
        return "lost", f"timeout {err!r}"
    except (ValueError, aiohttp.ClientError, ConnectionError) as err:
        return "lost", type(err).__name__


def memory_bytes(pid: int) -> dict[str, int] | None:
    """Resident memory of ``pid``: ``rss`` (VmRSS: every resident page it maps, the decode workers'
    shared KV buffers a prefill maps included), ``anon`` (RssAnon: its private memory) and ``pss``
    (proportional set size, /proc/PID/smaps_rollup: a page shared by n processes counts 1/n, so
    summed over the workers each shared KV buffer counts once)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "RssAnon:")):
                out["rss" if line.startswith("VmRSS") else "anon"] = int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss"] = int(line.split()[1]) * 1024
    except OSError:
        return None
    return out if len(out) == 3 else None


def growth_pct(values: list[float]) -> float:
    """Growth from the start to the end of a series, robust to momentary peaks: the median of its
    last tenth over the median of its first tenth (at least 3 samples each), minus 1, in %."""
    n = max(3, len(values) // 10)
    first, last = sorted(values[:n])[len(values[:n]) // 2], sorted(values[-n:])[len(values[-n:]) // 2]
    return 100.0 * (last / first - 1.0)


def judge_memory(
    samples: dict[tuple[str, int], list[tuple[float, dict[str, int]]]], warmup_s: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per process (a restarted worker is a new one, judged after its own warm-up; one that lived
    less than 30 samples after it is not judged) and for the deployment: the sum of the workers'
    PSS at each sampling instant, after the first ``warmup_s``."""
    per_process = []
    for (name, pid), series in samples.items():
        steady = [(t, m) for t, m in series if t - series[0][0] >= warmup_s]
        if len(steady) < 30:
            continue
        row: dict[str, Any] = {"worker": name, "pid": pid, "seconds": steady[-1][0] - steady[0][0]}
        for key in ("rss", "anon", "pss"):
            values = [m[key] / 2**20 for _, m in steady]
            row[f"{key}_first_mib"], row[f"{key}_last_mib"] = values[0], values[-1]
            row[f"{key}_max_mib"], row[f"{key}_growth_pct"] = max(values), growth_pct(values)
        row["anon_series_mib"] = [[round(t, 1), round(m["anon"] / 2**20, 1)] for t, m in steady[::5]]
        per_process.append(row)
    totals: dict[float, float] = {}
    for series in samples.values():
        for t, m in series:
            totals[t] = totals.get(t, 0.0) + m["pss"] / 2**20
    start = min(totals, default=0.0)
    steady_total = [v for t, v in sorted(totals.items()) if t - start >= warmup_s]
    deployment = {
        "pss_series_mib": [[round(t - start, 1), round(v, 1)] for t, v in sorted(totals.items())],
        "pss_growth_pct": growth_pct(steady_total) if len(steady_total) >= 30 else float("nan"),
    }
    return per_process, deployment


async def calibrate(endpoint: str, concurrency: int, seconds: float, timeout_s: float) -> float:
    rng = random.Random(1)
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                if (await one(session, endpoint, rng, timeout_s))[0] == "ok":
                    done += 1

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.monotonic() - start)


async def soak(args: argparse.Namespace, sup: Supervisor, endpoint: str, rate_rps: float) -> dict[str, Any]:
    rng = random.Random(args.seed)
    outcomes: dict[str, int] = {"ok": 0, "error": 0, "lost": 0}
    details: dict[str, int] = {}
    memory: dict[tuple[str, int], list[tuple[float, dict[str, int]]]] = {}
    kills: list[dict[str, Any]] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    victims = ["decode-0", "decode-1", "prefill-0"]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def request() -> None:
            outcome, detail = await one(
                session, endpoint, random.Random(rng.random()), args.request_timeout_s
            )
            outcomes[outcome] += 1
            key = f"{outcome}: {detail}"
            details[key] = details.get(key, 0) + 1

        async def watch() -> None:
            next_kill = start + args.kill_every_s
            while time.monotonic() - start < args.duration_s + 5:
                now = time.monotonic()
                for line in sup.poll():
                    print(f"  [{now - start:6.1f} s] {line}", flush=True)
                sampled_at = round(now - start, 3)  # one instant for the deployment's sum
                for name, pid in sup.worker_pids().items():
                    if name.startswith(("prefill", "decode")):
                        sample = memory_bytes(pid)
                        if sample is not None:
                            memory.setdefault((name, pid), []).append((sampled_at, sample))
                if now >= next_kill and now - start < args.duration_s:
                    victim = victims[len(kills) % len(victims)]
                    try:
                        pid = sup.kill_worker(victim)
                        kills.append({"t_s": round(now - start, 1), "worker": victim, "pid": pid})
                        print(f"  [{now - start:6.1f} s] SIGKILL {victim} (pid {pid})", flush=True)
                    except Exception as err:  # not running (still restarting): try the next one later
                        print(f"  [{now - start:6.1f} s] could not kill {victim}: {err}", flush=True)
                    next_kill += args.kill_every_s
                await asyncio.sleep(2.0 if now < next_kill - 2 else 0.2)

        watcher = asyncio.ensure_future(watch())
        t = start
        while True:
            t += rng.expovariate(rate_rps)
            if t - start >= args.duration_s:
                break
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            task = asyncio.ensure_future(request())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=args.request_timeout_s + 10)
        await watcher
    per_process, deployment = judge_memory(memory, args.warmup_s)
    sent = sum(outcomes.values())
    return {
        "outcomes": outcomes,
        "details": details,
        "kills": kills,
        "memory": per_process,
        "deployment_memory": deployment,
        "sent": sent,
    }


def wait_healthy(sup: Supervisor, out: Path, endpoint: str, workers: int, timeout_s: float = 120.0) -> bool:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sup.poll()
        try:
            ready = httpx.get(f"{endpoint}/readiness", timeout=2).json().get("healthy_workers") == workers
        except (httpx.HTTPError, ValueError):
            ready = False
        if ready and read_deployment(out)["status"] == "ready":
            return True
        time.sleep(1.0)
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--kill-every-s", type=float, default=120.0)
    p.add_argument("--load", type=float, default=0.8, help="fraction of the calibrated capacity")
    p.add_argument("--calib-s", type=float, default=30.0)
    p.add_argument("--calib-concurrency", type=int, default=8)
    p.add_argument("--warmup-s", type=float, default=30.0, help="RSS growth is judged after this")
    p.add_argument("--request-timeout-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = p.parse_args()
    if not (args.duration_s > 0 and args.kill_every_s > 0 and 0 < args.load <= 1.5):
        p.error("--duration-s and --kill-every-s must be positive, --load in (0, 1.5]")

    spec = DeploymentSpec(
        "tiny-llama",
        "disaggregated",
        (InstanceGroup("prefill", 1, 1, 8, 1024), InstanceGroup("decode", 2, 1, 8, 2048, 8192)),
    )
    launch = build_launch(spec, LaunchOptions(port=free_port(), max_queue=32, kv_timeout_s=30.0))
    out = Path(tempfile.mkdtemp(prefix="pdplan-soak-"))
    sup = Supervisor(launch, out, "bench/soak.py")
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        ready_s = sup.start()
        print(f"deployment ready in {ready_s:.1f} s at {launch.endpoint} (logs: {out / 'logs'})", flush=True)
        capacity = asyncio.run(
            calibrate(launch.endpoint, args.calib_concurrency, args.calib_s, args.request_timeout_s)
        )
        rate = args.load * capacity
        print(f"capacity {capacity:.2f} req/s (closed loop, {args.calib_concurrency} clients); soaking at "
              f"{rate:.2f} req/s for {args.duration_s:g} s, a worker killed every {args.kill_every_s:g} s",
              flush=True)  # fmt: skip
        result = asyncio.run(soak(args, sup, launch.endpoint, rate))
        healthy = wait_healthy(sup, out, launch.endpoint, len(launch.workers))
    finally:
        sup.stop()
        signal.signal(signal.SIGTERM, previous)
    anon_growth = max((r["anon_growth_pct"] for r in result["memory"]), default=float("nan"))
    total_growth = result["deployment_memory"]["pss_growth_pct"]
    summary = {
        "machine": {"load_avg": os.getloadavg(), "cpus": os.cpu_count()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "capacity_rps": capacity,
        "rate_rps": rate,
        **result,
        "max_private_growth_pct": anon_growth,
        "deployment_pss_growth_pct": total_growth,
        "healthy_at_end": healthy,
        "targets": {
            "lost": 0,
            "max_private_growth_pct": 10.0,
            "deployment_pss_growth_pct": 10.0,
            "healthy_at_end": True,
        },
        "pass": result["outcomes"]["lost"] == 0 and anon_growth <= 10.0 and total_growth <= 10.0 and healthy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, args.out)
    o = result["outcomes"]
    print(f"\n{'figure':34} {'target':>10} {'measured':>12}")
    print(f"{'requests sent':34} {'':>10} {result['sent']:>12}")
    print(f"{'ok / explicit error':34} {'':>10} {o['ok']:>6} / {o['error']:<5}")
    print(f"{'lost (no answer, no error event)':34} {'0':>10} {o['lost']:>12}")
    print(f"{'workers killed':34} {'':>10} {len(result['kills']):>12}")
    for key, count in sorted(result["details"].items()):
        if not key.startswith("ok"):
            print(f"  {key:32} {'':>10} {count:>12}")
    print(f"{'worker private memory growth, max':34} {'≤ 10 %':>10} {anon_growth:>11.1f}%")
    print(f"{'deployment memory (Σ PSS) growth':34} {'≤ 10 %':>10} {total_growth:>11.1f}%")
    rss = max((r["rss_growth_pct"] for r in result["memory"]), default=float("nan"))
    print(f"{'  VmRSS growth, max (not judged)':34} {'':>10} {rss:>11.1f}%")
    print(f"{'healthy at the end':34} {'yes':>10} {'yes' if healthy else 'NO':>12}")
    print(f"wrote {args.out}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

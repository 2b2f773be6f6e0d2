"""Runtime figures of the local deployment (issue 6): KV hand-off throughput, decode step time inside a
worker, and seconds from ``pdplan deploy`` to healthy.

1. **KV transfer vs memcpy.** A prefill-side ``KvSender`` in a child process hands a tiny-llama-layout
   KV (8 layers x 4 KV heads x 64 dims, float32; 64 MiB by default) to a ``KvClaim`` in this process,
   three ways: over the abstract Unix socket with the decode cache in shared memory, so the prefill
   writes it in place (what two CPU workers on one host do); over the Unix socket with a private
   cache (payload through the socket); over TCP loopback (what workers on two hosts do). Throughput
   = payload bytes / (READY sent until the KV is complete in the cache, KV already computed), into a
   cache from the decode worker's ``KvPool`` (fresh memory for the first transfer, recycled after, as
   in a worker that has served a few requests); checked bit for bit. Each transfer is compared with
   the fastest of three ``copy_`` of the same bytes into warm memory timed just before it (the
   ratio's median is the headline: pairing keeps a shared machine's drifting load out of it).
2. **Decode step inside a worker vs profiled.** A colocated worker (tiny-llama, 1 torch thread) serves
   B concurrent requests; its ``/server_info`` step log gives each step's (batch, context, ms). Right
   after each round the same executor step is timed standalone in this process at the same batch and
   context (warm-up, repeat, median: the worker's own overhead), and every step is compared with the
   fitted latency model of a profile measured here with 1 thread (what the simulator would assume).
3. **Deploy to healthy.** ``pdplan deploy`` (1 prefill + 1 decode, tiny-llama) from launch until
   ``deploy.json`` says ready (and the supervisor's own first-spawn-to-ready time), then ``--stop``.

The machine may be shared: figures are noisy. Prints a table, writes bench/results/runtime.json.

    .venv/bin/python bench/runtime.py [--payload-mib 64] [--repeats 5] [--quick-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

from pdplan.profiles.atomic import write_file
from pdplan.profiles.executor import Executor
from pdplan.profiles.kv_cache import KVCache
from pdplan.profiles.model_spec import load_model_spec

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-llama"
BATCHES = (1, 4, 8)
PROMPT_TOKENS, NEW_TOKENS = 64, 32  # decode rounds: each request's prompt and output
BENCH_KEY = os.urandom(32)  # the hand-off secret of the in-process sender and claims


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def filled_cache(tokens: int, seed: int) -> KVCache:
    spec = load_model_spec(MODEL)
    cache = KVCache.allocate(
        spec.num_layers, spec.num_kv_heads, spec.head_dim, tokens, dtype=torch.float32, device="cpu"
    )
    gen = torch.Generator().manual_seed(seed)
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    cache.length = tokens
    return cache


# --- 1. KV transfer ---------------------------------------------------------------------------------
def _serve_kv(port: int, tokens: int, rooms: int) -> None:
    """Child process: offer the same KV under ``rooms`` rooms, then exit when all were taken."""
    from pdplan.realrun.engine import PrefilledEvent
    from pdplan.realrun.kv_sender import HandoffError, KvSender
    from pdplan.realrun.metrics import WorkerMetrics

    async def serve() -> None:
        sender = KvSender("127.0.0.1", port, "float32", WorkerMetrics("prefill"), BENCH_KEY, 30.0, 60.0)
        await sender.start()
        event = PrefilledEvent(7, filled_cache(tokens, seed=0), 0.0, 0.0)
        prompt = tuple(i % 32000 for i in range(tokens))
        results = []
        for room in range(1, rooms + 1):
            results.append(sender.register(room, prompt).result)
            sender.kv_ready(room, event)
        for result in results:
            try:
                await result
            except HandoffError as err:
                print(f"room failed: {err.message}", file=sys.stderr)
        await sender.close()

    asyncio.run(serve())


async def _claim_when_listening(boot: Any, prompt: tuple[int, ...], transport: str) -> Any:
    from pdplan.realrun.kv_receiver import KvClaim
    from pdplan.realrun.kv_sender import HandoffError

    for _ in range(200):  # the child process may still be starting
        try:
            return await KvClaim.open(boot, prompt, BENCH_KEY, transport)
        except HandoffError:
            await asyncio.sleep(0.1)
    raise RuntimeError("the KV sender never listened")


def kv_transfer(transport: str, shared: bool, tokens: int, repeats: int) -> dict[str, Any]:
    """``transport`` auto (Unix socket) or tcp; ``shared``: the decode caches live in shared memory
    (what a CPU decode worker uses), so over the Unix socket the prefill writes them in place."""
    from pdplan.realrun.kv_budget import KvBudget
    from pdplan.realrun.kv_pool import KvPool
    from pdplan.realrun.kv_shm import SharedCaches
    from pdplan.realrun.protocol import Bootstrap

    spec = load_model_spec(MODEL)
    port = free_port()
    child = mp.get_context("spawn").Process(target=_serve_kv, args=(port, tokens, repeats + 1))
    child.start()
    prompt = tuple(i % 32000 for i in range(tokens))
    payload = spec.kv_bytes_per_token("float32") * tokens
    expect = ((spec.num_layers, spec.num_kv_heads, spec.head_dim), "float32", tokens)

    def new_cache(capacity: int) -> KVCache:
        return KVCache.allocate(
            spec.num_layers, spec.num_kv_heads, spec.head_dim, capacity, dtype=torch.float32, device="cpu"
        )

    async def receive_all() -> tuple[float, list[float], list[float], list[float], KVCache, str]:
        # Caches come from the decode worker's KvPool: the first transfer lands in fresh memory, the
        # later ones in a recycled cache, as in a decode worker that has served a few requests.
        # Each transfer is paired with a memcpy of the same bytes timed just before it, so the ratio
        # compares the two under the same load on a shared machine.
        shm = (
            SharedCaches(spec.num_layers, spec.num_kv_heads, spec.head_dim, torch.float32) if shared else None
        )
        caches = KvPool(shm.allocate if shm else new_cache, KvBudget(4 * tokens))
        pool = ThreadPoolExecutor(1)
        src, dst = torch.empty(payload, dtype=torch.uint8).random_(), torch.empty(payload, dtype=torch.uint8)
        dst.copy_(src)
        payload_s, handoff_s, ratios = [], [], []
        ways: set[str] = set()
        first_s = 0.0
        cache = None
        for room in range(1, repeats + 2):
            claim = await _claim_when_listening(Bootstrap("127.0.0.1", port, room), prompt, transport)
            copy_s = float("inf")
            for _ in range(3):  # the fastest of three: the strictest memcpy baseline
                copy_start = time.perf_counter()
                dst.copy_(src)
                copy_s = min(copy_s, time.perf_counter() - copy_start)
            start = time.perf_counter()
            cache = caches.take(tokens + 16)
            async with claim:
                meta, seconds = await claim.receive(
                    payload, cache, expect, pool, 60.0, shm.fd_of(cache) if shm else None
                )
            ways.add("in place (shared memory)" if meta.in_place else "over the socket")
            if room == 1:
                first_s = seconds
            else:
                payload_s.append(seconds)
                handoff_s.append(time.perf_counter() - start)
                ratios.append(copy_s / seconds)
            if room <= repeats:
                caches.give(cache)
        pool.shutdown()
        assert cache is not None
        assert len(ways) == 1, ways
        return first_s, payload_s, handoff_s, ratios, cache, ways.pop()

    first_s, payload_s, handoff_s, ratios, cache, way = asyncio.run(receive_all())
    child.join(30)
    reference = filled_cache(tokens, seed=0)
    exact = torch.equal(cache.k[:, :, :tokens], reference.k[:, :, :tokens]) and torch.equal(
        cache.v[:, :, :tokens], reference.v[:, :, :tokens]
    )
    return {
        "transport": ("unix (abstract)" if transport == "auto" else "tcp loopback")
        + (" + shm" if shared else ""),
        "payload": way,
        "payload_bytes": payload,
        "payload_gbps_median": payload / statistics.median(payload_s) / 1e9,
        "payload_gbps_best": payload / min(payload_s) / 1e9,
        "first_transfer_gbps_fresh_memory": payload / first_s / 1e9,
        "handoff_ms_median": 1000 * statistics.median(handoff_s),
        "vs_paired_memcpy_median": statistics.median(ratios),
        "vs_paired_memcpy_each": ratios,
        "bit_exact": bool(exact),
    }


def memcpy(nbytes: int, repeats: int) -> dict[str, float]:
    src = torch.empty(nbytes, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    warm, fresh = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        warm.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.empty_like(src).copy_(src)
        fresh.append(time.perf_counter() - start)
    return {
        "warm_gbps_median": nbytes / statistics.median(warm) / 1e9,
        "fresh_gbps_median": nbytes / statistics.median(fresh) / 1e9,
    }


# --- 2. decode step inside a worker ------------------------------------------------------------------
def _wait_health(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("worker not healthy in time")


def worker_round(client: httpx.Client, url: str, batch: int, prompt_tokens: int, new_tokens: int) -> None:
    """``batch`` concurrent greedy requests, so the worker's running batch holds ``batch`` sequences."""
    sampling = {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    bodies = [
        {
            "input_ids": [(97 * b + 13 * i) % 32000 + 3 for i in range(prompt_tokens)],
            "sampling_params": sampling,
        }
        for b in range(batch)
    ]
    with ThreadPoolExecutor(batch) as pool:
        for reply in pool.map(lambda body: client.post(f"{url}/generate", json=body), bodies):
            reply.raise_for_status()


def worker_steps(client: httpx.Client, url: str) -> list[tuple[int, int, float]]:
    """(batch, context, ms) of the decode steps in a worker's /server_info log."""
    steps = client.get(f"{url}/server_info").json()["internal_states"][0]["recent_decode_steps"]
    return [(st["batch_size"], st["context_tokens"], st["step_ms"]) for st in steps]


def standalone_step_ms(executor: Executor, batch: int, context: int, repeats: int = NEW_TOKENS) -> float:
    """Median executor decode step at ``batch`` sequences holding ``context`` tokens in total."""
    per_seq = max(1, context // batch)
    prompts = [[(31 * b + i) % 32000 + 3 for i in range(per_seq)] for b in range(batch)]
    _, caches = executor.prefill(prompts, reserve_tokens=repeats + 8)
    tokens = [5] * batch
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        executor.decode(tokens, caches)
        if i >= 3:
            times.append(time.perf_counter() - start)
        for cache in caches:
            cache.truncate(per_seq)  # keep the context fixed
    return 1000 * statistics.median(times)


def profiled_latency(quick: bool) -> Any:
    """The fitted latency model of a measured profile (1 thread, the profiler's default CPU grid, or
    its quick grid), or None without a profiler."""
    try:
        from pdplan.profiles.profiler import measure_profile
    except ModuleNotFoundError as err:
        if err.name != "pdplan.profiles.profiler":
            raise
        return None
    from pdplan.profiles.hardware import detect_cpu

    hw = detect_cpu().to_dict()
    profile = measure_profile(load_model_spec(MODEL), hardware=hw, device="cpu", tp=1, quick=quick, threads=1)
    return profile.latency


def _batch_row(
    client: httpx.Client, url: str, executor: Executor, latency: Any, batch: int, rounds: int
) -> dict[str, Any]:
    """Alternate worker rounds and standalone timings at the same shape, pairing them in time."""
    measured: list[tuple[int, int, float]] = []
    worker_ms, alone_ms, ratios = [], [], []
    for _ in range(rounds):
        seen = len(worker_steps(client, url))
        worker_round(client, url, batch, PROMPT_TOKENS, NEW_TOKENS)
        steps = [r for r in worker_steps(client, url)[seen:] if r[0] == batch]
        worker_ms.append(statistics.median(ms for _, _, ms in steps))
        alone_ms.append(standalone_step_ms(executor, batch, int(statistics.median(c for _, c, _ in steps))))
        ratios.append(worker_ms[-1] / alone_ms[-1])
        measured += steps
    row: dict[str, Any] = {
        "batch_size": batch,
        "context_tokens_median": int(statistics.median(c for _, c, _ in measured)),
        "steps": len(measured),
        "worker_ms_median": statistics.median(worker_ms),
        "standalone_ms_median": statistics.median(alone_ms),
        "worker_over_standalone": statistics.median(ratios),
        "worker_over_standalone_rounds": ratios,
    }
    if latency is not None:
        predicted = statistics.median(latency.decode_ms(b, c) for b, c, _ in measured)
        ratio = statistics.median(ms / latency.decode_ms(b, c) for b, c, ms in measured)
        row |= {"profile_ms_median": predicted, "worker_over_profile": ratio}
    return row


def decode_step_figures(quick_profile: bool, rounds: int = 5) -> list[dict[str, Any]]:
    """One row per batch size: worker vs standalone executor vs the profile's latency model."""
    torch.set_num_threads(1)
    latency = profiled_latency(quick_profile)
    executor = Executor(load_model_spec(MODEL), seed=0)
    port = free_port()
    argv = [sys.executable, "-m", "pdplan.realrun.worker", "--role", "colocated", "--model", MODEL,
            "--port", str(port), "--threads", "1", "--max-batch-size", "16"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        with httpx.Client(timeout=120.0) as client:
            worker_round(client, url, 1, PROMPT_TOKENS, NEW_TOKENS)  # warm-up
            return [_batch_row(client, url, executor, latency, batch, rounds) for batch in BATCHES]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# --- 3. deploy to healthy ------------------------------------------------------------------------------
def deploy_to_healthy(repeats: int) -> list[dict[str, float]]:
    script = Path(sys.executable).parent / "pdplan"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.yaml"
        plan.write_text(
            "schema_version: 1\nmode: disaggregated\nmodel: tiny-llama\n"
            "prefill: {instances: 1, tp: 1, max_batch_tokens: 2048, max_batch_size: 8}\n"
            "decode: {instances: 1, tp: 1, max_batch_size: 16, max_kv_tokens: 16384}\n"
            "kv_transfer: {link: loopback}\n"
        )
        for i in range(repeats):
            run = Path(tmp) / f"run{i}"
            start = time.monotonic()
            argv = [str(script), "deploy", str(plan), "--port", str(free_port()), "--out", str(run)]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            record: dict[str, Any] = {}
            while proc.poll() is None and record.get("status") != "ready":
                time.sleep(0.05)
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads((run / "deploy.json").read_text())
            wall = time.monotonic() - start
            subprocess.run(
                [str(script), "deploy", "--stop", str(run)], check=True, capture_output=True, timeout=60
            )
            proc.wait(30)
            if record.get("status") != "ready":
                raise RuntimeError(f"deployment {i} did not become ready")
            out.append({"wall_s": wall, "supervisor_ready_s": float(record["ready_s"])})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payload-mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--deploys", type=int, default=2)
    parser.add_argument(
        "--quick-profile", action="store_true", help="profile on the quick grid (faster, rougher)"
    )
    args = parser.parse_args()
    spec = load_model_spec(MODEL)
    tokens = args.payload_mib * 2**20 // spec.kv_bytes_per_token("float32")
    started = time.time()
    load = os.getloadavg()[0]
    transfers = [
        kv_transfer(t, shm, tokens, args.repeats)
        for t, shm in (("auto", True), ("auto", False), ("tcp", False))
    ]
    # The fixed cost of one hand-off (control round trips across two processes): a 16-token KV.
    small = {
        t: kv_transfer(t, shm, 16, args.repeats)["handoff_ms_median"]
        for t, shm in (("auto", True), ("tcp", False))
    }
    copy = memcpy(transfers[0]["payload_bytes"], args.repeats)
    for row in transfers:
        row["vs_memcpy_warm"] = row["payload_gbps_median"] / copy["warm_gbps_median"]
        row["vs_memcpy_fresh"] = row["payload_gbps_median"] / copy["fresh_gbps_median"]
    steps = decode_step_figures(quick_profile=args.quick_profile)
    deploys = deploy_to_healthy(args.deploys)
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1min_at_start": load,
            "torch": torch.__version__,
        },
        "inputs": {
            "model": MODEL,
            "kv_payload_mib": args.payload_mib,
            "kv_tokens": tokens,
            "repeats": args.repeats,
            "decode_prompt_tokens": PROMPT_TOKENS,
            "decode_new_tokens": NEW_TOKENS,
            "profile_grid": "quick" if args.quick_profile else "default",
        },
        "kv_transfer": transfers,
        "kv_handoff_ms_16_tokens": {"unix (abstract) + shm": small["auto"], "tcp loopback": small["tcp"]},
        "memcpy": copy,
        "decode_step": steps,
        "deploy_to_healthy": deploys,
        "seconds": time.time() - started,
    }
    path = ROOT / "bench" / "results" / "runtime.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {path.relative_to(ROOT)}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [header, *rows]
    return "\n".join(
        "  " + "  ".join(x.rjust(w) for x, w in zip(line, widths, strict=True)) for line in lines
    )


def print_table(r: dict[str, Any]) -> None:
    copy = r["memcpy"]
    print(
        f"KV hand-off, {r['inputs']['kv_payload_mib']} MiB payload; memcpy of the same bytes: "
        f"{copy['warm_gbps_median']:.2f} GB/s into warm memory, {copy['fresh_gbps_median']:.2f} into fresh"
    )
    rows = [
        [t["transport"], f"{t['payload_gbps_median']:.2f}", f"{t['vs_paired_memcpy_median']:.2f}",
         f"{t['first_transfer_gbps_fresh_memory']:.2f}", f"{t['handoff_ms_median']:.1f}", str(t["bit_exact"])]
        for t in r["kv_transfer"]
    ]  # fmt: skip
    print(_table(["transport", "GB/s", "/memcpy", "GB/s fresh mem", "hand-off ms", "exact"], rows))
    fixed = ", ".join(f"{k} {v:.2f} ms" for k, v in r["kv_handoff_ms_16_tokens"].items())
    print(f"  hand-off of a 16-token KV (fixed cost per request): {fixed}")
    print("decode step (tiny-llama, 1 torch thread): inside a worker vs standalone executor vs profile")
    rows = []
    for st in r["decode_step"]:
        profile = (
            [f"{st['profile_ms_median']:.2f}", f"{st['worker_over_profile']:.2f}"]
            if "profile_ms_median" in st
            else ["n/a", ""]
        )
        counts = [str(st["batch_size"]), str(st["context_tokens_median"]), str(st["steps"])]
        times = [st["worker_ms_median"], st["standalone_ms_median"], st["worker_over_standalone"]]
        rows.append([*counts, *(f"{x:.2f}" for x in times), *profile])
    header = ["batch", "context", "steps", "worker ms", "alone ms", "ratio", "profile ms", "ratio"]
    print(_table(header, rows))
    walls = [
        f"{d['wall_s']:.1f} s (supervisor {d['supervisor_ready_s']:.1f} s)" for d in r["deploy_to_healthy"]
    ]
    print(f"deploy to healthy (1 prefill + 1 decode, tiny-llama): {', '.join(walls)}")


if __name__ == "__main__":
    main()

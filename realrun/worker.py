"""``python -m pdplan.realrun.worker``: one prefill, decode or colocated worker process.

Threads: the main thread runs the asyncio loop (HTTP server, KV hand-off control, admission); one
engine thread runs the executor; small pools move KV payload bytes (their socket calls release the
GIL). torch's intra-op threads are set explicitly (``--threads``) and inter-op to 1, so workers that
share a machine split its cores as ``pdplan deploy`` planned; ``--cpus`` pins the process.

On SIGTERM/SIGINT, or when the parent process (``--parent-pid``) disappears, the worker stops
accepting requests, ends every request in flight with an explicit 503 error, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pdplan.profiles.errors import PdplanError
from pdplan.realrun.worker_config import KV_TRANSPORTS, WorkerConfig, parse_peer

log = logging.getLogger("pdplan.realrun.worker")


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    p = argparse.ArgumentParser(prog="python -m pdplan.realrun.worker", description=__doc__)
    p.add_argument("--role", required=True, choices=("prefill", "decode", "colocated"))
    p.add_argument("--model", required=True, help="catalog name, config.json, or HF model directory")
    p.add_argument("--name", default="worker", help="name in logs and /server_info")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--bootstrap-port", type=int, default=None, help="KV hand-off port (prefill role)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default per device)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--weights", default=None, help="HF directory with safetensors (default: random)")
    p.add_argument("--tokenizer", default="bytes", help="tokenizer directory, or 'bytes'")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--cpus", default="", help="comma-separated cores to pin to (default: no pinning)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=2048)
    p.add_argument("--max-kv-tokens", type=int, default=65536)
    p.add_argument(
        "--chunk-tokens", type=int, default=None,
        help="prefill prompts in slices of at most this many tokens per forward (default: whole prompts)",
    )  # fmt: skip
    p.add_argument(
        "--schedule", default="prefill-first", choices=("prefill-first", "chunked"),
        help="colocated role: prompts before decode steps, or prompt slices riding in them (mixed steps)",
    )  # fmt: skip
    p.add_argument(
        "--prefix-cache", action="store_true",
        help="keep a prefix cache of finished prompts' KV in the KV budget (prefill and colocated roles)",
    )  # fmt: skip
    p.add_argument(
        "--prefix-cache-page-tokens", type=int, default=16,
        help="prefix cache page size: hits are whole pages (default 16, vLLM's block size)",
    )  # fmt: skip
    p.add_argument("--max-queue", type=int, default=128, help="waiting requests before answering 503")
    p.add_argument("--kv-timeout-s", type=float, default=60.0)
    p.add_argument("--bootstrap-timeout-s", type=float, default=3.0)
    p.add_argument("--kv-transport", default="auto", choices=KV_TRANSPORTS)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--max-connections", type=int, default=512, help="open HTTP connections (503 beyond)")
    p.add_argument("--header-timeout-s", type=float, default=10.0, help="longest wait for request headers")
    p.add_argument("--body-timeout-s", type=float, default=10.0, help="longest wait for a request body (408)")
    p.add_argument(
        "--prefill-peers", default="",
        help="decode role: comma-separated host:port bootstrap addresses of the deployment's prefill "
        "workers (the only ones it connects to)",
    )  # fmt: skip
    ns = p.parse_args(argv)
    cpus = tuple(int(c) for c in ns.cpus.split(",") if c.strip()) if ns.cpus else ()
    peers = tuple(x.strip() for x in ns.prefill_peers.split(",") if x.strip())
    values = {k: v for k, v in vars(ns).items() if k not in ("cpus", "prefill_peers")}
    return WorkerConfig(**values, cpus=cpus, prefill_peers=peers)


def _eos_ids(model: str) -> tuple[int, ...]:
    from pdplan.profiles.model_spec import read_config

    eos = read_config(model).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))


async def serve(config: WorkerConfig) -> None:
    """Build the worker and serve until a stop signal."""
    import torch
    from aiohttp import web

    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.realrun.conn_guard import ConnectionGuard
    from pdplan.realrun.engine import Engine, EngineConfig
    from pdplan.realrun.kv_auth import secret_from_env
    from pdplan.realrun.kv_budget import KvBudget
    from pdplan.realrun.kv_pool import KvPool
    from pdplan.realrun.kv_sender import KvSender
    from pdplan.realrun.kv_shm import SharedCaches
    from pdplan.realrun.kv_wire import has_abstract_unix
    from pdplan.realrun.metrics import WorkerMetrics
    from pdplan.realrun.prefix_cache import PrefixCache
    from pdplan.realrun.protocol import Limits
    from pdplan.realrun.server import WorkerServer
    from pdplan.realrun.service import ServiceConfig, WorkerService
    from pdplan.realrun.tokenizer import load_tokenizer

    key = secret_from_env() if config.role in ("prefill", "decode") else b""
    torch.set_num_threads(config.threads)
    spec = load_model_spec(config.model)
    weights = Path(config.weights) if config.weights else None
    executor = Executor(spec, device=config.device, dtype=config.dtype, seed=config.seed, weights=weights)
    tokenizer = load_tokenizer(config.tokenizer, spec.vocab_size)
    metrics = WorkerMetrics(config.role, spec.name)
    budget = KvBudget(config.max_kv_tokens)
    engine_config = EngineConfig(
        config.role, config.max_batch_size, config.max_batch_tokens, _eos_ids(config.model), config.seed,
        config.chunk_tokens, config.schedule,
    )  # fmt: skip
    pool, shared = None, None
    if config.role == "decode":
        if executor.device.type == "cpu" and has_abstract_unix():
            # Pooled caches in shared memory: a prefill on this host writes the KV straight in.
            s = executor.spec
            shared = SharedCaches(s.num_layers, s.num_kv_heads, s.head_dim, executor.dtype)
        pool = KvPool(shared.allocate if shared else executor.new_cache, budget)
    prefix = PrefixCache(budget, config.prefix_cache_page_tokens) if config.prefix_cache else None
    engine = Engine(
        executor, engine_config, metrics, budget, recycle=pool.give if pool else None, prefix_cache=prefix
    )
    sender = None
    if config.role == "prefill":
        assert config.bootstrap_port is not None
        sender = KvSender(
            config.host, config.bootstrap_port, executor.dtype_name, metrics, key,
            config.bootstrap_timeout_s, config.kv_timeout_s,
        )  # fmt: skip
    service = WorkerService(
        executor, engine, budget, metrics,
        ServiceConfig(
            config.role, config.max_queue, config.kv_timeout_s, config.kv_transport, key,
            frozenset(parse_peer(p) for p in config.prefill_peers),
        ),
        sender,
        caches=pool, shared_fd=shared.fd_of if shared else None,
    )  # fmt: skip
    context = spec.max_position_embeddings
    total = context if config.role == "prefill" else min(context, config.max_kv_tokens)
    limits = Limits(executor.vocab_size, total, min(total - 1, config.max_kv_tokens))
    metrics.gauge(
        "queue_length", "Requests waiting (queue, KV admission, batch slot).", lambda: service.waiting
    )
    metrics.gauge("running_batch", "Sequences in the running decode batch.", lambda: engine.running_count)
    metrics.gauge("kv_used_tokens", "KV tokens reserved or held.", lambda: budget.used_tokens)
    metrics.gauge("kv_capacity_tokens", "KV tokens this worker may hold.", lambda: budget.capacity_tokens)
    if prefix is not None:
        metrics.gauge(
            "prefix_cache_tokens", "Prompt KV tokens the prefix cache holds.", lambda: prefix.cached_tokens
        )
        metrics.gauge(
            "prefix_cache_hit_rate", "Prompt tokens served by the prefix cache / prompt tokens looked up.",
            lambda: prefix.stats().hit_rate,
        )  # fmt: skip
    if sender is not None:
        metrics.gauge("open_rooms", "KV hand-offs in progress.", lambda: sender.open_rooms)
    if pool is not None:
        metrics.gauge(
            "kv_pool_idle_tokens", "Capacity of finished caches kept for reuse.", lambda: pool.idle_tokens
        )
    model_path = config.weights or _model_path(config.model)
    server = WorkerServer(config, spec, service, tokenizer, limits, metrics, model_path)
    server.body_timeout_s = config.body_timeout_s

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine.start()
    if sender is not None:
        await sender.start()
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=2.0, keepalive_timeout=75.0)
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(runner.server, loop, config.max_connections, config.header_timeout_s)
    http = await loop.create_server(guard, config.host, config.port, backlog=1024, reuse_address=True)
    log.info(
        "%s serving on http://%s:%d (role %s, bootstrap port %s, device %s, %d torch threads, cpus %s)",
        config.name, config.host, config.port, config.role, config.bootstrap_port, config.device,
        torch.get_num_threads(), ",".join(map(str, config.cpus)) or "all",
    )  # fmt: skip
    watcher = asyncio.ensure_future(_watch_parent(config.parent_pid, stop))
    trimmer = asyncio.ensure_future(_trim_heap())
    await stop.wait()
    log.info("%s stopping: failing requests in flight with 503", config.name)
    watcher.cancel()
    trimmer.cancel()
    server.shutting_down = True
    await loop.run_in_executor(None, engine.stop)
    await asyncio.sleep(0.2)  # let handlers write the errors of the requests the engine just ended
    if sender is not None:
        await sender.close()
    http.close()
    await runner.cleanup()
    service.close()


def _model_path(model: str) -> str:
    """What ``/model_info`` reports as ``model_path``: always a local path. sglang-router loads a
    tokenizer from it; a bare catalog name would send it to the Hugging Face Hub."""
    from importlib import resources

    from pdplan.profiles.model_spec import catalog_names

    if model in catalog_names():
        return str(resources.files("pdplan.profiles") / "catalog" / f"{model}.json")
    return str(Path(model).resolve())


#: how often a worker hands the free memory of its heap back to the system
HEAP_TRIM_INTERVAL_S = 10.0


async def _trim_heap(interval_s: float = HEAP_TRIM_INTERVAL_S) -> None:
    """Call glibc's ``malloc_trim(0)`` every ``interval_s`` (in a thread; it takes the arenas'
    locks, not the GIL). glibc keeps the memory a burst freed (the KV of prompts held while a
    decode worker was down, a batch of long prompts) in its heaps, so without this a worker's
    resident memory ratchets up to the highest it ever needed; the soak benchmark showed a prefill
    worker's private memory stepping up by 20 % and staying there. No-op without glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        await loop.run_in_executor(None, trim, 0)


async def _watch_parent(parent_pid: int | None, stop: asyncio.Event) -> None:
    if parent_pid is None:
        return
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent_pid:
            log.warning("parent process %d is gone; stopping", parent_pid)
            stop.set()
            return


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    _quiet_http2_probe()
    try:
        config = parse_args(argv)
        if config.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, config.cpus)
        os.environ.setdefault("OMP_NUM_THREADS", str(config.threads))
        asyncio.run(serve(config))
    except PdplanError as err:
        log.error("error: %s", err)
        return 2
    return 0


def _quiet_http2_probe() -> None:
    """sglang-router probes each worker with an HTTP/2 preface before falling back to HTTP/1.1;
    aiohttp logs that as a traceback. It is expected, so log it as one debug line instead."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None and "PRI" in str(exc):
                logging.getLogger("pdplan.realrun.worker").debug("HTTP/2 preface probe refused")
                return False
            return True

    logging.getLogger("aiohttp.server").addFilter(_Filter())


if __name__ == "__main__":
    code = 130
    with contextlib.suppress(KeyboardInterrupt):
        code = main()
    # Skip interpreter finalization: its final garbage collection of torch's objects can keep a
    # stopping worker busy for seconds on a loaded machine. Everything was closed in serve().
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)

"""The benchmark client: replay a request list against a streaming endpoint and time every token.

``run_bench`` sends the very ``Requests`` the simulator replays (same seed, same lengths), either
*open loop* (each request at its arrival time, like ``bench_serving --request-rate``) or *closed
loop* (``concurrency`` clients, each sending its next request when the previous one ends plus a
think time, like ``bench_serving --max-concurrency`` with an infinite rate). Per request it records
when it was sent, every chunk's arrival (so TTFT, ITL, TPOT and E2E follow), token counts from the
server's usage fields (with the prompt tokens its prefix cache supplied, ``cached_tokens``), and a
status: ``ok``, ``failed`` (with the error) or ``unfinished`` (the deadline or Ctrl-C came first, or
it was never sent). Prompts that share prefix blocks share their token ids (``bench_apis``).

Timing: one ``time.perf_counter`` clock read when a chunk's bytes are handed to the client, as in
vLLM's ``backend_request_func.py`` (SGLang's ``bench_serving`` does the same); times are relative
to the first send. Bounded everywhere: ``max_in_flight`` requests at once (later ones wait and
their wait is counted in their latency, as a user's would be), a per-request ``timeout_s``, and an
overall ``deadline_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.realrun.bench_apis import ApiSpec
from pdplan.sim.requests import Requests

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BenchConfig:
    """How to replay: ``endpoint`` (base URL), ``api``, open loop (``concurrency`` None) or closed
    loop (``concurrency`` clients with ``think_time_s`` between a reply and the next request),
    ``max_in_flight``, per-request ``timeout_s`` and the run's ``deadline_s`` (None: none)."""

    endpoint: str
    api: ApiSpec
    concurrency: int | None = None
    think_time_s: float = 0.0
    max_in_flight: int = 1024
    timeout_s: float = 600.0
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"--endpoint {self.endpoint!r}; expected an http:// or https:// URL")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency {self.concurrency!r}; expected an integer ≥ 1")
        if self.max_in_flight < 1:
            raise ConfigError(f"--max-in-flight {self.max_in_flight!r}; expected an integer ≥ 1")
        for name in ("timeout_s", "think_time_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= (0 if name == "think_time_s" else 1e-3)):
                raise ConfigError(f"{name}={value!r}; expected a positive number of seconds")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"deadline_s={self.deadline_s!r}; expected a positive number of seconds")

    @property
    def url(self) -> str:
        return self.endpoint.rstrip("/") + self.api.path


@dataclass
class Outcome:
    """One request as measured (times in s on the run's clock; NaN where it did not happen)."""

    sent_s: float = math.nan
    chunk_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    #: server send stamps per chunk (run clock), when the server stamps its events
    chunk_sent_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    #: prompt tokens the server's prefix cache supplied, as it reported them (``None``: not reported)
    cached_tokens: int | None = None
    status: str = "unfinished"
    error: str = ""
    worker: dict[str, Any] | None = None

    @property
    def first_token_s(self) -> float:
        return self.chunk_s[0] if self.chunk_s else math.nan

    @property
    def finish_s(self) -> float:
        return self.chunk_s[-1] if self.chunk_s and self.status == "ok" else math.nan


@dataclass
class BenchRun:
    """What ``run_bench`` measured: one ``Outcome`` per request (by req_id) and the wall time."""

    requests: Requests
    outcomes: list[Outcome]
    wall_s: float
    interrupted: bool = False
    started_unix: float = 0.0
    t0_perf: float = 0.0  # ``time.perf_counter()`` at the run's time 0


async def _one(session: Any, config: BenchConfig, rid: int, req: Requests, out: Outcome, ctx: _Ctx) -> None:
    """Send request ``rid`` and read its stream into ``out``; a request cut by the deadline or
    Ctrl-C stays ``unfinished`` (whatever the transport reports while it is torn down)."""
    import aiohttp

    t0 = ctx.t0
    reader = config.api.new_reader()
    blocks, block_tokens = (req.prefix.of(rid), req.prefix.block_tokens) if req.prefix else ([], 1)
    payload = config.api.payload(
        rid, int(req.prompt_tokens[rid]), int(req.output_tokens[rid]), blocks, block_tokens
    )
    clock = time.perf_counter
    out.sent_s = clock() - t0
    try:
        async with session.post(
            config.url, json=payload, timeout=aiohttp.ClientTimeout(total=config.timeout_s)
        ) as resp:
            if resp.status != 200:
                body = (await resp.read())[:200].decode(errors="replace")
                out.status, out.error = "failed", f"HTTP {resp.status}: {body}"
                return
            buffer = b""
            async for data in resp.content.iter_any():
                now = clock() - t0
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        body = line[5:].strip()
                        if body == b"[DONE]":
                            continue
                        tokens = reader.feed(body)
                        if tokens:
                            out.chunk_s.append(now)
                            out.chunk_tokens.append(tokens)
                            if reader.sent_s is not None:
                                out.chunk_sent_s.append(reader.sent_s - t0)
            if reader.error:
                out.status, out.error = "failed", reader.error
            elif not out.chunk_s:
                out.status, out.error = "failed", "the stream ended without a token"
            else:
                out.status = "ok"
    except asyncio.TimeoutError:
        if not ctx.stopping:
            out.status, out.error = "failed", f"timed out after {config.timeout_s:g} s"
    except aiohttp.ClientError as err:
        if not ctx.stopping:
            out.status, out.error = "failed", f"{type(err).__name__}: {err}"
    finally:
        out.prompt_tokens = reader.prompt_tokens
        out.output_tokens = reader.completion_tokens
        out.cached_tokens = reader.cached_tokens
        if out.output_tokens is None and out.chunk_tokens:
            out.output_tokens = int(sum(out.chunk_tokens))
        out.worker = reader.worker


async def _open_loop(config: BenchConfig, req: Requests, outcomes: list[Outcome], ctx: _Ctx) -> None:
    arrival = req.arrival_s - (req.arrival_s[0] if len(req) else 0.0)
    tasks = []
    for rid in range(len(req)):
        delay = ctx.t0 + float(arrival[rid]) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await ctx.slots.acquire()
        tasks.append(asyncio.ensure_future(ctx.send(rid)))
    await asyncio.gather(*tasks)


async def _closed_loop(config: BenchConfig, req: Requests, outcomes: list[Outcome], ctx: _Ctx) -> None:
    assert config.concurrency is not None
    queue = iter(range(len(req)))

    async def client() -> None:
        for rid in queue:
            await ctx.slots.acquire()
            await ctx.send(rid)
            if config.think_time_s:
                await asyncio.sleep(config.think_time_s)

    await asyncio.gather(*(client() for _ in range(config.concurrency)))


class _Ctx:
    def __init__(self, config: BenchConfig, req: Requests, outcomes: list[Outcome], session: Any) -> None:
        self.config, self.req, self.outcomes, self.session = config, req, outcomes, session
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.t0 = time.perf_counter()
        self.done = 0
        self.stopping = False
        self.progress: Progress | None = None

    async def send(self, rid: int) -> None:
        try:
            await _one(self.session, self.config, rid, self.req, self.outcomes[rid], self)
        finally:
            self.slots.release()
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, len(self.req))


async def bench_async(
    requests: Requests,
    config: BenchConfig,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> BenchRun:
    """Replay ``requests`` per ``config``; returns when all ended, at the deadline, or on ``stop``."""
    import aiohttp

    outcomes = [Outcome() for _ in range(len(requests))]
    connector = aiohttp.TCPConnector(limit=config.max_in_flight, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        ctx = _Ctx(config, requests, outcomes, session)
        # The UNIX time of the run's time 0 (``ctx.t0``), so that the workers' UNIX timestamps
        # and the client's perf_counter ones share one clock.
        started_unix = time.time() - (time.perf_counter() - ctx.t0)
        ctx.progress = progress
        driver = _closed_loop if config.concurrency is not None else _open_loop
        main = asyncio.ensure_future(driver(config, requests, outcomes, ctx))
        waiters: list[asyncio.Future[Any]] = [main]
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopper is not None:
            waiters.append(stopper)
        await asyncio.wait(waiters, timeout=config.deadline_s, return_when=asyncio.FIRST_COMPLETED)
        interrupted = not main.done()
        if interrupted:
            ctx.stopping = True
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        if stopper is not None:
            stopper.cancel()
        wall = time.perf_counter() - ctx.t0
    return BenchRun(requests, outcomes, wall, interrupted, started_unix, ctx.t0)


def run_bench(requests: Requests, config: BenchConfig, progress: Progress | None = None) -> BenchRun:
    """Blocking ``bench_async``; Ctrl-C stops sending and returns what was measured so far
    (``interrupted`` set), so the caller can still write it."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    import signal

    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        installed = True
    try:
        result = loop.run_until_complete(bench_async(requests, config, progress, stop))
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
        loop.close()
    if stop.is_set():
        result.interrupted = True
    return result


def sent_order_lag_s(run: BenchRun) -> np.ndarray:
    """How late each sent request left vs its scheduled arrival (open loop), in s."""
    arrival = run.requests.arrival_s - (run.requests.arrival_s[0] if len(run.requests) else 0.0)
    sent = np.array([o.sent_s for o in run.outcomes])
    return sent - arrival


def wait_ready(endpoint: str, timeout_s: float) -> float:
    """Poll ``GET endpoint/health`` until the server answers (any HTTP status counts: some
    OpenAI-compatible servers have no /health); returns the seconds waited.

    Raises:
        ConfigError: nothing answered within ``timeout_s``.
    """
    import urllib.error
    import urllib.request

    url = endpoint.rstrip("/") + "/health"
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2.0):
                return time.monotonic() - start
        except urllib.error.HTTPError:
            return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            if time.monotonic() - start > timeout_s:
                raise ConfigError(
                    f"--endpoint {endpoint!r}: nothing answered {url} within {timeout_s:g} s"
                ) from None
            time.sleep(0.25)

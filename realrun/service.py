"""``WorkerService``: the life of one request inside a worker, for each role.

- **colocated**: reserve prompt + max new tokens of KV (FIFO, bounded queue) → engine prefill →
  decode steps → tokens.
- **prefill**: register the ``bootstrap_room`` with the :class:`KvSender` → engine prefill (its
  prompt's KV tokens reserved by the engine) → the hand-off to whichever decode worker claimed the
  room → one output (the first token) once the decode side acknowledged the KV. The KV tokens are
  released when the hand-off ends, however it ends.
- **decode**: claim the room at the prefill's bootstrap port at once → reserve prompt + max new tokens
  of KV (FIFO, bounded queue; a prefill failure ends the wait) → READY → receive the KV → engine:
  the prefill's first token, then decode steps → tokens.

``generate`` is an async iterator of :class:`Output`; a request that cannot be served raises
:class:`ServiceError` (with the HTTP status) — before its first output, or in the middle of a stream.
Leaving the iterator early (client gone) cancels the request in the engine and frees its KV.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pdplan.profiles.executor import Executor
from pdplan.profiles.kv_cache import KVCache
from pdplan.realrun.admission import Admission, Overloaded
from pdplan.realrun.engine import (
    CancelledEvent,
    Engine,
    ErrorEvent,
    Event,
    Job,
    PrefilledEvent,
    TokenEvent,
)
from pdplan.realrun.kv_budget import KvBudget
from pdplan.realrun.kv_pool import KvPool
from pdplan.realrun.kv_receiver import KvClaim, send_abort
from pdplan.realrun.kv_sender import HandoffError, KvSender
from pdplan.realrun.metrics import WorkerMetrics
from pdplan.realrun.protocol import GenerateRequest
from pdplan.realrun.responses import Finish, Timeline

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request that ends in an error; ``status`` is the HTTP status, ``kind`` a short label."""

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.message, self.status, self.kind = message, status, kind


@dataclass(frozen=True)
class Output:
    token: int
    finish: Finish | None
    timeline: Timeline


@dataclass(frozen=True)
class ServiceConfig:
    role: str
    max_queue: int = 128
    kv_timeout_s: float = 60.0
    kv_transport: str = "auto"
    key: bytes = b""  # the deployment's hand-off secret (kv_auth)
    #: A decode worker's prefill peers, ``(bootstrap host, bootstrap port)``: it connects to no other.
    peers: frozenset[tuple[str, int]] = frozenset()


class _Channel:
    """Engine events of one job, moved onto the event loop; ``on_terminal`` runs for the last one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_terminal: Callable[[Event], None]) -> None:
        self._loop = loop
        self._on_terminal = on_terminal
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def sink(self, event: Event) -> None:  # engine thread
        # A closed loop means the worker is exiting and nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event) -> None:
        self.queue.put_nowait(event)
        if not isinstance(event, TokenEvent) or event.finish is not None:
            self._on_terminal(event)


class WorkerService:
    """Serves requests of one role on ``engine``; see the module docstring."""

    def __init__(
        self,
        executor: Executor,
        engine: Engine,
        budget: KvBudget,
        metrics: WorkerMetrics,
        config: ServiceConfig,
        sender: KvSender | None = None,
        caches: KvPool | None = None,
        shared_fd: Callable[[KVCache], int | None] | None = None,
    ) -> None:
        self.executor, self.engine, self.budget, self.metrics = executor, engine, budget, metrics
        self.caches = caches  # a decode worker's pool (its caches may live in shared memory)
        self.shared_fd = shared_fd  # a pooled cache's shared-memory descriptor, for kv_shm
        self.config = config
        self.sender = sender
        self.admission = Admission(budget, asyncio.get_running_loop(), config.max_queue)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kv-recv")
        self._background: set[asyncio.Task[None]] = set()
        assert (config.role == "prefill") == (sender is not None), "prefill workers own a KvSender"

    @property
    def waiting(self) -> int:
        return self.engine.waiting_count + self.admission.waiting

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def generate(self, req: GenerateRequest) -> AsyncGenerator[Output, None]:
        flows = {"colocated": self._colocated, "prefill": self._prefill, "decode": self._decode}
        return flows[self.config.role](req)

    # --- helpers ----------------------------------------------------------------------------------
    def _new_job(
        self, req: GenerateRequest, on_terminal: Callable[[Job, Event], None], arrival: float | None = None
    ) -> tuple[Job, _Channel]:
        """A job for ``req`` whose timeline starts at ``arrival`` (when the worker got the request,
        before any wait for KV space or a hand-off; now if not given)."""
        holder: list[Job] = []
        channel = _Channel(asyncio.get_running_loop(), lambda event: on_terminal(holder[0], event))
        job = Job(req.rid, req.input_ids, req.sampling, channel.sink)
        if arrival is not None:
            job.timeline.arrival = arrival
        holder.append(job)
        return job, channel

    def _release(self, job: Job) -> None:
        if job.reserved_tokens > 0:
            tokens, job.reserved_tokens = job.reserved_tokens, 0
            self.budget.release(tokens)

    def _check_queue(self) -> None:
        waiting = self.engine.waiting_count
        if self.sender is not None:  # rooms waiting for their decode side count too
            waiting = max(waiting, self.sender.open_rooms)
        if waiting >= self.config.max_queue:
            raise ServiceError(
                f"worker overloaded: {waiting} requests queued (limit {self.config.max_queue})",
                503, "overloaded",
            )  # fmt: skip

    async def _tokens(self, job: Job, channel: _Channel) -> AsyncGenerator[Output, None]:
        """The job's tokens as outputs (with TTFT/ITL metrics); ends after the final one."""
        finished = False
        last = job.timeline.arrival
        try:
            while True:
                event = await channel.queue.get()
                if isinstance(event, ErrorEvent):
                    finished = True
                    raise ServiceError(event.message, event.status, "engine_error")
                if isinstance(event, CancelledEvent):
                    finished = True
                    raise ServiceError("request cancelled", 499, "cancelled")
                assert isinstance(event, TokenEvent), event
                if job.timeline.first_token is None:
                    job.timeline.first_token = event.time_s
                    self.metrics.observe("ttft_seconds", event.time_s - job.timeline.arrival)
                else:
                    self.metrics.observe("itl_seconds", event.time_s - last)
                last = event.time_s
                self.metrics.inc("generated_tokens_total")
                if event.finish is not None:
                    finished = True
                    job.timeline.finish = event.time_s
                yield Output(event.token, event.finish, job.timeline)
                if finished:
                    return
        finally:
            if not finished:
                self.engine.cancel(job)

    # --- colocated ----------------------------------------------------------------------------------
    async def _colocated(self, req: GenerateRequest) -> AsyncGenerator[Output, None]:
        arrival = time.time()
        self._check_queue()
        tokens = len(req.input_ids) + req.sampling.max_new_tokens
        try:
            await self.admission.acquire(tokens)
        except Overloaded as err:
            raise ServiceError(f"worker overloaded: {err}", 503, "overloaded") from None
        job, channel = self._new_job(req, lambda job, _event: self._release(job), arrival)
        job.reserved_tokens = tokens
        self.engine.submit(job)
        async for out in self._tokens(job, channel):
            yield out

    # --- prefill ------------------------------------------------------------------------------------
    async def _prefill(self, req: GenerateRequest) -> AsyncGenerator[Output, None]:
        assert self.sender is not None
        if req.bootstrap is None:
            raise ServiceError(
                "a prefill worker needs bootstrap_host, bootstrap_port and bootstrap_room", 400, "bad_request"
            )
        room_id = req.bootstrap.room
        try:
            self._check_queue()
            room = self.sender.register(room_id, req.input_ids)
        except ServiceError as err:
            self.sender.fail(room_id, err.message, err.status)
            raise
        except HandoffError as err:
            raise ServiceError(err.message, err.status, "bad_room") from None
        room.result.add_done_callback(lambda f: f.cancelled() or f.exception())  # always retrieved

        def on_terminal(job: Job, event: Event) -> None:
            if isinstance(event, PrefilledEvent) and not room.result.done():
                job.timeline.prefill_start, job.timeline.prefill_end = event.start_s, event.end_s
                self.sender.kv_ready(room_id, event)  # type: ignore[union-attr]
                room.result.add_done_callback(lambda _f: self._release(job))
            else:
                self._release(job)  # the KV (if any) is dropped with the event

        job, channel = self._new_job(req, on_terminal)
        # Compute only once the decode side reserved KV space (READY): until then the room holds
        # no compute and no KV, so claims that never get READY cannot stall other prompts.
        ready = asyncio.ensure_future(room.ready.wait())
        try:
            first: set[asyncio.Future[Any]] = {ready, room.result}
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            ready.cancel()
            self.sender.fail(room_id, "the prefill request was cancelled", 499)
            raise
        if not ready.done():
            ready.cancel()
            exc = room.result.exception()
            assert isinstance(exc, HandoffError), "a room succeeds only after its KV was computed"
            raise ServiceError(exc.message, exc.status, "kv_handoff_failed")
        room.queued_s = job.timeline.prefill_queued = time.time()
        job.timeline.prefill_arrival = room.arrival_s
        self.engine.submit(job)
        get = asyncio.ensure_future(channel.queue.get())
        waits: set[asyncio.Future[Any]] = {get, room.result}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:  # the room failed (e.g. nobody claimed it) before the prefill ran
            get.cancel()
            self.engine.cancel(job)
            exc = room.result.exception()
            assert isinstance(exc, HandoffError), "a room succeeds only after its KV was computed"
            raise ServiceError(exc.message, exc.status, "kv_handoff_failed")
        event = get.result()
        if isinstance(event, ErrorEvent | CancelledEvent):
            message, status = (
                (event.message, event.status) if isinstance(event, ErrorEvent) else ("cancelled", 499)
            )
            self.sender.fail(room_id, message, status)
            raise ServiceError(message, status, "engine_error")
        assert isinstance(event, PrefilledEvent)
        try:
            await room.result
        except HandoffError as err:
            raise ServiceError(err.message, err.status, "kv_handoff_failed") from None
        now = time.time()
        job.timeline.first_token = job.timeline.finish = now
        self.metrics.observe("ttft_seconds", now - job.timeline.arrival)
        yield Output(event.token, Finish("length", length=1), job.timeline)

    # --- decode -------------------------------------------------------------------------------------
    async def _decode(self, req: GenerateRequest) -> AsyncGenerator[Output, None]:
        arrival = time.time()
        boot = req.bootstrap
        if boot is None:
            raise ServiceError(
                "a decode worker needs bootstrap_host, bootstrap_port and bootstrap_room", 400, "bad_request"
            )
        transport = self.config.kv_transport
        if (boot.host, boot.port) not in self.config.peers:
            raise ServiceError(
                f"bootstrap {boot.host}:{boot.port} is not a prefill worker of this deployment",
                403,
                "forbidden",
            )
        try:
            self.admission.check_room()
        except Overloaded as err:
            task = asyncio.ensure_future(send_abort(boot, str(err), self.config.key, transport))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise ServiceError(f"worker overloaded: {err}", 503, "overloaded") from None
        tokens = len(req.input_ids) + req.sampling.max_new_tokens
        spec = self.executor.spec
        expect = (
            (spec.num_layers, spec.num_kv_heads, spec.head_dim),
            self.executor.dtype_name,
            len(req.input_ids),
        )
        max_payload = spec.kv_bytes_per_token(self.executor.dtype_name) * len(req.input_ids)
        try:
            async with await KvClaim.open(boot, req.input_ids, self.config.key, transport) as claim:
                await claim.guard(self.admission.acquire(tokens))
                cache = self.caches.take(tokens) if self.caches else self.executor.new_cache(tokens)
                ready_s = time.time()  # READY goes out now
                try:
                    fd = self.shared_fd(cache) if self.shared_fd else None
                    meta, transfer_s = await claim.receive(
                        max_payload, cache, expect, self._pool, self.config.kv_timeout_s, fd
                    )
                except BaseException:
                    # The cache is dropped, not recycled: a prefill may still hold its shared memory.
                    self.budget.release(tokens)
                    raise
        except HandoffError as err:
            raise ServiceError(err.message, err.status, "kv_handoff_failed") from None
        except Overloaded as err:
            raise ServiceError(f"worker overloaded: {err}", 503, "overloaded") from None
        self.metrics.observe("kv_transfer_seconds", transfer_s)
        path = "shared_memory" if meta.in_place else "socket"
        self.metrics.inc("kv_transfer_bytes_total", meta.payload_bytes, label=path)
        job, channel = self._new_job(req, lambda job, _event: self._release(job), arrival)
        job.reserved_tokens = tokens
        job.cache, job.first_token = cache, meta.first_token
        job.timeline.prefill_start, job.timeline.prefill_end = meta.prefill_start_s, meta.prefill_end_s
        job.timeline.cached_tokens = meta.cached_tokens  # the prefill worker's prefix cache hit
        job.timeline.prefill_arrival = meta.prefill_arrival_s or None
        job.timeline.prefill_queued = meta.prefill_queued_s or None
        job.timeline.handoff_ready, job.timeline.kv_received = ready_s, time.time()
        self.engine.submit(job)
        async for out in self._tokens(job, channel):
            yield out

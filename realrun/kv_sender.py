"""``KvSender``: a prefill worker's bootstrap server — rooms, claims and the KV hand-off.

The router sends the same request to a prefill and a decode worker with a random ``bootstrap_room``
and tells the decode side where the prefill's bootstrap port is (the prefill is never told who
decodes). So the decode side connects and claims the room; one connection carries the whole
hand-off (frames in :mod:`pdplan.realrun.kv_wire`)::

    decode                          prefill
      CLAIM(room, prompt digest) ─►   (pairs the claim with the HTTP request of that room)
                                 ◄─   ACCEPT (proves the prefill holds the deployment's secret)
      READY(max bytes)           ─►   (sent once the decode side reserved KV space; only now
                                       does the prefill queue the prompt for computation)
                                 ◄─   KV header + raw payload (as soon as the prefill computed it)
      ACK                        ─►   (the prefill's HTTP request now ends ok; its KV is freed)

Every frame but ERROR is authenticated with the deployment's secret (:mod:`kv_auth`); Unix-socket
peers must run as this user. The prefill computes a prompt only after its decode side reserved KV
space (READY), like SGLang's bootstrap and pre-allocation queues: a decode worker that is full, slow
or hostile holds no prefill compute and no prefill KV, it only keeps a room open until its timeout.

Either side ends a room early with ERROR (or ABORT from the decode side, e.g. when it refused the
request as overloaded). Every wait is bounded: a room nobody claims within ``bootstrap_timeout_s``,
or a claim whose request never arrives, fails; so does a computed KV that the decode side does not
take within ``kv_timeout_s``. A peer that dies closes the connection, which fails the room at once.
Failed and finished rooms leave a tombstone so a late claim is answered immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from pdplan.realrun import kv_wire as wire
from pdplan.realrun.engine import PrefilledEvent
from pdplan.realrun.kv_auth import AuthError, Session, open_abort
from pdplan.realrun.kv_shm import SharedWriter
from pdplan.realrun.kv_views import kv_meta, send_views
from pdplan.realrun.metrics import WorkerMetrics

log = logging.getLogger(__name__)
MAX_TOMBSTONES = 4096


class HandoffError(Exception):
    """A KV hand-off that did not complete; ``status`` is the HTTP status to report it with."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(eq=False)
class Room:
    room: int
    result: asyncio.Future[None]
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    kv_ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the decode side sent READY
    prompt: tuple[int, ...] | None = None
    claimed: bool = False
    prefilled: PrefilledEvent | None = None
    deadline: asyncio.TimerHandle | None = None
    #: UNIX s: the prefill request arrived (``register``); its prompt went to the engine (the
    #: service sets it): both travel in the KV header for the decode side's timeline
    arrival_s: float = 0.0
    queued_s: float = 0.0


class KvSender:
    """Serves claims on ``host:port`` (TCP, plus an abstract Unix socket on loopback)."""

    def __init__(
        self,
        host: str,
        port: int,
        dtype: str,
        metrics: WorkerMetrics,
        key: bytes,
        bootstrap_timeout_s: float = 3.0,
        kv_timeout_s: float = 60.0,
    ) -> None:
        self.host, self.port, self.dtype, self.metrics = host, port, dtype, metrics
        self.key = key
        self.bootstrap_timeout_s = bootstrap_timeout_s
        self.kv_timeout_s = kv_timeout_s
        self._rooms: dict[int, Room] = {}
        self._tombstones: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sockets: list[socket.socket] = []
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kv-send")
        self._writer = SharedWriter()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = wire.listen_sockets(self.host, self.port)
        for lsock in self._sockets:
            self._spawn(self._accept(lsock))

    async def close(self) -> None:
        for room in list(self._rooms.values()):
            self._fail(room, "prefill worker is shutting down", 503)
        for task in list(self._tasks):
            task.cancel()
        for lsock in self._sockets:
            lsock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._writer.close()

    @property
    def open_rooms(self) -> int:
        return len(self._rooms)

    # --- the HTTP side ---------------------------------------------------------------------------
    def register(self, room_id: int, prompt: tuple[int, ...]) -> Room:
        """The prefill request of ``room_id`` arrived; its ``result`` resolves when the hand-off ends.

        Raises:
            HandoffError: the room is already active or finished (409).
        """
        assert self._loop is not None, "start() first"
        if room_id in self._tombstones:
            raise HandoffError(f"bootstrap_room {room_id} was already used", 409)
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = Room(room_id, self._loop.create_future())
        elif room.prompt is not None:
            raise HandoffError(f"bootstrap_room {room_id} is already in use", 409)
        room.prompt = prompt
        room.arrival_s = time.time()
        room.registered.set()
        if not room.claimed:
            room.deadline = self._loop.call_later(self.bootstrap_timeout_s, self._claim_deadline, room)
        return room

    def kv_ready(self, room_id: int, event: PrefilledEvent) -> None:
        room = self._rooms.get(room_id)
        if room is not None and not room.result.done():
            room.prefilled = event
            room.kv_ready.set()

    def fail(self, room_id: int, message: str, status: int) -> None:
        """End ``room_id`` with an error (also answers a claim that has not arrived yet)."""
        room = self._rooms.get(room_id)
        if room is not None:
            self._fail(room, message, status)
        else:
            self._tombstone(room_id, message, status)

    # --- internals -----------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tombstone(self, room_id: int, message: str, status: int) -> None:
        self._tombstones[room_id] = (message, status)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _fail(self, room: Room, message: str, status: int) -> None:
        if not room.result.done():
            log.warning("room %d failed: %s", room.room, message)
            room.result.set_exception(HandoffError(message, status))
        if not room.claimed:
            self._retire(room)

    def _retire(self, room: Room) -> None:
        """Forget ``room`` (and its KV), leaving a tombstone with how it ended."""
        if self._rooms.get(room.room) is room:
            del self._rooms[room.room]
        if room.deadline is not None:
            room.deadline.cancel()
        room.prefilled = None
        if not room.result.done():  # e.g. the connection task was cancelled at shutdown
            room.result.set_exception(HandoffError("the KV hand-off was interrupted", 503))
        exc = room.result.exception()
        if isinstance(exc, HandoffError):
            self._tombstone(room.room, exc.message, exc.status)
        else:
            self._tombstone(room.room, f"bootstrap_room {room.room} was already served", 409)

    def _claim_deadline(self, room: Room) -> None:
        if not room.claimed:
            self._fail(room, f"no decode worker claimed the room within {self.bootstrap_timeout_s:g} s", 504)

    async def _accept(self, lsock: socket.socket) -> None:
        assert self._loop is not None
        while True:
            conn, _ = await self._loop.sock_accept(lsock)
            conn.setblocking(False)
            try:
                wire.check_peer_user(conn)
            except wire.WireError as err:
                log.warning("refused a KV hand-off connection: %s", err)
                conn.close()
                continue
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        room: Room | None = None
        room_id = 0
        try:
            frame = await asyncio.wait_for(wire.read_frame(loop, conn), self.bootstrap_timeout_s)
            room_id = frame.room
            if frame.kind == wire.ABORT:
                reason = open_abort(self.key, frame.kind, frame.room, frame.body)
                text = reason.decode("utf-8", errors="replace")[:200]
                self.fail(frame.room, f"decode worker aborted the room: {text}", 409)
                return
            if frame.kind != wire.CLAIM:
                raise wire.WireError(f"expected CLAIM or ABORT, got {frame.name}")
            session, body = Session.open_claim(self.key, frame.kind, frame.room, frame.body)
            prompt_tokens, digest = wire.unpack_claim(body)
            accept = session.accept_body(wire.ACCEPT, frame.room)
            await wire.send_frame(loop, conn, wire.ACCEPT, frame.room, accept)
            if frame.room in self._tombstones:
                raise HandoffError(self._tombstones[frame.room][0], self._tombstones[frame.room][1])
            room = self._rooms.get(frame.room)
            if room is None:
                room = self._rooms[frame.room] = Room(frame.room, loop.create_future())
            elif room.claimed:
                room = None
                raise HandoffError(f"bootstrap_room {frame.room} is already claimed", 409)
            room.claimed = True
            if room.deadline is not None:
                room.deadline.cancel()
            await self._handoff(loop, conn, room, session, prompt_tokens, digest)
        except AuthError as err:
            self.metrics.inc("kv_auth_failures_total")
            log.warning("KV hand-off refused: %s", err)  # a stranger: no room is touched, no answer
            if room is not None:
                self._fail(room, f"KV hand-off failed authentication: {err}", 502)
        except (wire.WireError, HandoffError, OSError, TimeoutError) as err:
            message = err.message if isinstance(err, HandoffError) else f"KV hand-off failed: {err}"
            status = err.status if isinstance(err, HandoffError) else 502
            if room is not None:
                self._fail(room, message, status)
            await self._try_send_error(loop, conn, room_id, status, message)
            await _linger(loop, conn)
        finally:
            conn.close()
            if room is not None:
                self._retire(room)

    async def _handoff(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: socket.socket,
        room: Room,
        session: Session,
        prompt_tokens: int,
        digest: int,
    ) -> None:
        await self._guard(room, conn, room.registered.wait(), self.bootstrap_timeout_s, "no request for room")
        assert room.prompt is not None
        if len(room.prompt) != prompt_tokens or wire.prompt_digest(room.prompt) != digest:
            raise HandoffError(f"room {room.room}: the decode side holds a different prompt", 409)
        read = wire.read_frame_fds(loop, conn) if conn.family == socket.AF_UNIX else _no_fds(loop, conn)
        ready, fds = await self._guard(room, conn, read, self.kv_timeout_s, "no READY")
        try:
            if ready.kind == wire.READY:
                ready = wire.Frame(ready.kind, ready.room, session.open(ready.kind, room.room, ready.body))
                room.ready.set()  # the prompt may now be computed
            await self._send(loop, conn, room, session, ready, fds)
        finally:
            for fd in fds:
                os.close(fd)
        ack = await self._guard(room, conn, wire.read_frame(loop, conn), self.kv_timeout_s, "no ACK")
        if ack.kind != wire.ACK:
            raise wire.WireError(f"expected ACK, got {ack.name}")
        session.open(ack.kind, room.room, ack.body)
        if not room.result.done():
            room.result.set_result(None)

    async def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: socket.socket,
        room: Room,
        session: Session,
        ready: wire.Frame,
        fds: list[int],
    ) -> None:
        """Once the KV is computed: write it into the decode's shared buffer (when READY brought
        one), or send it over the connection; then the KV header."""
        if ready.kind == wire.ABORT:
            raise HandoffError("decode worker aborted the room", 409)
        if ready.kind != wire.READY or len(ready.body) != wire.READY_BODY.size:
            raise wire.WireError(f"expected READY, got {ready.name}")
        max_payload, capacity, flags = wire.READY_BODY.unpack(ready.body)
        if bool(flags & wire.READY_SHARED_FD) != bool(fds) or flags & ~wire.READY_SHARED_FD:
            raise wire.WireError(f"READY flags {flags:#x} with {len(fds)} descriptors")
        if not room.kv_ready.is_set():
            await self._guard(
                room, conn, room.kv_ready.wait(), self.kv_timeout_s, "KV not ready", watch_peer=True
            )
        event = room.prefilled
        assert event is not None
        meta = kv_meta(
            event.cache, self.dtype, event.token, event.start_s, event.end_s, event.cached_tokens,
            room.arrival_s, room.queued_s,
        )  # fmt: skip
        if meta.payload_bytes > max_payload:
            raise HandoffError(f"KV of {meta.payload_bytes} bytes exceeds the decode's {max_payload}", 507)
        start = time.perf_counter()
        if fds:
            owner = wire.peer_process(conn)
            await loop.run_in_executor(self._pool, self._writer.write, fds[0], capacity, event.cache, owner)
            body = session.seal(wire.KV, room.room, wire.pack_kv_meta(replace(meta, in_place=True)))
            await wire.send_frame(loop, conn, wire.KV, room.room, body)
        else:
            views = send_views(event.cache)
            body = session.seal(wire.KV, room.room, wire.pack_kv_meta(meta))
            await wire.send_frame(loop, conn, wire.KV, room.room, body)
            conn.settimeout(self.kv_timeout_s)  # blocking with a deadline, for the sending thread
            try:
                await loop.run_in_executor(self._pool, wire.send_views, conn, views)
            finally:
                conn.setblocking(False)
        self.metrics.observe("kv_transfer_seconds", time.perf_counter() - start)
        self.metrics.inc(
            "kv_transfer_bytes_total", meta.payload_bytes, label="shared_memory" if fds else "socket"
        )

    async def _guard(
        self,
        room: Room,
        conn: socket.socket,
        awaitable: Awaitable[Any],
        timeout_s: float,
        what: str,
        watch_peer: bool = False,
    ) -> Any:
        """Await ``awaitable`` unless the room fails elsewhere, the peer speaks or hangs up (when
        ``watch_peer``), or ``timeout_s`` passes."""
        assert self._loop is not None
        main = asyncio.ensure_future(awaitable)
        peer = asyncio.ensure_future(wire.read_frame(self._loop, conn)) if watch_peer else None
        waits: set[asyncio.Future[Any]] = {main, room.result}
        if peer is not None:
            waits.add(peer)
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (main, peer):
                if task is not None and not task.done():
                    task.cancel()
        if main in done:
            return main.result()
        if room.result.done():
            exc = room.result.exception()
            raise exc if isinstance(exc, HandoffError) else HandoffError("room ended", 502)
        if peer is not None and peer in done:
            exc = peer.exception()
            if exc is not None:
                raise HandoffError(f"decode worker hung up ({exc})", 502)
            raise HandoffError(f"decode worker sent {peer.result().name} while waiting for KV", 409)
        raise HandoffError(f"KV hand-off timed out after {timeout_s:g} s ({what})", 504)

    async def _try_send_error(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, room_id: int, status: int, message: str
    ) -> None:
        body = wire.pack_error(status, message)
        # If the peer is gone it sees the closed connection instead.
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(wire.send_frame(loop, conn, wire.ERROR, room_id, body), 1.0)


async def _linger(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout_s: float = 1.0) -> None:
    """After an ERROR: stop sending, and read what the decode still sends (its READY may be on
    the way) until it hangs up, for at most ``timeout_s``. Closing with unread input would reset
    the connection, and a reset can destroy the ERROR frame before the decode reads it: the client
    would see a 502 instead of the prefill's status (a 503 must stay a 503)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    deadline = loop.time() + timeout_s
    with contextlib.suppress(OSError, TimeoutError):
        while (left := deadline - loop.time()) > 0:
            if not await asyncio.wait_for(loop.sock_recv(conn, 65536), left):
                return


async def _no_fds(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[wire.Frame, list[int]]:
    return await wire.read_frame(loop, conn), []

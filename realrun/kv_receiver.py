"""``KvClaim``: the decode side of one room's KV hand-off (protocol in :mod:`kv_sender`).

The decode worker claims the room as soon as the router's request arrives, checks the prefill's
ACCEPT (it proves the deployment's secret, :mod:`kv_auth`), waits for KV space
(while watching the connection, so a prefill that fails or dies ends the wait at once), sends READY,
and reads the typed header and then the payload straight into a freshly allocated cache.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pdplan.profiles.kv_cache import KVCache
from pdplan.realrun import kv_wire as wire
from pdplan.realrun.kv_auth import AuthError, Session, seal_abort
from pdplan.realrun.kv_sender import HandoffError
from pdplan.realrun.kv_views import expected_meta, receive_views
from pdplan.realrun.protocol import Bootstrap

T = TypeVar("T")


class KvClaim:
    """An open claim on ``bootstrap.room``; always ``close()`` it (``async with`` does)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, bootstrap: Bootstrap, session: Session
    ) -> None:
        self._loop = loop
        self._sock = sock
        self.bootstrap = bootstrap
        self.session = session
        # A frame the prefill sent while ``guard`` was finishing (e.g. its ERROR 503 arriving just
        # as KV space freed up): read, so it must not be lost; ``receive`` reports it.
        self._early: asyncio.Future[Any] | None = None

    @classmethod
    async def open(
        cls,
        bootstrap: Bootstrap,
        prompt: tuple[int, ...],
        key: bytes,
        transport: str = "auto",
        timeout_s: float = 5.0,
    ) -> KvClaim:
        """Connect to the prefill's bootstrap port, claim the room and check the prefill's ACCEPT.

        Raises:
            HandoffError: the prefill's bootstrap port cannot be reached (502), refuses the room
                (its status), or fails authentication (502).
        """
        loop = asyncio.get_running_loop()
        where = f"{bootstrap.host}:{bootstrap.port}"
        try:
            sock = await asyncio.wait_for(
                wire.connect(loop, bootstrap.host, bootstrap.port, transport), timeout_s
            )
        except (OSError, TimeoutError, wire.WireError) as err:
            raise HandoffError(f"cannot reach the prefill bootstrap port {where}: {err}", 502) from None
        session = Session(key)
        claim = cls(loop, sock, bootstrap, session)
        body = session.seal_claim(
            wire.CLAIM, bootstrap.room, wire.pack_claim(len(prompt), wire.prompt_digest(prompt))
        )
        try:
            await wire.send_frame(loop, sock, wire.CLAIM, bootstrap.room, body)
            frame = await asyncio.wait_for(wire.read_frame(loop, sock), timeout_s)
            if frame.kind == wire.ERROR:
                status, message = wire.unpack_error(frame.body)
                raise HandoffError(f"prefill worker: {message}", status)
            if frame.kind != wire.ACCEPT or frame.room != bootstrap.room:
                raise wire.WireError(f"expected ACCEPT for room {bootstrap.room}, got {frame.name}")
            session.check_accept(frame.kind, bootstrap.room, frame.body)
        except HandoffError:
            claim.close()
            raise
        except AuthError as err:
            claim.close()
            raise HandoffError(f"prefill bootstrap {where}: {err}", 502) from None
        except (OSError, TimeoutError, wire.WireError) as err:
            claim.close()
            raise HandoffError(f"prefill bootstrap {where} dropped the claim: {err!r}", 502) from None
        return claim

    async def __aenter__(self) -> KvClaim:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, unless the prefill reports an error or hangs up first."""
        main = asyncio.ensure_future(awaitable)
        peer = asyncio.ensure_future(wire.read_frame(self._loop, self._sock))
        try:
            done, _ = await asyncio.wait({main, peer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (main, peer):
                if not task.done():
                    task.cancel()
        if main in done:
            if peer in done:
                self._early = peer
            return main.result()
        raise self._peer_failure(peer)

    async def receive(
        self,
        max_payload_bytes: int,
        cache: KVCache,
        expect: tuple[tuple[int, int, int], str, int],
        pool: ThreadPoolExecutor,
        timeout_s: float,
        shared_fd: int | None = None,
    ) -> tuple[wire.KvMeta, float]:
        """Send READY, then take the KV into ``cache`` (empty, with room for the prompt).

        ``expect`` is ``((num_layers, num_kv_heads, head_dim), dtype, prompt_tokens)`` of this worker.
        ``shared_fd`` is the cache's shared-memory descriptor (``kv_shm``): over a Unix socket it
        goes with READY, and the prefill writes the KV straight into the cache. Returns the header
        and the seconds from READY until the KV was complete in the cache.

        Raises:
            HandoffError: the prefill failed, hung up, broke the protocol, or timed out (504).
        """
        loop, room = self._loop, self.bootstrap.room
        if self._early is not None:
            raise self._peer_failure(self._early)
        if self._sock.family != socket.AF_UNIX:
            shared_fd = None
        try:
            flags = wire.READY_SHARED_FD if shared_fd is not None else 0
            body = self.session.seal(
                wire.READY, room, wire.READY_BODY.pack(max_payload_bytes, cache.capacity, flags)
            )
            start = time.perf_counter()
            if shared_fd is not None:
                await wire.send_frame_fds(loop, self._sock, wire.READY, room, body, [shared_fd])
            else:
                await wire.send_frame(loop, self._sock, wire.READY, room, body)
            frame = await asyncio.wait_for(wire.read_frame(loop, self._sock), timeout_s)
            if frame.kind == wire.ERROR:
                status, message = wire.unpack_error(frame.body)
                raise HandoffError(f"prefill worker: {message}", status)
            if frame.kind != wire.KV or frame.room != room:
                raise wire.WireError(f"expected KV for room {room}, got {frame.name}")
            meta = wire.unpack_kv_meta(self.session.open(frame.kind, room, frame.body), max_payload_bytes)
            expected_meta(expect[0], expect[1], expect[2], meta)
            if meta.in_place:
                if shared_fd is None:
                    raise wire.WireError("KV announced as written in place, but no shared buffer was offered")
                cache.length = meta.prompt_tokens
            else:
                views, finish = receive_views(cache, meta.prompt_tokens)
                self._sock.settimeout(timeout_s)  # blocking with a deadline, for the receiving thread
                try:
                    await loop.run_in_executor(pool, wire.recv_views, self._sock, views)
                finally:
                    self._sock.setblocking(False)
                finish()
            elapsed = time.perf_counter() - start
            await wire.send_frame(loop, self._sock, wire.ACK, room, self.session.seal(wire.ACK, room))
        except AuthError as err:
            raise HandoffError(f"KV hand-off failed authentication: {err}", 502) from None
        except TimeoutError:
            raise HandoffError(f"no KV from the prefill worker within {timeout_s:g} s", 504) from None
        except wire.WireError as err:
            raise HandoffError(f"KV hand-off broke the protocol: {err}", 502) from None
        except OSError as err:
            raise self._closed_failure(err) from None
        return meta, elapsed

    def _closed_failure(self, err: OSError) -> HandoffError:
        """The connection broke (e.g. Broken pipe on READY): the prefill usually said why in an
        ERROR frame just before closing; report that status (a 503 stays a 503), else 502."""
        try:
            head = self._sock.recv(
                wire.FRAME.size + wire.MAX_BODY_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT
            )
            if len(head) >= wire.FRAME.size:
                kind, _room, size = wire.unpack_header(head[: wire.FRAME.size])
                if kind == wire.ERROR and len(head) >= wire.FRAME.size + size:
                    status, message = wire.unpack_error(head[wire.FRAME.size : wire.FRAME.size + size])
                    return HandoffError(f"prefill worker: {message}", status)
        except (OSError, wire.WireError):
            pass
        return HandoffError(f"KV hand-off connection failed: {err}", 502)

    def _peer_failure(self, peer: asyncio.Future[Any]) -> HandoffError:
        exc = peer.exception()
        if exc is not None:
            return HandoffError(f"prefill worker hung up before sending KV ({exc})", 502)
        frame: wire.Frame = peer.result()
        if frame.kind == wire.ERROR:
            status, message = wire.unpack_error(frame.body)
            return HandoffError(f"prefill worker: {message}", status)
        return HandoffError(f"prefill worker sent {frame.name} before READY", 502)


async def send_abort(bootstrap: Bootstrap, reason: str, key: bytes, transport: str = "auto") -> None:
    """Tell a prefill worker to drop a room this decode worker refused (best effort, ≤ 1 s)."""
    loop = asyncio.get_running_loop()
    try:
        sock = await asyncio.wait_for(wire.connect(loop, bootstrap.host, bootstrap.port, transport), 1.0)
    except (OSError, TimeoutError, wire.WireError):
        return
    try:
        body = seal_abort(key, wire.ABORT, bootstrap.room, reason.encode("utf-8")[:1024])
        await asyncio.wait_for(wire.send_frame(loop, sock, wire.ABORT, bootstrap.room, body), 1.0)
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()

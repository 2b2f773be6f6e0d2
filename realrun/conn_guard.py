"""``ConnectionGuard``: bounds on a worker's HTTP connections that aiohttp does not set by itself.

- **Concurrent connections**: at most ``max_connections`` open at once; one more gets an immediate
  ``503`` JSON answer with ``Retry-After`` and is closed, before any byte of it is read.
- **Header read time**: a connection must deliver its first request's headers within
  ``header_timeout_s`` of connecting, or it is closed (slow-header clients cannot pile up).
  The body then has its own limit (``WorkerServer.body_timeout_s``, a 408 answer); idle keep-alive
  connections are closed by aiohttp's ``keepalive_timeout``.

It wraps the protocol objects of aiohttp's low-level server (``runner.server``) and forwards every
transport callback to them unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

END_OF_HEADERS = b"\r\n\r\n"
MAX_HEADER_SCAN_BYTES = 64 * 1024


def _busy_response(max_connections: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"worker has {max_connections} connections open (its limit); retry later",
                "type": "overloaded",
                "code": 503,
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Guarded(asyncio.Protocol):
    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.seen = b""
        self.headers_done = False
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.guard.open) >= self.guard.max_connections:
            self.refused = True
            self.guard.refused += 1
            transport.write(_busy_response(self.guard.max_connections))
            transport.close()
            return
        self.guard.open.add(self)
        self.timer = self.guard.loop.call_later(self.guard.header_timeout_s, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        if not self.headers_done and self.transport is not None:
            self.guard.timed_out += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.headers_done:
            self.seen = (self.seen + data)[-MAX_HEADER_SCAN_BYTES:]
            if END_OF_HEADERS in self.seen:
                self.headers_done = True
                self.seen = b""
                if self.timer is not None:
                    self.timer.cancel()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.open.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if not self.refused:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.refused:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.inner.resume_writing()


class ConnectionGuard:
    """A protocol factory for ``loop.create_server`` around ``make_inner`` (see the module docstring)."""

    def __init__(
        self,
        make_inner: Callable[[], Any],
        loop: asyncio.AbstractEventLoop,
        max_connections: int = 512,
        header_timeout_s: float = 10.0,
    ) -> None:
        self.make_inner, self.loop = make_inner, loop
        self.max_connections, self.header_timeout_s = max_connections, header_timeout_s
        self.open: set[_Guarded] = set()
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.make_inner())

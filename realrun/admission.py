"""``Admission``: FIFO waiting for KV budget on the event loop, with a bounded queue.

A request that does not fit the free KV tokens waits in arrival order; when ``max_waiting`` requests
already wait, the next one is refused at once (:class:`Overloaded` → HTTP 503) instead of growing
memory. Releases happen on any thread; they wake the loop through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from collections import deque

from pdplan.realrun.kv_budget import KvBudget


class Overloaded(Exception):
    """The bounded queue is full."""


class Admission:
    """Grants KV reservations FIFO; see the module docstring."""

    def __init__(self, budget: KvBudget, loop: asyncio.AbstractEventLoop, max_waiting: int) -> None:
        assert max_waiting >= 0, max_waiting
        self.budget = budget
        self.max_waiting = max_waiting
        self._loop = loop
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        budget.add_listener(self._on_release)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def check_room(self) -> None:
        """Raise :class:`Overloaded` when a new request would have to wait and the queue is full."""
        if len(self._waiters) >= self.max_waiting:
            raise Overloaded(f"admission queue full ({len(self._waiters)} requests waiting for KV space)")

    async def acquire(self, tokens: int) -> None:
        """Reserve ``tokens``, waiting FIFO behind earlier requests.

        Raises:
            Overloaded: ``max_waiting`` requests already wait.
        """
        if tokens > self.budget.capacity_tokens:
            raise Overloaded(
                f"{tokens} KV tokens exceed this worker's capacity of {self.budget.capacity_tokens}"
            )
        if not self._waiters and self.budget.try_reserve(tokens):
            return
        self.check_room()
        future: asyncio.Future[None] = self._loop.create_future()
        entry = (tokens, future)
        self._waiters.append(entry)
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.budget.release(tokens)  # granted just as we were cancelled: give it back
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def _on_release(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._grant)

    def _grant(self) -> None:
        while self._waiters:
            tokens, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self.budget.try_reserve(tokens):
                return
            self._waiters.popleft()
            future.set_result(None)

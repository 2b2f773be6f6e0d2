"""``KvPool``: a decode worker's reusable KV caches, so a hand-off lands in warm memory.

A fresh multi-megabyte tensor is a new ``mmap`` whose pages fault in one by one as the payload is
written; on a VM that costs more than the copy itself (``bench/runtime.py`` measures both). Serving
engines avoid it with a preallocated KV pool (SGLang's token pool, vLLM's block pool); this is the
per-request-cache equivalent: finished caches go back to the pool and the next request whose size fits
(at most twice smaller) takes one. Idle caches plus reserved tokens never exceed the worker's KV
capacity: idle ones are dropped, oldest first, as reservations grow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pdplan.profiles.kv_cache import KVCache
from pdplan.realrun.kv_budget import KvBudget


class KvPool:
    """Thread-safe: the event loop takes caches, the engine thread gives them back."""

    def __init__(self, allocate: Callable[[int], KVCache], budget: KvBudget) -> None:
        self._allocate = allocate
        self._budget = budget
        self._idle: list[KVCache] = []
        self._lock = threading.Lock()

    @property
    def idle_tokens(self) -> int:
        return sum(c.capacity for c in self._idle)

    def take(self, capacity_tokens: int) -> KVCache:
        """An empty cache with room for ``capacity_tokens`` (recycled when one fits)."""
        with self._lock:
            fits = [c for c in self._idle if capacity_tokens <= c.capacity <= 2 * capacity_tokens + 64]
            if fits:
                best = min(fits, key=lambda c: c.capacity)
                self._idle.remove(best)
                best.length = 0
                return best
            self._trim()
        return self._allocate(capacity_tokens)

    def give(self, cache: KVCache) -> None:
        """Return a cache whose request ended (its contents are never read again)."""
        with self._lock:
            self._idle.append(cache)
            self._trim()

    def _trim(self) -> None:
        limit = self._budget.capacity_tokens - self._budget.used_tokens
        while self._idle and self.idle_tokens > limit:
            self._idle.pop(0)

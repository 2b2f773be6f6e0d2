"""``KvBudget``: the KV tokens a worker may hold, reserved before KV exists and released after.

Decode and colocated workers reserve prompt + max new tokens when they admit a request — before the
transfer starts, as SGLang and vLLM pre-allocate — so in-flight transfers count against capacity.
A prefill worker reserves a prompt's tokens before computing it and releases them once the decode
side has the KV (or the hand-off failed). Thread-safe: the event loop and the engine thread share it.

A worker with a prefix cache (:mod:`prefix_cache`) also keeps cached prompt pages here
(``cached_tokens``): reservations plus cached tokens never exceed the capacity, and a reservation
that does not fit asks the cache to evict (the *reclaimer*) before it fails. Without a cache
``cached_tokens`` stays 0 and every check is the one before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class KvBudget:
    """A counter of reserved tokens against ``capacity_tokens``; listeners hear every release."""

    def __init__(self, capacity_tokens: int) -> None:
        assert capacity_tokens > 0, f"capacity_tokens={capacity_tokens}"
        self.capacity_tokens = capacity_tokens
        self._used = 0
        self._cached = 0
        self._reclaim: Callable[[int], int] | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def used_tokens(self) -> int:
        return self._used

    @property
    def cached_tokens(self) -> int:
        """Tokens of prompt KV the prefix cache holds (0 without one)."""
        return self._cached

    def set_reclaimer(self, reclaim: Callable[[int], int]) -> None:
        """``reclaim(tokens)`` frees at least ``tokens`` cached tokens when it can (returns what it
        freed); a reservation that does not fit calls it, without holding this budget's lock."""
        self._reclaim = reclaim

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (in the releasing thread) after every release."""
        self._listeners.append(callback)

    def try_reserve(self, tokens: int) -> bool:
        """Reserve ``tokens`` if they fit; never blocks."""
        assert tokens > 0, f"tokens={tokens}"
        with self._lock:
            if self._used + self._cached + tokens <= self.capacity_tokens:
                self._used += tokens
                return True
            short = self._used + self._cached + tokens - self.capacity_tokens
            if self._reclaim is None or self._used + tokens > self.capacity_tokens:
                return False
        self._reclaim(short)  # the cache takes its own lock, then this one (drop_cached)
        with self._lock:
            if self._used + self._cached + tokens > self.capacity_tokens:
                return False
            self._used += tokens
            return True

    def hold_cached(self, tokens: int) -> bool:
        """The prefix cache takes ``tokens`` of room if they are free (never evicts)."""
        with self._lock:
            if self._used + self._cached + tokens > self.capacity_tokens:
                return False
            self._cached += tokens
            return True

    def drop_cached(self, tokens: int) -> None:
        """The prefix cache freed ``tokens`` (evicted pages)."""
        with self._lock:
            assert 0 < tokens <= self._cached, f"dropping {tokens} of {self._cached} cached tokens"
            self._cached -= tokens

    def release(self, tokens: int) -> None:
        with self._lock:
            assert 0 < tokens <= self._used, f"releasing {tokens} of {self._used} reserved tokens"
            self._used -= tokens
        for callback in self._listeners:
            callback()

"""``KvBudget``: the KV tokens a worker may hold, reserved before KV exists and released after.

Decode and colocated workers reserve prompt + max new tokens when they admit a request — before the
transfer starts, as SGLang and vLLM pre-allocate — so in-flight transfers count against capacity.
A prefill worker reserves a prompt's tokens before computing it and releases them once the decode
side has the KV (or the hand-off failed). Thread-safe: the event loop and the engine thread share it.
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
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def used_tokens(self) -> int:
        return self._used

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs (in the releasing thread) after every release."""
        self._listeners.append(callback)

    def try_reserve(self, tokens: int) -> bool:
        """Reserve ``tokens`` if they fit; never blocks."""
        assert tokens > 0, f"tokens={tokens}"
        with self._lock:
            if self._used + tokens > self.capacity_tokens:
                return False
            self._used += tokens
            return True

    def release(self, tokens: int) -> None:
        with self._lock:
            assert 0 < tokens <= self._used, f"releasing {tokens} of {self._used} reserved tokens"
            self._used -= tokens
        for callback in self._listeners:
            callback()

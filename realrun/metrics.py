"""A worker's Prometheus metrics, rendered by hand in the text exposition format (version 0.0.4).

Counters and histograms are updated from the event loop and the engine thread (each under a lock);
gauges are read at scrape time from callables, so they are never stale. Metric names start with
``pdplan_worker_`` and carry the worker's ``role`` as a label. The last :data:`STEP_LOG_SIZE` decode
steps are also kept as ``(batch_size, context_tokens, step_ms)`` for ``/server_info`` (the runtime
benchmark compares them with the profiled step time).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable

STEP_LOG_SIZE = 4096
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` buckets, ``_sum``, ``_count``)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        assert list(buckets) == sorted(buckets), "buckets must be increasing"
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


#: counter → (help, the name of its one label)
_COUNTERS = {
    "requests_total": ("Requests that ended, by status (ok, error, rejected).", "status"),
    "generated_tokens_total": ("Output tokens emitted by this worker.", ""),
    "kv_transfer_bytes_total": (
        "KV payload bytes sent (prefill) or received (decode), by path (shared_memory, socket).",
        "path",
    ),
    "kv_auth_failures_total": ("KV hand-off connections refused for failing authentication.", ""),
    "prefill_tokens_total": ("Prompt tokens this worker computed (prefill forwards).", ""),
}
_HISTOGRAMS = {
    "ttft_seconds": "Arrival at this worker to its first output token.",
    "itl_seconds": "Gap between consecutive output tokens of one request.",
    "kv_transfer_seconds": "Time to move one request's KV payload (first to last byte).",
    "decode_step_seconds": "One decode step of the running batch.",
    "prefill_batch_seconds": "One prefill forward of a batch of prompts.",
}


class WorkerMetrics:
    """Every metric of one worker. ``gauges`` maps a gauge name to (help, read callable)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], float] = {}
        self._histograms = {name: Histogram() for name in _HISTOGRAMS}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.steps: deque[tuple[int, int, float]] = deque(maxlen=STEP_LOG_SIZE)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (help_text, read)

    def inc(self, name: str, value: float = 1.0, label: str = "") -> None:
        """Add ``value`` to counter ``name`` (``label``: the value of its label, if it has one)."""
        assert name in _COUNTERS and bool(label) == bool(_COUNTERS[name][1]), (name, label)
        with self._lock:
            key = (name, label)
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, name: str, value_s: float) -> None:
        with self._lock:
            self._histograms[name].observe(value_s)

    def decode_step(self, batch_size: int, context_tokens: int, step_s: float) -> None:
        """Record one decode step (context = KV tokens held before the step, summed over the batch)."""
        with self._lock:
            self._histograms["decode_step_seconds"].observe(step_s)
            self.steps.append((batch_size, context_tokens, step_s * 1000.0))

    def recent_steps(self) -> list[tuple[int, int, float]]:
        with self._lock:
            return list(self.steps)

    def counter(self, name: str, label: str = "") -> float:
        with self._lock:
            return self._counters.get((name, label), 0.0)

    def render(self) -> str:
        role = f'role="{self.role}"'
        lines: list[str] = []
        for name, (help_text, read) in self._gauges.items():
            full = f"pdplan_worker_{name}"
            lines += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge", f"{full}{{{role}}} {read()}"]
        with self._lock:
            for name, (help_text, key) in _COUNTERS.items():
                full = f"pdplan_worker_{name}"
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} counter"]
                entries = sorted((lab, v) for (n, lab), v in self._counters.items() if n == name)
                for label, value in entries or [("", 0.0)]:
                    labels = f'{role},{key}="{label}"' if label else role
                    lines.append(f"{full}{{{labels}}} {value:g}")
            for name, help_text in _HISTOGRAMS.items():
                full = f"pdplan_worker_{name}"
                lines += [f"# HELP {full} {help_text}", f"# TYPE {full} histogram"]
                lines += self._histograms[name].lines(full, role)
        return "\n".join(lines) + "\n"

"""A worker's Prometheus metrics, kept and rendered by ``prometheus_client`` (text format 0.0.4).

Counters and histograms are updated from the event loop and the engine thread (prometheus_client
is thread-safe); gauges are read at scrape time from callables, so they are never stale. Names start
with ``pdplan_worker_`` and carry the worker's ``role`` as a label; the ones SGLang also exports are
kept beside them under SGLang's names (``sglang:time_to_first_token_seconds``,
``sglang:num_running_reqs`` … with a ``model_name`` label, :data:`SGLANG_NAMES`), so dashboards
built for SGLang servers read a pdplan deployment unchanged. The last :data:`STEP_LOG_SIZE` decode
steps are also kept as :class:`StepRecord` for ``/server_info``: the runtime benchmarks compare
their times with the profiled step time, and their start times and the batch left running after
each step with the simulator's batches and busy time (``bench/local_runtime.py``). The last
:data:`STEP_LOG_SIZE` prefill forwards are kept the same way (:class:`PrefillRecord`). Both carry
the engine thread's CPU time beside the wall time: on a shared machine the wall time includes what
the OS gave to other threads and processes, the CPU time is what the profile's one-thread clock
measures (``pdplan.profiles.timing``), so the two tell a mispriced step from a shared core.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: they double the output and nobody reads them

STEP_LOG_SIZE = 4096


class StepRecord(NamedTuple):
    """One decode step: the batch it ran, the KV tokens the batch held before it (summed), its wall
    time, when it started (``time.time()``, seconds since the epoch, so a benchmark on the same host
    can select a run's steps), and how many requests were still running after it (0: the engine went
    idle unless more had arrived; otherwise the gap to the next step was the engine's own overhead)."""

    batch_size: int
    context_tokens: int
    step_ms: float
    start_s: float
    running_after: int
    cpu_ms: float = float("nan")  # the engine thread's CPU time (``time.thread_time``) in the step


class PrefillRecord(NamedTuple):
    """One prefill forward: each prompt's tokens computed in it (``new_tokens``) and those already in
    its cache before it (``prior_tokens``: earlier slices, or the prefix cache), its wall and engine
    thread CPU time, and when it started (``time.time()``). A colocated worker's mixed step
    (``--schedule chunked``) also carries the decodes that rode in it: ``decode_batch`` sequences
    holding ``decode_context`` KV tokens before it (0 and 0 for a prefill alone)."""

    new_tokens: tuple[int, ...]
    prior_tokens: tuple[int, ...]
    step_ms: float
    cpu_ms: float
    start_s: float
    decode_batch: int = 0
    decode_context: int = 0


LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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


#: pdplan name → the name SGLang's own servers export (dashboards built for SGLang read these).
SGLANG_NAMES = {
    "ttft_seconds": "sglang:time_to_first_token_seconds",
    "itl_seconds": "sglang:inter_token_latency_seconds",
    "generated_tokens_total": "sglang:generation_tokens",
    "prefill_tokens_total": "sglang:prompt_tokens",
    "queue_length": "sglang:num_queue_reqs",
    "running_batch": "sglang:num_running_reqs",
    "kv_used_tokens": "sglang:num_used_tokens",
    "prefix_cache_hit_rate": "sglang:cache_hit_rate",
}


class WorkerMetrics:
    """Every metric of one worker, in its own prometheus_client registry (see the module docstring)."""

    def __init__(self, role: str, model_name: str = "model") -> None:
        self.role = role
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], float] = {}
        self._counters: dict[str, Counter] = {}
        self._sglang: dict[str, Any] = {}
        for name, (help_text, key) in _COUNTERS.items():
            base = name.removesuffix("_total")
            self._counters[name] = Counter(
                f"pdplan_worker_{base}", help_text, ["role", *([key] if key else [])], registry=self.registry
            )
            if not key:
                self._counters[name].labels(role)  # exported as 0 before the first event
            if name in SGLANG_NAMES:
                self._sglang[name] = Counter(
                    SGLANG_NAMES[name], help_text, ["model_name"], registry=self.registry
                ).labels(model_name)
        self._histograms: dict[str, Histogram] = {}
        for name, help_text in _HISTOGRAMS.items():
            self._histograms[name] = Histogram(
                f"pdplan_worker_{name}",
                help_text,
                ["role"],
                buckets=LATENCY_BUCKETS_S,
                registry=self.registry,
            )
            self._histograms[name].labels(role)
            if name in SGLANG_NAMES:
                self._sglang[name] = Histogram(
                    SGLANG_NAMES[name],
                    help_text,
                    ["model_name"],
                    buckets=LATENCY_BUCKETS_S,
                    registry=self.registry,
                ).labels(model_name)
        self.steps: deque[StepRecord] = deque(maxlen=STEP_LOG_SIZE)
        self.prefills: deque[PrefillRecord] = deque(maxlen=STEP_LOG_SIZE)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (under its SGLang name too, where SGLang has one)."""
        Gauge(f"pdplan_worker_{name}", help_text, ["role"], registry=self.registry).labels(
            self.role
        ).set_function(read)
        if name in SGLANG_NAMES:
            Gauge(SGLANG_NAMES[name], help_text, ["model_name"], registry=self.registry).labels(
                self.model_name
            ).set_function(read)

    def inc(self, name: str, value: float = 1.0, label: str = "") -> None:
        """Add ``value`` to counter ``name`` (``label``: the value of its label, if it has one)."""
        assert name in _COUNTERS and bool(label) == bool(_COUNTERS[name][1]), (name, label)
        labels = (self.role, label) if label else (self.role,)
        self._counters[name].labels(*labels).inc(value)
        if name in self._sglang:
            self._sglang[name].inc(value)
        with self._lock:
            self._counts[(name, label)] = self._counts.get((name, label), 0.0) + value

    def observe(self, name: str, value_s: float) -> None:
        self._histograms[name].labels(self.role).observe(value_s)
        if name in self._sglang:
            self._sglang[name].observe(value_s)

    def decode_step(
        self,
        batch_size: int,
        context_tokens: int,
        step_s: float,
        start_s: float,
        running_after: int,
        cpu_s: float = float("nan"),
    ) -> None:
        """Record one decode step (see :class:`StepRecord`)."""
        self._histograms["decode_step_seconds"].labels(self.role).observe(step_s)
        ms = step_s * 1000.0
        record = StepRecord(batch_size, context_tokens, ms, start_s, running_after, cpu_s * 1000.0)
        with self._lock:
            self.steps.append(record)

    def prefill_batch(
        self,
        new_tokens: list[int],
        prior_tokens: list[int],
        step_s: float,
        cpu_s: float,
        start_s: float,
        decode_batch: int = 0,
        decode_context: int = 0,
    ) -> None:
        """Record one prefill forward, or a mixed step with its decodes (see :class:`PrefillRecord`)."""
        self.observe("prefill_batch_seconds", step_s)
        ms, cpu_ms = step_s * 1000.0, cpu_s * 1000.0
        record = PrefillRecord(
            tuple(new_tokens), tuple(prior_tokens), ms, cpu_ms, start_s, decode_batch, decode_context
        )
        with self._lock:
            self.prefills.append(record)

    def recent_steps(self) -> list[StepRecord]:
        with self._lock:
            return list(self.steps)

    def recent_prefills(self) -> list[PrefillRecord]:
        with self._lock:
            return list(self.prefills)

    def counter(self, name: str, label: str = "") -> float:
        with self._lock:
            return self._counts.get((name, label), 0.0)

    def render(self) -> str:
        """The Prometheus text exposition (0.0.4) of every metric."""
        return generate_latest(self.registry).decode("utf-8")

"""``Engine``: the one thread of a worker that runs the executor, with the scheduler of its role.

- **prefill**: FIFO prompts are packed into one forward of at most ``max_batch_tokens`` tokens (a
  longer prompt runs alone), each prompt's tokens reserved in the worker's KV budget first (the KV
  waits there until the decode side has it); the first token is sampled and the cache handed back.
- **decode**: requests arrive with their KV and first token; continuous batching admits them FIFO
  while the running batch is below ``max_batch_size`` (their KV tokens were reserved on arrival).
- **colocated**: ``schedule="prefill-first"`` (vLLM's default policy): a waiting prompt batch runs
  before the next decode step whenever the running batch has room; then decode steps as above.
  ``schedule="chunked"`` (Sarathi-Serve's stall-free batching, vLLM V1's scheduler): while prompts
  wait and the running batch has room, every step is one *mixed* forward — each running request's
  decode token plus FIFO prompt slices filling the rest of a ``chunk_tokens`` budget (a decode
  counts one token; :func:`chunked.mixed_forward`) — so a long prompt never stalls running decodes
  for more than one step; with no prompt to take, plain decode steps. This is the step the
  simulator prices (``StepCoef.mixed_s``, ``sim/colocated_chunkkv.py``); until the sixth pass of
  issue 11 the worker ran a slice and a decode step as two forwards, paying the fixed cost twice
  and holding each decode token for both.

With ``chunk_tokens`` set (prefill and colocated roles), prompts are prefilled in slices of at most
that many tokens per forward (:mod:`chunked`); a prompt's first token comes after its last slice.

A decode worker passes ``recycle`` so finished caches return to its :class:`KvPool`.

With a ``prefix_cache`` (prefill and colocated roles, :mod:`prefix_cache`): when a prompt's prefill
starts (it joins a prefill batch, or its first slice runs) its longest cached prefix is matched and
copied into its cache — at scheduling time, as SGLang's scheduler matches
(``Req.init_next_round_input``) — the forward computes only the rest
(:func:`chunked.prefill_chunks`), and its whole pages are inserted when its prefill ends. Without
one, prefill runs exactly as before.

Threading contract: ``submit``/``cancel``/``stop`` are called from the event loop; every job gets
exactly one *terminal* event through ``job.sink`` (called on the engine thread): a final
``TokenEvent`` (``finish`` set), a ``PrefilledEvent``, an ``ErrorEvent`` or a ``CancelledEvent``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pdplan.profiles.executor import Executor
from pdplan.profiles.kv_cache import KVCache
from pdplan.realrun.chunked import mixed_forward, prefill_chunks
from pdplan.realrun.kv_budget import KvBudget
from pdplan.realrun.metrics import WorkerMetrics
from pdplan.realrun.prefix_cache import PrefixCache
from pdplan.realrun.protocol import SamplingParams
from pdplan.realrun.responses import Finish, Timeline
from pdplan.realrun.sampler import sample
from pdplan.realrun.worker_config import ROLES

log = logging.getLogger(__name__)
SCHEDULES = ("prefill-first", "chunked")


@dataclass(frozen=True)
class EngineConfig:
    role: str
    max_batch_size: int
    max_batch_tokens: int
    eos_token_ids: tuple[int, ...] = ()
    seed: int = 0
    chunk_tokens: int | None = None
    schedule: str = "prefill-first"

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role
        assert self.max_batch_size >= 1 and self.max_batch_tokens >= 1, self
        assert self.chunk_tokens is None or self.chunk_tokens >= 1, self
        assert self.schedule in SCHEDULES and (self.schedule != "chunked" or self.chunk_tokens), self


@dataclass(frozen=True)
class TokenEvent:
    token: int
    time_s: float
    finish: Finish | None


@dataclass(frozen=True)
class PrefilledEvent:
    token: int
    cache: KVCache
    start_s: float
    end_s: float
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied


@dataclass(frozen=True)
class ErrorEvent:
    message: str
    status: int = 500


@dataclass(frozen=True)
class CancelledEvent:
    pass


Event = TokenEvent | PrefilledEvent | ErrorEvent | CancelledEvent


@dataclass(eq=False)
class Job:
    """One request inside the engine. ``reserved_tokens`` is what the owner must release at the end."""

    rid: str
    prompt: tuple[int, ...]
    sampling: SamplingParams
    sink: Callable[[Event], None]
    timeline: Timeline = field(default_factory=Timeline)
    cache: KVCache | None = None
    first_token: int | None = None
    output: list[int] = field(default_factory=list)
    reserved_tokens: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = None
    prefilled: int = 0  # prompt tokens already in ``cache`` (chunked prefill)


class Engine:
    """Runs ``executor`` on its own thread for one role; see the module docstring for the contract."""

    def __init__(
        self,
        executor: Executor,
        config: EngineConfig,
        metrics: WorkerMetrics,
        budget: KvBudget,
        recycle: Callable[[KVCache], None] | None = None,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        assert prefix_cache is None or config.role != "decode", "decode workers keep no prefix cache"
        self.executor = executor
        self.prefix_cache = prefix_cache
        self._recycle = recycle
        self.config = config
        self.metrics = metrics
        self.budget = budget
        self._cv = threading.Condition()
        self._inbox: list[Job] = []
        self._stopping = False
        self._waiting_prefill: deque[Job] = deque()
        self._waiting_decode: deque[Job] = deque()
        self._running: list[Job] = []
        self._generator = torch.Generator().manual_seed(config.seed)
        self._thread = threading.Thread(target=self._run, name=f"engine-{config.role}", daemon=True)
        budget.add_listener(self.wake)

    # --- called from the event loop -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def submit(self, job: Job) -> None:
        """Queue a prompt (prefill/colocated) or a request with KV and first token (decode)."""
        with self._cv:
            self._inbox.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        self.wake()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    @property
    def waiting_count(self) -> int:
        return len(self._inbox) + len(self._waiting_prefill) + len(self._waiting_decode)

    @property
    def running_count(self) -> int:
        return len(self._running)

    # --- the engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self._has_work():
                        self._cv.wait(timeout=1.0)
                    if self._stopping:
                        break
                    arrived, self._inbox = self._inbox, []
                self._absorb(arrived)
                self._drop_cancelled()
                decodes = bool(self._running or self._waiting_decode)
                if self.config.schedule == "chunked":  # colocated: prompt slices ride in the decode step
                    budget = (self.config.chunk_tokens or 0) - len(self._running)
                    if self._can_prefill() and budget > 0:
                        self._chunked_prefill_step(budget, mixed=True)
                    elif decodes:
                        self._decode_step()
                elif self._can_prefill():
                    self._prefill_step()
                elif decodes:
                    self._decode_step()
        except Exception:
            log.exception("engine thread crashed")
        finally:
            with self._cv:
                self._stopping = True
                leftover = self._inbox + list(self._waiting_prefill) + list(self._waiting_decode)
                self._inbox = []
            for job in leftover + self._running:
                self._drop_cache(job)
                job.sink(ErrorEvent("worker is shutting down", 503))
            self._waiting_prefill.clear()
            self._waiting_decode.clear()
            self._running = []

    def _has_work(self) -> bool:
        return bool(self._inbox or self._running or self._waiting_decode or self._can_prefill())

    def _can_prefill(self) -> bool:
        if not self._waiting_prefill:
            return False
        if self.config.role == "prefill":
            if self._waiting_prefill[0].cache is not None:  # a prompt part-way through its slices
                return True
            head = len(self._waiting_prefill[0].prompt)
            return self.budget.used_tokens + head <= self.budget.capacity_tokens  # cached pages give way
        return len(self._running) < self.config.max_batch_size

    def _absorb(self, jobs: list[Job]) -> None:
        for job in jobs:
            if self.config.role != "decode":
                self._waiting_prefill.append(job)
                continue
            assert job.cache is not None and job.first_token is not None, "decode jobs carry KV"
            if job.cancelled:
                self._finish_cancelled(job)
            elif not self._emit(job, job.first_token, time.time()):
                self._waiting_decode.append(job)

    def _drop_cache(self, job: Job) -> None:
        """The job no longer needs its KV: hand it to ``recycle`` (a decode worker's pool) or free it."""
        if job.cache is not None and self._recycle is not None:
            self._recycle(job.cache)
        job.cache = None

    def _finish_cancelled(self, job: Job) -> None:
        self._drop_cache(job)
        job.sink(CancelledEvent())

    def _drop_cancelled(self) -> None:
        for queue in (self._waiting_prefill, self._waiting_decode):
            for job in [j for j in queue if j.cancelled]:
                queue.remove(job)
                self._finish_cancelled(job)
        for job in [j for j in self._running if j.cancelled]:
            self._running.remove(job)
            self._finish_cancelled(job)

    def _take_prefill_batch(self) -> list[Job]:
        batch: list[Job] = []
        tokens = 0
        room = self.config.max_batch_size - len(self._running)
        if self.config.role == "prefill":
            room = self.config.max_batch_size
        while self._waiting_prefill and len(batch) < room:
            n = len(self._waiting_prefill[0].prompt)
            if batch and tokens + n > self.config.max_batch_tokens:
                break
            if self.config.role == "prefill":
                if not self.budget.try_reserve(n):
                    break
                self._waiting_prefill[0].reserved_tokens = n
            batch.append(self._waiting_prefill.popleft())
            tokens += n
        return batch

    def _prefill_step(self) -> None:
        if self.config.chunk_tokens:
            self._chunked_prefill_step(self.config.chunk_tokens)
            return
        batch = self._take_prefill_batch()
        if not batch:
            return
        reserve = 0 if self.config.role == "prefill" else max(j.sampling.max_new_tokens for j in batch)
        start, cpu0 = time.time(), time.thread_time()
        try:
            if self.prefix_cache is None:
                prompts = [list(j.prompt) for j in batch]
                logits, caches = self.executor.prefill(prompts, reserve_tokens=reserve)
            else:
                logits, caches = self._prefill_cached(batch, reserve)
            tokens = self._sample(logits, batch)
        except (RuntimeError, ValueError) as err:
            log.exception("prefill of %d prompts failed", len(batch))
            for job in batch:
                job.sink(ErrorEvent(f"prefill failed: {err}", 500))
            return
        end = time.time()
        cached = [j.timeline.cached_tokens for j in batch]
        self.metrics.prefill_batch(
            [len(j.prompt) - c for j, c in zip(batch, cached, strict=True)], cached, end - start,
            time.thread_time() - cpu0, start,
        )  # fmt: skip
        self.metrics.inc("prefill_tokens_total", sum(len(j.prompt) for j in batch))
        for job, cache, token in zip(batch, caches, tokens, strict=True):
            job.timeline.prefill_start, job.timeline.prefill_end = start, end
            if self.config.role == "prefill":
                job.sink(PrefilledEvent(token, cache, start, end, job.timeline.cached_tokens))
                continue
            job.cache = cache
            job.timeline.decode_start = end
            if not self._emit(job, token, end):
                self._running.append(job)

    def _prefill_cached(self, batch: list[Job], reserve: int) -> tuple[torch.Tensor, list[KVCache]]:
        """One forward over the uncached part of every prompt of ``batch`` (their cached pages
        copied in first); the prompts' whole pages then enter the prefix cache."""
        assert self.prefix_cache is not None
        caches = [self.executor.new_cache(len(j.prompt) + max(reserve, 1)) for j in batch]
        for job, cache in zip(batch, caches, strict=True):
            job.timeline.cached_tokens = self.prefix_cache.fill(job.prompt, cache)
        logits = prefill_chunks(
            self.executor, [(j.prompt[c.length :], c) for j, c in zip(batch, caches, strict=True)]
        )
        for job, cache in zip(batch, caches, strict=True):
            self.prefix_cache.insert(job.prompt, cache)
        return logits, caches

    def _chunked_prefill_step(self, budget: int, mixed: bool = False) -> None:
        """One forward over at most ``budget`` prompt tokens, FIFO, the head prompt's slice first;
        ``mixed``: with every running request's decode token in the same forward."""
        room = self.config.max_batch_size - (0 if self.config.role == "prefill" else len(self._running))
        items: list[tuple[Job, tuple[int, ...]]] = []
        now = time.time()
        for job in self._waiting_prefill:
            if budget <= 0 or len(items) >= max(room, 1):
                break
            if job.cache is None:  # its first slice: reserve (prefill role) and allocate the cache
                n = len(job.prompt)
                if self.config.role == "prefill":
                    if not self.budget.try_reserve(n):
                        break
                    job.reserved_tokens = n
                reserve = 0 if self.config.role == "prefill" else job.sampling.max_new_tokens
                job.cache = self.executor.new_cache(n + max(reserve, 1))
                job.timeline.prefill_start = now
                if self.prefix_cache is not None:
                    job.timeline.cached_tokens = self.prefix_cache.fill(job.prompt, job.cache)
                    job.prefilled = job.cache.length
            take = min(budget, len(job.prompt) - job.prefilled)
            items.append((job, job.prompt[job.prefilled : job.prefilled + take]))
            budget -= take
        if not items:
            return
        riders = list(self._running) if mixed else []
        context = sum(j.cache.length for j in riders if j.cache is not None)
        start, cpu0 = time.time(), time.thread_time()
        prior = [job.prefilled for job, _ in items]
        try:
            slices = [(chunk, job.cache) for job, chunk in items]
            if riders:
                decodes = [(j.output[-1], j.cache) for j in riders]
                logits = mixed_forward(self.executor, slices, decodes)  # type: ignore[arg-type]
            else:
                logits = prefill_chunks(self.executor, slices)  # type: ignore[arg-type]
            for job, chunk in items:
                job.prefilled += len(chunk)
            done = [(i, job) for i, (job, _) in enumerate(items) if job.prefilled == len(job.prompt)]
            rows = [i for i, _ in done] + list(range(len(items), len(items) + len(riders)))
            sampled = self._sample(logits[rows], [job for _, job in done] + riders) if rows else []
        except (RuntimeError, ValueError) as err:
            log.exception("prefill slice of %d prompts (%d decodes beside) failed", len(items), len(riders))
            for job, _ in items:
                self._waiting_prefill.remove(job)
                job.cache = None
                job.sink(ErrorEvent(f"prefill failed: {err}", 500))
            for job in riders:
                self._drop_cache(job)
                job.sink(ErrorEvent(f"decode failed: {err}", 500))
            self._running = [j for j in self._running if j not in riders]
            return
        end = time.time()
        self.metrics.prefill_batch(
            [len(chunk) for _, chunk in items], prior, end - start, time.thread_time() - cpu0, start,
            len(riders), context,
        )  # fmt: skip
        self.metrics.inc("prefill_tokens_total", sum(len(chunk) for _, chunk in items))
        if riders:  # the decodes' tokens, as a decode step emits them
            finished = {
                id(j) for j, t in zip(riders, sampled[len(done) :], strict=True) if self._emit(j, t, end)
            }
            self._running = [j for j in self._running if id(j) not in finished]
        if not done:
            return
        tokens = sampled[: len(done)]
        for (_, job), token in zip(done, tokens, strict=True):
            self._waiting_prefill.remove(job)
            job.timeline.prefill_end = end
            if self.prefix_cache is not None and job.cache is not None:
                self.prefix_cache.insert(job.prompt, job.cache)
            if self.config.role == "prefill":
                cache, job.cache = job.cache, None
                assert cache is not None
                start_s = job.timeline.prefill_start or start
                job.sink(PrefilledEvent(token, cache, start_s, end, job.timeline.cached_tokens))
                continue
            job.timeline.decode_start = end
            if not self._emit(job, token, end):
                self._running.append(job)

    def _decode_step(self) -> None:
        while self._waiting_decode and len(self._running) < self.config.max_batch_size:
            job = self._waiting_decode.popleft()
            job.timeline.decode_start = time.time()
            self._running.append(job)
        if not self._running:
            return
        batch = self._running
        caches = [j.cache for j in batch]
        assert all(c is not None for c in caches), "running jobs hold KV"
        context = sum(c.length for c in caches if c is not None)
        start_s = time.time()
        start, cpu0 = time.perf_counter(), time.thread_time()
        try:
            logits = self.executor.decode([j.output[-1] for j in batch], caches)  # type: ignore[arg-type]
            tokens = self._sample(logits, batch)
        except (RuntimeError, ValueError) as err:
            log.exception("decode step of %d sequences failed", len(batch))
            for job in batch:
                self._drop_cache(job)
                job.sink(ErrorEvent(f"decode failed: {err}", 500))
            self._running = []
            return
        step_s, cpu_s = time.perf_counter() - start, time.thread_time() - cpu0
        now = time.time()
        self._running = [
            job for job, token in zip(batch, tokens, strict=True) if not self._emit(job, token, now)
        ]
        self.metrics.decode_step(len(batch), context, step_s, start_s, len(self._running), cpu_s)

    def _emit(self, job: Job, token: int, now: float) -> bool:
        """Append ``token`` to ``job``'s output and send it; returns whether the job finished."""
        job.output.append(token)
        params = job.sampling
        finish = None
        if (token in self.config.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            finish = Finish("stop", matched=token)
        elif len(job.output) >= params.max_new_tokens:
            finish = Finish("length", length=len(job.output))
        if finish is not None:
            self._drop_cache(job)
        job.sink(TokenEvent(token, now, finish))
        return finish is not None

    def _sample(self, logits: torch.Tensor, jobs: list[Job]) -> list[int]:
        for job in jobs:
            if job.sampling.seed is not None and job.generator is None:
                job.generator = torch.Generator().manual_seed(job.sampling.seed)
        return sample(logits, [j.sampling for j in jobs], [j.generator or self._generator for j in jobs])

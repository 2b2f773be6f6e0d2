"""The colocated cluster run: instances that prefill and decode, under a stated policy.

Life of a request: the router rejects it if it can never be served (more KV than an instance
holds; under ``admission: reserve`` with ``prefill-first`` also a prompt longer than
``max_batch_tokens``) and otherwise picks an instance (``pdplan.sim.router``). There it waits FIFO
until it is *admitted* at a step boundary. Under ``admission: reserve`` (``ColocatedInstance``)
its whole KV footprint (prompt + output) must fit and nothing is ever preempted; under
``admission: preempt`` (the default) KV grows as tokens are produced and the most recently
admitted request is preempted and recomputed when it runs out: a ``chunked`` prompt is admitted
when its whole sequence fits and takes its KV chunk by chunk, as vLLM V1 does
(``colocated_chunkkv.ChunkwiseColocatedInstance``), a ``prefill-first`` prompt takes it whole
(``colocated_preempt.PreemptingColocatedInstance``, which also runs ``admission:
preempt-prompt``: a chunked prompt's KV taken whole at admission and held). The instance runs
fewer than ``max_batch_size`` requests. Then, by policy:

- ``prefill-first``: each boundary admits what it can (up to ``max_batch_tokens`` of prompts) and
  runs one prefill step of those prompts with the decodes paused (vLLM's default scheduler without
  chunked prefill). With nothing to admit, the running batch decodes.
- ``chunked``: admitted prompts are prefilled in chunks inside decode steps: each step carries
  all running decodes plus prompt tokens, FCFS, up to ``chunk_tokens`` in total (a decode counts
  one token), as in Sarathi-Serve. Its time is ``StepCoef.mixed_s`` (see ``pdplan.sim.costs``).

A prompt's last chunk (or its prefill step) delivers its first token; it then decodes
``output − 1`` steps. Runs of pure-decode steps with no admission are coalesced into one event as
on decode instances (``pdplan.sim.decode``); an arrival that could be admitted cuts the run at the
first boundary at or after it. Order at a boundary: the finished step's prompts join the batch →
finishers leave → admission → the next step is chosen.

With a prefix cache (``pdplan.sim.prefix_cache``) a request's cached tokens are looked up when it
is routed; its prefill (a first prefill, not a recompute) starts after them (its KV still counts
whole) and the step that starts it also waits for their load from L2/L3; its blocks enter the
cache when its prefill completes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush

import numpy as np
from mypy_extensions import mypyc_attr

from pdplan.sim.cluster import ColocatedCluster
from pdplan.sim.costs import StepCoef
from pdplan.sim.kernel import INSTANCE, Event, Kernel, boundary_s, first_boundary_at_or_after
from pdplan.sim.prefix_cache import make_cache
from pdplan.sim.records import Ledger, SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.router import make_chooser

IDLE, STEP, SEGMENT = range(3)


@mypyc_attr(allow_interpreted_subclasses=True)  # its subclasses are (compiled: pdplan.sim.compiled)
class ColocatedInstance:
    """One colocated instance; see the module docstring."""

    def __init__(self, run: ColocatedRun, index: int) -> None:
        pool, coef = run.cluster.pool, run.coef
        self.run, self.env, self.index, self.coef = run, run.env, index, coef
        self.prompt, self.output, self.ledger = run.prompt, run.output, run.ledger
        self.chunked = pool.policy == "chunked"
        self.max_batch, self.max_tokens, self.chunk = (
            pool.max_batch_size,
            pool.max_batch_tokens,
            pool.chunk_tokens,
        )
        self.kv_free = run.cluster.cost.kv_capacity_tokens
        self.cache = run.cache
        self.waiting: deque[int] = deque()
        self.prefilling: deque[int] = deque()  # chunked: admitted, prompt not done (head part-done)
        self.head_done = 0
        self.batch = self.ctx = self.steps = 0
        self.fin: list[tuple[int, int]] = []  # heap of (finish_step, req_id)
        self.mode = IDLE
        self.completing: list[int] = []
        self.step_decodes = False
        self.t0, self.first, self.q = 0.0, 0.0, 0.0
        self.wake: Event | None = None
        self.wake_k = 0
        self._at, self._wake_callback = run.env.at, self._on_wake  # bound once: one per step
        self.busy_s = 0.0

    def push(self, rid: int) -> None:
        """A routed request arrives now (the run starts idle instances after the instant's arrivals)."""
        self.waiting.append(rid)
        if self.mode == SEGMENT and len(self.waiting) == 1 and self._admissible(rid):
            k = first_boundary_at_or_after(self.t0, self.first, self.q, self.env.now)
            if k < self.wake_k:
                self._schedule(boundary_s(self.t0, self.first, self.q, k), k)

    def _admissible(self, rid: int) -> bool:
        return (
            self.prompt[rid] + self.output[rid] <= self.kv_free
            and self.batch + len(self.prefilling) < self.max_batch
        )

    def _schedule(self, time_s: float, k: int) -> None:
        self.wake_k = k
        self.wake = self._at(time_s, INSTANCE, self._wake_callback)

    def _on_wake(self, event: Event) -> None:
        if event != self.wake:
            return  # superseded by a cut
        self.wake = None
        now = self.env.now
        self.busy_s += now - self.t0
        prompt, output = self.prompt, self.output
        if self.mode == STEP:
            if self.step_decodes:
                self.steps += 1
                self.ctx += self.batch
            ledger = self.ledger
            for rid in self.completing:
                ledger.prefill_end_s[rid] = ledger.first_token_s[rid] = ledger.decode_start_s[rid] = now
                if output[rid] == 1:
                    self._release(rid, now)
                else:
                    heappush(self.fin, (self.steps + output[rid] - 1, rid))
                    self.batch += 1
                    self.ctx += prompt[rid]
            if self.cache is not None:
                for rid in self.completing:
                    self.cache.insert(rid, self.index)
        else:
            self.steps += self.wake_k
            self.ctx += self.batch * self.wake_k
        fin, steps = self.fin, self.steps
        while fin and fin[0][0] == steps:
            rid = heappop(fin)[1]
            self.batch -= 1
            self.ctx -= prompt[rid] + output[rid] - 1
            self._release(rid, now)
        self.next_step(now)

    def _release(self, rid: int, now: float) -> None:
        need = self.prompt[rid] + self.output[rid]
        self.ledger.finish_s[rid] = now
        self.kv_free += need
        self.run.load[self.index] -= need

    def next_step(self, now: float) -> None:
        """Admit, then start the next step (prefill, mixed or decode run) or go idle."""
        self.t0 = now
        started = self._chunked_step(now) if self.chunked else self._prefill_step(now)
        if started:
            self.mode = STEP
        elif self.batch:
            self.mode = SEGMENT
            coef, batch, knee = self.coef, self.batch, self.coef.dk  # StepCoef.decode_s, inlined
            first = coef.de + coef.df * (batch if batch > knee else knee) + coef.dg * self.ctx
            if coef.xs:  # a MoE's expert reads, X(B)
                first += coef.xs * (1.0 - coef.miss**batch)
            self.first = first
            q = self.q = coef.dg * batch * 0.5
            k = self.fin[0][0] - self.steps
            self._schedule(boundary_s(now, first, q, k), k)
        else:
            self.mode = IDLE

    def _reserve(self, rid: int, now: float) -> None:
        self.waiting.popleft()
        self.kv_free -= self.prompt[rid] + self.output[rid]
        self.ledger.kv_start_s[rid] = now

    def _prefill_step(self, now: float) -> bool:
        waiting, prompt = self.waiting, self.prompt
        completing: list[int] = []
        tokens = pairs = 0
        cache, load_s = self.cache, 0.0
        while waiting:
            rid = waiting[0]
            skip = cache.skip[rid] if cache is not None else 0
            n = prompt[rid] - skip
            if (
                tokens + n > self.max_tokens
                or self.prompt[rid] + self.output[rid] > self.kv_free
                or self.batch + len(completing) >= self.max_batch
            ):
                break
            self._reserve(rid, now)
            self.ledger.prefill_start_s[rid] = now
            completing.append(rid)
            tokens += n
            pairs += n * n + 2 * n * skip
            if cache is not None:
                load_s += cache.load_s[rid]
        if not completing:
            return False
        self.completing, self.step_decodes = completing, False
        self._schedule(now + self.coef.prefill_s(len(completing), tokens, pairs) + load_s, 0)
        return True

    def _chunked_step(self, now: float) -> bool:
        waiting, prefilling, prompt = self.waiting, self.prefilling, self.prompt
        while waiting and self._admissible(waiting[0]):
            rid = waiting[0]
            self._reserve(rid, now)
            prefilling.append(rid)
        left = self.chunk - self.batch
        if not prefilling or left <= 0:
            return False
        done, num_seqs, tokens, pairs = self.head_done, 0, 0, 0
        cache, load_s = self.cache, 0.0
        completing: list[int] = []
        while prefilling and left > 0:
            rid = prefilling[0]
            if done == 0:
                self.ledger.prefill_start_s[rid] = now
                if cache is not None:
                    done = cache.skip[rid]
                    load_s += cache.load_s[rid]
            remaining = prompt[rid] - done
            n = remaining if remaining <= left else left
            pairs += n * n + 2 * n * done
            tokens += n
            num_seqs += 1
            left -= n
            if n < remaining:
                done += n
                break
            prefilling.popleft()
            completing.append(rid)
            done = 0
        self.head_done = done
        self.completing, self.step_decodes = completing, self.batch > 0
        duration = self.coef.mixed_s(num_seqs, tokens, pairs, self.batch, self.ctx)
        self._schedule(now + duration + load_s, 0)
        return True


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed in Python (compiled: pdplan.sim.compiled)
class ColocatedRun:
    """State shared by the instances of one colocated run (lists indexed by req_id)."""

    def __init__(
        self,
        requests: Requests,
        cluster: ColocatedCluster,
        router: str,
        rng: np.random.Generator,
        instance_factory=None,
    ) -> None:
        n = len(requests)
        self.env = Kernel()
        self._preempt_lists: tuple[list[int], list[int], list[int]] | None = None
        self.cluster, self.requests, self.num_requests = cluster, requests, n
        self.arrival_np = requests.arrival_s - (requests.arrival_s[0] if n else 0.0)
        self.arrival: list[float] = self.arrival_np.tolist()
        self.prompt: list[int] = requests.prompt_tokens.tolist()
        self.output: list[int] = requests.output_tokens.tolist()
        self.ledger = Ledger(n)
        self.instance_of = [-1] * n
        self.coef = StepCoef.of(cluster.cost.latency)
        self.load = [0] * cluster.pool.instances
        kv_cap = cluster.cost.kv_capacity_tokens
        self.cache = make_cache(
            cluster.cache,
            requests.prefix,
            self.prompt,
            cluster.pool.instances,
            cluster.kv_bytes_per_token,
            lambda k: kv_cap - self.load[k],
        )
        blocks = requests.prefix if router == "cache_aware" else None
        unit = float(np.mean(requests.prompt_tokens + requests.output_tokens)) if n else 1.0
        self.choose = make_chooser(router, self.load, n, rng, blocks, unit)
        pool = cluster.pool
        preempt = pool.admission != "reserve"
        if instance_factory is None:
            # the preempting instances subclass ColocatedInstance in their own modules
            from pdplan.sim.colocated_chunkkv import ChunkwiseColocatedInstance
            from pdplan.sim.colocated_preempt import PreemptingColocatedInstance

            if not preempt:
                instance_factory = ColocatedInstance
            elif pool.admission == "preempt" and pool.policy == "chunked":
                instance_factory = ChunkwiseColocatedInstance
            else:
                instance_factory = PreemptingColocatedInstance
        self.instances = [instance_factory(self, i) for i in range(cluster.pool.instances)]
        # conservative admission keeps today's rule: prefill-first rejects prompts above a batch
        limited = pool.policy == "prefill-first" and not preempt
        self.max_prompt = pool.max_batch_tokens if limited else math.inf
        self.max_footprint = cluster.cost.kv_capacity_tokens
        self.next_arrival = 0
        self.progress: Callable[[int, int], None] | None = None  # (done, total), ``simulate``
        self.progress_every = max(1, n // 100)

    def on_arrival(self, event: Event | None = None) -> None:
        arrival, prompt, output = self.arrival, self.prompt, self.output
        i, n = self.next_arrival, self.num_requests
        now = arrival[i]
        idle: list[ColocatedInstance] = []
        while True:
            need = prompt[i] + output[i]
            if prompt[i] > self.max_prompt or need > self.max_footprint:
                self.ledger.rejected[i] = 1
            else:
                k = self.instance_of[i] = self.choose(i)
                self.load[k] += need
                if self.cache is not None:
                    self.cache.lookup(i, k)
                instance = self.instances[k]
                instance.push(i)
                if instance.mode == IDLE:
                    idle.append(instance)
            i += 1
            if self.progress is not None and i % self.progress_every == 0:
                self.progress(i, n)
            if i == n or arrival[i] != now:
                break
        self.next_arrival = i
        for instance in idle:  # after every arrival of this instant is queued
            if instance.mode == IDLE:
                instance.next_step(now)
        if i < n:
            self.schedule_arrival(i)

    def schedule_arrival(self, i: int) -> None:
        """Wake at request ``i``'s arrival (a hook: ``pdplan.sim.closed_loop`` issues arrivals as
        clients finish instead)."""
        self.env.at_arrival(self.arrival[i], self.on_arrival)

    def run(self, until_s: float | None) -> SimResult:
        if self.num_requests:
            self.env.at_arrival(0.0, self.on_arrival)
        self.env.run(until=until_s)
        records, kv_start, transfer_end = self.ledger.finish(
            self.arrival_np, self.requests.prompt_tokens, self.requests.output_tokens
        )
        pool = self.cluster.pool
        return SimResult(
            records=records,
            mode="colocated",
            instances={"colocated": pool.instances},
            kv_capacity_tokens={"colocated": self.cluster.cost.kv_capacity_tokens},
            busy_s={"colocated": float(sum(inst.busy_s for inst in self.instances))},
            end_s=float(self.env.now),
            instance={"colocated": np.asarray(self.instance_of, dtype=np.int32)},
            kv_start_s=kv_start,
            transfer_end_s=transfer_end,
            events=self.env.events_scheduled(),
            preemptions=sum(getattr(inst, "preemptions", 0) for inst in self.instances),
            cache=None if self.cache is None else self.cache.stats(),
        )

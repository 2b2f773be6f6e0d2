"""Colocated instances that allocate KV as tokens are produced and preempt when it runs out
(``ColocatedPool.admission = "preempt"`` under ``prefill-first``, and ``"preempt-prompt"``; the run
is :mod:`pdplan.sim.colocated`, chunk-by-chunk prompts :mod:`pdplan.sim.colocated_chunkkv`), and
what a preempted request finds of its KV in the engine's prefix cache when it is re-admitted."""

from __future__ import annotations

from heapq import heappop, heappush

from mypy_extensions import mypyc_attr

from pdplan.sim.colocated import IDLE, SEGMENT, STEP, ColocatedInstance, ColocatedRun
from pdplan.sim.decode import _shared_lists
from pdplan.sim.kernel import INSTANCE, Event

KV_BLOCK_TOKENS = 16  # vLLM's default block size; its prefix cache hits whole blocks only


def cached_prefix(fill: int, overwritten: int, block: int = KV_BLOCK_TOKENS) -> int:
    """Tokens of a preempted request's ``fill`` (prompt + generated) still cached when it is
    re-admitted, after ``overwritten`` slots of its freed KV were handed to others.

    vLLM (V1, prefix caching on, its default) frees a preempted request's blocks to the tail of
    the free queue in reverse order, so its last blocks are evicted first, and allocates from the
    head; a re-admitted request finds its longest cached prefix of whole blocks, and at least its
    last token is recomputed (its logits are needed).
    """
    kept = fill - overwritten
    if kept < block:
        return 0
    kept -= kept % block
    return kept if kept < fill else fill - 1


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed in Python (compiled: pdplan.sim.compiled)
class PreemptingColocatedInstance(ColocatedInstance):
    """A colocated instance that allocates KV as tokens are produced and preempts when it runs out
    (``ColocatedPool.admission = "preempt"`` or ``"preempt-prompt"``), as vLLM and SGLang do.

    - A request is admitted when its prompt's KV fits beside the running batch's next tokens (KV
      for the prompt is taken at admission, whole, even when it is prefilled in chunks: the
      ``chunked`` policy under ``preempt`` takes it chunk by chunk instead, in the subclass
      ``colocated_chunkkv.ChunkwiseColocatedInstance``); its KV then grows by one token per
      decode step.
    - When the running sequences' next tokens do not fit, the most recently admitted running
      request is preempted: its KV is freed and it goes back to the head of the waiting queue
      (vLLM's recompute preemption; SGLang's retract picks the request with the fewest output
      tokens, the same one under FIFO admission). Re-admitted, it is prefilled again — prompt plus
      the tokens it had generated — by the instance's own policy, and rejoins the batch without a
      new first token, needing only the steps it had left.
    - Under ``prefill-first`` a prompt longer than ``max_batch_tokens`` is never rejected: it is
      prefilled alone, in chunks of ``max_batch_tokens`` run back to back (vLLM schedules it in
      chunks).
    """

    def __init__(self, run: ColocatedRun, index: int) -> None:
        super().__init__(run, index)
        self.cap = self.kv_free
        self.held = 0  # KV of admitted prompts that are not decoding yet
        # per request, shared by the run's instances (see ``pdplan.sim.decode._shared_lists``)
        self.done, self.join_step, self.fin_step = _shared_lists(run)
        self.recomputing: set[int] = set()
        self.order: list[int] = []  # running rids in admission order (stale entries skipped)
        self.preemptions = 0
        # A prefix-caching engine keeps a preempted request's freed KV blocks, evictable, until
        # new allocations take them: ``allocated`` counts every token slot handed out, and a
        # re-admitted request skips the prefix that is still cached (``skip``, whole blocks).
        self.reuse = run.cluster.pool.reuse_preempted_kv
        self.allocated = 0
        self.preempted_at: dict[int, int] = {}
        self.skip: dict[int, int] = {}

    def _fill(self, rid: int) -> int:
        """Tokens the request's (re)prefill computes (``done`` is 0 until it is preempted)."""
        return self.prompt[rid] + self.done[rid]

    def _admissible(self, rid: int) -> bool:
        # its KV, and one more token for every sequence once it joins, must fit
        joined = self.batch + len(self.prefilling) + 1
        fill = self.prompt[rid] + self.done[rid]
        return fill + joined <= self.cap - self.held - self.ctx and joined <= self.max_batch

    def _reserve(self, rid: int, now: float) -> None:
        self.waiting.popleft()
        fill = self._fill(rid)
        if rid in self.recomputing:
            if self.reuse:
                self.skip[rid] = cached_prefix(fill, self.allocated - self.preempted_at.pop(rid))
        else:
            self.ledger.kv_start_s[rid] = now
        self.held += fill
        self.allocated += fill

    def _release(self, rid: int, now: float) -> None:
        self.ledger.finish_s[rid] = now
        self.run.load[self.index] -= self.prompt[rid] + self.output[rid]

    def _join(self, rid: int, context: int, left: int) -> None:
        self.join_step[rid] = self.steps
        self.fin_step[rid] = step = self.steps + left
        heappush(self.fin, (step, rid))
        self.order.append(rid)
        self.batch += 1
        self.ctx += context

    def _preempt(self) -> None:
        """Evict the most recently admitted running requests until the next tokens fit."""
        while self.batch and self.cap - self.held - self.ctx < self.batch:
            rid = self.order.pop()
            if self.fin_step[rid] < 0:
                continue
            self.fin_step[rid] = -1
            done = self.done[rid] = self.done[rid] + self.steps - self.join_step[rid]
            # its blocks join the free queue behind the slots free now: those are taken first
            self.preempted_at[rid] = self.allocated + max(0, self.cap - self.held - self.ctx)
            self.ctx -= self.prompt[rid] + done
            self.batch -= 1
            self.waiting.appendleft(rid)
            self.recomputing.add(rid)
            self.preemptions += 1

    def _on_wake(self, event: Event) -> None:
        if event != self.wake:
            return
        self.wake = None
        now = self.env.now
        self.busy_s += now - self.t0
        if self.mode == STEP:
            if self.step_decodes:
                batch = self.batch
                self.steps += 1
                self.ctx += batch
                self.allocated += batch
            if self.completing:
                self._prompts_done(now)
        else:
            k = self.wake_k
            grown = self.batch * k
            self.steps += k
            self.ctx += grown
            self.allocated += grown
        fin, steps = self.fin, self.steps
        if fin and fin[0][0] <= steps:
            fin_step, prompt, output = self.fin_step, self.prompt, self.output
            finish, load, index = self.ledger.finish_s, self.run.load, self.index
            while fin and fin[0][0] <= steps:
                step, rid = heappop(fin)
                if fin_step[rid] != step:
                    continue  # preempted since
                fin_step[rid] = -1
                self.batch -= 1
                self.ctx -= prompt[rid] + output[rid] - 1
                finish[rid] = now  # _release, inlined
                load[index] -= prompt[rid] + output[rid]
        self.next_step(now)

    def _prompts_done(self, now: float) -> None:
        """The finished step's prompts join the batch (or finish, with one output token)."""
        output, ledger, recomputing, done = self.output, self.ledger, self.recomputing, self.done
        for rid in self.completing:
            n = self.prompt[rid] + done[rid]  # _fill
            self.held -= n
            if rid in recomputing:
                recomputing.discard(rid)
                self.skip.pop(rid, None)
                self._join(rid, n, output[rid] - 1 - done[rid])
                continue
            ledger.prefill_end_s[rid] = ledger.first_token_s[rid] = ledger.decode_start_s[rid] = now
            if output[rid] == 1:
                self._release(rid, now)
            else:
                self._join(rid, n, output[rid] - 1)
        if self.cache is not None:
            for rid in self.completing:
                self.cache.insert(rid, self.index)

    def next_step(self, now: float) -> None:
        self.t0 = now
        if self.cap - self.held - self.ctx < self.batch:
            self._preempt()
        started = self._chunked_step(now) if self.chunked else self._prefill_step(now)
        if started:
            self.mode = STEP
        elif self.batch:
            self.mode = SEGMENT
            coef, knee, batch, ctx = self.coef, self.coef.dk, self.batch, self.ctx
            first = coef.de + coef.df * (batch if batch > knee else knee) + coef.dg * ctx
            if coef.xs:  # a MoE's expert reads, X(B)
                first += coef.xs * (1.0 - coef.miss**batch)
            self.first = first
            q = self.q = coef.dg * batch * 0.5
            fin, fin_step = self.fin, self.fin_step
            while fin_step[fin[0][1]] != fin[0][0]:
                heappop(fin)
            k = fin[0][0] - self.steps
            k_cap = (self.cap - self.held - ctx) // batch
            if k_cap < k:
                k = k_cap
            self.wake_k = k  # _schedule, inlined; boundary_s, inlined (the same expression)
            self.wake = self._at(now + (k * first + q * (k * (k - 1))), INSTANCE, self._wake_callback)
        else:
            self.mode = IDLE

    def _prefill_step(self, now: float) -> bool:
        waiting = self.waiting
        completing: list[int] = []
        tokens = pairs = 0
        limit = self.max_tokens
        cache, load_s, offset = self.cache, 0.0, 0
        while waiting:
            rid = waiting[0]
            n = self._fill(rid)
            # a first prefill skips what the prefix cache holds (pdplan.sim.prefix_cache)
            fresh_skip = cache.skip[rid] if cache is not None and rid not in self.recomputing else 0
            joined = self.batch + len(completing) + 1
            if (
                (tokens + n - fresh_skip > limit and completing)
                or n + joined > self.cap - self.held - self.ctx
                or joined > self.max_batch
            ):
                break
            self._reserve(rid, now)
            if rid not in self.recomputing:
                self.ledger.prefill_start_s[rid] = now
            completing.append(rid)
            # a recompute skips what is left of its freed KV (set by _reserve)
            cached = fresh_skip or self.skip.get(rid, 0)
            n -= cached  # tokens to compute; the cached ones' KV is still held whole
            tokens += n
            pairs += n * n + 2 * n * cached
            if fresh_skip:
                load_s += cache.load_s[rid]  # type: ignore[union-attr]
            if len(completing) == 1:
                offset = cached
            if tokens >= limit:
                break
        if not completing:
            return False
        self.completing, self.step_decodes = completing, False
        if tokens <= limit:
            duration = self.coef.prefill_s(len(completing), tokens, pairs)
        else:  # one prompt longer than a batch: its chunks back to back (after its cached prefix)
            duration, done, end = 0.0, offset, offset + tokens
            while done < end:
                c = min(limit, end - done)
                duration += self.coef.prefill_s(1, c, c * c + 2 * c * done)
                done += c
        self._schedule(now + duration + load_s, 0)
        return True

    def _chunked_step(self, now: float) -> bool:
        waiting, prefilling = self.waiting, self.prefilling
        while waiting and self._admissible(waiting[0]):
            rid = waiting[0]
            self._reserve(rid, now)
            prefilling.append(rid)
        left = self.chunk - self.batch
        if not prefilling or left <= 0:
            return False
        done, num_seqs, tokens, pairs = self.head_done, 0, 0, 0
        completing: list[int] = []
        cache, load_s = self.cache, 0.0
        while prefilling and left > 0:
            rid = prefilling[0]
            if done == 0 and rid not in self.recomputing:
                self.ledger.prefill_start_s[rid] = now
                if cache is not None:  # a first prefill starts after its cached prefix
                    done = cache.skip[rid]
                    load_s += cache.load_s[rid]
            cached = self.skip.get(rid, 0)  # a recompute: what is left of its freed KV
            remaining = self._fill(rid) - cached - done
            n = remaining if remaining <= left else left
            pairs += n * n + 2 * n * (done + cached)
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

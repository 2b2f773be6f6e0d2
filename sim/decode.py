"""A decode instance: KV admission, continuous batching, and coalesced decode steps.

Two KV admission policies (``DecodePool.admission``): ``preempt`` (the default,
``PreemptingDecodeInstance`` below: prompt reserved before the transfer, KV grown as tokens are
produced, recompute preemption when it runs out, as vLLM and SGLang) and ``reserve``
(``DecodeInstance``, conservative: prompt + output reserved at once, never preempted).

Life of a request here (disaggregated mode, ``reserve``):

1. When its prefill ends (or starts, under layer-wise overlap), the prefill side *offers* it. KV
   for its whole footprint (prompt + output tokens) is reserved at once, FIFO, if it fits and no
   earlier request is waiting (SGLang and vLLM pre-allocate the prompt's KV on the decode side
   before the transfer; reserving the output too means a running request never runs out of KV).
   Otherwise it waits in ``waiters`` until finishing requests free enough KV.
   **Preemption policy: none** — admission is conservative, so nothing is ever evicted.
2. The transfer starts when KV is reserved; its ready time is known at once (``Run.transfer``) and
   goes into the ``pending`` heap.
3. It joins the batch at the first step boundary at or after its ready time, if the batch has
   fewer than ``max_batch_size`` sequences (else at the first boundary where one leaves). Its
   first token is delivered then (TTFT ends, DESIGN.md); it then needs ``output − 1`` steps.

Between membership changes the batch is unchanged, so the instance schedules one event at the
next change — the earliest finish or the first boundary at or after the earliest pending ready
time — and sums the steps in closed form (``kernel.boundary_s``; the batch size, and so the
roofline knee's max(B, B0), is constant between changes). A request's finish is a step
count (``finish_step``), so nothing per request is touched between changes. When a new transfer
would join before the planned event, the instance re-plans and the superseded event is ignored
when it fires.

Order at a boundary: finishers leave and free KV → waiters start transfers (FIFO, while KV fits)
→ pending requests ready by now join (by ready time, then req_id) while the batch has room.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from pdplan.sim.kernel import INSTANCE, first_boundary_at_or_after

if TYPE_CHECKING:
    from pdplan.sim.disagg import Run
    from pdplan.sim.kernel import Event


@mypyc_attr(allow_interpreted_subclasses=True)  # its subclasses are (compiled: pdplan.sim.compiled)
class DecodeInstance:
    """One decode instance; see the module docstring."""

    def __init__(self, run: Run, index: int) -> None:
        coef = run.decode_coef
        self.run, self.env, self.index = run, run.env, index
        self.prompt, self.output, self.ledger = run.prompt, run.output, run.ledger
        self.e, self.f, self.g, self.knee = coef.de, coef.df, coef.dg, coef.dk
        self.xs, self.miss = coef.xs, coef.miss
        self.max_batch = run.cluster.decode.max_batch_size
        self.kv_free = run.cluster.decode_cost.kv_capacity_tokens
        self.batch = 0  # sequences in the running batch
        self.ctx = 0  # their context tokens at the segment start
        self.steps = 0  # decode steps run so far (finish times are step counts)
        self.fin: list[tuple[int, int]] = []  # heap of (finish_step, req_id)
        self.pending: list[tuple[float, int]] = []  # heap of (ready_s, req_id)
        self.waiters: deque[int] = deque()
        self.seg_t0, self.first, self.q = 0.0, 0.0, 0.0
        self.wake: Event | None = None
        self.wake_k = 0
        self.wake_t = math.inf
        self.busy_s = 0.0

    # --- from the prefill side -------------------------------------------------------------------
    def offer(self, rid: int, now: float, prefill_end: float, prefill_index: int) -> bool:
        """Reserve KV and start the transfer now if FIFO order and capacity allow."""
        need = self.prompt[rid] + self.output[rid]
        if self.waiters or need > self.kv_free:
            return False
        self.kv_free -= need
        ready = self._transfer(rid, now, prefill_end, prefill_index)
        if self.pending[0][1] != rid:
            return True  # an earlier-ready request already sets the next join
        if self.batch == 0:
            if ready < self.wake_t:
                self._schedule(ready, 0)
        elif self.batch < self.max_batch:
            t0, first, q = self.seg_t0, self.first, self.q
            k = first_boundary_at_or_after(t0, first, q, ready)
            if k < self.wake_k:
                self._schedule(t0 + (k * first + q * (k * (k - 1))), k)  # boundary_s, inlined
        return True

    def wait(self, rid: int) -> None:
        """Queue a request whose KV could not be reserved (served FIFO as KV frees)."""
        self.waiters.append(rid)

    # --- internals -------------------------------------------------------------------------------
    def _transfer(self, rid: int, now: float, prefill_end: float, prefill_index: int) -> float:
        ready = self.run.transfer(rid, now, prefill_end, prefill_index)
        ledger = self.ledger
        ledger.kv_start_s[rid] = now
        ledger.transfer_end_s[rid] = ready
        heappush(self.pending, (ready, rid))
        return ready

    def _schedule(self, time_s: float, k: int) -> None:
        self.wake_t = time_s
        self.wake_k = k
        self.wake = self.env.at(time_s, INSTANCE, self._on_wake)

    def _on_wake(self, event: Event) -> None:
        if event != self.wake:
            return  # superseded by a re-plan
        self.wake, self.wake_t = None, math.inf
        now = self.env.now
        batch = self.batch
        if batch:
            k = self.wake_k
            steps = self.steps = self.steps + k
            ctx = self.ctx + batch * k
            self.busy_s += now - self.seg_t0
            fin = self.fin
            if fin[0][0] == steps:
                prompt, output, finish = self.prompt, self.output, self.ledger.finish_s
                freed = 0
                while fin and fin[0][0] == steps:
                    rid = heappop(fin)[1]
                    need = prompt[rid] + output[rid]
                    batch -= 1
                    ctx -= need - 1
                    freed += need
                    finish[rid] = now
                self.batch = batch
                self.kv_free += freed
                self.run.decode_load[self.index] -= freed
            self.ctx = ctx
        pending = self.pending
        if self.waiters or (pending and pending[0][0] <= now):
            self._admit(now)
        self._plan(now)

    def _release(self, rid: int, now: float) -> None:
        need = self.prompt[rid] + self.output[rid]
        self.ledger.finish_s[rid] = now
        self.kv_free += need
        self.run.decode_load[self.index] -= need

    def _admit(self, now: float) -> None:
        prompt, output, pending, waiters = self.prompt, self.output, self.pending, self.waiters
        first_token, decode_start = self.ledger.first_token_s, self.ledger.decode_start_s
        while True:
            while waiters and prompt[waiters[0]] + output[waiters[0]] <= self.kv_free:
                rid = waiters.popleft()
                self.kv_free -= prompt[rid] + output[rid]
                self._transfer(rid, now, now, self.run.prefill_of[rid])
            freed = False
            while pending and pending[0][0] <= now and self.batch < self.max_batch:
                rid = heappop(pending)[1]
                first_token[rid] = decode_start[rid] = now
                if output[rid] == 1:  # the prefill's token was the only one: done on arrival
                    self._release(rid, now)
                    freed = True
                    continue
                heappush(self.fin, (self.steps + output[rid] - 1, rid))
                self.batch += 1
                self.ctx += prompt[rid]
            if not (freed and waiters):
                return

    def _plan(self, now: float) -> None:
        batch = self.batch
        if batch == 0:
            if self.pending:
                self._schedule(self.pending[0][0], 0)
            return
        self.seg_t0 = now
        # StepCoef.decode_s, inlined: below the roofline knee a step costs as if it held knee sequences
        knee = self.knee
        first = self.e + self.f * (batch if batch > knee else knee) + self.g * self.ctx
        if self.xs:  # a MoE's expert reads, X(B)
            first += self.xs * (1.0 - self.miss**batch)
        self.first = first
        q = self.q = self.g * batch * 0.5
        k = self.fin[0][0] - self.steps
        pending = self.pending
        if pending and batch < self.max_batch:
            k_join = first_boundary_at_or_after(now, first, q, pending[0][0])
            if k_join < k:
                k = k_join
        self._schedule(now + (k * first + q * (k * (k - 1))), k)  # boundary_s, inlined


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed in Python (compiled: pdplan.sim.compiled)
class PreemptingDecodeInstance(DecodeInstance):
    """A decode instance that allocates KV as tokens are produced and preempts when it runs out
    (``DecodePool.admission = "preempt"``), as vLLM and SGLang do.

    - An offered request reserves only its prompt's KV before the transfer (both engines
      pre-allocate the prompt on the decode side), FIFO, if it fits in what is left after the
      running batch's next token. Its KV then grows by one token per decode step.
    - Before each step every running sequence needs one more token of KV. When the instance cannot
      give it, the most recently admitted request is preempted (vLLM's recompute preemption; SGLang
      retracts the request with the fewest output tokens, which under FIFO admission is the same
      one), its KV freed, and it goes back to the head of the waiting queue.
    - A preempted request is re-admitted when its prompt plus the tokens it had generated fit; the
      instance then recomputes that KV in one prefill step of those tokens, with the batch paused
      (``StepCoef.prefill_s`` of the decode profile), and it rejoins the batch without a new first
      token, needing only the steps it had left.

    The step at which KV runs out is known in closed form (the batch grows by B tokens a step), so
    segments stay coalesced: the next event is the earliest of a finish, a join and that step.
    """

    def __init__(self, run: Run, index: int) -> None:
        super().__init__(run, index)
        self.cap = self.kv_free
        self.reserved = 0  # prompt KV of requests offered but not yet in the batch
        # per request (lists shared by the run's instances; a request lives on one instance):
        # decode steps generated before its last preemption, the step it (re)joined at, and its
        # finish step while running (-1 otherwise; heap entries that disagree are stale)
        self.done, self.join_step, self.fin_step = _shared_lists(run)
        self.order: list[int] = []  # running rids in admission order (stale entries skipped)
        self.recompute: set[int] = set()  # waiters that were preempted
        self.pause = 0.0
        self.preemptions = 0
        self.prefill_coef = run.decode_coef

    def offer(self, rid: int, now: float, prefill_end: float, prefill_index: int) -> bool:
        need = self.prompt[rid]
        batch = self.batch
        if self.waiters:
            return False
        if batch:
            # the room left at the planned wake is the least over the segment: when the prompt
            # fits there, it fits now; otherwise find the boundary now falls in
            room = self.cap - self.reserved - self.ctx - batch * (self.wake_k + 1)
            if need + 1 > room:
                k_now = first_boundary_at_or_after(self.seg_t0, self.first, self.q, now)
                room = self.cap - self.reserved - self.ctx - batch * (k_now + 1)
        else:
            room = self.cap - self.reserved - self.ctx
        if need + 1 > room:  # its prompt, and its first decode token
            return False
        self.reserved += need
        ready = self._transfer(rid, now, prefill_end, prefill_index)
        if batch == 0:
            if ready < self.wake_t:
                self._schedule(ready, 0)
            return True
        k = (self.cap - self.reserved - self.ctx) // batch
        if self.pending[0][1] == rid and batch < self.max_batch:
            k_join = first_boundary_at_or_after(self.seg_t0, self.first, self.q, ready)
            if k_join < k:
                k = k_join
        if k < self.wake_k:
            self._schedule(self.seg_t0 + (k * self.first + self.q * (k * (k - 1))), k)
        return True

    def _on_wake(self, event: Event) -> None:
        if event != self.wake:
            return
        self.wake, self.wake_t = None, math.inf
        now = self.env.now
        if self.batch:
            k = self.wake_k
            self.steps += k
            self.ctx += self.batch * k
            self.busy_s += now - self.seg_t0
            if self.fin[0][0] <= self.steps:
                self._finish(now)
            if self.cap - self.reserved - self.ctx < self.batch:
                self._preempt()
        pending = self.pending
        if self.waiters or (pending and pending[0][0] <= now):
            self._admit(now)
            if self.cap - self.reserved - self.ctx < self.batch:
                self._preempt()
        self._plan(now)

    def _finish(self, now: float) -> None:
        fin, steps, fin_step = self.fin, self.steps, self.fin_step
        prompt, output, finish = self.prompt, self.output, self.ledger.finish_s
        while fin and fin[0][0] <= steps:
            step, rid = heappop(fin)
            if fin_step[rid] != step:
                continue  # preempted since
            fin_step[rid] = -1
            self.batch -= 1
            self.ctx -= prompt[rid] + output[rid] - 1
            finish[rid] = now
            self.run.decode_load[self.index] -= prompt[rid] + output[rid]

    def _preempt(self) -> None:
        """Evict the most recently admitted requests until the next step's tokens fit."""
        while self.batch and self.cap - self.reserved - self.ctx < self.batch:
            rid = self.order.pop()
            if self.fin_step[rid] < 0:
                continue  # finished or preempted already
            self.fin_step[rid] = -1
            done = self.done[rid] = self.done[rid] + self.steps - self.join_step[rid]
            self.ctx -= self.prompt[rid] + done
            self.batch -= 1
            self.waiters.appendleft(rid)
            self.recompute.add(rid)
            self.preemptions += 1

    def _join(self, rid: int, context: int, left: int) -> None:
        self.join_step[rid] = self.steps
        self.fin_step[rid] = step = self.steps + left
        heappush(self.fin, (step, rid))
        self.order.append(rid)
        self.batch += 1
        self.ctx += context

    def _admit(self, now: float) -> None:
        prompt, output, pending, waiters = self.prompt, self.output, self.pending, self.waiters
        first_token, decode_start = self.ledger.first_token_s, self.ledger.decode_start_s
        while True:
            room = self.cap - self.reserved - self.ctx - self.batch
            while waiters:
                rid = waiters[0]
                if rid in self.recompute:
                    done = self.done[rid]
                    need = prompt[rid] + done
                    if need + 1 > room or self.batch >= self.max_batch:
                        break
                    waiters.popleft()
                    self.recompute.discard(rid)
                    self.pause += self.prefill_coef.prefill_s(1, need, need * need)
                    self._join(rid, need, output[rid] - 1 - done)
                    room -= need + 1
                else:
                    need = prompt[rid]
                    if need + 1 > room:
                        break
                    waiters.popleft()
                    self.reserved += need
                    self._transfer(rid, now, now, self.run.prefill_of[rid])
                    room -= need + 1
            freed = False
            while pending and pending[0][0] <= now and self.batch < self.max_batch:
                rid = heappop(pending)[1]
                first_token[rid] = decode_start[rid] = now
                self.reserved -= prompt[rid]
                if output[rid] == 1:
                    self._release(rid, now)
                    freed = True
                    continue
                self._join(rid, prompt[rid], output[rid] - 1)
            if not (freed and waiters):
                return

    def _release(self, rid: int, now: float) -> None:
        self.ledger.finish_s[rid] = now
        self.run.decode_load[self.index] -= self.prompt[rid] + self.output[rid]

    def _plan(self, now: float) -> None:
        batch = self.batch
        if batch == 0:
            if self.pending:
                self._schedule(self.pending[0][0], 0)
            return
        t0 = now + self.pause
        self.busy_s += self.pause
        self.pause = 0.0
        self.seg_t0 = t0
        knee = self.knee
        first = self.e + self.f * (batch if batch > knee else knee) + self.g * self.ctx
        if self.xs:  # a MoE's expert reads, X(B)
            first += self.xs * (1.0 - self.miss**batch)
        self.first = first
        q = self.q = self.g * batch * 0.5
        fin, fin_step = self.fin, self.fin_step
        while fin_step[fin[0][1]] != fin[0][0]:
            heappop(fin)  # stale entries of preempted requests
        k = fin[0][0] - self.steps
        k_cap = (self.cap - self.reserved - self.ctx) // batch
        if k_cap < k:
            k = k_cap
        pending = self.pending
        if pending and batch < self.max_batch:
            k_join = first_boundary_at_or_after(t0, first, q, pending[0][0])
            if k_join < k:
                k = k_join
        self._schedule(t0 + (k * first + q * (k * (k - 1))), k)


def _shared_lists(run: object) -> tuple[list[int], list[int], list[int]]:
    """``done``, ``join_step`` and ``fin_step`` per request, created once per run."""
    lists = getattr(run, "_preempt_lists", None)
    if lists is None:
        n = len(run.prompt)  # type: ignore[attr-defined]
        lists = ([0] * n, [0] * n, [-1] * n)
        run._preempt_lists = lists  # type: ignore[attr-defined]
    return lists

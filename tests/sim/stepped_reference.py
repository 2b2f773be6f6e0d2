"""Slow reference instances: one event per decode step, per-request counters, no coalescing.

They plug into the simulator's runs in place of ``DecodeInstance`` / ``ColocatedInstance`` and
must give exactly the same records. They share only the admission *rules* (stated in the sim
module docstrings), the boundary-time expression ``boundary_s`` (a segment restarts whenever
membership changes) and ``StepCoef``'s prefill and mixed-step costs; a decode step's cost (roofline
knee and experts term included) is written out here; everything the coalescing does — step
counting, context sums, finish detection, cutting runs for joins — is done here the plain way, one
step at a time.
"""

from __future__ import annotations

import math
from collections import deque

from pdplan.sim.colocated import ColocatedInstance
from pdplan.sim.decode import DecodeInstance
from pdplan.sim.kernel import INSTANCE, boundary_s


def _first_step_s(coef, batch, ctx):
    """One decode step, written out here (not ``StepCoef.decode_s``): e + f·max(B, B0) + g·C, plus
    a MoE's expert reads xs·(1 − miss^B) (the experts B tokens touch)."""
    step = coef.de + coef.df * max(batch, coef.dk) + coef.dg * ctx
    return step + coef.xs * (1.0 - coef.miss**batch) if coef.xs else step


# Subclasses of the simulator's instances (whose __init__ is not run), since a compiled run takes
# only those (pdplan.sim.compiled); every method the run calls is this file's own.
class SteppedDecode(DecodeInstance):
    def __init__(self, run, index):
        self.run, self.env, self.index = run, run.env, index
        self.prompt, self.output, self.ledger = run.prompt, run.output, run.ledger
        self.coef = run.decode_coef
        self.max_batch = run.cluster.decode.max_batch_size
        self.kv_free = run.cluster.decode_cost.kv_capacity_tokens
        self.running: dict[int, list[int]] = {}  # rid -> [steps left, context tokens]
        self.pending: list[tuple[float, int]] = []
        self.waiters: deque[int] = deque()
        self.wake = None
        self.wake_t = math.inf
        self.segment = None  # (t0, first, q, k)
        self.last_t = 0.0
        self.busy_s = 0.0

    def offer(self, rid, now, prefill_end, prefill_index):
        need = self.prompt[rid] + self.output[rid]
        if self.waiters or need > self.kv_free:
            return False
        self.kv_free -= need
        ready = self._transfer(rid, now, prefill_end, prefill_index)
        if not self.running and ready < self.wake_t:
            self._schedule(ready)
        return True

    def wait(self, rid):
        self.waiters.append(rid)

    def _transfer(self, rid, now, prefill_end, prefill_index):
        ready = self.run.transfer(rid, now, prefill_end, prefill_index)
        self.ledger.kv_start_s[rid] = now
        self.ledger.transfer_end_s[rid] = ready
        self.pending.append((ready, rid))
        return ready

    def _schedule(self, t):
        self.wake_t = t
        self.wake = self.env.at(t, INSTANCE, self._on_wake)

    def _on_wake(self, event):
        if event != self.wake:
            return
        self.wake, self.wake_t = None, math.inf
        now = self.env.now
        changed = False
        if self.running:  # one step just ended
            self.busy_s += now - self.last_t
            for state in self.running.values():
                state[0] -= 1
                state[1] += 1
            for rid in [r for r, s in self.running.items() if s[0] == 0]:
                del self.running[rid]
                self._release(rid, now)
                changed = True
        changed |= self._admit(now)
        if self.running:
            if changed or self.segment is None:
                batch = len(self.running)
                ctx = sum(s[1] for s in self.running.values())
                self.segment = (now, _first_step_s(self.coef, batch, ctx), self.coef.dg * batch * 0.5, 0)
            t0, first, q, k = self.segment
            self.segment = (t0, first, q, k + 1)
            self.last_t = now
            self._schedule(boundary_s(t0, first, q, k + 1))
        else:
            self.segment = None
            if self.pending:
                self._schedule(min(self.pending)[0])

    def _release(self, rid, now):
        need = self.prompt[rid] + self.output[rid]
        self.ledger.finish_s[rid] = now
        self.kv_free += need
        self.run.decode_load[self.index] -= need

    def _admit(self, now):
        changed = False
        while True:
            while (
                self.waiters and self.prompt[self.waiters[0]] + self.output[self.waiters[0]] <= self.kv_free
            ):
                rid = self.waiters.popleft()
                self.kv_free -= self.prompt[rid] + self.output[rid]
                self._transfer(rid, now, now, self.run.prefill_of[rid])
            freed = False
            for ready, rid in sorted(self.pending):
                if ready > now or len(self.running) >= self.max_batch:
                    break
                self.pending.remove((ready, rid))
                self.ledger.first_token_s[rid] = self.ledger.decode_start_s[rid] = now
                changed = True
                if self.output[rid] == 1:
                    self._release(rid, now)
                    freed = True
                else:
                    self.running[rid] = [self.output[rid] - 1, self.prompt[rid]]
            if not (freed and self.waiters):
                return changed


class SteppedColocated(ColocatedInstance):
    def __init__(self, run, index):
        pool = run.cluster.pool
        self.run, self.env, self.index, self.coef = run, run.env, index, run.coef
        self.prompt, self.output, self.ledger = run.prompt, run.output, run.ledger
        self.chunked = pool.policy == "chunked"
        self.max_batch, self.max_tokens, self.chunk = (
            pool.max_batch_size,
            pool.max_batch_tokens,
            pool.chunk_tokens,
        )
        self.kv_free = run.cluster.cost.kv_capacity_tokens
        self.waiting: deque[int] = deque()
        self.prefilling: list[list[int]] = []  # [rid, tokens done]
        self.running: dict[int, list[int]] = {}  # rid -> [steps left, context]
        self.mode = 0  # 0 idle, 1 prefill/mixed step, 2 decode step
        self.step = None  # (completing rids, decodes advance)
        self.segment = None
        self.last_t = 0.0
        self.busy_s = 0.0

    def push(self, rid):
        self.waiting.append(rid)

    def _on_wake(self, event):
        now = self.env.now
        self.busy_s += now - self.last_t
        changed = False
        if self.mode == 1:
            completing, decodes = self.step
            if decodes:
                self._advance()
            for rid in completing:
                self.ledger.prefill_end_s[rid] = self.ledger.first_token_s[rid] = now
                self.ledger.decode_start_s[rid] = now
                if self.output[rid] == 1:
                    self._release(rid, now)
                else:
                    self.running[rid] = [self.output[rid] - 1, self.prompt[rid]]
            changed = True
        else:
            self._advance()
        for rid in [r for r, s in self.running.items() if s[0] == 0]:
            del self.running[rid]
            self._release(rid, now)
            changed = True
        self.next_step(now, changed)

    def _advance(self):
        for state in self.running.values():
            state[0] -= 1
            state[1] += 1

    def _release(self, rid, now):
        need = self.prompt[rid] + self.output[rid]
        self.ledger.finish_s[rid] = now
        self.kv_free += need
        self.run.load[self.index] -= need

    def _fits(self, rid, extra):
        return (
            self.prompt[rid] + self.output[rid] <= self.kv_free
            and len(self.running) + len(self.prefilling) + extra < self.max_batch
        )

    def _take(self, now):
        rid = self.waiting.popleft()
        self.kv_free -= self.prompt[rid] + self.output[rid]
        self.ledger.kv_start_s[rid] = now
        return rid

    def next_step(self, now, changed=True):
        self.last_t = now
        started = self._chunked(now) if self.chunked else self._prefill_first(now)
        if started:
            self.mode, self.segment = 1, None
            return
        if started is None:  # admissions happened but no prefill step could run
            changed = True
        if not self.running:
            self.mode, self.segment = 0, None
            return
        self.mode = 2
        if changed or self.segment is None:
            batch = len(self.running)
            ctx = sum(s[1] for s in self.running.values())
            self.segment = (now, _first_step_s(self.coef, batch, ctx), self.coef.dg * batch * 0.5, 0)
        t0, first, q, k = self.segment
        self.segment = (t0, first, q, k + 1)
        self.env.at(boundary_s(t0, first, q, k + 1), INSTANCE, self._on_wake)

    def _prefill_first(self, now):
        batch, tokens = [], 0
        while (
            self.waiting
            and tokens + self.prompt[self.waiting[0]] <= self.max_tokens
            and self._fits(self.waiting[0], len(batch))
        ):
            rid = self._take(now)
            self.ledger.prefill_start_s[rid] = now
            batch.append(rid)
            tokens += self.prompt[rid]
        if not batch:
            return False
        pairs = sum(self.prompt[r] ** 2 for r in batch)
        self.step = (batch, False)
        self.env.at(now + self.coef.prefill_s(len(batch), tokens, pairs), INSTANCE, self._on_wake)
        return True

    def _chunked(self, now):
        admitted = False
        while self.waiting and self._fits(self.waiting[0], 0):
            self.prefilling.append([self._take(now), 0])
            admitted = True
        left = self.chunk - len(self.running)
        if not self.prefilling or left <= 0:
            return None if admitted else False
        seqs = tokens = pairs = 0
        completing = []
        for entry in list(self.prefilling):
            if left <= 0:
                break
            rid, done = entry
            n = min(self.prompt[rid] - done, left)
            if done == 0:
                self.ledger.prefill_start_s[rid] = now
            seqs, tokens, pairs, left = seqs + 1, tokens + n, pairs + n * n + 2 * n * done, left - n
            entry[1] += n
            if entry[1] == self.prompt[rid]:
                self.prefilling.remove(entry)
                completing.append(rid)
        decodes = len(self.running) > 0
        ctx = sum(s[1] for s in self.running.values())
        self.step = (completing, decodes)
        duration = self.coef.mixed_s(seqs, tokens, pairs, len(self.running), ctx)
        self.env.at(now + duration, INSTANCE, self._on_wake)
        return True

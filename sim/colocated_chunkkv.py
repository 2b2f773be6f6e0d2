"""Chunked-prefill colocated instances that allocate a prompt's KV chunk by chunk, as vLLM V1 does
(``ColocatedPool(policy="chunked", admission="preempt")``, the default; the run is
:mod:`pdplan.sim.colocated`, the decode-side allocation and preemption
:mod:`pdplan.sim.colocated_preempt`).

vLLM V1's ``Scheduler.schedule()`` (vllm/v1/core/sched/scheduler.py, vllm-project/vllm @ 00024d3)
has no prefill phase: each step it walks ``self.running`` in admission order and calls
``kv_cache_manager.allocate_slots(request, num_new_tokens)`` for the tokens it schedules this step
— one for a decode, the next chunk (``min(remaining, token_budget)``) for a prompt — so a prompt
being prefilled holds the KV of its computed chunks only. When a running request's slots do not
fit, it preempts ``self.running.pop()``, the most recently admitted request, until they do (or
until it pops the request itself, which then waits). Only when nothing was preempted this step
does it admit waiting requests, FCFS (``allocate_slots`` returning None stops admission).
``_preempt_request`` frees the request's blocks and puts it at the head of the waiting queue with
``num_computed_tokens = 0``. Later versions add a gate to admission (not in that commit; present,
and True, in the shared RTX 4090 run's resolved config, vLLM 0.19.0): with
``scheduler_reserve_full_isl`` (default True) the scheduler passes ``full_sequence_must_fit=True``
and ``KVCacheManager.allocate_slots`` (vllm/v1/core/kv_cache_manager.py) returns None unless the
blocks of the request's whole sequence (``request.num_tokens``: prompt, plus the tokens a
preempted request had generated; its cached blocks that are free count as needed) are free —
"an admission gate to prevent over-admitting requests when chunked prefill would otherwise only
check the first chunk", its docstring says — and then allocates only the chunk's.

Here, per step boundary (tokens for blocks):

1. the running decodes need one slot each; if they do not fit, the prompt being prefilled (at
   most one is part-done: a partial chunk uses the whole token budget, so nothing is admitted
   after it) is the most recently admitted request and is preempted first, then the most recently
   admitted decodes (``PreemptingColocatedInstance._preempt``);
2. the part-done prompt asks for its next chunk; if that does not fit beside the decodes' slots it
   is preempted (it is the last in ``running``) and nothing is admitted this step;
3. otherwise waiting requests are admitted FCFS while the token budget and the batch limit allow
   and their whole sequence fits in what is free; each takes its first chunk's slots (plus what
   is still cached of its sequence: the engine re-takes those blocks).

So an admitted prompt does not hold the rest of its sequence: the decodes' growth can take it, and
the prompt is then preempted part-done. SGLang gates similarly and also allocates by chunk:
``PrefillAdder.add_one_req`` (python/sglang/srt/managers/schedule_policy.py, sgl-project/sglang @
00550cd; ``memory_budget.can_allocate_prefill`` in recent versions) admits a request only
if its whole remaining input plus a clipped estimate of its new tokens fits in what is free and
evictable, less the running requests' estimated future tokens; ``admission: preempt-prompt``
(the whole prompt taken at admission) is the conservative neighbour of both.

A preempted part-done prompt finds its computed chunks in the prefix cache when re-admitted, less
what later allocations overwrote (whole 16-token blocks from the front, as for preempted decodes;
see ``colocated_preempt.cached_prefix``), and it keeps its first prefill's start time.
"""

from __future__ import annotations

import math

from mypy_extensions import mypyc_attr

from pdplan.sim.colocated import ColocatedRun
from pdplan.sim.colocated_preempt import KV_BLOCK_TOKENS, PreemptingColocatedInstance
from pdplan.sim.kernel import INSTANCE


def kept_prefix(freed: int, overwritten: int, fill: int, block: int = KV_BLOCK_TOKENS) -> int:
    """Tokens of a preempted request's ``freed`` KV (from the front of its ``fill``) that are still
    cached after ``overwritten`` slots were handed out: whole blocks, and never the last token of
    ``fill`` (its logits are needed)."""
    kept = freed - (overwritten if overwritten > 0 else 0)
    if kept < block:
        return 0
    kept -= kept % block
    return kept if kept < fill else fill - 1


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed in Python (compiled: pdplan.sim.compiled)
class ChunkwiseColocatedInstance(PreemptingColocatedInstance):
    """A chunked-prefill instance whose prompts hold only their computed chunks' KV; see the module
    docstring. ``prefilling`` holds at most the one part-done prompt and ``head_done`` the tokens
    of its fill whose KV it holds (cached prefix included)."""

    def __init__(self, run: ColocatedRun, index: int) -> None:
        super().__init__(run, index)
        # A preemption at this boundary: vLLM admits nothing new. The decode run that follows
        # needs no cut for it: the waiting head is then the last request preempted, and to pass
        # the gate at the next boundary the free slots, less two steps' slots, would have to hold
        # its whole sequence, while they fell short of one step's before its KV was freed.
        self.no_admit = False
        self.freed_partial: dict[int, int] = {}  # part-done prompts preempted: tokens they held

    def _admissible(self, rid: int) -> bool:
        # Cuts a decode run when an arrival's whole sequence would fit beside the decodes' next
        # slots (on the run's starting context, an optimistic test: the step checks again).
        return (
            self.chunk > self.batch
            and self.batch + len(self.prefilling) < self.max_batch
            and self._fill(rid) + self.batch <= self.cap - self.held - self.ctx
        )

    def _preempt(self) -> None:
        """The decodes' next slots do not fit: the part-done prompt goes first (admitted last)."""
        self.no_admit = True
        if self.prefilling:
            self._preempt_partial()
        super()._preempt()

    def _preempt_partial(self) -> None:
        rid = self.prefilling.popleft()
        held, self.head_done = self.head_done, 0
        self.held -= held
        # its blocks join the free queue behind the slots free now (as in _preempt)
        self.preempted_at[rid] = self.allocated + max(0, self.cap - self.held - self.ctx - held)
        self.freed_partial[rid] = held
        self.waiting.appendleft(rid)
        self.preemptions += 1

    def _cached_on_admission(self, rid: int, fill: int) -> int:
        """Tokens of the request's fill whose KV it finds cached (and re-takes) if admitted now."""
        skip = 0
        if self.cache is not None and rid not in self.recomputing:
            skip = self.cache.skip[rid]
        at = self.preempted_at.get(rid)
        if at is not None and self.reuse:
            kept = kept_prefix(self.freed_partial.get(rid, fill), self.allocated - at, fill)
            if kept > skip:
                skip = kept
        return skip

    def _chunked_step(self, now: float) -> bool:
        admit, self.no_admit = not self.no_admit, False
        prefilling, waiting = self.prefilling, self.waiting
        if not prefilling and not (admit and waiting):
            return False  # the common boundary: a finish, nothing to prefill
        ledger = self.ledger
        left = self.chunk - self.batch
        free = self.cap - self.held - self.ctx - self.batch  # after the decodes' next slots
        num_seqs = tokens = pairs = 0
        load_s = 0.0
        completing: list[int] = []
        prompt, done_before = self.prompt, self.done  # _fill(rid) = prompt[rid] + done_before[rid]
        if prefilling and left > 0:  # 2. the part-done prompt's next chunk
            rid, done = prefilling[0], self.head_done
            remaining = prompt[rid] + done_before[rid] - done
            n = remaining if remaining <= left else left
            if n > free:
                self._preempt_partial()
                admit = False
            else:
                free -= n
                left -= n
                tokens, pairs, num_seqs = n, n * n + 2 * n * done, 1
                if n < remaining:
                    self.head_done = done + n
                else:
                    prefilling.popleft()
                    completing.append(rid)
                    self.head_done = 0
        cache = self.cache
        # 3. admission: FCFS, each with its first chunk
        running = self.batch + len(prefilling) + len(completing)
        while admit and waiting and left > 0 and running < self.max_batch:
            rid = waiting[0]
            fill = prompt[rid] + done_before[rid]
            if fill > free:
                break  # the gate: allocate_slots(full_sequence_must_fit=True) returns None
            first = math.isnan(ledger.kv_start_s[rid])
            skip = self._cached_on_admission(rid, fill) if not first or cache is not None else 0
            remaining = fill - skip
            n = remaining if remaining <= left else left
            waiting.popleft()
            if first:
                ledger.kv_start_s[rid] = ledger.prefill_start_s[rid] = now
                if cache is not None:
                    load_s += cache.load_s[rid]
            else:
                self.preempted_at.pop(rid, None)
                self.freed_partial.pop(rid, None)
            free -= skip + n
            left -= n
            self.held += skip
            tokens += n
            pairs += n * n + 2 * n * skip
            num_seqs += 1
            running += 1
            if n < remaining:
                prefilling.append(rid)
                self.head_done = skip + n
            else:
                completing.append(rid)
        if not num_seqs:
            return False
        self.held += tokens
        self.allocated += tokens
        self.completing, self.step_decodes = completing, self.batch > 0
        duration = self.coef.mixed_s(num_seqs, tokens, pairs, self.batch, self.ctx)
        self.wake_k = 0  # _schedule, inlined
        self.wake = self._at(now + duration + load_s, INSTANCE, self._wake_callback)
        return True

"""A prefill instance: FCFS batches, optional chunking, hand-off to the decode side.

A batch forms when the instance is idle and requests arrive (after every arrival of that instant
is queued) or when the previous batch ends. It takes queued prompts in arrival
order while it has fewer than ``max_batch_size`` prompts and token budget left
(``PrefillPool.step_tokens``). With chunking, the prompt that does not fit is split: its first
part fills the budget and it stays at the head of the queue with its progress, so only the head
can be part-done. Its time comes from the latency model's sums (``prefill_ms_sums`` with
``sum_pairs = Σ n² + 2·n·p`` for n new tokens after p already done; a batch below the roofline
knee costs as if it held knee tokens).

When the batch ends, every prompt it completed is offered to its decode instance (KV reserved,
transfer started) or queued there until KV frees. Under layer-wise overlap the offer is made
when the batch *starts*, so the transfer runs alongside the prefill; a prompt whose KV cannot be
reserved then is offered again when the batch ends. The prefill instance keeps a finished
prompt's KV until its transfer completes and does not stall on it (its KV is not modelled as a
limit; the time series shows its use).

With a prefix cache (``pdplan.sim.prefix_cache``), a prompt's prefill starts after its cached
tokens (``cache.skip``: they count as already done, so its attention still spans them) and the
batch that starts it also waits for their load from L2/L3 (``cache.load_s``); its blocks enter the
cache when the batch ends.

With ``pp`` pipeline stages (``pdplan.profiles.pipeline``; the profile's prefill table holds a
batch's latency through every stage, ``pp · s + send``), the instance is a tandem of ``pp``
identical stages: batch ``j`` takes ``s_j = (latency_j − send_j) / pp`` on each, the ``pp − 1``
sends (``send_j / (pp − 1)`` each) between them, and stage ``k`` finishes it at
``D_k(j) = max(D_{k−1}(j) + send, D_k(j−1)) + s_j`` (:func:`tandem`). The next batch forms when
stage 1 is free, at ``D_1(j)``; the batch ends (prompts offered to decode) at ``D_pp(j)``. With
``pp = 1`` this is the single-server timeline above, unchanged.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import TYPE_CHECKING

from pdplan.sim.kernel import PREFILL

if TYPE_CHECKING:
    from pdplan.sim.disagg import Run
    from pdplan.sim.kernel import Event


class PrefillInstance:
    """One prefill instance; see the module docstring."""

    def __init__(self, run: Run, index: int) -> None:
        pool, coef = run.cluster.prefill, run.prefill_coef
        self.run, self.env, self.index = run, run.env, index
        self.prompt, self.ledger = run.prompt, run.ledger
        self.pa, self.pb, self.pc, self.pd, self.knee = coef.pa, coef.pb, coef.pc, coef.pd, coef.pk
        self.budget = pool.step_tokens
        self.max_size = pool.max_batch_size
        self.chunking = pool.chunk_tokens is not None
        self.overlap = run.cluster.link.layerwise_overlap
        self.cache = run.cache
        self.queue: deque[int] = deque()
        self.head_done = 0  # tokens of the head prompt already prefilled (chunking)
        self.busy = False
        self.completing: list[int] = []  # prompts the running batch completes
        self.unoffered: list[int] = []  # of those, the ones still to offer at the batch end
        self.batch_tokens = 0
        self.batch_t0 = 0.0
        self.busy_s = 0.0
        cost = run.cluster.prefill_cost
        self.pp = cost.pp
        if cost.pp_send is not None:
            self.stage_free = [0.0] * cost.pp  # D_k of the latest batch, per stage
            self.send_a = cost.pp_send.latency_ms / 1000.0
            self.send_b = cost.pp_send.ms_per_token / 1000.0

    def start_batch(self, now: float) -> None:
        """Form and start a batch from the queue (the instance is idle and the queue non-empty)."""
        queue, prompt = self.queue, self.prompt
        prefill_start = self.ledger.prefill_start_s
        left, done = self.budget, self.head_done
        num_seqs = tokens = pairs = 0
        load_s = 0.0
        cache = self.cache
        completing: list[int] = []
        while queue and num_seqs < self.max_size and left > 0:
            rid = queue[0]
            fresh = done == 0
            if fresh and cache is not None:
                done = cache.skip[rid]
            remaining = prompt[rid] - done
            if remaining <= left:
                n = remaining
                queue.popleft()
                completing.append(rid)
            elif self.chunking:
                n = left
            else:
                done = 0
                break
            if fresh:
                prefill_start[rid] = now
                if cache is not None:
                    load_s += cache.load_s[rid]
            pairs += n * n + 2 * n * done
            tokens += n
            num_seqs += 1
            left -= n
            if n < remaining:
                done += n
                break
            done = 0
        assert num_seqs > 0, "a queued prompt always fits an empty batch (longer ones are rejected)"
        self.head_done = done
        gemm_tokens = tokens if tokens > self.knee else self.knee  # StepCoef.prefill_s, inlined
        end = now + (self.pa + self.pb * num_seqs + self.pc * gemm_tokens + self.pd * pairs) + load_s
        if self.pp > 1:
            self._start_pipelined(now, end - now - load_s, load_s, completing, tokens)
            return
        self.busy, self.completing, self.batch_tokens, self.batch_t0 = True, completing, tokens, now
        if self.overlap:
            decodes, decode_of = self.run.decodes, self.run.decode_of
            self.unoffered = [
                rid for rid in completing if not decodes[decode_of[rid]].offer(rid, now, end, self.index)
            ]
        else:
            self.unoffered = completing
        self.env.at(end, PREFILL, self._on_end)

    def _on_end(self, event: Event) -> None:
        now = self.env.now
        self.busy_s += now - self.batch_t0
        self._complete(now, self.completing, self.unoffered, self.batch_tokens)
        if self.queue:
            self.start_batch(now)
        else:
            self.busy = False

    def _complete(self, now: float, completing: list[int], unoffered: list[int], tokens: int) -> None:
        """A batch's prompts are prefilled: record, cache, offer their KV to decode."""
        self.run.prefill_load[self.index] -= tokens
        prefill_end = self.ledger.prefill_end_s
        decodes, decode_of = self.run.decodes, self.run.decode_of
        for rid in completing:
            prefill_end[rid] = now
        if self.run.cache is not None:
            for rid in completing:
                self.run.cache.insert(rid, self.index)
        for rid in unoffered:
            decode = decodes[decode_of[rid]]
            if not decode.offer(rid, now, now, self.index):
                decode.wait(rid)

    # --- pipeline parallelism (see the module docstring) ------------------------------------
    def _start_pipelined(
        self, now: float, latency: float, load_s: float, completing: list[int], tokens: int
    ) -> None:
        send = self.send_a + self.send_b * tokens
        stage = (latency - send) / self.pp
        assert stage > 0, "a pipelined profile's prefill latency exceeds its sends"
        first_free, end = tandem(self.stage_free, now + load_s, stage, send / (self.pp - 1))
        self.busy, self.batch_t0 = True, now
        if self.overlap:
            decodes, decode_of = self.run.decodes, self.run.decode_of
            unoffered = [
                rid for rid in completing if not decodes[decode_of[rid]].offer(rid, now, end, self.index)
            ]
        else:
            unoffered = completing
        self.env.at(first_free, PREFILL, self._on_stage_free)
        self.env.at(end, PREFILL, partial(self._on_pipelined_end, completing, unoffered, tokens))

    def _on_stage_free(self, event: Event) -> None:
        now = self.env.now
        self.busy_s += now - self.batch_t0
        if self.queue:
            self.start_batch(now)
        else:
            self.busy = False

    def _on_pipelined_end(
        self, completing: list[int], unoffered: list[int], tokens: int, event: Event
    ) -> None:
        self._complete(self.env.now, completing, unoffered, tokens)


def tandem(stage_free: list[float], start: float, stage_s: float, send_s: float) -> tuple[float, float]:
    """Run one batch through a tandem of identical stages, updating ``stage_free`` (each stage's
    finish time of the previous batch) in place: ``D_1 = start + s``, ``D_k = max(D_{k−1} + send,
    D_k(previous)) + s``. Returns (when stage 1 is free, when the last stage finishes)."""
    done = start + stage_s
    stage_free[0] = done
    for k in range(1, len(stage_free)):
        arrive = done + send_s
        done = (arrive if arrive > stage_free[k] else stage_free[k]) + stage_s
        stage_free[k] = done
    return stage_free[0], done

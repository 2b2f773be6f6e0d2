"""The disaggregated cluster run: router, prefill instances, KV link, decode instances.

Life of a request: it arrives at the router, which rejects it if it can never be served (prompt
longer than a prefill batch without chunking, or more KV than an instance holds) and otherwise
picks a prefill and a decode instance (``pdplan.sim.router``). The prefill instance batches it
(``pdplan.sim.prefill``); its KV then crosses the link (``Run.transfer``) into KV reserved on the
decode instance, which batches its decode steps (``pdplan.sim.decode``).

KV link: a transfer of b = kv_bytes_per_token × prompt bytes occupies its link for
b / bandwidth seconds from when both the KV reservation and the link allow, FIFO per link; it is
ready ``latency_ms`` after it leaves the link. With a prefix cache whose ``decode_reads_store`` is
set, the link carries only the tokens the store does not hold, and the transfer is ready when both
the link and the decode side's read from the store are done. Under layer-wise overlap a
transfer may start with its prefill batch, and leaves the link no earlier than the batch end plus
one layer's share (b / bandwidth / num_layers): the last layer's KV exists only when the batch
ends.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mypy_extensions import mypyc_attr

from pdplan.sim.cluster import DisaggregatedCluster
from pdplan.sim.costs import StepCoef
from pdplan.sim.decode import DecodeInstance, PreemptingDecodeInstance
from pdplan.sim.kernel import Event, Kernel
from pdplan.sim.prefill import PrefillInstance
from pdplan.sim.prefix_cache import make_cache
from pdplan.sim.records import Ledger, SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.router import make_chooser

Progress = Callable[[int, int], None]


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed in Python (compiled: pdplan.sim.compiled)
class Run:
    """State shared by the instances of one disaggregated run (lists indexed by req_id)."""

    #: False where the decode side is a sink that ignores its instance (``simulate_prefill_side``):
    #: requests are then not routed to a decode instance (``decode_of`` stays -1)
    routes_decode = True

    def __init__(
        self,
        requests: Requests,
        cluster: DisaggregatedCluster,
        router: str,
        rng: np.random.Generator,
        decode_factory: Callable[[Run, int], DecodeInstance] | None = None,
    ) -> None:
        n = len(requests)
        self.env = Kernel()
        self._preempt_lists: tuple[list[int], list[int], list[int]] | None = None
        self.cluster = cluster
        self.num_requests = n
        start = requests.arrival_s[0] if n else 0.0
        self.requests = requests
        self.arrival_np = requests.arrival_s - start
        self.arrival: list[float] = self.arrival_np.tolist()
        self.prompt: list[int] = requests.prompt_tokens.tolist()
        self.output: list[int] = requests.output_tokens.tolist()
        self.ledger = Ledger(n)
        self.prefill_of = [-1] * n
        self.decode_of = [-1] * n
        self.prefill_coef = StepCoef.of(cluster.prefill_cost.latency)
        self.decode_coef = StepCoef.of(cluster.decode_cost.latency)
        self.prefill_load = [0] * cluster.prefill.instances
        self.decode_load = [0] * cluster.decode.instances
        prefill_kv = cluster.prefill_cost.kv_capacity_tokens
        self.cache = make_cache(
            cluster.cache,
            requests.prefix,
            self.prompt,
            cluster.prefill.instances,
            cluster.kv_bytes_per_token,
            lambda p: prefill_kv - self.prefill_load[p],
        )
        #: start a request's KV transfer; returns when it is ready on the decode side
        self.transfer: Callable[[int, float, float, int], float] = self._transfer_link
        if self.cache is not None and self.cache.in_store is not None:
            self.transfer = self._transfer_reading_store
        if router == "cache_aware":  # prefill by cache affinity, decode by load (sglang-router PD)
            blocks = requests.prefix
            unit = float(np.mean(requests.prompt_tokens)) if n else 1.0
            self.choose_prefill = make_chooser(router, self.prefill_load, n, rng, blocks, unit)
            self.choose_decode = make_chooser("least_loaded", self.decode_load, n, rng)
        else:
            self.choose_prefill = make_chooser(router, self.prefill_load, n, rng)
            self.choose_decode = make_chooser(router, self.decode_load, n, rng)
        self.prefills = [PrefillInstance(self, i) for i in range(cluster.prefill.instances)]
        if decode_factory is None:
            decode_factory = (
                PreemptingDecodeInstance if cluster.decode.admission == "preempt" else DecodeInstance
            )
        self.decodes = [decode_factory(self, i) for i in range(cluster.decode.instances)]
        link = cluster.link
        self.seconds_per_token = cluster.kv_bytes_per_token / (link.bandwidth_gbps * 1e9)
        self.latency_s = link.latency_ms / 1000.0
        self.contention = link.contention
        self.link_free = [0.0] * (cluster.prefill.instances if link.contention == "per_instance" else 1)
        self.num_layers = cluster.num_layers
        limit = cluster.prefill.max_batch_tokens if cluster.prefill.chunk_tokens is None else None
        self.max_prompt = min(
            limit or cluster.prefill_cost.kv_capacity_tokens, cluster.prefill_cost.kv_capacity_tokens
        )
        self.max_footprint = cluster.decode_cost.kv_capacity_tokens
        self.next_arrival = 0
        self.progress: Progress | None = None
        self.progress_every = max(1, n // 100)

    def _transfer_link(
        self, rid: int, now: float, prefill_end: float, prefill_index: int, tokens: int = -1
    ) -> float:
        """Start ``rid``'s KV transfer (its prompt, or ``tokens`` of it) at ``now``; returns when it
        is ready on the decode side."""
        size_s = (self.prompt[rid] if tokens < 0 else tokens) * self.seconds_per_token
        if self.contention == "none":
            end = now + size_s
            if prefill_end > now:
                end = max(end, prefill_end + size_s / self.num_layers)
            return end + self.latency_s
        link = prefill_index if self.contention == "per_instance" else 0
        free = self.link_free[link]
        end = (free if free > now else now) + size_s
        if prefill_end > now:
            end = max(end, prefill_end + size_s / self.num_layers)
        self.link_free[link] = end
        return end + self.latency_s

    def _transfer_reading_store(self, rid: int, now: float, prefill_end: float, prefill_index: int) -> float:
        """``transfer`` when the decode side reads the stored prefix itself (``decode_reads_store``,
        ``pdplan.sim.prefix_cache``): the link carries the rest; ready when both are done."""
        assert self.cache is not None
        tokens, store_ready = self.cache.store_read(rid, now)
        ready = self._transfer_link(rid, now, prefill_end, prefill_index, tokens)
        return ready if ready >= store_ready else store_ready

    def on_arrival(self, event: Event | None = None) -> None:
        """Route every request arriving now, then schedule the next arrival instant."""
        arrival, prompt, output = self.arrival, self.prompt, self.output
        i, n = self.next_arrival, self.num_requests
        now = arrival[i]
        idle: list[PrefillInstance] = []
        while True:
            need = prompt[i] + output[i]
            if prompt[i] > self.max_prompt or need > self.max_footprint:
                self.ledger.rejected[i] = 1
            else:
                p = self.prefill_of[i] = self.choose_prefill(i)
                self.prefill_load[p] += prompt[i]
                if self.routes_decode:
                    d = self.decode_of[i] = self.choose_decode(i)
                    self.decode_load[d] += need
                if self.cache is not None:
                    self.cache.lookup(i, p)
                instance = self.prefills[p]
                instance.queue.append(i)
                if not instance.busy:
                    idle.append(instance)
            i += 1
            if self.progress is not None and i % self.progress_every == 0:
                self.progress(i, n)
            if i == n or arrival[i] != now:
                break
        self.next_arrival = i
        # Batches start once every request of this instant is queued (arrivals share one event).
        for instance in idle:
            if not instance.busy:
                instance.start_batch(now)
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
        cluster = self.cluster
        return SimResult(
            records=records,
            mode="disaggregated",
            instances={"prefill": cluster.prefill.instances, "decode": cluster.decode.instances},
            kv_capacity_tokens={
                "prefill": cluster.prefill_cost.kv_capacity_tokens,
                "decode": cluster.decode_cost.kv_capacity_tokens,
            },
            busy_s={
                "prefill": float(sum(p.busy_s for p in self.prefills)),
                "decode": float(sum(d.busy_s for d in self.decodes)),
            },
            end_s=float(self.env.now),
            instance={
                "prefill": np.asarray(self.prefill_of, dtype=np.int32),
                "decode": np.asarray(self.decode_of, dtype=np.int32),
            },
            kv_start_s=kv_start,
            transfer_end_s=transfer_end,
            events=self.env.events_scheduled(),
            preemptions=sum(getattr(d, "preemptions", 0) for d in self.decodes),
            cache=None if self.cache is None else self.cache.stats(),
        )

"""The prefix cache and its KV tiers: GPU HBM (L1), host DRAM (L2), a shared store (L3).

What it models (SGLang's RadixAttention + HiCache, Zheng et al., NeurIPS 2024 and
sgl-project/sglang ``python/sglang/srt/mem_cache/hiradix_cache.py``; Mooncake Store, Qin et al.,
FAST 2025; LMCache): prompts are cut into blocks (``pdplan.sim.prefix``); a request reuses the
longest run of leading blocks that some tier holds and prefills only the rest.

- **L1** — per instance, in the GPU's KV pool: a radix cache keeps finished prompts' blocks in
  whatever KV the instance's requests leave. Its size is *dynamic*: when blocks are inserted the
  cache may hold ``(kv_capacity − outstanding KV of the instance's requests) // block_tokens``
  blocks (the instance's router load: prompt + output tokens of unfinished requests on colocated
  instances, prompt tokens not yet prefilled on prefill instances), evicting least recently used
  blocks beyond that. Blocks a running request shares with the cache are counted twice (an
  underestimate of L1). A hit costs nothing to load.
- **L2** — per instance, in host DRAM (HiCache's host pool is per server: ``--hicache-size`` or
  ``--hicache-ratio``): ``capacity_gb``, loaded over PCIe at ``bandwidth_gbps``.
- **L3** — one store shared by every instance (Mooncake Store, DatenLord, LMCache): ``capacity_gb``,
  ``bandwidth_gbps`` per instance reading, ``latency_ms`` per load.

Policies (stated, not tuned): blocks are inserted when the request's prefill ends, into L1 and
written through to L2 and L3 (``--hicache-write-policy write_through``, the setting SGLang's
HiCache best practices give, docs.sglang.io/advanced_features/hicache_best_practices.html; writes
are asynchronous and never delay a request, their bytes are counted). Each tier evicts least
recently used blocks; a request's blocks are touched deepest first, so a prefix outlives its
extensions (a radix cache evicts leaves first). The lookup happens when the request is routed and
its hit stands until its prefill (SGLang locks matched nodes while a request runs); the insert at
its prefill end refreshes the blocks it matched and copies an L2/L3 hit into the tiers above. A
hit never covers the whole prompt: the last token is always computed (SGLang and vLLM need its
logits). The load from L2/L3 is on the critical path of the batch that starts the request's
prefill (no layer-wise overlap: conservative), and a batch's loads add up (one PCIe link and one
NIC per instance). Matching is by tier: a tier serves the leading blocks it holds (``TieredCache``).

Cost: a lookup or insert is O(blocks of the request), never O(tokens); blocks no other request
has are counted, not stored (``PrefixBlocks.named``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.lru_tiers import MAX_LIST_SLOTS, LruTier, SetTier
from pdplan.sim.prefix import PrefixBlocks

TIERS = ("l1", "l2", "l3")
#: Defaults, sourced: PCIe 4.0 x16 is 32 GB/s raw, ~25 GB/s achieved host↔device (NVIDIA's
#: bandwidthTest on A100/H100 PCIe Gen4 hosts); Mooncake Store over one 200 Gb/s RDMA NIC is
#: 25 GB/s raw (Mooncake transfer engine, FAST 2025, §5), with ~1 ms per request of metadata and
#: connection setup (an estimate, stated as such).
DEFAULT_L2_GBPS = 25.0
DEFAULT_L3_GBPS = 20.0
DEFAULT_L3_LATENCY_MS = 1.0


@dataclass(frozen=True)
class CacheTier:
    """One lower tier (L2 host DRAM or L3 store): capacity, read bandwidth and per-load latency."""

    capacity_gb: float
    bandwidth_gbps: float
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        for name, low in (("capacity_gb", 0.0), ("bandwidth_gbps", 0.0), ("latency_ms", -1.0)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not value > low:
                want = "≥ 0" if low < 0 else "> 0"
                raise ConfigError(f"cache tier {name}={value!r}; expected a number {want}")

    def capacity_blocks(self, block_bytes: int) -> int:
        return int(self.capacity_gb * 1e9 // max(1, block_bytes))


@dataclass(frozen=True)
class PrefixCache:
    """A cluster's prefix cache: L1 on (``l1``), and the optional L2 and L3 tiers.

    ``decode_reads_store`` (disaggregated, with L3): the decode instance reads the prompt's blocks
    that the store holds from the store (L3 latency + their bytes at L3 bandwidth, alongside the
    link), and the prefill instance sends it only the rest, as Mooncake's and the DatenLord /
    Xinference designs share one store between prefill and decode.
    """

    l1: bool = True
    l2: CacheTier | None = None
    l3: CacheTier | None = None
    decode_reads_store: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.l1, bool):
            raise ConfigError(f"cache.l1={self.l1!r}; expected true or false")
        if not isinstance(self.decode_reads_store, bool):
            raise ConfigError(f"cache.decode_reads_store={self.decode_reads_store!r}; expected true or false")
        if self.decode_reads_store and self.l3 is None:
            raise ConfigError("cache.decode_reads_store needs an l3 store to read from")

    @property
    def label(self) -> str:
        parts = ["HBM"] if self.l1 else []
        if self.l2 is not None:
            parts.append(f"DRAM {self.l2.capacity_gb:g} GB")
        if self.l3 is not None:
            parts.append(f"store {self.l3.capacity_gb:g} GB")
        return " + ".join(parts) or "none"


@dataclass(frozen=True, eq=False)
class CacheStats:
    """What the cache did in one run: per tier, prompt tokens served (``hit_tokens``), bytes loaded
    from it and bytes written to it, blocks evicted; per request, the cached tokens and load time."""

    prompt_tokens: int
    hit_tokens: dict[str, int]
    bytes_loaded: dict[str, int]
    bytes_written: dict[str, int]
    evicted_blocks: dict[str, int]
    cached_tokens: np.ndarray
    load_s: np.ndarray

    @property
    def hit_rate(self) -> dict[str, float]:
        """Per tier and ``total``: prompt tokens it served / prompt tokens looked up."""
        total = max(1, self.prompt_tokens)
        out = {tier: self.hit_tokens[tier] / total for tier in TIERS}
        out["total"] = sum(self.hit_tokens.values()) / total
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "hit_rate": self.hit_rate,
            "hit_tokens": dict(self.hit_tokens),
            "bytes_loaded": dict(self.bytes_loaded),
            "bytes_written": dict(self.bytes_written),
            "evicted_blocks": dict(self.evicted_blocks),
        }


class TieredCache:
    """The cache state of one run; see the module docstring.

    ``skip[rid]`` (tokens whose KV the cache supplies) and ``load_s[rid]`` (time to load them) are
    set by :meth:`lookup`; the instances read them when the request's prefill starts.

    Matching: a tier serves the leading blocks it holds; with ``k1``, ``k2``, ``k3`` the leading
    blocks held by L1, L2 and L3, L1 serves ``k1`` blocks, L2 the next ``max(0, k2 − k1)`` and L3
    the next ``max(0, k3 − max(k1, k2))`` (tiers are written through, so a lower tier holds what
    an upper one holds unless it evicted it first).
    """

    def __init__(
        self,
        config: PrefixCache,
        prefix: PrefixBlocks,
        prompt: list[int],
        num_instances: int,
        kv_bytes_per_token: int,
        l1_free_tokens: Callable[[int], int],
    ) -> None:
        self.config = config
        self.blocks, self.anonymous = prefix.named
        self.inserted = bytearray(len(prompt))
        self.bt = prefix.block_tokens
        self.prompt = prompt
        self.kv_bytes = kv_bytes_per_token
        block_bytes = kv_bytes_per_token * self.bt
        self.l1_free_tokens = l1_free_tokens
        self.l2: list[LruTier] | None = None
        self.l3: LruTier | None = None
        self.l2_cap = self.l3_cap = 0
        self.l2_s_per_token = self.l3_s_per_token = self.l2_latency_s = self.l3_latency_s = 0.0
        if config.l2 is not None:
            self.l2_cap = config.l2.capacity_blocks(block_bytes)
            self.l2_s_per_token = kv_bytes_per_token / (config.l2.bandwidth_gbps * 1e9)
            self.l2_latency_s = config.l2.latency_ms / 1000.0
        if config.l3 is not None:
            self.l3_cap = config.l3.capacity_blocks(block_bytes)
            self.l3_s_per_token = kv_bytes_per_token / (config.l3.bandwidth_gbps * 1e9)
            self.l3_latency_s = config.l3.latency_ms / 1000.0
        # a tier that can hold every block of the run never evicts: a set serves it (exactly)
        most = prefix.distinct_blocks
        bounded_l2 = config.l2 is not None and self.l2_cap < most
        bounded_l3 = config.l3 is not None and self.l3_cap < most
        size = prefix.named_ids
        lists = (num_instances * (config.l1 + bounded_l2) + bounded_l3) * size
        dense = lists <= MAX_LIST_SLOTS

        def tier(bounded: bool) -> LruTier:
            return LruTier(size, dense) if bounded else SetTier()

        self.l1 = [tier(True) for _ in range(num_instances)] if config.l1 else None
        if config.l2 is not None:
            self.l2 = [tier(bounded_l2) for _ in range(num_instances)]
        if config.l3 is not None:
            self.l3 = tier(bounded_l3)
        n = len(prompt)
        self.skip = [0] * n
        self.load_s = [0.0] * n
        #: tokens of each prompt the store holds when it is routed (``decode_reads_store``)
        self.in_store: list[int] | None = [0] * n if config.decode_reads_store else None
        self.looked_up = 0
        self.hit = [0, 0, 0]  # tokens served per tier

    # --- the two operations ----------------------------------------------------------------------
    def lookup(self, rid: int, inst: int) -> None:
        """Match ``rid``'s leading blocks on instance ``inst``; set ``skip`` and ``load_s``."""
        blocks, prompt, bt = self.blocks[rid], self.prompt[rid], self.bt
        self.looked_up += prompt
        if not blocks:
            return
        # each tier's leading blocks (``LruTier.leading``, inlined: this runs once per request)
        k1 = len(list(takewhile(self.l1[inst].has, blocks))) if self.l1 is not None else 0
        k2 = len(list(takewhile(self.l2[inst].has, blocks))) if self.l2 is not None else 0
        k12 = k1 if k1 > k2 else k2
        k3 = len(list(takewhile(self.l3.has, blocks))) if self.l3 is not None else 0
        k = k12 if k12 > k3 else k3
        if k == 0:
            return
        # tokens per tier: whole blocks, the last prompt token always computed (cut from the top)
        cached = min(k * bt, prompt - 1)
        if self.in_store is not None:
            self.in_store[rid] = min(k3 * bt, cached)
        t1 = min(k1 * bt, cached)
        t2 = min(k12 * bt, cached) - t1
        t3 = cached - t1 - t2
        self.hit[0] += t1
        self.hit[1] += t2
        self.hit[2] += t3
        self.skip[rid] = cached
        load = 0.0
        if t2:
            load += self.l2_latency_s + t2 * self.l2_s_per_token
        if t3:
            load += self.l3_latency_s + t3 * self.l3_s_per_token
        self.load_s[rid] = load

    def insert(self, rid: int, inst: int) -> None:
        """``rid``'s prefill ended on ``inst``: its blocks enter L1 and are written through (the
        blocks it matched are refreshed, and an L2/L3 hit is copied up, here)."""
        inserted = self.inserted
        if inserted[rid]:
            return  # a recomputed prompt (after preemption) was inserted by its first prefill
        inserted[rid] = 1
        path = self.blocks[rid]
        anonymous = self.anonymous[rid]
        if not path and not anonymous:
            return
        if self.l3 is not None:
            self.l3.touch_path(path, self.l3_cap, anonymous)
        if self.l2 is not None:
            self.l2[inst].touch_path(path, self.l2_cap, anonymous)
        if self.l1 is not None:
            free = self.l1_free_tokens(inst)
            self.l1[inst].touch_path(path, free // self.bt if free > 0 else 0, anonymous)

    def store_read(self, rid: int, now: float) -> tuple[int, float]:
        """``decode_reads_store``: (prompt tokens the link still carries, when the decode side has
        read the rest from the store, reading from ``now``)."""
        assert self.in_store is not None
        tokens = self.in_store[rid]
        if not tokens:
            return self.prompt[rid], now
        return self.prompt[rid] - tokens, now + self.l3_latency_s + tokens * self.l3_s_per_token

    def _sums(self, counter: str) -> list[int]:
        tiers: list[list[LruTier]] = [self.l1 or [], self.l2 or [], [self.l3] if self.l3 is not None else []]
        return [sum(getattr(t, counter) for t in tier) for tier in tiers]

    def stats(self) -> CacheStats:
        """The run's totals (``bytes_written`` of L1 counts the blocks it was given)."""
        block_bytes = self.kv_bytes * self.bt
        return CacheStats(
            prompt_tokens=self.looked_up,
            hit_tokens=dict(zip(TIERS, self.hit, strict=True)),
            bytes_loaded={
                "l1": 0,
                "l2": self.hit[1] * self.kv_bytes,
                "l3": self.hit[2] * self.kv_bytes,
            },
            bytes_written={tier: n * block_bytes for tier, n in zip(TIERS, self._sums("added"), strict=True)},
            evicted_blocks=dict(zip(TIERS, self._sums("evicted"), strict=True)),
            cached_tokens=np.asarray(self.skip, dtype=np.int64),
            load_s=np.asarray(self.load_s, dtype=np.float64),
        )


def make_cache(
    config: PrefixCache | None,
    prefix: PrefixBlocks | None,
    prompt: list[int],
    num_instances: int,
    kv_bytes_per_token: int,
    l1_free_tokens: Callable[[int], int],
) -> TieredCache | None:
    """The run's cache, or ``None`` when there is no cache or no request names its prefix.

    Raises:
        ConfigError: an L2/L3 tier without the model's KV bytes per token to size its loads.
    """
    if config is None or prefix is None:
        return None
    if (config.l2 is not None or config.l3 is not None) and kv_bytes_per_token < 1:
        raise ConfigError("cache: L2/L3 tiers need the cluster's kv_bytes_per_token (≥ 1)")
    return TieredCache(config, prefix, prompt, num_instances, kv_bytes_per_token, l1_free_tokens)


_TIER_KEYS = ("capacity_gb", "bandwidth_gbps", "latency_ms")


def cache_from_dict(raw: object, *, source: str = "plan") -> PrefixCache:
    """A plan's ``cache:`` section: ``{l1: true, l2: {capacity_gb, bandwidth_gbps, latency_ms},
    l3: {...}}`` (strict keys; a tier's bandwidth defaults to ``DEFAULT_L2_GBPS`` /
    ``DEFAULT_L3_GBPS``, the store's latency to ``DEFAULT_L3_LATENCY_MS``).

    Raises:
        ConfigError: not a mapping, unknown keys, bad values.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: cache must be a mapping with keys ['l1', 'l2', 'l3']")
    valid = ["l1", "l2", "l3", "decode_reads_store"]
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise ConfigError(f"{source}: cache: unknown keys {unknown}; valid: {valid}")
    tiers: dict[str, CacheTier | None] = {}
    for name, gbps, latency in (("l2", DEFAULT_L2_GBPS, 0.0), ("l3", DEFAULT_L3_GBPS, DEFAULT_L3_LATENCY_MS)):
        spec = raw.get(name)
        if spec is None:
            tiers[name] = None
            continue
        if not isinstance(spec, dict) or "capacity_gb" not in spec:
            raise ConfigError(
                f"{source}: cache.{name} must be a mapping with capacity_gb (keys {list(_TIER_KEYS)})"
            )
        bad = [k for k in spec if k not in _TIER_KEYS]
        if bad:
            raise ConfigError(f"{source}: cache.{name}: unknown keys {bad}; valid: {list(_TIER_KEYS)}")
        try:
            tiers[name] = CacheTier(
                spec["capacity_gb"], spec.get("bandwidth_gbps", gbps), spec.get("latency_ms", latency)
            )
        except ConfigError as err:
            raise ConfigError(f"{source}: cache.{name}: {err}") from None
    try:
        return PrefixCache(
            raw.get("l1", True), tiers["l2"], tiers["l3"], raw.get("decode_reads_store", False)
        )
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def cache_to_dict(cache: PrefixCache) -> dict[str, object]:
    """The ``cache:`` section :func:`cache_from_dict` reads."""

    def tier(t: CacheTier | None) -> dict[str, float] | None:
        if t is None:
            return None
        return {"capacity_gb": t.capacity_gb, "bandwidth_gbps": t.bandwidth_gbps, "latency_ms": t.latency_ms}

    out: dict[str, object] = {"l1": cache.l1, "l2": tier(cache.l2), "l3": tier(cache.l3)}
    if cache.decode_reads_store:
        out["decode_reads_store"] = True
    return out

"""The prefix cache and its tiers: exact hit/miss timelines of hand-made requests, LRU order,
cache-aware routing, the prefix generators and traces.

Latencies are dyadic (1/1024 s per prompt token, ``simcases``); blocks are 64 tokens; KV is
10⁶ bytes a token and every tier reads at 1.024 GB/s, so a token loads in exactly 1/1024 s.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import simcases as sc
import test_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplan.profiles.errors import ConfigError
from pdplan.sim import DecodePool, KvLink, PrefillPool, Requests, SimOptions, simulate
from pdplan.sim.cache_router import CacheAwareConfig, cache_aware
from pdplan.sim.lru_tiers import LruTier
from pdplan.sim.prefix import PrefixBlocks
from pdplan.sim.prefix_cache import CacheTier, PrefixCache
from pdplan.sim.prefix_workload import MultiTurn, SystemPrompts, apply_prefix, prefix_from_dict
from pdplan.sim.traces import parse_canonical, parse_mooncake

BT = 64
KV_BYTES = 1_000_000
TOKEN_S = 1 / 1024
LINK_S = 1 / 128
BLOCK_GB = KV_BYTES * BT / 1e9  # 0.064 GB a block


def _requests(rows, blocks):
    arrival, prompt, output = zip(*rows, strict=True)
    return Requests(
        np.array(arrival), np.array(prompt), np.array(output), PrefixBlocks.from_lists(blocks, BT)
    )


def _colocated(cache, *, kv_tokens=100_000, instances=1, **pool):
    pool = {"policy": "prefill-first", "instances": instances, **pool}
    return dataclasses.replace(
        sc.colocated(kv_tokens=kv_tokens, **pool), cache=cache, kv_bytes_per_token=KV_BYTES
    )


def _prefill_times(result):
    rec = result.records
    return [(float(a), float(b)) for a, b in zip(rec.prefill_start_s, rec.prefill_end_s, strict=True)]


# A: 256 tokens, blocks 1-4; B shares blocks 1-2; C repeats A; D shares no *leading* block.
ROWS = [(0.0, 256, 1), (0.5, 256, 1), (1.0, 256, 1), (1.5, 192, 1)]
BLOCKS = [[1, 2, 3, 4], [1, 2, 5, 6], [1, 2, 3, 4], [9, 2, 3]]


@pytest.mark.parametrize(
    ("policy", "admission"),
    [
        ("prefill-first", "preempt"),
        ("prefill-first", "reserve"),
        ("chunked", "preempt"),
        ("chunked", "reserve"),
    ],
)
def test_l1_hits_skip_the_cached_blocks_prefill(policy, admission):
    # A: 256 tokens computed, [0, 0.25); its blocks enter L1 at 0.25.
    # B: blocks 1-2 hit (128 tokens), computes 128: [0.5, 0.625).
    # C: all 4 blocks hit, but the last token is always computed: 255 cached, 1 computed.
    # D: its first block (9) misses, so nothing after it can hit: 192 computed, [1.5, 1.6875).
    reqs = _requests(ROWS, BLOCKS)
    result = simulate(reqs, _colocated(PrefixCache(), policy=policy, admission=admission))
    assert _prefill_times(result) == [(0.0, 0.25), (0.5, 0.625), (1.0, 1.0 + TOKEN_S), (1.5, 1.6875)]
    stats = result.cache
    assert stats.cached_tokens.tolist() == [0, 128, 255, 0]
    assert stats.hit_tokens == {"l1": 383, "l2": 0, "l3": 0}
    assert stats.prompt_tokens == 960 and stats.hit_rate["total"] == 383 / 960
    assert stats.load_s.tolist() == [0.0] * 4


def test_without_a_cache_or_without_prefixes_nothing_changes():
    reqs = _requests(ROWS, BLOCKS)
    plain = Requests(reqs.arrival_s, reqs.prompt_tokens, reqs.output_tokens)
    no_cache = simulate(reqs, _colocated(None))
    assert no_cache.cache is None
    assert _prefill_times(no_cache) == [(0.0, 0.25), (0.5, 0.75), (1.0, 1.25), (1.5, 1.6875)]
    no_prefix = simulate(plain, _colocated(PrefixCache()))
    assert no_prefix.cache is None and _prefill_times(no_prefix) == _prefill_times(no_cache)


def test_l1_spills_to_l2_and_an_l2_hit_pays_its_load():
    # KV holds 512 tokens. When A's prefill ends it still runs (2 output tokens) and holds 258, so
    # L1 may keep (512 − 258) // 64 = 3 blocks: block 4 (the deepest) is evicted; L2 keeps all 4
    # (write-through).
    # B repeats A: blocks 1-3 from L1 (192 tokens), block 4 from L2 less the last token (63), which
    # loads in 63/1024 s before its 1 computed token: [0.5, 0.5 + 64/1024).
    cache = PrefixCache(l2=CacheTier(capacity_gb=10 * BLOCK_GB, bandwidth_gbps=1.024))
    reqs = _requests([(0.0, 256, 2), (0.5, 256, 1)], [[1, 2, 3, 4]] * 2)
    result = simulate(reqs, _colocated(cache, kv_tokens=512))
    assert _prefill_times(result) == [(0.0, 0.25), (0.5, 0.5 + 64 * TOKEN_S)]
    stats = result.cache
    assert stats.hit_tokens == {"l1": 192, "l2": 63, "l3": 0}
    assert stats.load_s.tolist() == [0.0, 63 * TOKEN_S]
    assert stats.bytes_loaded["l2"] == 63 * KV_BYTES
    assert stats.evicted_blocks["l1"] >= 1


def test_the_shared_store_serves_another_instance_with_its_latency():
    # Round robin: A on instance 0, B (same prompt) on instance 1, whose L1 and L2 are empty.
    # The store (shared) holds A's blocks: 255 tokens load in 1/128 s + 255/1024 s, then 1 token.
    cache = PrefixCache(
        l2=CacheTier(10 * BLOCK_GB, 1.024),
        l3=CacheTier(100 * BLOCK_GB, 1.024, latency_ms=1000 * LINK_S),
    )
    reqs = _requests([(0.0, 256, 1), (0.5, 256, 1)], [[1, 2, 3, 4]] * 2)
    result = simulate(reqs, _colocated(cache, instances=2), SimOptions(router="round_robin"))
    assert _prefill_times(result) == [(0.0, 0.25), (0.5, 0.5 + LINK_S + 256 * TOKEN_S)]
    assert result.cache.hit_tokens == {"l1": 0, "l2": 0, "l3": 255}
    assert result.cache.bytes_written["l3"] == 4 * BT * KV_BYTES  # A's blocks, written through once


def test_disaggregated_prefill_skips_cached_blocks_and_the_link_moves_the_whole_prompt():
    # Prefill instance: A [0, 0.25); B hits blocks 1-2: [0.5, 0.625). Each transfer moves the whole
    # prompt's KV (the decode side needs all of it): 256 KB-free link (kv bytes 0) + 1/128 latency.
    reqs = _requests([(0.0, 256, 2), (0.5, 256, 2)], [[1, 2, 3, 4], [1, 2, 5, 6]])
    cluster = dataclasses.replace(
        sc.disagg(prefill=PrefillPool(1, max_batch_tokens=1024), decode=DecodePool(1)), cache=PrefixCache()
    )
    result = simulate(reqs, cluster)
    assert _prefill_times(result) == [(0.0, 0.25), (0.5, 0.625)]
    assert result.transfer_end_s.tolist() == [0.25 + LINK_S, 0.625 + LINK_S]
    assert result.cache.hit_tokens["l1"] == 128


def test_chunked_prefill_of_a_long_prompt_starts_after_its_cached_tokens():
    # Disaggregated prefill with 128-token chunks: B (384 tokens) hits 256 cached tokens, so one
    # 128-token batch completes it: [0.5, 0.625). A (256) takes two chunks back to back.
    reqs = _requests([(0.0, 256, 1), (0.5, 384, 1)], [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]])
    prefill = PrefillPool(1, max_batch_tokens=128, chunk_tokens=128)
    cluster = dataclasses.replace(sc.disagg(prefill=prefill), cache=PrefixCache())
    result = simulate(reqs, cluster)
    assert _prefill_times(result) == [(0.0, 0.25), (0.5, 0.625)]


def test_lru_evicts_the_least_recent_and_a_prefix_outlives_its_extensions():
    tier = LruTier(10)  # block ids below 10
    assert tier.touch([4, 3, 2, 1], cap=10) == (4, 0)  # request A's blocks 1-4, deepest first
    assert tier.touch([6, 5], cap=10) == (2, 0)
    assert tier.touch([2, 1], cap=10) == (0, 0)  # 1, 2 refreshed
    added, evicted = tier.touch([8, 7], cap=5)  # 8 blocks > 5: 4, 3 (A's leaves), then 6 go
    assert (added, evicted) == (2, 3)
    assert tier.held() == [1, 2, 5, 7, 8]
    assert tier.leading([1, 2, 3]) == 2 and tier.leading([5, 6]) == 1 and tier.leading([9]) == 0
    small = LruTier(10)  # a group larger than the tier: the older blocks, then its deepest, go
    small.touch([4, 3, 2, 1], cap=10)
    assert small.touch([6, 5, 2, 1], cap=3) == (2, 3) and small.held() == [1, 2, 5]
    anonymous = LruTier(10)  # blocks no other request has are counted, and go first (deepest)
    assert anonymous.touch([3, 2, 1], cap=4, anonymous=2) == (5, 1)
    assert anonymous.held() == [1, 2, 3] and len(anonymous) == 4
    assert anonymous.touch([5, 4], cap=4) == (2, 2) and anonymous.held() == [1, 2, 4, 5]  # anon, 3


def test_cache_aware_routing_follows_sglang_router():
    # sgl-router cache_aware.rs: balanced load -> the longest prefix match if its rate > 0.5, else
    # the smallest tree; imbalanced (max − min > 32 units and max > 1.1 × min) -> the least loaded.
    loads = [0, 0]
    blocks = [[1, 2], [3, 4], [1, 2, 5], [1, 9, 9, 9], [3, 4, 7]]
    choose = cache_aware(loads, blocks, load_unit=1.0)
    assert [choose(0), choose(1), choose(2)] == [0, 1, 0]  # 2 ties -> lowest; 1: smallest; 2: 2/3
    assert choose(3) == 1  # match 1/4 <= 0.5 -> smallest tree (instance 1 holds 2 blocks, 0 holds 3)
    loads[:] = [0, 100]
    assert choose(4) == 0  # imbalanced: least loaded, though instance 1 matches 2/3


def test_prefix_generators_share_exactly_the_whole_blocks():
    rng = np.random.default_rng(0)
    prompt, output = np.array([100, 50, 70]), np.array([30, 20, 10])
    full, blocks = apply_prefix(
        SystemPrompts(num_prompts=1, prefix_tokens=150, block_tokens=64), prompt, output, rng
    )
    assert full.tolist() == [250, 200, 220]
    # 150 tokens = 2 whole shared blocks (0, 1); the partly shared third block is new per request
    assert [blocks.of(i) for i in range(3)] == [[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 6, 7]]
    spec = MultiTurn(turns=3, conversations=1, system_prompt_tokens=64, block_tokens=64)
    full, blocks = apply_prefix(spec, prompt, output, np.random.default_rng(0))
    # turn 1: 64 + 100 = 164; turn 2: 164 + 30 + 50 = 244 shares turn 1's 2 whole blocks;
    # turn 3: 244 + 20 + 70 = 334 shares turn 2's 3 whole blocks
    assert full.tolist() == [164, 244, 334]
    assert [blocks.of(i) for i in range(3)] == [[0, 1, 2], [0, 1, 3, 4], [0, 1, 3, 5, 6, 7]]
    with pytest.raises(ConfigError, match="unknown keys"):
        prefix_from_dict({"kind": "multi_turn", "turns": 2, "conversations": 1, "people": 3})
    with pytest.raises(ConfigError, match=r"workload\.prefix\.kind"):
        prefix_from_dict({"kind": "rag"})


def test_canonical_csv_prefix_hashes_round_trip_and_block_count_is_checked():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "arrival_s": [0.0, 1.0],
            "prompt_tokens": [600, 100],
            "output_tokens": [1, 1],
            "prefix_hashes": ["7 8", "7"],
        }
    )
    reqs = parse_canonical(frame)
    assert reqs.prefix.of(0) == [7, 8] and reqs.prefix.of(1) == [7] and reqs.prefix.block_tokens == 512
    frame.loc[1, "prefix_hashes"] = "7 8"  # 2 blocks of 512 for a 100-token prompt
    with pytest.raises(ConfigError, match="request 1: 2 prefix blocks for a 100-token prompt"):
        parse_canonical(frame)
    assert len(reqs.head(1).prefix) == 1 and reqs.scaled(2.0).prefix is reqs.prefix
    frame.loc[1, "prefix_hashes"] = "7"
    written = frame.assign(prefix_hashes=parse_canonical(frame).prefix.hash_column())
    assert written["prefix_hashes"].tolist() == ["7 8", "7"]  # what a canonical CSV holds


def test_mooncake_trace_carries_its_hash_ids(shared_data):
    path = shared_data / "traces" / "mooncake_conversation_trace.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with path.open() as lines:
        reqs = parse_mooncake(lines)
    assert reqs.prefix is not None and len(reqs.prefix) == len(reqs) == 12031
    counts = np.diff(reqs.prefix.offsets)
    assert np.array_equal(counts, -(-reqs.prompt_tokens // 512))  # one id per 512-token block
    assert math.isclose(reqs.prefix.shared_fraction(), 0.366, abs_tol=0.001)  # infinite-cache bound


def test_the_decode_side_reads_the_stored_prefix_from_the_store():
    # Disaggregated, 1/1024 s a token on the link, the store 4x faster (1/4096 s) with 1/128 s latency.
    # A: prefill [0, 0.25), the link carries all 256 tokens: ready 0.25 + 0.25 + 1/128.
    # B repeats A: 255 cached (L1 on the prefill side, and in the store): prefill 1 token, ending
    # t = 1 + 1/1024; the link carries that 1 token, the decode reads 255 from the store:
    # ready = max(t + 1/1024 + 1/128, t + 1/128 + 255/4096).
    store = CacheTier(100 * BLOCK_GB, 4.096, latency_ms=1000 * LINK_S)
    reqs = _requests([(0.0, 256, 2), (1.0, 256, 2)], [[1, 2, 3, 4]] * 2)
    link = KvLink(bandwidth_gbps=1.024, latency_ms=1000 * LINK_S)
    cluster = dataclasses.replace(
        sc.disagg(link=link, kv_bytes_per_token=KV_BYTES),
        cache=PrefixCache(l3=store, decode_reads_store=True),
    )
    result = simulate(reqs, cluster)
    t = 1.0 + TOKEN_S
    assert _prefill_times(result) == [(0.0, 0.25), (1.0, t)]
    assert result.transfer_end_s.tolist() == [0.5 + LINK_S, t + LINK_S + 255 / 4096]
    plain = dataclasses.replace(cluster, cache=PrefixCache(l3=store))  # the link carries it all
    assert simulate(reqs, plain).transfer_end_s.tolist() == [0.5 + LINK_S, t + 0.25 + LINK_S]
    with pytest.raises(ConfigError, match="needs an l3 store"):
        PrefixCache(decode_reads_store=True)


def test_a_prefix_key_leaves_the_other_draws_unchanged():
    from pdplan.sim import draw_requests, workload_from_dict

    spec = {
        "num_requests": 300,
        "arrival": {"process": "poisson", "rate_rps": 4.0},
        "prompt_tokens": {"dist": "lognormal", "mean": 300, "cv": 0.6, "min": 16, "max": 4096},
        "output_tokens": {"dist": "uniform", "min": 1, "max": 100},
    }
    plain = draw_requests(workload_from_dict(spec))
    prefix = {"kind": "multi_turn", "turns": 4, "conversations": 10, "system_prompt_tokens": 600}
    shared = draw_requests(workload_from_dict({**spec, "prefix": prefix}))
    assert plain.prefix is None and shared.prefix is not None and len(shared.prefix) == 300
    assert np.array_equal(plain.arrival_s, shared.arrival_s)
    assert np.array_equal(plain.output_tokens, shared.output_tokens)
    assert np.all(shared.prompt_tokens >= plain.prompt_tokens)  # a prefix plus the drawn message
    assert 0.5 < shared.prefix.shared_fraction() < 1.0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 50),
    colocated=st.booleans(),
    tiers=st.sampled_from(["l1", "l1l2", "l1l2l3", "l3"]),
    router=st.sampled_from(["least_loaded", "cache_aware", "round_robin"]),
)
def test_laws_with_a_prefix_cache(seed, n, colocated, tiers, router):
    # Random shared prefixes through random tiers: every request still ends, causality holds,
    # a hit never covers the whole prompt, per-tier hits add up, and the run is deterministic.
    rng = np.random.default_rng(seed)
    base = ref._workload(rng, n, True)
    blocks = [
        [int(b) for b in rng.integers(0, 3, size=-(-int(p) // BT)).cumsum()] for p in base.prompt_tokens
    ]
    reqs = Requests(
        base.arrival_s, base.prompt_tokens, base.output_tokens, PrefixBlocks.from_lists(blocks, BT)
    )
    small = CacheTier(float(rng.integers(1, 6)) * BLOCK_GB, 1.024, 1.0)
    cache = PrefixCache(
        l1="l1" in tiers, l2=small if "l2" in tiers else None, l3=small if "l3" in tiers else None
    )
    admission = "preempt" if rng.random() < 0.5 else "reserve"
    cluster = ref._colocated(rng, True, admission) if colocated else ref._disagg(rng, True, admission)
    cluster = dataclasses.replace(
        cluster, cache=cache, **({"kv_bytes_per_token": KV_BYTES} if colocated else {})
    )
    if not colocated:
        cluster = dataclasses.replace(cluster, kv_bytes_per_token=KV_BYTES)
    runs = [simulate(reqs, cluster, SimOptions(router=router)) for _ in range(2)]
    rec, stats = runs[0].records, runs[0].cache
    ok = rec.status_code == 0
    assert np.all(ok | (rec.status_code == 1))
    assert np.all(rec.prefill_start_s[ok] >= rec.arrival_s[ok]) and np.all(
        rec.finish_s[ok] >= rec.first_token_s[ok]
    )
    assert np.all(stats.cached_tokens <= reqs.prompt_tokens - 1) and np.all(stats.cached_tokens >= 0)
    assert sum(stats.hit_tokens.values()) == int(stats.cached_tokens.sum())
    assert np.all((stats.load_s > 0) <= (stats.cached_tokens > 0))
    for a, b in zip(runs[0].records.columns().values(), runs[1].records.columns().values(), strict=True):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@pytest.mark.parametrize("dense", [True, False])
def test_lru_tier_is_an_ordered_dict_lru(dense):
    # The reference: every block (anonymous ones as fresh ids, deepest) in an OrderedDict, touched
    # deepest first, the oldest evicted beyond cap. LruTier must hold the same named blocks and count.
    from collections import OrderedDict

    rng = np.random.default_rng(7)
    for _ in range(200):
        ref: OrderedDict[int, None] = OrderedDict()
        tier, cap, fresh = LruTier(30, dense), int(rng.integers(1, 25)), 10_000
        for _ in range(60):
            named = list(dict.fromkeys(rng.integers(0, 30, int(rng.integers(0, 7))).tolist()))
            anonymous = int(rng.integers(0, 4))
            group = list(range(fresh, fresh + anonymous)) + named[::-1]  # deepest first
            fresh += anonymous
            for b in group:
                ref[b] = None
                ref.move_to_end(b)
            while len(ref) > cap:
                ref.popitem(last=False)
            tier.touch(named[::-1], cap, anonymous)
            assert tier.held() == sorted(b for b in ref if b < 10_000) and len(tier) == len(ref)


def test_a_tier_that_holds_every_block_is_a_set_with_the_same_answers():
    # SetTier serves a tier whose capacity covers every block of the run (no eviction can
    # happen): touched with the same requests, it answers as LruTier does, and its count is exact.
    from pdplan.sim.lru_tiers import SetTier

    rng = np.random.default_rng(3)
    lru, fast = LruTier(40), SetTier()
    for _ in range(300):
        path = list(dict.fromkeys(rng.integers(0, 40, int(rng.integers(0, 6))).tolist()))
        anonymous = int(rng.integers(0, 3))
        probe = rng.integers(0, 40, 4).tolist()
        assert fast.leading(probe) == lru.leading(probe)
        assert fast.touch_path(path, 10_000, anonymous) == lru.touch_path(path, 10_000, anonymous)
        assert len(fast) == len(lru) and fast.held() == lru.held()
    blocks = PrefixBlocks.from_lists([[1, 2, 3], [1, 2, 4], [5]])
    assert blocks.distinct_blocks == 2 + 3  # named 1, 2 (shared); 3, 4 and 5 only counted


def test_named_blocks_are_renumbered_densely_keeping_which_requests_share_them():
    # Tiers index a list by the named ids: equal hashes get equal ids 0..named_ids-1 (in the
    # order of the hashes), a repeat within a prompt is one named block, unshared blocks counted.
    blocks = PrefixBlocks.from_lists([[900, -7, 5], [900, -7, 6, 6], [2**62 + 1, 900], [2**62 + 1, 3]])
    named, anonymous = blocks.named
    assert named == [[2, 0], [2, 0, 1], [3, 2], [3]] and anonymous == [1, 0, 0, 1]
    assert blocks.named_ids == 4 and blocks.distinct_blocks == 4 + 2
    assert PrefixBlocks.from_lists([[], [1]]).named == ([[], []], [0, 1])


def test_cache_aware_trees_evict_requests_that_repeat_a_block():
    # A prompt that repeats a block id holds it once; with a tree smaller than the traffic, its
    # eviction must not drop the block twice (the tree used to fail with KeyError here).
    blocks = [[1, 2, 1, 2], [3, 4, 3], [1, 2, 5], [3, 4, 6], [1, 7]]
    choose = cache_aware(
        [0, 0], PrefixBlocks.from_lists(blocks, BT), 1.0, CacheAwareConfig(max_tree_blocks=3)
    )
    assert [choose(i) for i in range(5)] == [0, 1, 0, 1, 0]

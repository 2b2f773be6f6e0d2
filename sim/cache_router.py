"""``cache_aware`` routing: sglang-router's cache-aware load balancing, on prefix blocks.

The algorithm and its defaults are sglang-router's (sgl-project/sglang,
``sgl-router/src/policies/cache_aware.rs``; defaults from ``CacheAwareConfig::default`` in
``sgl-router/src/policies/mod.rs``: ``cache_threshold`` 0.5, ``balance_abs_threshold`` 32,
``balance_rel_threshold`` 1.1, ``max_tree_size`` 10,000). For each request:

1. The system is *imbalanced* when ``max_load − min_load > balance_abs_threshold`` **and**
   ``max_load > min_load × balance_rel_threshold``; then the request goes to the least loaded
   instance (shortest queue; lowest index on ties) and its prefix is still recorded there.
2. Otherwise the router finds the instance whose approximate tree holds the longest run of the
   request's leading blocks; if that run is more than ``cache_threshold`` of the request's blocks,
   the request goes there, else to the instance with the smallest tree (most free cache).
3. The request's blocks are inserted into the chosen instance's tree.

Differences, stated: sglang-router matches raw text characters; here the match rate is in prefix
blocks (``pdplan.sim.prefix``). Its load is the count of in-flight requests; here it is the
simulator's outstanding tokens per instance (``pdplan.sim.router``), so the absolute threshold is
``balance_abs_threshold`` × the mean load one request adds (``load_unit``). Its trees are pruned
to ``max_tree_size`` nodes every 30 s by LRU; here each tree keeps its ``max_tree_blocks`` most
recently used blocks, pruned at every insert. The prefill side of a disaggregated cluster routes
this way; its decode side goes to the least loaded instance (``select_worker_pair`` does the same).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.lru_tiers import MAX_LIST_SLOTS, LruTier, SetTier
from pdplan.sim.prefix import PrefixBlocks

Chooser = Callable[[int], int]


@dataclass(frozen=True)
class CacheAwareConfig:
    """sglang-router's ``--cache-threshold``, ``--balance-abs-threshold``,
    ``--balance-rel-threshold`` and the tree size (in blocks here)."""

    cache_threshold: float = 0.5
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.1
    max_tree_blocks: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ConfigError(f"cache_threshold={self.cache_threshold!r}; expected a number in [0, 1]")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ConfigError("balance thresholds: expected abs ≥ 0 and rel ≥ 1")
        if self.max_tree_blocks < 1:
            raise ConfigError(f"max_tree_blocks={self.max_tree_blocks!r}; expected ≥ 1")


def cache_aware(
    loads: list[int],
    blocks: PrefixBlocks | list[list[int]] | None,
    load_unit: float,
    config: CacheAwareConfig | None = None,
) -> Chooser:
    """A chooser over ``len(loads)`` instances (``loads`` is read live, as ``least_loaded`` does);
    ``blocks`` are the requests' prefix blocks (``PrefixBlocks``, or one id list per request;
    ``None``: no request has any).

    A tree holds a request's named blocks and counts its anonymous ones (``PrefixBlocks.named``:
    blocks no other request has can never match, so they only take room, deepest); the match
    rate is over all the request's blocks.
    """
    config = config or CacheAwareConfig()
    n = len(loads)
    if blocks is None:
        named: list[list[int]] = []
        anonymous: list[int] = []
        total: list[int] = []
    else:
        prefix = blocks if isinstance(blocks, PrefixBlocks) else PrefixBlocks.from_lists(blocks)
        named, anonymous = prefix.named
        total = np.diff(prefix.offsets).tolist()
    cap = config.max_tree_blocks
    # LRU over blocks, a prefix outliving its extensions; a tree that can hold every block of the
    # run never evicts, and a set serves it (exactly)
    bounded = blocks is not None and cap < prefix.distinct_blocks
    size = prefix.named_ids if blocks is not None else 0
    dense = n * size <= MAX_LIST_SLOTS
    trees: list[LruTier] = [LruTier(size, dense) if bounded else SetTier() for _ in range(n)]
    contains = [tree.has for tree in trees]  # LruTier.leading, inlined
    abs_threshold = config.balance_abs_threshold * load_unit
    rel, threshold = config.balance_rel_threshold, config.cache_threshold

    def choose(rid: int) -> int:
        high, low = max(loads), min(loads)
        count = total[rid] if total else 0
        if high - low > abs_threshold and high > low * rel:
            w = loads.index(low)
        else:
            path = named[rid] if count else None
            matched = [len(list(takewhile(has, path))) for has in contains] if path else None
            best_k = max(matched) if matched else 0
            if matched and best_k / count > threshold:
                w = matched.index(best_k)
            else:
                sizes = [len(t) for t in trees]
                w = sizes.index(min(sizes))
        if count:
            trees[w].touch_path(named[rid], cap, anonymous[rid])
        return w

    return choose

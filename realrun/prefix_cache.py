"""``PrefixCache``: a worker's prefix cache — a paged radix tree over token ids holding the KV of
prompts the worker already computed, in the worker's KV budget (L1 only).

What it does (SGLang's RadixAttention, Zheng et al., NeurIPS 2024; sgl-project/sglang
``python/sglang/srt/mem_cache/radix_cache.py``, with pages as its ``--page-size``): a prompt is cut
into pages of ``page_tokens`` tokens; a node of the tree is one page, keyed by its parent and its
token ids, and holds that page's keys and values (every layer). A new prompt walks the tree from the
root and reuses the KV of its longest run of cached pages; its prefill computes only the rest, and
never the whole prompt: the last token is always computed (its logits give the first output token),
as SGLang, vLLM and the simulator (``pdplan.sim.prefix_cache``) do.

Life of a hit (the engine thread drives it; every method is thread-safe):

- :meth:`fill` when the request's prefill starts — at scheduling time, where SGLang's scheduler
  matches (``Req.init_next_round_input`` in ``python/sglang/srt/managers/schedule_batch.py``):
  :meth:`match` *locks* the matched pages (a reference count per node, SGLang's ``inc_lock_ref``)
  so that a reservation on another thread (the event loop's admission) cannot evict them, then
  :meth:`load` copies them into the request's own cache (the executor keeps one contiguous cache
  per request) and unlocks them (:meth:`release` unlocks without copying);
- :meth:`insert` when its prefill ends: the prompt's whole pages enter the tree (a copy), and every
  page of the path is marked most recently used, deepest first, so a prefix outlives its extensions.

Memory: the cache's pages count in the worker's :class:`KvBudget` (``cached_tokens``) beside the
requests' reservations; a reservation that does not fit evicts least recently used pages that no
request holds (leaves only: a radix cache frees leaves first), and an insert that does not fit
evicts the same way and then keeps only the pages that fit. A request that copied its prefix holds
its own copy, so its KV is counted twice while it runs, as the simulator counts it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pdplan.realrun.kv_budget import KvBudget

if TYPE_CHECKING:  # torch-free at import: ``pdplan deploy`` reads DEFAULT_PAGE_TOKENS
    import torch

    from pdplan.profiles.kv_cache import KVCache

#: Default page size: vLLM's default KV block size (16 tokens, ``--block-size``). Hits are whole
#: pages, so a workload whose shared prefixes are whole blocks of a multiple of this size (the
#: simulator's blocks: 512 tokens for Mooncake) hits exactly the simulator's tokens.
DEFAULT_PAGE_TOKENS = 16


@dataclass(eq=False)
class _Node:
    parent: _Node | None
    key: tuple[int, ...]
    k: torch.Tensor | None = None  # [layers, kv_heads, page, head_dim]
    v: torch.Tensor | None = None
    children: dict[tuple[int, ...], _Node] = field(default_factory=dict)
    lock_ref: int = 0


@dataclass(eq=False)
class Match:
    """A request's hit: the locked pages (root first) and the prompt tokens they supply."""

    nodes: list[_Node]
    cached_tokens: int
    released: bool = False


@dataclass(frozen=True)
class PrefixCacheStats:
    """Totals since the worker started: prompt tokens looked up and served from the cache."""

    prompt_tokens: int
    hit_tokens: int
    cached_tokens: int
    evicted_pages: int

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class PrefixCache:
    """The tree; see the module docstring. ``budget`` is the worker's KV budget (its reclaimer is
    set to this cache's eviction)."""

    def __init__(self, budget: KvBudget, page_tokens: int = DEFAULT_PAGE_TOKENS) -> None:
        assert page_tokens >= 1, page_tokens
        self.page = page_tokens
        self.budget = budget
        self._root = _Node(None, ())
        self._lru: OrderedDict[_Node, None] = OrderedDict()  # every non-root node, oldest first
        self._lock = threading.Lock()
        self._locked_pages = 0  # nodes with lock_ref > 0
        self._prompt_tokens = 0
        self._hit_tokens = 0
        self._evicted = 0
        budget.set_reclaimer(self.evict)

    # --- the life of a hit ------------------------------------------------------------------------
    def match(self, prompt: tuple[int, ...] | list[int]) -> Match:
        """Lock the longest run of cached pages that starts ``prompt``; at most ``len(prompt) − 1``
        of its tokens count as cached (the last one is always computed)."""
        p = self.page
        with self._lock:
            nodes: list[_Node] = []
            node = self._root
            for start in range(0, len(prompt) - p + 1, p):
                child = node.children.get(tuple(prompt[start : start + p]))
                if child is None:
                    break
                nodes.append(child)
                node = child
            for n in nodes:
                self._lock_node(n)
            cached = min(len(nodes) * p, len(prompt) - 1)
            self._prompt_tokens += len(prompt)
            self._hit_tokens += cached
        return Match(nodes, cached)

    def fill(self, prompt: tuple[int, ...] | list[int], cache: KVCache) -> int:
        """Match ``prompt`` and copy its hit into ``cache`` (empty); returns the cached tokens."""
        match = self.match(prompt)
        self.load(match, cache)
        return match.cached_tokens

    def load(self, match: Match, cache: KVCache) -> None:
        """Copy the hit's tokens into ``cache`` (empty, with room for the prompt) and unlock them;
        ``cache.length`` becomes ``match.cached_tokens``."""
        assert cache.length == 0 and cache.capacity >= match.cached_tokens, cache
        p, total = self.page, match.cached_tokens
        for i, node in enumerate(match.nodes):  # locked: no other thread changes them
            n = min(p, total - i * p)
            if n <= 0:
                break
            assert node.k is not None and node.v is not None
            cache.k[:, :, i * p : i * p + n].copy_(node.k[:, :, :n])
            cache.v[:, :, i * p : i * p + n].copy_(node.v[:, :, :n])
        cache.length = total
        self.release(match)

    def release(self, match: Match) -> None:
        """Unlock the hit's pages (idempotent)."""
        with self._lock:
            if match.released:
                return
            match.released = True
            for n in match.nodes:
                self._unlock_node(n)

    def insert(self, prompt: tuple[int, ...] | list[int], cache: KVCache) -> int:
        """Enter the whole pages of ``prompt`` (whose KV ``cache`` holds) and mark its path most
        recently used. Returns the pages added (fewer when the budget has no room for them)."""
        p = self.page
        whole = min(len(prompt), cache.length) // p
        added = 0
        with self._lock:
            path: list[_Node] = []
            node = self._root
            for i in range(whole):
                key = tuple(prompt[i * p : (i + 1) * p])
                child = node.children.get(key)
                if child is None:
                    if not self.budget.hold_cached(p):
                        self._evict(p, keep=path)
                        if not self.budget.hold_cached(p):
                            break
                    child = _Node(node, key)
                    child.k = cache.k[:, :, i * p : (i + 1) * p].clone()
                    child.v = cache.v[:, :, i * p : (i + 1) * p].clone()
                    node.children[key] = child
                    added += 1
                path.append(child)
                node = child
            for n in reversed(path):  # deepest first: the root of the path is the most recent
                self._lru[n] = None
                self._lru.move_to_end(n)
        return added

    # --- eviction ---------------------------------------------------------------------------------
    def evict(self, tokens: int) -> int:
        """Free at least ``tokens`` of cached KV if unlocked pages allow; returns tokens freed."""
        with self._lock:
            return self._evict(tokens)

    def _evict(self, tokens: int, keep: list[_Node] | None = None) -> int:
        protected = set(map(id, keep or ()))
        freed = 0
        while freed < tokens:
            victims: list[_Node] = []
            for node in self._lru:  # oldest first; a parent frees up once its children went
                if not node.children and not node.lock_ref and id(node) not in protected:
                    victims.append(node)
                    if freed + len(victims) * self.page >= tokens:
                        break
            if not victims:
                break
            for node in victims:
                assert node.parent is not None
                del node.parent.children[node.key]
                del self._lru[node]
                node.k = node.v = None
                self.budget.drop_cached(self.page)
                freed += self.page
                self._evicted += 1
        return freed

    # --- accounting -------------------------------------------------------------------------------
    def _lock_node(self, node: _Node) -> None:
        if node.lock_ref == 0:
            self._locked_pages += 1
        node.lock_ref += 1

    def _unlock_node(self, node: _Node) -> None:
        assert node.lock_ref > 0, "unlocking a page nobody locked"
        node.lock_ref -= 1
        if node.lock_ref == 0:
            self._locked_pages -= 1

    @property
    def locked_tokens(self) -> int:
        """Cached tokens that requests hold (never evicted until they let go)."""
        return self._locked_pages * self.page

    @property
    def cached_tokens(self) -> int:
        return len(self._lru) * self.page

    def stats(self) -> PrefixCacheStats:
        with self._lock:
            return PrefixCacheStats(self._prompt_tokens, self._hit_tokens, self.cached_tokens, self._evicted)

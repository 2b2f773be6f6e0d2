"""Least-recently-used tiers of prefix-cache blocks, cheap per block (``LruTier``), and the tier
that never evicts (``SetTier``): the storage of :mod:`pdplan.sim.prefix_cache`'s L1/L2/L3 and of
the cache-aware router's per-instance trees (:mod:`pdplan.sim.cache_router`)."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from itertools import takewhile

#: The most list slots (8 bytes each: 512 MiB) a run's LRU tiers may hold together; beyond it they
#: keep their clocks in dictionaries (``LruTier``'s ``dense=False``).
MAX_LIST_SLOTS = 1 << 26


class LruTier:
    """One tier's blocks with least-recently-used eviction, cheap per block.

    Blocks are dense ids ``0 .. size − 1`` (``PrefixBlocks.named``). ``stamp[b]`` is the clock
    of block ``b``'s last touch, 0 when the tier does not hold it (a list: indexing it costs a
    fraction of a dictionary lookup, and ``has`` is its ``__getitem__``, truthy when held);
    ``order`` lists the touches, oldest first, as (clock, blocks root first, anonymous blocks);
    blocks touched again since are stale in their old entry and skipped when it is evicted.
    ``order`` is compacted when stale entries dominate. Memory: 8 bytes per id, per tier
    (``MAX_LIST_SLOTS``).

    *Anonymous* blocks are blocks no other request has (``TieredCache``): they can never be hit,
    so they are only counted — they take capacity and are evicted in their turn (before the
    touch's named blocks: they are its deepest), without an entry each.
    """

    def __init__(self, size: int, dense: bool = True) -> None:
        # ``dense=False`` (a run too large for lists, ``MAX_LIST_SLOTS``): a dictionary with the
        # same reads and writes, memory only for the blocks this tier saw, slower per block
        self.stamp: list[int] | defaultdict[int, int]
        self.has: Callable[[int], int | None]
        if dense:
            self.stamp = [0] * size
            self.has = self.stamp.__getitem__
        else:
            by_block: defaultdict[int, int] = defaultdict(int)
            self.stamp = by_block
            self.has = by_block.get  # a lookup must not insert
        self.order: deque[tuple[int, list[int], int]] = deque()
        self.named = 0  # named blocks held
        self.anonymous = 0  # anonymous blocks held
        self.entries = 0  # named blocks listed in ``order``, stale ones included
        self.clock = 0
        self.added = 0  # blocks written to this tier, over the run
        self.evicted = 0

    def __len__(self) -> int:
        return self.named + self.anonymous

    def __contains__(self, block: int) -> bool:
        return bool(self.has(block))

    def held(self) -> list[int]:
        """The named blocks held, ascending (for tests and inspection: O(size))."""
        stamp = self.stamp
        pairs = enumerate(stamp) if isinstance(stamp, list) else sorted(stamp.items())
        return [b for b, t in pairs if t]

    def leading(self, blocks: list[int]) -> int:
        """How many of ``blocks``' leading blocks this tier holds."""
        return len(list(takewhile(self.has, blocks)))

    def touch(self, deepest_first: list[int], cap: int, anonymous: int = 0) -> tuple[int, int]:
        """:meth:`touch_path` with the blocks given deepest first."""
        return self.touch_path(deepest_first[::-1], cap, anonymous)

    def touch_path(self, path: list[int], cap: int, anonymous: int = 0) -> tuple[int, int]:
        """Mark a request's named blocks (``path``, root first, no repeats; not modified later)
        most recently used, the root last so that a prefix outlives its extensions (a radix
        cache evicts leaves first), add its ``anonymous`` blocks (deeper still), then evict the
        least recently used beyond ``cap`` blocks. Returns (blocks added, blocks evicted)."""
        stamp = self.stamp
        self.clock = clock = self.clock + 1
        new = 0
        for block in path:  # a plain loop over a list: faster here than any C-level bulk call
            if not stamp[block]:
                new += 1
            stamp[block] = clock
        self.named = held = self.named + new
        self.order.append((clock, path, anonymous))
        self.entries += len(path)
        self.anonymous += anonymous
        excess = held + self.anonymous - cap
        evicted = self._evict(excess) if excess > 0 else 0
        if self.entries > 4 * self.named + 65536:  # stale entries dominate: drop them
            self._compact()
        added = new + anonymous
        self.added += added
        self.evicted += evicted
        return added, evicted

    def _evict(self, excess: int) -> int:
        """Evict ``excess`` blocks (at most all held), least recently used first (within a touch,
        the anonymous blocks, then the named ones deepest first)."""
        stamp, order = self.stamp, self.order
        anonymous_held, entries = self.anonymous, self.entries
        evicted, gone = excess, 0
        while excess > 0:
            t, group, anonymous = order[0]
            if anonymous:
                if anonymous >= excess:
                    anonymous_held -= excess
                    order[0] = (t, group, anonymous - excess)
                    break
                anonymous_held -= anonymous
                excess -= anonymous
            size = len(group)
            if size <= excess:  # the whole touch goes: its blocks not touched since
                order.popleft()
                entries -= size
                before = gone
                for block in group:
                    if stamp[block] == t:
                        stamp[block] = 0
                        gone += 1
                excess -= gone - before
                continue
            # more blocks than must go: from the deepest end, only as far as needed (a touch may
            # list hundreds of blocks and lose a few at each later touch: never rescan it whole)
            j, need = size, excess
            while j:
                j -= 1
                block = group[j]
                if stamp[block] == t:
                    stamp[block] = 0
                    need -= 1
                    if not need:
                        break
            gone += excess - need
            excess = need
            if not excess:
                order[0] = (t, group[:j], 0)
                entries -= size - j
                break
            order.popleft()  # its live blocks were fewer than ``excess``: all gone
            entries -= size
        self.anonymous, self.entries = anonymous_held, entries
        self.named -= gone
        return evicted

    def _compact(self) -> None:
        stamp = self.stamp
        kept = [(t, [b for b in g if stamp[b] == t], a) for t, g, a in self.order]
        self.order = deque(e for e in kept if e[1] or e[2])
        self.entries = sum(len(g) for _, g, _ in self.order)


class SetTier(LruTier):
    """A tier that can hold every block the run will ever write (``TieredCache`` checks): nothing
    is evicted, so no order is kept — its named blocks are a set (``blocks``; ``stamp`` is not
    used) and a touch is one set update."""

    def __init__(self, size: int = 0) -> None:
        super().__init__(0)
        self.blocks: set[int] = set()
        self.has = self.blocks.__contains__

    def __len__(self) -> int:
        return len(self.blocks) + self.anonymous

    def __contains__(self, block: int) -> bool:
        return block in self.blocks

    def held(self) -> list[int]:
        return sorted(self.blocks)

    def touch_path(self, path: list[int], cap: int, anonymous: int = 0) -> tuple[int, int]:
        blocks = self.blocks
        before = len(blocks)
        blocks.update(path)
        added = len(blocks) - before + anonymous
        self.anonymous += anonymous
        assert len(blocks) + self.anonymous <= cap, "SetTier: the tier's capacity was reached"
        self.added += added
        return added, 0

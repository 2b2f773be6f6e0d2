"""``PrefixBlocks``: which prompts share which prefix, as one id per fixed-size block of tokens.

A request's prompt is cut into blocks of ``block_tokens`` tokens (the last one may be partial);
block ``j`` of request ``i`` carries an integer id, and two requests whose blocks ``0..j`` carry
equal ids share their first ``(j + 1) · block_tokens`` prompt tokens. This is the Mooncake trace's
``hash_ids`` (one id per 512-token block; kvcache-ai/Mooncake, FAST25-release/traces, Qin et al.,
FAST 2025) and the canonical CSV's optional ``prefix_hashes`` column (ids separated by spaces).

Stored flat (CSR): ``ids`` holds every request's ids back to back and ``offsets[i]:offsets[i+1]``
is request ``i``'s slice, so a million requests are two numpy arrays. A request may carry fewer
blocks than its prompt has (a trace that hashes only part of it): the rest is never shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pdplan.profiles.errors import ConfigError

#: Mooncake's block size (FAST25-release/traces/README: "each hash id covers 512 tokens").
MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True, eq=False)
class PrefixBlocks:
    """Per-request prefix block ids; see the module docstring."""

    ids: np.ndarray
    offsets: np.ndarray
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        ids = np.array(self.ids, dtype=np.int64).reshape(-1)
        offsets = np.array(self.offsets, dtype=np.int64).reshape(-1)
        bt = self.block_tokens
        if not isinstance(bt, int) or isinstance(bt, bool) or bt < 1:
            raise ConfigError(f"prefix block_tokens={self.block_tokens!r}; expected an integer ≥ 1")
        if offsets.size < 1 or offsets[0] != 0 or offsets[-1] != ids.size or np.any(np.diff(offsets) < 0):
            raise ConfigError("prefix blocks: offsets must start at 0, not decrease and end at the id count")
        for name, col in (("ids", ids), ("offsets", offsets)):
            col.setflags(write=False)
            object.__setattr__(self, name, col)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @classmethod
    def from_lists(
        cls, blocks: Sequence[Sequence[int]], block_tokens: int = MOONCAKE_BLOCK_TOKENS
    ) -> PrefixBlocks:
        """From one id list per request."""
        counts = np.fromiter((len(b) for b in blocks), dtype=np.int64, count=len(blocks))
        offsets = np.concatenate(([0], np.cumsum(counts)))
        ids = np.fromiter((h for b in blocks for h in b), dtype=np.int64, count=int(offsets[-1]))
        return cls(ids, offsets, block_tokens)

    def of(self, i: int) -> list[int]:
        """Request ``i``'s block ids."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]].tolist()

    def as_lists(self) -> list[list[int]]:
        """Every request's ids (what the simulator walks; one list per request). Built once and
        shared: callers must not modify the lists."""
        return self._lists

    @cached_property
    def _lists(self) -> list[list[int]]:
        flat: list[int] = self.ids.tolist()
        bounds: list[int] = self.offsets.tolist()
        return [flat[bounds[i] : bounds[i + 1]] for i in range(len(self))]

    @property
    def named(self) -> tuple[list[list[int]], list[int]]:
        """Per request: its leading blocks that some other request also has (what can ever be
        hit: matching is by prefix, so nothing after the first block only this request has can
        be), without repeats, and the count of the rest (anonymous: they only take room in a
        cache). The named blocks are renumbered densely, ``0 .. named_ids − 1`` in the order of
        their original ids, so that a cache tier can index a list by them
        (``pdplan.sim.prefix_cache.LruTier``). Built once."""
        named, anonymous, _ = self._named
        return named, anonymous

    @property
    def named_ids(self) -> int:
        """How many distinct named blocks there are: :attr:`named` ids are below this."""
        return self._named[2]

    @cached_property
    def _named(self) -> tuple[list[list[int]], list[int], int]:
        ids = self.ids
        shared = np.zeros(ids.size, dtype=bool)
        if ids.size:
            values, counts = np.unique(ids, return_counts=True)
            shared = counts[np.searchsorted(values, ids)] > 1
        lists = self.as_lists()
        bounds: list[int] = self.offsets.tolist()
        unshared = np.flatnonzero(~shared).tolist()
        named: list[list[int]] = []
        anonymous: list[int] = []
        j = 0
        for i, blocks in enumerate(lists):
            start, stop = bounds[i], bounds[i + 1]
            while j < len(unshared) and unshared[j] < start:
                j += 1
            k = (unshared[j] if j < len(unshared) and unshared[j] < stop else stop) - start
            mine = blocks if k == len(blocks) else blocks[:k]
            if len(set(mine)) < len(mine):  # an id repeated within one prompt is one block
                mine = list(dict.fromkeys(mine))
            named.append(mine)
            anonymous.append(len(blocks) - k)
        flat = np.fromiter((b for mine in named for b in mine), dtype=np.int64)
        distinct, dense = np.unique(flat, return_inverse=True)
        dense_ids: list[int] = dense.reshape(-1).tolist()
        ends = np.cumsum([len(mine) for mine in named]).tolist()
        named = [dense_ids[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)] if named else []
        return named, anonymous, int(distinct.size)

    @cached_property
    def distinct_blocks(self) -> int:
        """The most blocks a cache can ever hold of these requests: their distinct named blocks
        plus every anonymous one (:attr:`named`)."""
        return self.named_ids + sum(self.named[1])

    def hash_column(self) -> list[str]:
        """The canonical CSV's ``prefix_hashes`` cells (ids separated by spaces; what
        :func:`parse_hash_cells` reads back)."""
        return [" ".join(map(str, blocks)) for blocks in self.as_lists()]

    def take(self, order: np.ndarray) -> PrefixBlocks:
        """The requests at indices ``order`` (a reordering or a subset), in that order."""
        lists = self.as_lists()
        return PrefixBlocks.from_lists([lists[int(i)] for i in order], self.block_tokens)

    def head(self, n: int) -> PrefixBlocks:
        n = max(0, min(int(n), len(self)))
        return PrefixBlocks(self.ids[: self.offsets[n]], self.offsets[: n + 1], self.block_tokens)

    def check_prompts(self, prompt_tokens: np.ndarray) -> None:
        """Every request must carry at most as many blocks as its prompt has.

        Raises:
            ConfigError: a request with more blocks than ``ceil(prompt / block_tokens)``.
        """
        if len(self) != prompt_tokens.size:
            raise ConfigError(f"prefix blocks: {len(self)} requests, expected {prompt_tokens.size}")
        counts = np.diff(self.offsets)
        most = -(-prompt_tokens // self.block_tokens)
        bad = counts > most
        if bad.any():
            row = int(np.argmax(bad))
            raise ConfigError(
                f"request {row}: {int(counts[row])} prefix blocks for a {int(prompt_tokens[row])}-token "
                f"prompt; expected at most {int(most[row])} blocks of {self.block_tokens} tokens"
            )

    def shared_fraction(self) -> float:
        """Fraction of blocks whose prefix an earlier request already had (an infinite cache's hit
        rate in blocks: the most any cache size can reuse)."""
        seen: set[int] = set()
        hit = 0
        for blocks in self.as_lists():
            k = 0
            while k < len(blocks) and blocks[k] in seen:
                k += 1
            hit += k
            seen.update(blocks)
        return hit / self.ids.size if self.ids.size else 0.0


def parse_hash_cells(cells: Sequence[object], *, where: str) -> list[list[int]]:
    """``prefix_hashes`` cells (block hashes separated by spaces: integers or any other tokens such
    as hex digests; empty for none) → block ids. Equal tokens get equal ids (integers keep their
    value; other tokens are numbered from ``2**62`` in order of first appearance, so the two never
    collide for ids below that).

    Raises:
        ConfigError: a cell that is not text or a number.
    """
    names: dict[str, int] = {}
    out: list[list[int]] = []
    for row, cell in enumerate(cells):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            out.append([])
            continue
        if not isinstance(cell, (str, int, np.integer)) or isinstance(cell, bool):
            raise ConfigError(f"{where} row {row}: {cell!r}; expected block hashes separated by spaces")
        ids: list[int] = []
        for token in str(cell).split():
            if token.lstrip("-").isdigit():
                ids.append(int(token))
            else:
                ids.append(names.setdefault(token, _NAMED_BASE + len(names)))
        out.append(ids)
    return out


_NAMED_BASE = 2**62

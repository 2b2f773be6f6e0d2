"""Synthetic shared prefixes: multi-turn conversations and shared system prompts.

A workload YAML's optional ``prefix`` key (``pdplan.sim.workload``) turns drawn lengths into
prompts that share prefixes, with block ids (``pdplan.sim.prefix``) the cache model reuses. Drawn
after arrivals and lengths from the same generator, so a workload without it draws exactly the
requests it drew before.

- ``system_prompt`` (``SystemPrompts``): a population of ``num_prompts`` system prompts of
  ``prefix_tokens`` tokens each; every request picks one (uniformly, or Zipf-skewed with exponent
  ``zipf``: prompt k has weight 1/(k+1)^zipf) and its prompt is that system prompt followed by its
  drawn prompt length of user tokens.
- ``multi_turn`` (``MultiTurn``): ``conversations`` conversations in flight; each request
  continues one of them picked uniformly at random (open loop: the pick ignores whether the
  previous turn finished, so choose ``conversations`` ≥ rate × (turn latency + think time)). Turn
  1's prompt is the shared ``system_prompt_tokens`` plus the drawn prompt length; turn t's is turn
  t−1's prompt + its output + the drawn prompt length (the new user message). After ``turns``
  turns, or when the next prompt would exceed ``max_prompt_tokens``, the conversation ends and the
  request starts a new one in its place.

Block ids: a block is shared exactly when the tokens it covers are (only whole blocks of a shared
prefix are shared; a partly shared block is new). Turn t shares turn t−1's whole prompt blocks;
the previous answer and the new message start new blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.validate import MAX_TOKENS, integer, number
from pdplan.sim.prefix import MOONCAKE_BLOCK_TOKENS, PrefixBlocks

PREFIX_KINDS = ("system_prompt", "multi_turn")


@dataclass(frozen=True)
class SystemPrompts:
    """Shared system prompts; see the module docstring."""

    num_prompts: int
    prefix_tokens: int
    zipf: float = 0.0
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        integer("prefix.num_prompts", self.num_prompts, low=1, high=10**6)
        integer("prefix.prefix_tokens", self.prefix_tokens, low=1, high=MAX_TOKENS)
        number("prefix.zipf", self.zipf, low=0, high=10)
        integer("prefix.block_tokens", self.block_tokens, low=1, high=MAX_TOKENS)


@dataclass(frozen=True)
class MultiTurn:
    """Multi-turn conversations; see the module docstring."""

    turns: int
    conversations: int
    system_prompt_tokens: int = 0
    max_prompt_tokens: int = 32_768
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        integer("prefix.turns", self.turns, low=1, high=10**4)
        integer("prefix.conversations", self.conversations, low=1, high=10**7)
        integer("prefix.system_prompt_tokens", self.system_prompt_tokens, low=0, high=MAX_TOKENS)
        integer("prefix.max_prompt_tokens", self.max_prompt_tokens, low=1, high=MAX_TOKENS)
        integer("prefix.block_tokens", self.block_tokens, low=1, high=MAX_TOKENS)


PrefixSpec = SystemPrompts | MultiTurn


def apply_prefix(
    spec: PrefixSpec, prompt: np.ndarray, output: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, PrefixBlocks]:
    """The prompts (drawn lengths → full prompt lengths) and their block ids."""
    if isinstance(spec, SystemPrompts):
        return _system_prompts(spec, prompt, rng)
    return _multi_turn(spec, prompt, output, rng)


class _Ids:
    def __init__(self) -> None:
        self.next = 0

    def fresh(self, count: int) -> list[int]:
        start, self.next = self.next, self.next + count
        return list(range(start, start + count))


def _blocks(total: int, bt: int) -> int:
    return -(-total // bt)


def _system_prompts(
    spec: SystemPrompts, prompt: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, PrefixBlocks]:
    bt, ids = spec.block_tokens, _Ids()
    whole = spec.prefix_tokens // bt
    shared = [ids.fresh(whole) for _ in range(spec.num_prompts)]
    weights = 1.0 / np.arange(1, spec.num_prompts + 1) ** spec.zipf
    picks = rng.choice(spec.num_prompts, size=prompt.size, p=weights / weights.sum())
    full = np.minimum(prompt + spec.prefix_tokens, MAX_TOKENS)
    lists = [
        shared[k] + ids.fresh(_blocks(int(n), bt) - whole)
        for k, n in zip(picks.tolist(), full.tolist(), strict=True)
    ]
    return full, PrefixBlocks.from_lists(lists, bt)


def _multi_turn(
    spec: MultiTurn, prompt: np.ndarray, output: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, PrefixBlocks]:
    bt, ids = spec.block_tokens, _Ids()
    system = ids.fresh(spec.system_prompt_tokens // bt)
    slots = rng.integers(0, spec.conversations, size=prompt.size).tolist()
    # per slot: (turns so far, previous prompt tokens, previous output tokens, previous blocks)
    state: dict[int, tuple[int, int, int, list[int]]] = {}
    full: list[int] = []
    lists: list[list[int]] = []
    for slot, message, answer in zip(slots, prompt.tolist(), output.tolist(), strict=True):
        turn, prev_prompt, prev_output, prev_blocks = state.get(slot, (0, 0, 0, []))
        n = prev_prompt + prev_output + message
        if turn == 0 or turn >= spec.turns or n > spec.max_prompt_tokens:
            turn, n = 0, min(spec.system_prompt_tokens + message, MAX_TOKENS)
            kept = system
            kept_tokens = len(system) * bt
        else:
            kept = prev_blocks[: prev_prompt // bt]
            kept_tokens = len(kept) * bt
        blocks = kept + ids.fresh(_blocks(n - kept_tokens, bt))
        state[slot] = (turn + 1, n, answer, blocks)
        full.append(n)
        lists.append(blocks)
    return np.asarray(full, dtype=np.int64), PrefixBlocks.from_lists(lists, bt)


_KEYS: dict[str, tuple[str, ...]] = {
    "system_prompt": ("num_prompts", "prefix_tokens", "zipf", "block_tokens"),
    "multi_turn": ("turns", "conversations", "system_prompt_tokens", "max_prompt_tokens", "block_tokens"),
}


def prefix_from_dict(raw: Any) -> PrefixSpec:
    """A ``prefix:`` mapping (``kind`` + that kind's keys, strictly) → its spec.

    Raises:
        ConfigError: not a mapping, unknown kind or keys, bad values.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"workload.prefix: expected a mapping, got {raw!r}")
    kind = raw.get("kind")
    if kind not in _KEYS:
        raise choices_error("workload.prefix.kind", kind, PREFIX_KINDS)
    unknown = [k for k in raw if k != "kind" and k not in _KEYS[kind]]
    if unknown:
        valid = ["kind", *_KEYS[kind]]
        raise ConfigError(f"workload.prefix ({kind}): unknown keys {unknown}; valid: {valid}")
    kwargs = {k: v for k, v in raw.items() if k != "kind"}
    try:
        return SystemPrompts(**kwargs) if kind == "system_prompt" else MultiTurn(**kwargs)
    except TypeError as err:  # a missing required key
        raise ConfigError(f"workload.prefix ({kind}): {err}; keys: {list(_KEYS[kind])}") from None

"""Routing policies: which instance of a role a new request goes to.

A plain dict from name to chooser factory (adding a policy touches this file only). Every chooser
is called once per routed request, in arrival order, and returns an instance index.

- ``round_robin``: instances in turn.
- ``least_loaded``: the instance with the fewest outstanding tokens (the caller keeps ``loads``
  current: prompt tokens not yet prefilled for prefill instances, the KV footprint of unfinished
  requests for decode and colocated instances); ties go to the lowest index.
- ``random``: uniform, drawn before the run from the run's generator.
- ``cache_aware``: sglang-router's cache-aware policy on the requests' prefix blocks
  (``pdplan.sim.cache_router``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from pdplan.profiles.errors import choices_error
from pdplan.sim.prefix import PrefixBlocks

Chooser = Callable[[int], int]


def _round_robin(loads: list[int], num_requests: int, rng: np.random.Generator) -> Chooser:
    counter = itertools.count()
    n = len(loads)
    return lambda rid: next(counter) % n


def _least_loaded(loads: list[int], num_requests: int, rng: np.random.Generator) -> Chooser:
    return lambda rid: loads.index(min(loads))  # the first (lowest) index among equal loads


def _random(loads: list[int], num_requests: int, rng: np.random.Generator) -> Chooser:
    picks: list[int] = rng.integers(0, len(loads), size=num_requests).tolist()
    return picks.__getitem__


def _cache_aware(loads: list[int], num_requests: int, rng: np.random.Generator) -> Chooser:
    from pdplan.sim.cache_router import cache_aware

    return cache_aware(loads, None, 1.0)  # without prefix blocks (make_chooser passes them)


ROUTERS: dict[str, Callable[[list[int], int, np.random.Generator], Chooser]] = {
    "round_robin": _round_robin,
    "least_loaded": _least_loaded,
    "random": _random,
    "cache_aware": _cache_aware,
}


def make_chooser(
    policy: str,
    loads: list[int],
    num_requests: int,
    rng: np.random.Generator,
    blocks: PrefixBlocks | None = None,
    load_unit: float = 1.0,
) -> Chooser:
    """A chooser over ``len(loads)`` instances (``loads`` is read live by ``least_loaded`` and
    ``cache_aware``; the latter also reads each request's prefix ``blocks`` and counts its
    absolute balance threshold in ``load_unit``s of load).

    Raises:
        ConfigError: unknown policy (the valid ones are listed).
    """
    if policy not in ROUTERS:
        raise choices_error("router", policy, ROUTERS)
    if len(loads) == 1:
        return lambda rid: 0
    if policy == "cache_aware":
        from pdplan.sim.cache_router import cache_aware

        return cache_aware(loads, blocks, load_unit)
    return ROUTERS[policy](loads, num_requests, rng)

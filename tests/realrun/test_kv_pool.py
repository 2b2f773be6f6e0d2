"""The decode worker's KV pool: recycles fitting caches and never lets idle + reserved exceed capacity."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")

from pdplan.realrun.kv_budget import KvBudget
from pdplan.realrun.kv_pool import KvPool


def test_recycles_a_fitting_cache(executor: Any) -> None:
    pool = KvPool(executor.new_cache, KvBudget(4096))
    cache = pool.take(100)
    cache.length = 50
    pool.give(cache)
    assert pool.idle_tokens == cache.capacity
    again = pool.take(90)
    assert again is cache and again.length == 0 and pool.idle_tokens == 0
    pool.give(again)
    assert pool.take(1000) is not cache  # too small for this request
    assert pool.take(10) is not cache  # much too big: would waste KV space
    assert pool.take(64) is cache


def test_idle_plus_reserved_stays_within_capacity(executor: Any) -> None:
    budget = KvBudget(512)
    pool = KvPool(executor.new_cache, budget)
    first, second = pool.take(128), pool.take(128)
    pool.give(first)
    pool.give(second)
    assert pool.idle_tokens == 256
    assert budget.try_reserve(300)
    pool.take(200)  # taking trims idle caches down to the 212 unreserved tokens
    assert pool.idle_tokens + budget.used_tokens <= budget.capacity_tokens

"""KV admission: FIFO grants, a bounded queue that refuses (503) instead of growing, clean cancels."""

from __future__ import annotations

import asyncio

import pytest

from pdplan.realrun.admission import Admission, Overloaded
from pdplan.realrun.kv_budget import KvBudget


def test_fifo_grants_and_bounded_queue() -> None:
    async def scenario() -> tuple[list[str], int]:
        budget = KvBudget(10)
        gate = Admission(budget, asyncio.get_running_loop(), max_waiting=2)
        order: list[str] = []
        await gate.acquire(8)

        async def want(name: str, tokens: int) -> None:
            await gate.acquire(tokens)
            order.append(name)

        big = asyncio.ensure_future(want("big", 6))
        small = asyncio.ensure_future(want("small", 1))  # fits now, but waits behind "big" (FIFO)
        await asyncio.sleep(0.01)
        assert order == [] and gate.waiting == 2
        with pytest.raises(Overloaded, match="2 requests waiting"):
            await gate.acquire(1)
        budget.release(8)
        await asyncio.gather(big, small)
        return order, budget.used_tokens

    order, used = asyncio.run(scenario())
    assert order == ["big", "small"] and used == 7


def test_cancelled_waiter_leaves_no_reservation() -> None:
    async def scenario() -> int:
        budget = KvBudget(4)
        gate = Admission(budget, asyncio.get_running_loop(), max_waiting=4)
        await gate.acquire(4)
        waiter = asyncio.ensure_future(gate.acquire(3))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
        budget.release(4)
        await asyncio.sleep(0.01)
        return budget.used_tokens

    assert asyncio.run(scenario()) == 0


def test_request_larger_than_capacity_is_refused() -> None:
    async def scenario() -> None:
        gate = Admission(KvBudget(4), asyncio.get_running_loop(), max_waiting=4)
        await gate.acquire(5)

    with pytest.raises(Overloaded, match="exceed"):
        asyncio.run(scenario())

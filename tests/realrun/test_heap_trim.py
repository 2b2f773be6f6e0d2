"""A worker hands the free memory of its heap back to the system on a timer (glibc ``malloc_trim``):
without it the soak benchmark saw a prefill's private memory step up by 20 % after a burst and stay."""

from __future__ import annotations

import asyncio
import ctypes
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("torch")  # the worker module loads the executor

from pdplan.realrun import worker


def _fake_libc(calls: list[int]) -> SimpleNamespace:
    def malloc_trim(pad: int) -> int:
        calls.append(pad)
        return 1

    return SimpleNamespace(malloc_trim=malloc_trim)


def test_the_heap_is_trimmed_on_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(worker.ctypes, "CDLL", lambda name: _fake_libc(calls))

    async def scenario() -> None:
        task = asyncio.ensure_future(worker._trim_heap(0.01))
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert calls[:3] == [0, 0, 0]  # trim everything above the heap's top


def test_without_glibc_the_trimmer_stops_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(worker.ctypes, "CDLL", no_libc)
    asyncio.run(asyncio.wait_for(worker._trim_heap(0.01), 5))  # returns instead of looping


def test_real_glibc_trim_is_callable() -> None:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    assert trim(0) in (0, 1)

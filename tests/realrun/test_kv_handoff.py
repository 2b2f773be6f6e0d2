"""The KV hand-off between a real KvSender and KvClaim over sockets: lossless, bounded, and failing fast."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from realrun_helpers import free_port  # noqa: E402

from pdplan.realrun.engine import PrefilledEvent  # noqa: E402
from pdplan.realrun.kv_receiver import KvClaim, send_abort  # noqa: E402
from pdplan.realrun.kv_sender import HandoffError, KvSender  # noqa: E402
from pdplan.realrun.kv_shm import SharedCaches  # noqa: E402
from pdplan.realrun.metrics import WorkerMetrics  # noqa: E402
from pdplan.realrun.protocol import Bootstrap  # noqa: E402

PROMPT = (17, 923, 411, 250, 77, 1000, 3)
KEY = b"test-secret-of-this-deployment"


def _prefilled(executor: Any, prompt: tuple[int, ...] = PROMPT) -> PrefilledEvent:
    logits, caches = executor.prefill([list(prompt)])
    return PrefilledEvent(int(logits.argmax(-1)[0]), caches[0], 1.0, 2.0)


def _expect(executor: Any, prompt_tokens: int) -> tuple[tuple[int, int, int], str, int]:
    s = executor.spec
    return (s.num_layers, s.num_kv_heads, s.head_dim), executor.dtype_name, prompt_tokens


def _payload(executor: Any, prompt_tokens: int) -> int:
    return executor.spec.kv_bytes_per_token(executor.dtype_name) * prompt_tokens


async def _sender(executor: Any, metrics: WorkerMetrics | None = None, **timeouts: float) -> KvSender:
    sender = KvSender(
        "127.0.0.1", free_port(), executor.dtype_name, metrics or WorkerMetrics("prefill"), KEY, **timeouts
    )
    await sender.start()
    return sender


def _shared(executor: Any) -> SharedCaches:
    spec = executor.spec
    return SharedCaches(spec.num_layers, spec.num_kv_heads, spec.head_dim, executor.dtype)


# (transport, decode cache in shared memory, payload written in place by the prefill)
WAYS = [("auto", True, True), ("auto", False, False), ("tcp", True, False), ("tcp", False, False)]


@pytest.mark.parametrize(
    ("transport", "shared", "in_place"), WAYS, ids=["shm", "unix", "tcp-shm-offer", "tcp"]
)
@pytest.mark.parametrize("claim_first", [False, True])
def test_handoff_is_lossless(
    executor: Any, transport: str, shared: bool, in_place: bool, claim_first: bool
) -> None:
    event = _prefilled(executor)
    caches = _shared(executor) if shared else None

    async def scenario() -> tuple[Any, Any, float]:
        metrics = WorkerMetrics("prefill")
        sender = await _sender(executor, metrics)
        boot = Bootstrap("127.0.0.1", sender.port, 42)
        if not claim_first:
            room = sender.register(42, PROMPT)
        pool = ThreadPoolExecutor(1)
        n = len(PROMPT)
        cache = caches.allocate(n + 8) if caches else executor.new_cache(n + 8)
        async with await KvClaim.open(boot, PROMPT, KEY, transport) as claim:
            if claim_first:
                await asyncio.sleep(0.05)
                room = sender.register(42, PROMPT)
            sender.kv_ready(42, event)
            fd = caches.fd_of(cache) if caches else None
            meta, _ = await claim.receive(_payload(executor, n), cache, _expect(executor, n), pool, 5.0, fd)
        await asyncio.wait_for(room.result, 5.0)
        await sender.close()
        pool.shutdown()
        path = "shared_memory" if in_place else "socket"
        return cache, meta, metrics.counter("kv_transfer_bytes_total", path)

    cache, meta, sent = asyncio.run(scenario())
    n = len(PROMPT)
    assert meta.in_place is in_place
    assert cache.length == n and cache.capacity >= n + 8
    assert torch.equal(cache.k[:, :, :n], event.cache.k[:, :, :n])
    assert torch.equal(cache.v[:, :, :n], event.cache.v[:, :, :n])
    assert (meta.first_token, meta.prefill_start_s, meta.prefill_end_s) == (event.token, 1.0, 2.0)
    assert sent == _payload(executor, n)


def test_received_cache_decodes_like_the_original(executor: Any) -> None:
    """Greedy decoding from the transferred KV equals decoding from the prefill's own KV."""
    event = _prefilled(executor)

    async def scenario() -> Any:
        sender = await _sender(executor)
        sender.register(7, PROMPT)
        sender.kv_ready(7, event)
        pool = ThreadPoolExecutor(1)
        n = len(PROMPT)
        caches = _shared(executor)
        cache = caches.allocate(n + 8)
        async with await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 7), PROMPT, KEY) as claim:
            await claim.receive(
                _payload(executor, n), cache, _expect(executor, n), pool, 5.0, caches.fd_of(cache)
            )
        await sender.close()
        return cache

    received = asyncio.run(scenario())
    own = _prefilled(executor).cache

    def greedy(cache: Any) -> list[int]:
        token, out = event.token, []
        for _ in range(6):
            token = int(executor.decode([token], [cache]).argmax(-1)[0])
            out.append(token)
        return out

    assert greedy(received) == greedy(own)


def test_unclaimed_room_fails_after_the_bootstrap_timeout(executor: Any) -> None:
    async def scenario() -> tuple[HandoffError, float, HandoffError]:
        sender = await _sender(executor, bootstrap_timeout_s=0.3)
        room = sender.register(5, PROMPT)
        start = time.monotonic()
        with pytest.raises(HandoffError) as first:
            await asyncio.wait_for(room.result, 5.0)
        waited = time.monotonic() - start
        # A late claim is answered at once from the tombstone, with the same status.
        async with await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 5), PROMPT, KEY) as claim:
            with pytest.raises(HandoffError) as late:
                await asyncio.wait_for(claim.guard(asyncio.sleep(30)), 5.0)
        await sender.close()
        return first.value, waited, late.value

    err, waited, late = asyncio.run(scenario())
    assert err.status == 504 and "no decode worker claimed" in err.message
    assert 0.25 <= waited < 2.0
    assert late.status == 504


def test_decode_hanging_up_fails_the_room_at_once(executor: Any) -> None:
    async def scenario() -> tuple[HandoffError, float]:
        sender = await _sender(executor, kv_timeout_s=30.0)
        room = sender.register(9, PROMPT)
        claim = await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 9), PROMPT, KEY)
        await asyncio.sleep(0.05)
        start = time.monotonic()
        claim.close()  # the decode worker dies before READY
        with pytest.raises(HandoffError) as err:
            await asyncio.wait_for(room.result, 5.0)
        await sender.close()
        return err.value, time.monotonic() - start

    err, waited = asyncio.run(scenario())
    assert err.status == 502 and waited < 1.0  # not the 30 s KV timeout


def test_prefill_failure_ends_the_decode_wait_with_its_status(executor: Any) -> None:
    async def scenario() -> HandoffError:
        sender = await _sender(executor)
        sender.register(11, PROMPT)
        async with await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 11), PROMPT, KEY) as claim:
            asyncio.get_running_loop().call_later(0.1, sender.fail, 11, "prefill overloaded", 503)
            with pytest.raises(HandoffError) as err:
                await asyncio.wait_for(claim.guard(asyncio.sleep(30)), 5.0)
        await sender.close()
        return err.value

    err = asyncio.run(scenario())
    assert err.status == 503 and "prefill overloaded" in err.message


@pytest.mark.parametrize("transport", ["auto", "tcp"])
def test_prefill_refusal_racing_the_decode_admission_keeps_its_status(executor: Any, transport: str) -> None:
    """The prefill refuses (503) just as the decode's admission completes: both are ready in the
    same loop turn. The refusal was read by the guard and must be reported, not lost to a later
    broken pipe (a 503 turned 502 in CI)."""

    async def admitted() -> None:
        return None

    async def scenario() -> HandoffError:
        sender = await _sender(executor)
        sender.register(12, PROMPT)
        pool = ThreadPoolExecutor(1)
        boot = Bootstrap("127.0.0.1", sender.port, 12)
        async with await KvClaim.open(boot, PROMPT, KEY, transport) as claim:
            sender.fail(12, "prefill overloaded", 503)
            await asyncio.sleep(0.2)  # the ERROR frame is in the decode's socket, the prefill has hung up
            await claim.guard(admitted())
            cache = executor.new_cache(len(PROMPT) + 8)
            with pytest.raises(HandoffError) as err:
                await claim.receive(
                    _payload(executor, len(PROMPT)), cache, _expect(executor, len(PROMPT)), pool, 5.0
                )
        await sender.close()
        pool.shutdown()
        return err.value

    err = asyncio.run(scenario())
    assert err.status == 503 and "prefill overloaded" in err.message


def test_abort_from_the_decode_side_fails_the_room(executor: Any) -> None:
    async def scenario() -> HandoffError:
        sender = await _sender(executor)
        room = sender.register(13, PROMPT)
        await send_abort(Bootstrap("127.0.0.1", sender.port, 13), "queue full", KEY)
        with pytest.raises(HandoffError) as err:
            await asyncio.wait_for(room.result, 5.0)
        await sender.close()
        return err.value

    err = asyncio.run(scenario())
    assert err.status == 409 and "queue full" in err.message


@pytest.mark.parametrize(
    ("claimed_prompt", "reservation_delta", "status"),
    [((1, 2, 3), 0, 409), (PROMPT, -1, 507)],
    ids=["other-prompt", "reservation-too-small"],
)
def test_mismatches_are_refused_on_both_sides(
    executor: Any, claimed_prompt: tuple[int, ...], reservation_delta: int, status: int
) -> None:
    event = _prefilled(executor)

    async def scenario() -> tuple[HandoffError, HandoffError]:
        sender = await _sender(executor)
        room = sender.register(17, PROMPT)
        sender.kv_ready(17, event)
        pool = ThreadPoolExecutor(1)
        n = len(claimed_prompt)
        async with await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 17), claimed_prompt, KEY) as claim:
            with pytest.raises(HandoffError) as decode_err:
                cache = executor.new_cache(n + 4)
                await claim.receive(
                    _payload(executor, n) + reservation_delta, cache, _expect(executor, n), pool, 5.0
                )
        with pytest.raises(HandoffError) as prefill_err:
            await asyncio.wait_for(room.result, 5.0)
        await sender.close()
        return decode_err.value, prefill_err.value

    decode_err, prefill_err = asyncio.run(scenario())
    assert prefill_err.status == status
    assert decode_err.status == status


def test_prefill_refuses_a_shared_buffer_of_the_wrong_size(executor: Any) -> None:
    """The prefill checks the descriptor it is handed before writing into it."""
    event = _prefilled(executor)
    caches = _shared(executor)

    async def scenario() -> tuple[HandoffError, HandoffError]:
        sender = await _sender(executor)
        room = sender.register(19, PROMPT)
        sender.kv_ready(19, event)
        n = len(PROMPT)
        small = caches.allocate(n + 8)
        big = caches.allocate(n + 500)  # claims small's capacity but hands over big's memory
        pool = ThreadPoolExecutor(1)
        async with await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 19), PROMPT, KEY) as claim:
            with pytest.raises(HandoffError) as decode_err:
                await claim.receive(
                    _payload(executor, n), small, _expect(executor, n), pool, 5.0, caches.fd_of(big)
                )
        with pytest.raises(HandoffError) as prefill_err:
            await asyncio.wait_for(room.result, 5.0)
        await sender.close()
        return decode_err.value, prefill_err.value

    decode_err, prefill_err = asyncio.run(scenario())
    assert "shared KV buffer" in prefill_err.message and "shared KV buffer" in decode_err.message


@pytest.mark.parametrize("side", ["decode", "prefill"])
def test_a_party_without_the_secret_gets_nothing(executor: Any, side: str) -> None:
    """A claim signed with another secret is dropped without ACCEPT and the room stays open for the
    real decode side; a prefill without the secret gets no READY from a decode worker."""
    event = _prefilled(executor)

    async def scenario() -> tuple[str, float]:
        metrics = WorkerMetrics("prefill")
        key = KEY if side == "decode" else b"a-prefill-that-lacks-the-secret"
        sender = KvSender("127.0.0.1", free_port(), executor.dtype_name, metrics, key)
        await sender.start()
        room = sender.register(21, PROMPT)
        claim_key = b"a-decode-that-lacks-the-secret" if side == "decode" else KEY
        try:
            await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 21), PROMPT, claim_key)
            message = "claim accepted"
        except HandoffError as err:
            message = err.message
        await asyncio.sleep(0.05)
        assert not room.result.done() or side == "prefill"
        if side == "decode":  # the genuine decode worker still gets the KV
            sender.kv_ready(21, event)
            cache = executor.new_cache(len(PROMPT) + 4)
            async with await KvClaim.open(Bootstrap("127.0.0.1", sender.port, 21), PROMPT, KEY) as claim:
                meta, _ = await claim.receive(
                    _payload(executor, len(PROMPT)),
                    cache,
                    _expect(executor, len(PROMPT)),
                    ThreadPoolExecutor(1),
                    5.0,
                )
            assert meta.prompt_tokens == len(PROMPT)
        await sender.close()
        return message, metrics.counter("kv_auth_failures_total")

    message, failures = asyncio.run(scenario())
    if side == "decode":
        assert "dropped the claim" in message and failures == 1
    else:
        # It cannot check the decode's claim, so it cannot answer one: the decode side never sends
        # READY (a stand-in that forges an ACCEPT: tests/realrun/test_worker_failures.py).
        assert message != "claim accepted" and "dropped the claim" in message

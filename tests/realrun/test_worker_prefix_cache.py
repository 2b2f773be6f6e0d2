"""The worker's prefix cache: whole-page hits (never the whole prompt), exact KV copies, LRU eviction
of unlocked leaves when reservations need room, and — through the engine — greedy outputs with a
cache hit equal to those without, in every prefill path (whole prompts, chunked, the prefill role)."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from test_engine import Collector, greedy, reference  # noqa: E402

from pdplan.profiles.kv_cache import KVCache  # noqa: E402
from pdplan.realrun.engine import Engine, EngineConfig, Job, PrefilledEvent, TokenEvent  # noqa: E402
from pdplan.realrun.kv_budget import KvBudget  # noqa: E402
from pdplan.realrun.metrics import WorkerMetrics  # noqa: E402
from pdplan.realrun.prefix_cache import PrefixCache  # noqa: E402

PAGE = 4


def filled(prompt: list[int]) -> KVCache:
    """A cache whose position t holds the value prompt[t] in every element (easy to check)."""
    cache = KVCache.allocate(2, 1, 3, len(prompt) + 4, dtype=torch.float32, device="cpu")
    values = torch.tensor(prompt, dtype=torch.float32)[None, None, :, None]
    cache.k[:, :, : len(prompt)] = values
    cache.v[:, :, : len(prompt)] = -values
    cache.length = len(prompt)
    return cache


def test_hits_are_whole_pages_and_never_the_last_token() -> None:
    budget = KvBudget(1000)
    cache = PrefixCache(budget, PAGE)
    a = list(range(10, 20))  # 10 tokens: two whole pages cached, the partial third is not
    assert cache.insert(a, filled(a)) == 2
    assert budget.cached_tokens == 8 and cache.cached_tokens == 8
    assert cache.match([*a, 1, 2]).cached_tokens == 8
    assert cache.match(a[:8]).cached_tokens == 7  # all of it cached: the last token is computed
    assert cache.match(a[:4] + [99] * 6).cached_tokens == 4  # diverges in the second page
    assert cache.match([99, *a]).cached_tokens == 0
    stats = cache.stats()
    assert (stats.prompt_tokens, stats.hit_tokens) == (12 + 8 + 10 + 11, 8 + 7 + 4)


def test_load_copies_the_cached_keys_and_values_and_unlocks() -> None:
    budget = KvBudget(1000)
    cache = PrefixCache(budget, PAGE)
    a = list(range(30, 42))
    cache.insert(a, filled(a))
    hit = cache.match([*a[:9], 7, 7])
    assert hit.cached_tokens == 8 and cache.locked_tokens == 8
    target = KVCache.allocate(2, 1, 3, 16, dtype=torch.float32, device="cpu")
    cache.load(hit, target)
    assert target.length == 8 and cache.locked_tokens == 0
    expect = filled(a[:8])
    assert torch.equal(target.k[:, :, :8], expect.k[:, :, :8])
    assert torch.equal(target.v[:, :, :8], expect.v[:, :, :8])


def hit(cache: PrefixCache, prompt: list[int]) -> int:
    """Cached tokens of ``prompt`` right now (the match is let go at once)."""
    m = cache.match(prompt)
    cache.release(m)
    return m.cached_tokens


def test_reservations_evict_least_recent_unlocked_leaves_first() -> None:
    budget = KvBudget(24)
    cache = PrefixCache(budget, PAGE)
    a, b = [1] * 8, [2] * 8
    cache.insert(a, filled(a))
    cache.insert(b, filled(b))  # b's path is the most recent
    assert budget.cached_tokens == 16
    held = cache.match([*a, 5])  # a's pages locked: a request waits for them
    assert budget.try_reserve(12)  # 4 tokens short: a is locked, so b's deepest page goes
    assert (budget.used_tokens, budget.cached_tokens) == (12, 12)
    assert hit(cache, [*b, 5]) == 4 and hit(cache, [*a, 5]) == 8
    assert not budget.try_reserve(12)  # 12 short, only b's last page (4) can go
    assert hit(cache, [*b, 5]) == 0 and hit(cache, [*a, 5]) == 8  # a's locked pages stayed
    cache.release(held)
    cache.release(held)  # idempotent
    assert cache.locked_tokens == 0
    assert budget.try_reserve(8)  # 4 short: now a's deepest page can go, and only it
    assert (budget.used_tokens, budget.cached_tokens) == (20, 4) and hit(cache, [*a, 5]) == 4


def test_an_insert_without_room_keeps_the_pages_that_fit() -> None:
    budget = KvBudget(10)
    cache = PrefixCache(budget, PAGE)
    assert budget.try_reserve(2)
    a = list(range(12))
    assert cache.insert(a, filled(a)) == 2  # 8 of the 12 tokens fit next to the reservation
    assert hit(cache, [*a, 1]) == 8
    b = [50] * 8
    assert cache.insert(b, filled(b)) == 2  # room from a's pages (no request holds them)
    assert (budget.used_tokens, budget.cached_tokens) == (2, 8)
    assert hit(cache, [*b, 1]) == 8 and hit(cache, [*a, 1]) == 0


def cached_engine(executor: Any, role: str, **kw: Any) -> tuple[Engine, PrefixCache]:
    budget = KvBudget(kw.pop("budget_tokens", 4096))
    prefix = PrefixCache(budget, 8)
    config = EngineConfig(role, 4, 256, eos_token_ids=(2,), **kw)
    engine = Engine(executor, config, WorkerMetrics(role), budget, prefix_cache=prefix)
    engine.start()
    return engine, prefix


def run(engine: Engine, prompt: tuple[int, ...], n: int, budget: KvBudget | None = None) -> Job:
    got = Collector()
    job = Job("r", prompt, greedy(n), got.sink("r"))
    if budget is not None:
        assert budget.try_reserve(len(prompt))
        job.reserved_tokens = len(prompt)
    engine.submit(job)
    events = got.until_terminal(1)["r"]
    if isinstance(events[-1], PrefilledEvent):
        job.output = [events[-1].token]
        job.cache = events[-1].cache
    else:
        assert all(isinstance(e, TokenEvent) for e in events), events
        job.output = [e.token for e in events if isinstance(e, TokenEvent)]
    return job


SYSTEM = tuple((i * 37 + 11) % 500 + 3 for i in range(40))  # 40 tokens: five pages of 8
TURN = (17, 923, 411, 250, 77, 1000, 3, 55, 66)


@pytest.mark.parametrize("schedule", ["prefill-first", "chunked"])
def test_colocated_outputs_with_a_hit_equal_those_without(executor: Any, schedule: str) -> None:
    chunk = {"chunk_tokens": 16, "schedule": "chunked"} if schedule == "chunked" else {}
    engine, prefix = cached_engine(executor, "colocated", **chunk)
    try:
        first = run(engine, (*SYSTEM, 5), 4)
        second = run(engine, SYSTEM + TURN, 6)
    finally:
        engine.stop()
    assert first.timeline.cached_tokens == 0 and second.timeline.cached_tokens == 40
    assert first.output == reference(executor, (*SYSTEM, 5), 4)
    assert second.output == reference(executor, SYSTEM + TURN, 6)
    assert prefix.stats().hit_tokens == 40


def test_prefill_role_hands_off_the_whole_prompt_kv_after_a_hit(executor: Any) -> None:
    engine, _prefix = cached_engine(executor, "prefill")
    try:
        run(engine, (*SYSTEM, 9, 9), 1, engine.budget)
        job = run(engine, SYSTEM + TURN, 1, engine.budget)
    finally:
        engine.stop()
    assert job.timeline.cached_tokens == 40
    assert job.cache is not None and job.cache.length == len(SYSTEM + TURN)
    logits, fresh = executor.prefill([list(SYSTEM + TURN)])
    assert job.output == [int(logits.argmax(-1)[0])]
    n = job.cache.length
    torch.testing.assert_close(job.cache.k[:, :, :n], fresh[0].k[:, :, :n])
    torch.testing.assert_close(job.cache.v[:, :, :n], fresh[0].v[:, :, :n])

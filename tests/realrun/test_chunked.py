"""Chunked prefill: slices of a prompt give the same logits and KV as one whole-prompt forward, and
the engine's chunked schedules produce the same greedy outputs as prefill-first."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from test_engine import PROMPTS, Collector, greedy, reference  # noqa: E402

from pdplan.realrun.chunked import mixed_forward, prefill_chunks  # noqa: E402
from pdplan.realrun.engine import Engine, EngineConfig, Job, PrefilledEvent, TokenEvent  # noqa: E402
from pdplan.realrun.kv_budget import KvBudget  # noqa: E402
from pdplan.realrun.metrics import WorkerMetrics  # noqa: E402

LONG = tuple((i * 37) % 900 + 10 for i in range(45))


def test_slices_equal_one_forward(executor: Any) -> None:
    whole_logits, whole = executor.prefill([list(LONG)])
    cache = executor.new_cache(len(LONG) + 1)
    other = executor.new_cache(len(PROMPTS[1]) + 1)
    logits = None
    for lo in range(0, len(LONG), 16):  # 16 + 16 + 13, with a second prompt riding in the first slice
        items = [(LONG[lo : lo + 16], cache)] + ([(PROMPTS[1], other)] if lo == 0 else [])
        logits = prefill_chunks(executor, items)
    assert logits is not None and cache.length == len(LONG)
    torch.testing.assert_close(logits[0], whole_logits[0], rtol=1e-4, atol=1e-4)
    n = len(LONG)
    torch.testing.assert_close(cache.k[:, :, :n], whole[0].k[:, :, :n], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cache.v[:, :, :n], whole[0].v[:, :, :n], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", ["prefill-first", "chunked"])
def test_chunked_colocated_outputs_equal_plain_greedy(executor: Any, schedule: str) -> None:
    config = EngineConfig("colocated", 4, 256, eos_token_ids=(2,), chunk_tokens=8, schedule=schedule)
    metrics = WorkerMetrics("colocated")
    engine = Engine(executor, config, metrics, KvBudget(4096))
    engine.start()
    got = Collector()
    prompts = [LONG, *PROMPTS]
    for i, prompt in enumerate(prompts):
        engine.submit(Job(f"r{i}", prompt, greedy(5), got.sink(f"r{i}")))
    events = got.until_terminal(len(prompts), timeout_s=60)
    engine.stop()
    for i, prompt in enumerate(prompts):
        assert [e.token for e in events[f"r{i}"] if isinstance(e, TokenEvent)] == reference(
            executor, prompt, 5
        )
    # No forward took more than 8 prompt tokens: 45 + 7 + 3 + 5 tokens need at least 8 slices.
    assert metrics.counter("prefill_tokens_total") == sum(len(p) for p in prompts)
    forwards = [
        float(line.split()[-1])
        for line in metrics.render().splitlines()
        if line.startswith("pdplan_worker_prefill_batch_seconds_count")
    ]
    assert forwards and forwards[0] >= 8


def test_chunked_prefill_role_hands_over_the_whole_cache(executor: Any) -> None:
    config = EngineConfig("prefill", 4, 256, chunk_tokens=10)
    budget = KvBudget(4096)
    engine = Engine(executor, config, WorkerMetrics("prefill"), budget)
    engine.start()
    got = Collector()
    engine.submit(Job("p", LONG, greedy(1), got.sink("p")))
    event = got.until_terminal(1, timeout_s=60)["p"][-1]
    engine.stop()
    assert isinstance(event, PrefilledEvent) and event.cache.length == len(LONG)
    assert event.token == reference(executor, LONG, 1)[0]
    assert budget.used_tokens == len(LONG)  # reserved until the hand-off releases it


def test_mixed_forward_equals_a_slice_and_a_decode_step(executor: Any) -> None:
    """Decode tokens riding in a prompt slice's forward get the logits and KV that a decode step
    of their own gives them, and the slice those of a forward of its own."""
    first = [PROMPTS[0], PROMPTS[2]]
    _, alone = executor.prefill([list(p) for p in first], reserve_tokens=4)
    _, mixed = executor.prefill([list(p) for p in first], reserve_tokens=4)
    tokens = [5, 17]
    decode_logits = executor.decode(tokens, alone)
    slice_cache = executor.new_cache(len(LONG) + 1)
    slice_logits = prefill_chunks(executor, [(LONG[:16], slice_cache)])
    both_cache = executor.new_cache(len(LONG) + 1)
    logits = mixed_forward(executor, [(LONG[:16], both_cache)], list(zip(tokens, mixed, strict=True)))
    assert logits.shape[0] == 3 and both_cache.length == 16
    torch.testing.assert_close(logits[0], slice_logits[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[1:], decode_logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(alone, mixed, strict=True):
        assert a.length == b.length
        torch.testing.assert_close(a.k[:, :, : a.length], b.k[:, :, : b.length], rtol=1e-4, atol=1e-4)


def test_chunked_schedule_runs_mixed_steps_within_the_token_budget(executor: Any) -> None:
    """Under ``schedule="chunked"`` a prompt arriving while others decode is prefilled in mixed
    steps: its slice and every running decode in one forward, slice + decodes ≤ chunk_tokens."""
    config = EngineConfig("colocated", 4, 256, chunk_tokens=12, schedule="chunked")
    metrics = WorkerMetrics("colocated")
    engine = Engine(executor, config, metrics, KvBudget(4096))
    got = Collector()
    # Submitted before the engine starts: the first step takes PROMPTS[0..1] whole (and LONG's
    # first 2 tokens), so the rest of the long prompt's slices ride with their two decodes.
    jobs = [(PROMPTS[0], 30), (PROMPTS[1], 30), (LONG, 3)]
    for i, (prompt, n) in enumerate(jobs):
        engine.submit(Job(f"r{i}", prompt, greedy(n), got.sink(f"r{i}")))
    engine.start()
    events = got.until_terminal(len(jobs), timeout_s=60)
    engine.stop()
    for i, (prompt, n) in enumerate(jobs):
        out = [e.token for e in events[f"r{i}"] if isinstance(e, TokenEvent)]
        assert out == reference(executor, prompt, n)
    mixed = [p for p in metrics.recent_prefills() if p.decode_batch > 0]
    assert mixed, "the long prompt's slices rode with the running decodes"
    for p in metrics.recent_prefills():
        assert sum(p.new_tokens) + p.decode_batch <= 12
    assert sum(sum(p.new_tokens) for p in metrics.recent_prefills()) == sum(len(p) for p, _ in jobs)

"""The engine thread: outputs equal plain executor greedy decoding, batch limits hold, KV budget blocks
the prefill role, and every job gets exactly one terminal event."""

from __future__ import annotations

import itertools
import queue
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pdplan.realrun.engine import (  # noqa: E402
    CancelledEvent,
    Engine,
    EngineConfig,
    ErrorEvent,
    Event,
    Job,
    PrefilledEvent,
    TokenEvent,
)
from pdplan.realrun.kv_budget import KvBudget  # noqa: E402
from pdplan.realrun.metrics import WorkerMetrics  # noqa: E402
from pdplan.realrun.protocol import SamplingParams  # noqa: E402

PROMPTS = [(17, 923, 411, 250, 77, 1000, 3), (5, 6, 7), (400, 401, 402, 403, 404)]


def reference(executor: Any, prompt: tuple[int, ...], n: int) -> list[int]:
    logits, caches = executor.prefill([list(prompt)])
    out = [int(logits.argmax(-1)[0])]
    while len(out) < n:
        out.append(int(executor.decode([out[-1]], caches).argmax(-1)[0]))
    return out


class Collector:
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Event]] = queue.Queue()

    def sink(self, rid: str) -> Any:
        return lambda event: self.events.put((rid, event))

    def until_terminal(self, count: int, timeout_s: float = 30.0) -> dict[str, list[Event]]:
        by_rid: dict[str, list[Event]] = {}
        done = 0
        deadline = time.monotonic() + timeout_s
        while done < count:
            rid, event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            by_rid.setdefault(rid, []).append(event)
            if not isinstance(event, TokenEvent) or event.finish is not None:
                done += 1
        return by_rid


def make_engine(
    executor: Any, role: str, budget_tokens: int = 4096, **limits: int
) -> tuple[Engine, WorkerMetrics, KvBudget]:
    metrics = WorkerMetrics(role)
    budget = KvBudget(budget_tokens)
    config = EngineConfig(
        role, limits.get("max_batch_size", 8), limits.get("max_batch_tokens", 256), eos_token_ids=(2,)
    )
    engine = Engine(executor, config, metrics, budget)
    engine.start()
    return engine, metrics, budget


def greedy(n: int, **kw: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def test_colocated_outputs_equal_plain_greedy_and_respect_the_batch_limit(executor: Any) -> None:
    engine, metrics, _ = make_engine(executor, "colocated", max_batch_size=2)
    got = Collector()
    for i, prompt in enumerate(PROMPTS):
        engine.submit(Job(f"r{i}", prompt, greedy(6), got.sink(f"r{i}")))
    events = got.until_terminal(len(PROMPTS))
    engine.stop()
    for i, prompt in enumerate(PROMPTS):
        tokens = [e.token for e in events[f"r{i}"] if isinstance(e, TokenEvent)]
        assert tokens == reference(executor, prompt, 6)
        final = events[f"r{i}"][-1]
        assert isinstance(final, TokenEvent) and final.finish is not None and final.finish.kind == "length"
    assert metrics.recent_steps() and max(st.batch_size for st in metrics.recent_steps()) <= 2


def test_decode_role_continues_from_a_given_cache(executor: Any) -> None:
    prompt = PROMPTS[0]
    logits, caches = executor.prefill([list(prompt)], reserve_tokens=8)
    engine, metrics, _ = make_engine(executor, "decode")
    got = Collector()
    job = Job("d", prompt, greedy(5), got.sink("d"), cache=caches[0], first_token=int(logits.argmax(-1)[0]))
    engine.submit(job)
    events = got.until_terminal(1)["d"]
    engine.stop()
    assert [e.token for e in events if isinstance(e, TokenEvent)] == reference(executor, prompt, 5)
    # Four decode steps after the prefill's token, each with the context it held before the step.
    steps = metrics.recent_steps()
    assert [(st.batch_size, st.context_tokens) for st in steps] == [(1, len(prompt) + k) for k in range(4)]
    # One request: it runs on after every step but its last; the steps start in order.
    assert [st.running_after for st in steps] == [1, 1, 1, 0]
    assert all(a.start_s + a.step_ms / 1000 <= b.start_s + 1e-3 for a, b in itertools.pairwise(steps))


def test_prefill_role_waits_for_kv_budget(executor: Any) -> None:
    engine, _, budget = make_engine(executor, "prefill", budget_tokens=10)
    got = Collector()
    engine.submit(Job("a", PROMPTS[0], greedy(4), got.sink("a")))
    engine.submit(Job("b", PROMPTS[0], greedy(4), got.sink("b")))
    first = got.until_terminal(1)
    assert list(first) == ["a"] and isinstance(first["a"][0], PrefilledEvent)
    assert budget.used_tokens == 7
    with pytest.raises(queue.Empty):
        got.events.get(timeout=0.5)  # b needs 7 more tokens of the 10: it must wait
    budget.release(7)
    second = got.until_terminal(1)
    engine.stop()
    assert isinstance(second["b"][0], PrefilledEvent) and budget.used_tokens == 7


def test_cancel_stop_tokens_and_shutdown_each_end_a_job_once(executor: Any) -> None:
    engine, _, _ = make_engine(executor, "colocated", max_batch_size=1)
    got = Collector()
    first = reference(executor, PROMPTS[1], 1)[0]
    long_job = Job("long", PROMPTS[0], greedy(2000), got.sink("long"))
    engine.submit(long_job)
    engine.submit(Job("stop", PROMPTS[1], greedy(50, stop_token_ids=(first,)), got.sink("stop")))
    time.sleep(0.3)
    engine.cancel(long_job)
    events = got.until_terminal(2)
    assert isinstance(events["long"][-1], CancelledEvent)
    final = events["stop"][-1]
    assert isinstance(final, TokenEvent) and final.finish is not None and final.finish.kind == "stop"
    assert len(events["stop"]) == 1
    engine.submit(Job("late", PROMPTS[2], greedy(2000), got.sink("late")))
    time.sleep(0.2)
    engine.stop()
    late = got.until_terminal(1)["late"]
    assert isinstance(late[-1], ErrorEvent) and late[-1].status == 503
    assert sum(1 for e in late if not isinstance(e, TokenEvent) or e.finish is not None) == 1

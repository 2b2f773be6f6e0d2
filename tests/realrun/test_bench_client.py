"""The benchmark client against a local token server: counts, order and timing bounds that hold
whatever the machine load (the server delays tokens by fixed amounts; the client can only be later)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("aiohttp")
from aiohttp import web

from pdplan.realrun.bench_apis import ApiSpec, prompt_ids
from pdplan.realrun.bench_client import BenchConfig, run_bench
from pdplan.realrun.bench_results import bench_summary, itl_frame, itl_ms, requests_frame
from pdplan.realrun.token_server import make_app
from pdplan.sim.requests import Requests

FIRST_S, TOKEN_S = 0.03, 0.01
FAIL_LEN, HANG_LEN = 13, 17


@web.middleware
async def _faults(request, handler):
    """A prompt of FAIL_LEN ids gets a 503; one of HANG_LEN ids never gets an answer."""
    if request.path == "/generate":
        body = await request.json()
        n = len(body.get("input_ids") or [])
        if n == FAIL_LEN:
            return web.json_response({"error": {"message": "overloaded", "code": 503}}, status=503)
        if n == HANG_LEN:
            await asyncio.sleep(5)
    return await handler(request)


class _Server:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "token server did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = make_app(FIRST_S, TOKEN_S)
        app.middlewares.append(_faults)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield f"http://127.0.0.1:{s.port}"
    s.close()


def _reqs(rows):
    a, p, o = zip(*rows, strict=True)
    return Requests(np.array(a, dtype=float), np.array(p), np.array(o))


@pytest.mark.parametrize("api", ["sglang-generate", "openai-completions", "openai-chat"])
def test_every_token_is_counted_and_timed_no_earlier_than_sent(server, api):
    reqs = _reqs([(0.0, 5, 4), (0.05, 8, 1), (0.1, 3, 6)])
    run = run_bench(reqs, BenchConfig(server, ApiSpec(api, "m")))
    frame = requests_frame(run)
    assert frame["status"].tolist() == ["ok"] * 3
    assert frame["output_tokens"].tolist() == [4, 1, 6]
    if api != "openai-chat":  # chat prompts are text: the server counts one message
        assert frame["prompt_tokens"].tolist() == [5, 8, 3]
    for out, n in zip(run.outcomes, (4, 1, 6), strict=True):
        assert len(out.chunk_s) == n and sum(out.chunk_tokens) == n
        assert len(out.chunk_sent_s) == n
        # a chunk is received after the server stamped it, which is after its scheduled time
        assert all(r >= s for r, s in zip(out.chunk_s, out.chunk_sent_s, strict=True))
        due = out.sent_s + FIRST_S + TOKEN_S * np.arange(n)
        assert np.all(np.array(out.chunk_sent_s) >= due - 1e-9)
    # open loop: nobody is sent before its arrival time
    assert all(o.sent_s >= t - 1e-9 for o, t in zip(run.outcomes, reqs.arrival_s, strict=True))
    ttft = frame["first_token_s"] - frame["arrival_s"]
    assert (ttft >= FIRST_S).all()
    gaps = itl_ms(itl_frame(run))
    assert gaps.size == 3 + 0 + 5 and (gaps >= 0).all()


def test_summary_uses_the_benchmark_definitions(server):
    reqs = _reqs([(0.0, 4, 5), (0.0, 4, 3)])
    run = run_bench(reqs, BenchConfig(server, ApiSpec("sglang-generate")))
    frame, itl = requests_frame(run), itl_frame(run)
    summary = bench_summary(frame, itl, slo_ms={"ttft": 10_000.0})
    first, finish, out = frame["first_token_s"], frame["finish_s"], frame["output_tokens"]
    tpot = ((finish - first) / (out - 1)).to_numpy() * 1000
    assert summary["tpot_ms"]["mean"] == pytest.approx(tpot.mean(), abs=1e-3)
    # TPOT is the mean of one request's ITLs (bench_serving): the pooled ITLs weight by tokens
    gaps = itl_ms(itl)
    assert summary["itl_ms"]["mean"] == pytest.approx(gaps.mean(), abs=1e-3)
    assert gaps.size == 4 + 2
    assert summary["attainment"] == 1.0
    assert summary["goodput_rps"] == pytest.approx(2 / summary["duration_s"], rel=1e-4)


def test_failures_and_timeouts_are_recorded_not_lost(server):
    reqs = _reqs([(0.0, FAIL_LEN, 3), (0.0, HANG_LEN, 3), (0.0, 4, 2)])
    run = run_bench(reqs, BenchConfig(server, ApiSpec("sglang-generate"), timeout_s=0.5))
    frame = requests_frame(run)
    assert frame["status"].tolist() == ["failed", "failed", "ok"]
    assert "HTTP 503" in frame["error"][0]
    assert "timed out" in frame["error"][1]
    assert np.isnan(frame["finish_s"][0]) and np.isnan(frame["finish_s"][1])


def test_deadline_leaves_the_rest_unfinished(server):
    reqs = _reqs([(0.0, 4, 2), (0.0, HANG_LEN, 3), (30.0, 4, 2)])
    run = run_bench(reqs, BenchConfig(server, ApiSpec("sglang-generate"), deadline_s=0.5))
    assert run.interrupted
    assert [o.status for o in run.outcomes] == ["ok", "unfinished", "unfinished"]
    frame = requests_frame(run)
    assert frame["arrival_s"][2] == 30.0  # never sent: its scheduled arrival is kept


def test_closed_loop_keeps_concurrency_and_sends_in_order(server):
    reqs = _reqs([(0.0, 4, 3)] * 6)
    run = run_bench(reqs, BenchConfig(server, ApiSpec("sglang-generate"), concurrency=2, think_time_s=0.02))
    sent = np.array([o.sent_s for o in run.outcomes])
    ends = np.array([o.chunk_s[-1] for o in run.outcomes])
    assert np.all(np.diff(sent) >= 0)
    # at every send, at most one other request is open
    for i, t in enumerate(sent):
        open_now = np.sum((sent < t) & (ends > t))
        assert open_now <= 1, (i, open_now)
    # a client's next request leaves ≥ think time after one of the earlier replies ended
    for t in sent[2:]:
        assert np.any(t >= ends + 0.02 - 1e-9)


def test_prompt_ids_are_exact_and_distinct():
    a, b = prompt_ids(0, 50), prompt_ids(1, 50)
    assert len(a) == 50 and a != b and min(a + b) >= 3


def test_prompts_share_exactly_their_shared_prefix_blocks():
    a = prompt_ids(0, 70, [7, 8, 9], 16)
    b = prompt_ids(1, 60, [7, 8, 4, 5], 16)
    assert len(a) == 70 and len(b) == 60
    assert a[:32] == b[:32]  # blocks 7 and 8
    assert a[32:48] != b[32:48]  # blocks 9 and 4 differ
    assert a[48:] == prompt_ids(0, 70)[48:]  # past its blocks, a prompt is its own
    assert prompt_ids(5, 10, [7], 16) == a[:10]  # a partial block is the block's start


def test_readers_take_cached_tokens_from_meta_info_and_openai_usage():
    from pdplan.realrun.bench_apis import StreamReader

    gen = StreamReader("sglang-generate")
    gen.feed(b'{"output_ids": [5], "meta_info": {"prompt_tokens": 9, "cached_tokens": 8}}')
    usage = StreamReader("openai-completions")
    usage.feed(
        b'{"choices": [], "usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 4}}}'
    )
    silent = StreamReader("openai-chat")
    silent.feed(b'{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}')
    assert (gen.cached_tokens, usage.cached_tokens, silent.cached_tokens) == (8, 4, None)


def test_measured_hit_rate_counts_only_requests_that_reported_it():
    import pandas as pd

    from pdplan.realrun.bench_results import prefix_cache_summary

    frame = pd.DataFrame({"prompt_tokens": [100, 100, 50], "cached_tokens": [0.0, 64.0, float("nan")]})
    summary = prefix_cache_summary(frame)
    assert summary is not None
    assert summary["hit_rate"]["total"] == 0.32 and summary["requests_reported"] == 2
    assert prefix_cache_summary(frame.assign(cached_tokens=float("nan"))) is None

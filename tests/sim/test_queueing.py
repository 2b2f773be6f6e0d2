"""Queueing theory: a prefill-only cluster is an M/D/1 or M/M/1 queue.

One prefill instance with batch size 1, instant KV transfer and one output token (so the first
token is delivered when the prefill ends): TTFT is the sojourn time of a FCFS single-server queue
with Poisson arrivals. Constant prefill cost gives M/D/1, whose mean sojourn is
D + ρD / (2(1 − ρ)) (Pollaczek–Khinchine); a cost proportional to a geometric prompt length gives
M/M/1 up to discreteness (mean 1000 tokens: E[S²] is 0.05% below the exponential's), whose mean
sojourn is 1 / (μ − λ).

Sample sizes: the standard deviation of the sample mean sojourn at ρ = 0.8 is large (the queue
forgets slowly); over seeds 0–9, M/D/1 with 600k requests and M/M/1 with 1M requests stay within
±1.7% (sd ≈ 0.9%), so 3% is a > 3σ bound. The first 1% of requests (the empty-start warm-up) is
left out.
"""

from __future__ import annotations

import numpy as np
import pytest
import simcases as sc

from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim import KvLink, PrefillPool, Requests, simulate

RATE_RPS = 10.0
MEAN_TOKENS = 1000


def _queue(kind: str, rho: float, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    service_s = rho / RATE_RPS
    gaps = rng.exponential(1 / RATE_RPS, n)
    arrival = np.cumsum(gaps) - gaps[0]
    if kind == "M/D/1":
        prompt = np.full(n, MEAN_TOKENS)
        model = LatencyModel((service_s * 1000, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0))
    else:
        prompt = rng.geometric(1 / MEAN_TOKENS, n)
        model = LatencyModel((0.0, 0.0, service_s * 1000 / MEAN_TOKENS, 0.0), (1.0, 0.0, 0.0))
    cluster = sc.disagg(
        model,
        prefill=PrefillPool(1, max_batch_tokens=10**9, max_batch_size=1),
        link=KvLink(bandwidth_gbps=1.0, latency_ms=0.0),
        kv_tokens=10**9,
        prefill_kv_tokens=10**9,
    )
    reqs = Requests(arrival, prompt, np.ones(n, dtype=np.int64))
    return reqs, simulate(reqs, cluster), model


def _lindley(arrival: list[float], service: list[float]) -> np.ndarray:
    """Sojourn times of a FCFS single-server queue: start = max(arrival, previous departure)."""
    done, free = [], 0.0
    for a, s in zip(arrival, service, strict=True):
        free = (a if a > free else free) + s
        done.append(free)
    return np.asarray(done) - np.asarray(arrival)


@pytest.mark.parametrize("kind", ["M/D/1", "M/M/1"])
def test_prefill_queue_is_exactly_the_lindley_recursion(kind):
    reqs, result, model = _queue(kind, 0.8, 20_000, seed=7)
    service = [model.prefill_ms([p]) / 1000 for p in reqs.prompt_tokens.tolist()]
    expected = _lindley(reqs.arrival_s.tolist(), service)
    ttft = result.records.first_token_s - result.records.arrival_s
    np.testing.assert_allclose(ttft, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("kind", "rho", "n"),
    [("M/D/1", 0.5, 100_000), ("M/D/1", 0.8, 600_000), ("M/M/1", 0.5, 200_000), ("M/M/1", 0.8, 1_000_000)],
)
def test_mean_ttft_matches_queueing_theory(kind, rho, n):
    _, result, _ = _queue(kind, rho, n)
    service_s = rho / RATE_RPS
    if kind == "M/D/1":
        expected = service_s + rho * service_s / (2 * (1 - rho))
    else:
        expected = 1 / (RATE_RPS / rho - RATE_RPS)
    rec = result.records
    ttft = (rec.first_token_s - rec.arrival_s)[n // 100 :]
    assert (rec.status_code == 0).all()
    assert ttft.mean() == pytest.approx(expected, rel=0.03)
    assert result.utilisation["prefill"] == pytest.approx(rho, rel=0.02)

"""Synthetic workloads: arrival processes, length distributions and the strict YAML mapping."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pdplan.profiles.errors import ConfigError
from pdplan.sim import Arrival, Lengths, Requests, Workload, draw_requests, workload_from_dict

N = 100_000


def _workload(**kw) -> Workload:
    base = {
        "arrival": Arrival("poisson", 20.0),
        "prompt_tokens": Lengths("fixed", value=100),
        "output_tokens": Lengths("fixed", value=10),
        "num_requests": N,
    }
    return Workload(**{**base, **kw})


def _cv(x: np.ndarray) -> float:
    return float(np.std(x) / np.mean(x))


def test_poisson_and_gamma_rates_and_burstiness():
    poisson = draw_requests(_workload())
    gaps = np.diff(poisson.arrival_s)
    assert poisson.arrival_s[0] == 0.0
    assert poisson.mean_rate_rps == pytest.approx(20.0, rel=0.02)
    assert _cv(gaps) == pytest.approx(1.0, rel=0.03)
    bursty = draw_requests(_workload(arrival=Arrival("gamma", 20.0, cv=3.0)))
    assert bursty.mean_rate_rps == pytest.approx(20.0, rel=0.05)
    assert _cv(np.diff(bursty.arrival_s)) == pytest.approx(3.0, rel=0.05)
    constant = draw_requests(_workload(arrival=Arrival("constant", 4.0), num_requests=5))
    assert constant.arrival_s.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_length_distributions():
    rng = np.random.default_rng(0)
    lognormal = Lengths("lognormal", mean=1000, cv=0.6, min=1, max=None).draw(rng, N)
    assert lognormal.mean() == pytest.approx(1000, rel=0.02) and _cv(lognormal) == pytest.approx(
        0.6, rel=0.03
    )
    clipped = Lengths("lognormal", mean=1000, cv=2.0, min=16, max=2048).draw(rng, N)
    assert clipped.min() == 16 and clipped.max() == 2048 and clipped.dtype == np.int64
    uniform = Lengths("uniform", min=3, max=5).draw(rng, N)
    assert sorted(np.unique(uniform).tolist()) == [3, 4, 5]
    empirical = Lengths("empirical", values=(7, 70, 700)).draw(rng, N)
    assert set(np.unique(empirical).tolist()) == {7, 70, 700}


def test_duration_and_determinism():
    spec = _workload(num_requests=None, duration_s=500.0, seed=4)
    first, again = draw_requests(spec), draw_requests(spec)
    assert np.array_equal(first.arrival_s, again.arrival_s)
    assert first.arrival_s.max() <= 500.0 and len(first) == pytest.approx(10_000, rel=0.05)
    other = draw_requests(_workload(num_requests=None, duration_s=500.0, seed=5))
    assert not np.array_equal(first.arrival_s[:10], other.arrival_s[:10])
    assert draw_requests(spec.with_rate(40.0)).mean_rate_rps == pytest.approx(40.0, rel=0.05)


def test_workload_from_dict_reads_the_design_example():
    spec = workload_from_dict(
        {
            "num_requests": 2000,
            "seed": 0,
            "arrival": {"process": "poisson", "rate_rps": 4.0},
            "prompt_tokens": {"dist": "lognormal", "mean": 1024, "cv": 0.6, "min": 16, "max": 8192},
            "output_tokens": {"dist": "fixed", "value": 128},
        }
    )
    reqs = draw_requests(spec)
    assert len(reqs) == 2000 and set(reqs.output_tokens.tolist()) == {128}


_VALID = {
    "num_requests": 5,
    "arrival": {"process": "poisson", "rate_rps": 1},
    "prompt_tokens": {"dist": "fixed", "value": 1},
    "output_tokens": {"dist": "fixed", "value": 1},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_request": 5}, "workload: unknown keys ['num_request']; valid: ['num_requests'"),
        ({"arrival": {"process": "weibull", "rate_rps": 1}}, "unknown workload.arrival.process 'weibull'"),
        ({"arrival": {"process": "poisson", "rate_rps": -1}}, "arrival.rate_rps=-1.0"),
        ({"arrival": {"process": "poisson", "rate_rps": 1, "cv": 2}}, "unknown keys ['cv']"),
        ({"arrival": {"process": "gamma", "rate_rps": 1, "cv": 0}}, "arrival.cv=0.0"),
        ({"prompt_tokens": {"dist": "zipf"}}, "unknown workload.prompt_tokens.dist 'zipf'"),
        (
            {"prompt_tokens": {"dist": "fixed", "mean": 3}},
            "workload.prompt_tokens (fixed): unknown keys ['mean']; valid: ['dist', 'value']",
        ),
        ({"prompt_tokens": {"dist": "fixed", "value": 0}}, "fixed.value=0"),
        (
            {"output_tokens": {"dist": "uniform", "min": 5, "max": 2}},
            "uniform.max=2; expected an integer ≥ 5",
        ),
        ({"output_tokens": {"dist": "lognormal", "mean": 100}}, "lognormal.cv=None"),
        ({"output_tokens": "fixed"}, "workload.output_tokens: expected a mapping"),
        ({"duration_s": 10.0}, "set exactly one of num_requests and duration_s"),
    ],
)
def test_workload_from_dict_rejects_bad_input(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        workload_from_dict({**_VALID, **change})


def test_requests_validation():
    with pytest.raises(ConfigError, match="non-decreasing"):
        Requests(np.array([0.0, 2.0, 1.0]), np.array([1, 1, 1]), np.array([1, 1, 1]))
    with pytest.raises(ConfigError, match=re.escape("prompt_tokens[1]=0")):
        Requests(np.array([0.0, 1.0]), np.array([1, 0]), np.array([1, 1]))
    with pytest.raises(ConfigError, match="equal length"):
        Requests(np.array([0.0, 1.0]), np.array([1]), np.array([1, 1]))
    with pytest.raises(ConfigError, match="non-integer"):
        Requests(np.array([0.0]), np.array([1.5]), np.array([1]))
    with pytest.raises(ConfigError, match="rate=0"):
        Requests(np.array([0.0, 1.0]), np.array([1, 1]), np.array([1, 1])).at_rate(0)

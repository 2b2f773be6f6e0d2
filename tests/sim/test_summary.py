"""``summarize`` on a hand-made table, and the time series on the exact timeline scenario."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import simcases as sc

from pdplan.profiles.errors import ConfigError
from pdplan.sim import TIMESERIES_COLUMNS, simulate, summarize, timeseries
from pdplan.sim.timeseries import nice_interval

NAN = math.nan
TABLE = pd.DataFrame(
    {
        "req_id": [0, 1, 2, 3, 4],
        "arrival_s": [0.0, 1.0, 2.0, 3.0, 4.0],
        "prompt_tokens": [10, 10, 10, 10, 10],
        "output_tokens": [1, 3, 2, 5, 2],
        "first_token_s": [0.1, 1.2, 2.5, NAN, 4.3],
        "finish_s": [0.1, 1.4, 2.55, NAN, NAN],
        "status": ["ok", "ok", "ok", "rejected", "unfinished"],
    }
)


def test_summary_by_hand():
    s = summarize(TABLE, slo_ms={"ttft": 300, "tpot": 100}, utilisation={"prefill": 0.5})
    assert s["counts"] == {"ok": 3, "rejected": 1, "failed": 0, "unfinished": 1}
    assert s["ttft_ms"] == pytest.approx({"mean": 266.6667, "p50": 200.0, "p90": 440.0, "p99": 494.0})
    assert s["tpot_ms"] == pytest.approx({"mean": 75.0, "p50": 75.0, "p90": 95.0, "p99": 99.5})
    assert s["e2e_ms"]["p50"] == pytest.approx(400.0)
    # Requests 0 and 1 attain (0 has no TPOT); 2 misses TTFT; rejected/unfinished count as misses.
    assert s["attainment"] == 0.4
    assert s["throughput_rps"] == pytest.approx(3 / 2.55, abs=1e-6)
    assert s["output_tokens_per_s"] == pytest.approx(6 / 2.55, abs=1e-6)
    assert s["utilisation"] == {"prefill": 0.5}
    warm = summarize(TABLE, slo_ms={"ttft": 300, "tpot": 100}, warmup_fraction=0.2)
    assert warm["warmup_excluded"] == 1 and warm["measured"] == 4 and warm["attainment"] == 0.25
    assert summarize(TABLE)["attainment"] is None
    p95 = summarize(TABLE, percentiles=(95, 99.9))["ttft_ms"]
    assert set(p95) == {"mean", "p95", "p99.9"}


def test_summary_errors():
    with pytest.raises(ConfigError, match="lacks column 'finish_s'"):
        summarize(TABLE.drop(columns="finish_s"))
    with pytest.raises(ConfigError, match=r"unknown status values \['lost'\]"):
        summarize(TABLE.assign(status=["ok", "ok", "ok", "lost", "ok"]))
    with pytest.raises(ConfigError, match="unknown per-request metrics"):
        summarize(TABLE, slo_ms={"itl": 5})
    with pytest.raises(ConfigError, match="warmup_fraction"):
        summarize(TABLE, warmup_fraction=1.0)


def test_summary_of_records_equals_summary_of_the_csv(tmp_path):
    reqs = sc.requests([(0.0, 128, 5), (0.0625, 64, 6), (0.0625, 64, 2), (0.25, 32, 3), (0.5, 128, 1)])
    result = simulate(reqs, sc.disagg())
    path = tmp_path / "requests.csv"
    result.records.to_frame().to_csv(path, index=False)
    from_csv = summarize(pd.read_csv(path), slo_ms={"ttft": 20})
    assert from_csv == summarize(result.records.columns(), slo_ms={"ttft": 20})


def test_timeseries_boundaries_on_the_exact_timeline():
    # The scenario of test_timelines: at 19/64 s F's prefill has just ended (half-open intervals:
    # out of the prefill batch, into the decode queue); B and E are in the decode batch.
    reqs = sc.requests(
        [(0.0, 128, 5), (0.0625, 64, 6), (0.0625, 64, 2), (0.25, 32, 3), (0.28125, 16, 2), (0.5, 128, 1)]
    )
    result = simulate(reqs, sc.disagg(kv_tokens=1000, prefill_kv_tokens=900))
    ts = timeseries(result, interval_s=1 / 64)
    assert tuple(ts.columns) == TIMESERIES_COLUMNS
    at = ts[ts.time_s == 19 / 64].set_index("role")
    assert at.loc["decode", ["queue_len", "batch_size", "kv_used_tokens", "kv_capacity_tokens"]].tolist() == [
        1,
        2,
        70 + 35 + 18,
        1000,
    ]
    assert at.loc[
        "prefill", ["queue_len", "batch_size", "kv_used_tokens", "kv_capacity_tokens"]
    ].tolist() == [0, 0, 16, 900]
    assert ts.time_s.max() <= result.end_s + 1 / 64 and len(ts) == 2 * len(np.unique(ts.time_s))
    empty = ts[ts.time_s == 0.75]
    assert (empty[["queue_len", "batch_size", "kv_used_tokens"]].to_numpy() == 0).all()


def test_colocated_timeseries_and_interval():
    reqs = sc.requests([(0.0, 128, 5), (0.0625, 64, 2), (0.21, 32, 2)])
    result = simulate(reqs, sc.colocated(policy="prefill-first", instances=2, max_batch_tokens=256))
    ts = timeseries(result)
    assert set(ts.role) == {"colocated"} and set(ts.instance) == {0, 1}
    assert nice_interval(result.end_s) == 0.0005  # 0.28 s in ≤ 1000 samples: 1/2/5 steps
    assert nice_interval(3600.0) == 5.0 and nice_interval(0.0) == 1.0

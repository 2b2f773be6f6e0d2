"""Operating-point figures: latency definitions, CDFs with SLO lines, load over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdplan.reports.figure import SLO_COLOR
from pdplan.reports.operating import (
    build_operating,
    cdf_figure,
    latency_samples,
    request_latencies,
    timeseries_figure,
)
from pdplan.reports.rundir import RunData, load_run
from pdplan.reports.slo import SloLine

NAN = float("nan")


def _requests() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "req_id": ["a", "b", "c", "d"],
            "arrival_s": [0.0, 1.0, 2.0, 3.0],
            "prompt_tokens": [100, 200, 300, 400],
            "output_tokens": [11, 1, 5, 3],
            "first_token_s": [0.5, 1.2, 3.0, NAN],
            "finish_s": [1.5, 1.2, 3.4, NAN],
            "prefill_start_s": [0.1, 1.0, 2.5, 3.0],
            "prefill_end_s": [0.4, 1.1, 2.9, NAN],
            "decode_start_s": [0.45, 1.15, 2.95, NAN],
            "status": ["ok", "ok", "ok", "failed"],
        }
    )


def test_request_latencies_follow_the_design_definitions() -> None:
    lat = request_latencies(_requests())
    assert lat["ttft"].tolist() == pytest.approx([500.0, 200.0, 1000.0])  # the failed one is out
    # TPOT = (finish − first) / (output − 1); the 1-token request has none
    assert lat["tpot"].tolist() == pytest.approx([100.0, 100.0])
    assert lat["e2e"].tolist() == pytest.approx([1500.0, 200.0, 1400.0])


def test_cdf_hits_the_quantiles_and_draws_the_slo() -> None:
    rng = np.random.default_rng(0)
    big = {"ttft": rng.lognormal(6, 0.8, 10_000), "tpot": rng.normal(40, 5, 10_000), "e2e": np.ones(1)}
    small = {"ttft": np.array([100.0, 300.0, 200.0]), "tpot": np.array([10.0]), "e2e": np.ones(1)}
    slo = [SloLine("ttft", 2000.0), SloLine("tpot", 50.0), SloLine("ttft", 3000.0, 99.0)]
    fig = cdf_figure([("big run", big), ("small run", small)], slo)
    ttft_ax, tpot_ax = fig.axes
    lines = {line.get_label(): line for line in ttft_ax.lines}
    curve = lines["big run"]
    x, p = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    assert len(x) <= 400
    for q in (0.5, 0.9, 0.99):
        assert np.interp(q, p, x) == pytest.approx(np.quantile(big["ttft"], q), rel=0.02)
    step = lines["small run"]  # small samples keep their exact steps
    assert list(step.get_xdata()) == [100.0, 200.0, 300.0]
    assert list(step.get_ydata()) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert list(lines["SLO TTFT ≤ 2 s"].get_xdata()) == [2000.0, 2000.0]
    assert lines["SLO TTFT ≤ 2 s"].get_color() == SLO_COLOR
    assert list(lines["SLO TTFT p99 ≤ 3 s"].get_xdata()) == [3000.0, 3000.0]
    assert any(list(line.get_ydata()) == [0.99, 0.99] for line in ttft_ax.lines)  # the p99 level
    assert ttft_ax.get_xscale() == "log"  # lognormal spread over > 2 decades
    tpot_lines = {line.get_label(): line for line in tpot_ax.lines}
    assert list(tpot_lines["SLO TPOT ≤ 50 ms"].get_xdata()) == [50.0, 50.0]
    assert "SLO TTFT ≤ 2 s" not in tpot_lines


def test_timeseries_has_a_column_per_role_with_instance_means() -> None:
    rows = []
    for t in range(10):
        for inst in range(2):
            rows.append((float(t), "prefill", inst, inst * 2, 1 + inst, 0, 100))
            rows.append((float(t), "decode", inst, 0, 10 * (inst + 1), 50 * (inst + 1), 100))
    ts = pd.DataFrame(
        rows,
        columns=[
            "time_s",
            "role",
            "instance",
            "queue_len",
            "batch_size",
            "kv_used_tokens",
            "kv_capacity_tokens",
        ],
    )
    fig = timeseries_figure(ts)
    assert len(fig.axes) == 6  # 3 metrics × 2 roles
    assert [ax.get_title() for ax in fig.axes[:2]] == ["prefill (2 instances)", "decode (2 instances)"]
    by_title = fig.axes  # row-major: (queue, prefill), (queue, decode), (batch, prefill), ...
    queue_prefill = by_title[0].lines[0].get_ydata()
    assert np.allclose(queue_prefill, 1.0)  # mean of instances 0 and 2
    batch_decode = by_title[3].lines[0].get_ydata()
    assert np.allclose(batch_decode, 15.0)
    kv_decode = by_title[5].lines[0].get_ydata()
    assert np.allclose(kv_decode, 75.0)  # (50 + 100) / 2 of 100 tokens, in %


def test_operating_section_from_a_search_run(search_run: Path) -> None:
    section = build_operating([load_run(search_run)])
    assert section.figure_keys == ("operating-cdf", "operating-traffic", "operating-timeseries")
    texts = [i.text for i in section.items if i.kind == "paragraph"]
    assert any(t.startswith("search (search): ") and "within TTFT ≤ 2 s" in t for t in texts)
    table = next(i for i in section.items if i.kind == "table")
    assert table.header == ("metric", "search")
    assert ("requests unfinished", "3") in [row[:2] for row in table.rows]


def test_operating_section_overlays_a_bench_and_its_prediction(bench_run: Path) -> None:
    section = build_operating([load_run(bench_run)])
    assert section.figure_keys == ("operating-cdf", "operating-traffic")  # not the predicted twin
    texts = " ".join(getattr(i, "text", "") for i in section.items)
    assert "bench (bench)" in texts and "bench (predicted)" in texts
    assert "bench has no timeseries.csv" in texts


def test_operating_section_absent_without_results(tmp_path: Path) -> None:
    section = build_operating([RunData(path=tmp_path / "prof")])
    assert section.absent is not None
    assert "prof has no requests.csv / summary.yaml / timeseries.csv" in section.absent


def test_cdf_leaves_out_the_warmup_like_the_summary(tmp_path: Path) -> None:
    requests = _requests().iloc[:3]  # TTFTs 500, 200, 1000 ms by arrival
    run = RunData(path=tmp_path / "sim", requests=requests, summary={"warmup_excluded": 1})
    ((label, values),) = latency_samples([run])
    assert label == "sim (bench)"  # requests alone read as a bench run
    assert values["ttft"].tolist() == pytest.approx([200.0, 1000.0])
    figure = next(i for i in build_operating([run]).items if i.kind == "figure")
    assert "Warm-up requests are left out" in figure.caption
    plain = RunData(path=tmp_path / "sim", requests=requests)
    assert latency_samples([plain])[0][1]["ttft"].tolist() == pytest.approx([500.0, 200.0, 1000.0])
    assert "Warm-up" not in next(i for i in build_operating([plain]).items if i.kind == "figure").caption

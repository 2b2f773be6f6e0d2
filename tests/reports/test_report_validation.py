"""Validation: predicted vs measured, per metric and per request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdplan.reports.rundir import RunData, load_run
from pdplan.reports.validation import (
    build_validation,
    compare,
    error_figure,
    joined_requests,
    metric_label,
    metric_value,
    pairs,
    requests_figure,
    run_metrics,
)


def _requests(ttft_s: list[float], ids: list[str]) -> pd.DataFrame:
    n = len(ttft_s)
    arrival = np.arange(n, dtype=float)
    first = arrival + np.asarray(ttft_s)
    return pd.DataFrame(
        {
            "req_id": ids,
            "arrival_s": arrival,
            "prompt_tokens": 100,
            "output_tokens": 11,
            "first_token_s": first,
            "finish_s": first + 1.0,
            "prefill_start_s": arrival,
            "prefill_end_s": arrival,
            "decode_start_s": arrival,
            "status": "ok",
        }
    )


def test_compare_reports_error_against_the_measurement() -> None:
    table = compare(
        {"ttft_p50_ms": 110.0, "throughput_rps": 2.0, "tpot_p50_ms": 5.0},
        {"ttft_p50_ms": 100.0, "throughput_rps": 2.5},
    )
    assert table["metric"].tolist() == ["ttft_p50_ms", "throughput_rps"]  # only shared metrics
    assert table["error_pct"].tolist() == pytest.approx([10.0, -20.0])
    fig = error_figure(table)
    bars = sorted(p.get_width() for p in fig.axes[0].patches if p.get_height() < 1)
    assert bars == pytest.approx([-20.0, 10.0])
    ticks = {t.get_text(): t.get_position()[1] for t in fig.axes[0].get_yticklabels()}
    assert ticks == {"TTFT p50": 1, "throughput": 0}  # table order, top down
    assert metric_label("e2e_p99_ms") == "E2E p99"
    assert (
        metric_value("e2e_p99_ms", 1290.0) == "1.29 s"
        and metric_value("output_tokens_per_s", 12_800) == "12.8k tok/s"
    )


def test_run_metrics_prefer_summary_and_fall_back_to_requests(tmp_path: Path) -> None:
    requests = _requests([0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"])
    run = RunData(path=tmp_path, requests=requests, summary={"ttft_ms": {"p50": 999.0}})
    metrics = run_metrics(run)
    assert metrics["ttft_p50_ms"] == 999.0  # summary.yaml wins
    assert metrics["ttft_p90_ms"] == pytest.approx(np.percentile([100, 200, 300, 400], 90))
    assert metrics["tpot_mean_ms"] == pytest.approx(100.0)  # 1 s over 10 tokens
    assert metrics["throughput_rps"] == pytest.approx(4 / (3.4 + 1.0))


def test_pairs_bench_with_prediction_and_simulation_with_bench(tmp_path: Path) -> None:
    pred = RunData(path=tmp_path / "b" / "predicted", requests=_requests([0.1], ["a"]))
    bench = RunData(
        path=tmp_path / "b", meta={"kind": "bench"}, requests=_requests([0.1], ["a"]), predicted=pred
    )
    sim = RunData(path=tmp_path / "s", meta={"kind": "simulate"}, summary={"throughput_rps": 1.0})
    other = RunData(path=tmp_path / "m", meta={"kind": "bench"}, summary={"throughput_rps": 1.1})
    assert pairs([bench]) == [(pred, bench)]
    assert pairs([sim, other]) == [(sim, other)]
    assert pairs([sim]) == []


def test_per_request_join_by_id() -> None:
    pred = _requests([0.1, 0.2, 0.3], ["a", "b", "c"])
    meas = _requests([0.2, 0.2, 0.6], ["b", "c", "z"])
    joined = joined_requests(pred, meas)
    assert joined["req_id"].tolist() == ["b", "c"]
    assert joined["ttft_ms_pred"].tolist() == pytest.approx([200.0, 300.0])
    assert joined["ttft_ms_meas"].tolist() == pytest.approx([200.0, 200.0])
    fig = requests_figure(joined)
    offsets = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(np.asarray(offsets), [[200.0, 200.0], [200.0, 300.0]])


def test_validation_section_from_a_bench_run(bench_run: Path) -> None:
    section = build_validation([load_run(bench_run)])
    assert section.figure_keys == (
        "validation-errors",
        "validation-cdf",
        "validation-over-time",
        "validation-requests",
    )
    assert section.items[0].text.startswith(
        "Prediction (bench/predicted) vs measurement (bench): median |error|"
    )
    table = next(i for i in section.items if i.kind == "table")
    assert table.rows[0][0] == "TTFT mean" and table.rows[0][3].endswith("%")
    assert table.rows[0][1].endswith((" ms", " s")) and not any("e+" in c for row in table.rows for c in row)


def test_validation_absent_says_what_it_needs(search_run: Path) -> None:
    section = build_validation([load_run(search_run)])
    assert section.absent is not None and "predicted/ sub-directory" in section.absent

"""Traffic over time: arrivals per minute, peak-to-mean, and SLO attainment per minute, checked on a
hand-made requests.csv whose per-minute counts are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pdplan.reports.operating import build_operating
from pdplan.reports.rundir import load_run
from pdplan.reports.slo import parse_slo
from pdplan.reports.traffic_time import bin_width_s, meets_slo, traffic_bins, traffic_figure

PER_MINUTE = [10, 30, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20]  # 240 requests over 12 minutes


def _requests() -> pd.DataFrame:
    rows = []
    for minute, n in enumerate(PER_MINUTE):
        last = 60.0 if minute == len(PER_MINUTE) - 1 else 59.0  # the very last arrival at 720 s
        for k, offset in enumerate(np.linspace(0.0, last, n)):
            arrival = minute * 60 + offset
            ttft, output, decode_s, status = 0.2, 11, 0.3, "ok"  # TPOT 30 ms: meets ttft=1s,tpot=50ms
            if minute == 1 and k < 6:
                ttft = 2.0  # misses TTFT
            elif minute == 1 and k < 9:
                status = "unfinished"  # never counts as meeting the SLO
            elif minute == 1 and k == 9:
                output, decode_s = 1, 5.0  # one token: no TPOT, so it cannot miss it
            elif minute == 2 and k < 2:
                decode_s = 1.0  # TPOT 100 ms: misses
            done = status == "ok"
            rows.append(
                {
                    "req_id": f"r{len(rows):04d}",
                    "arrival_s": arrival,
                    "prompt_tokens": 100,
                    "output_tokens": output,
                    "first_token_s": arrival + ttft if done else np.nan,
                    "finish_s": arrival + ttft + decode_s if done else np.nan,
                    "prefill_start_s": arrival,
                    "prefill_end_s": arrival + ttft / 2 if done else np.nan,
                    "decode_start_s": arrival + ttft / 2 if done else np.nan,
                    "status": status,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "replay"
    folder.mkdir()
    _requests().to_csv(folder / "requests.csv", index=False)
    plan = {"mode": "colocated", "gpus": 3, "colocated": {"instances": 3, "tp": 1}}
    plan.update(slo="ttft=1s,tpot=50ms", attainment=0.9)
    (folder / "plan.yaml").write_text(yaml.safe_dump(plan))
    return folder


def test_bins_are_a_minute_for_long_runs_and_about_span_over_60_for_short_ones() -> None:
    assert bin_width_s(600.0) == 60.0 and bin_width_s(3600.0) == 60.0
    assert bin_width_s(120.0) == 2.0 and bin_width_s(599.0) == 10.0 and bin_width_s(3.0) == 0.1
    assert bin_width_s(104.0, 400) == 10.0  # 2-s bins would hold ~8 requests: widened to ≥ 20
    assert bin_width_s(355.0, 19_366) == 10.0 and bin_width_s(3600.0, 100) == 60.0


def test_per_minute_arrivals_and_attainment_match_the_hand_made_trace(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.requests is not None
    slo, _ = parse_slo("ttft=1s,tpot=50ms")
    assert int(meets_slo(run.requests, slo).sum()) == 240 - 9 - 2
    bins = traffic_bins(run.requests, slo)
    assert bins.width_s == 60.0 and len(bins.arrivals) == 12  # the arrival at 720 s joins minute 12
    assert bins.arrivals.tolist() == PER_MINUTE
    assert bins.rate_rps == pytest.approx(np.array(PER_MINUTE) / 60)
    assert bins.mean_rps == pytest.approx(240 / 720)
    assert bins.peak_to_mean == pytest.approx(1.5)
    expected = [1.0, 21 / 30, 18 / 20] + [1.0] * 9
    assert bins.attainment == pytest.approx(expected)


def test_operating_section_has_the_figure_and_its_sentence(run_dir: Path) -> None:
    section = build_operating([load_run(run_dir)])
    assert "operating-traffic" in section.figure_keys
    figure = next(i for i in section.items if i.kind == "figure" and i.key == "operating-traffic")
    assert "bin of one minute" in figure.caption and "TTFT ≤ 1 s, TPOT ≤ 50 ms" in figure.caption
    text = next(i.text for i in section.items if i.kind == "paragraph" and "Arrivals per minute" in i.text)
    assert "mean 0.333 req/s, peak 0.5 req/s (minute 2), peak-to-mean 1.50" in text
    assert "from 70.0% (minute 2) to 100.0%" in text
    assert "1 of the 12 minutes below the 90% target (240 requests)" in text


def test_figure_draws_rates_attainment_and_the_target(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.requests is not None
    slo, _ = parse_slo("ttft=1s,tpot=50ms")
    fig = traffic_figure(traffic_bins(run.requests, slo), 0.9)
    top, bottom = fig.axes
    assert [p.get_height() for p in top.patches] == pytest.approx(np.array(PER_MINUTE) / 60)
    assert "1.50× the mean" in top.get_title()
    labels = {line.get_label(): line for line in bottom.lines}
    assert list(labels["attainment target 90%"].get_ydata()) == [0.9, 0.9]
    below = [c for c in bottom.collections if c.get_label() == "below target"]
    assert len(below) == 1 and below[0].get_offsets()[:, 1].tolist() == pytest.approx([0.7])

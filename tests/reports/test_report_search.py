"""Search figures on small hand-made candidates and probes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pdplan.reports.plans import candidate_view, chosen_candidate, plan_view, ranked
from pdplan.reports.rundir import RunData
from pdplan.reports.search import (
    attainment_figure,
    build_search,
    pareto_figure,
    pareto_points,
)

NAN = float("nan")


def _candidates() -> pd.DataFrame:
    rows = [
        # id, mode, P, Ptp, D, Dtp, C, Ctp, gpus, goodput, status
        ("c0", "disaggregated", 1, 1, 1, 1, NAN, NAN, 2, 1.0, "ok"),
        ("c1", "disaggregated", 1, 1, 2, 1, NAN, NAN, 3, 2.4, "ok"),
        ("c2", "disaggregated", 1, 2, 2, 1, NAN, NAN, 4, 2.0, "ok"),  # same cell as c1, worse
        ("c3", "disaggregated", 2, 1, 1, 1, NAN, NAN, 3, NAN, "infeasible"),
        ("c4", "disaggregated", 2, 1, 2, 1, NAN, NAN, 4, 2.8, "ok"),
        ("c5", "colocated", NAN, NAN, NAN, NAN, 2, 1, 2, 1.2, "ok"),
        ("c6", "colocated", NAN, NAN, NAN, NAN, 4, 1, 4, 2.0, "ok"),
    ]
    table = pd.DataFrame(
        rows,
        columns=[
            "candidate_id",
            "mode",
            "prefill_instances",
            "prefill_tp",
            "decode_instances",
            "decode_tp",
            "colocated_instances",
            "colocated_tp",
            "gpus",
            "goodput_rps",
            "status",
        ],
    )
    table["goodput_rps_per_gpu"] = table["goodput_rps"] / table["gpus"]
    table["policy"] = ["", "", "", "", "", "chunked", "prefill-first"]
    table["max_batch_size"] = 128.0
    table["max_batch_tokens"] = 4096.0
    table["chunk_tokens"] = NAN
    table["reason"] = ["", "", "", "does not fit in memory", "", "", ""]
    return table


def _probes() -> pd.DataFrame:
    rows = []
    for cid, knee in (("c0", 1.0), ("c1", 2.4), ("c2", 2.0), ("c4", 2.8), ("c5", 1.2), ("c6", 2.0)):
        for rate in (0.5 * knee, knee, 1.5 * knee):
            att = 1.0 if rate <= knee else 0.5
            tpot = 20 + 10 * rate
            rows.append((cid, rate, att, 100, 200, 300, tpot, tpot, tpot, 150 * rate, att >= 0.9))
    return pd.DataFrame(
        rows,
        columns=[
            "candidate_id",
            "rate_rps",
            "attainment",
            "ttft_p50_ms",
            "ttft_p90_ms",
            "ttft_p99_ms",
            "tpot_p50_ms",
            "tpot_p90_ms",
            "tpot_p99_ms",
            "output_tokens_per_s",
            "meets_slo",
        ],
    )


def test_attainment_figure_has_one_line_per_plan_and_the_target() -> None:
    probes = _probes()
    fig = attainment_figure(probes, [("c4", "c4: best"), ("c6", "c6: colocated")], 0.9)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert lines["c4: best"].get_xdata().tolist() == pytest.approx([1.4, 2.8, 4.2])
    assert lines["c4: best"].get_ydata().tolist() == [1.0, 1.0, 0.5]
    assert lines["c6: colocated"].get_linestyle() == "--"
    target = lines["attainment target 90%"]
    assert list(target.get_ydata()) == [0.9, 0.9]


def test_pareto_front_per_mode() -> None:
    points = pareto_points(_probes(), _candidates())
    assert len(points) == 18
    fig = pareto_figure(points)
    fronts = {line.get_label(): line for line in fig.axes[0].lines}
    colo = fronts["colocated Pareto front"]
    # colocated probes: c5 (2 GPUs) at 0.6/1.2/1.8 req/s and c6 (4 GPUs) at 1/2/3 req/s; per GPU
    # tokens/s = 150·rate/gpus, per user 1000/(20 + 10·rate). Every c6 point is beaten on both
    # axes by a c5 point, so the front is c5's three probes, by increasing tokens/s per user.
    rates = np.array([1.8, 1.2, 0.6])
    assert np.asarray(colo.get_xdata()) == pytest.approx(1000 / (20 + 10 * rates))
    assert np.asarray(colo.get_ydata()) == pytest.approx(75 * rates)
    assert "disaggregated Pareto front" in fronts


def test_ranking_and_chosen_plan() -> None:
    cands = _candidates()
    assert ranked(cands)["candidate_id"].tolist()[:2] == ["c1", "c4"]  # 0.8 and 0.7 req/s per GPU
    assert ranked(cands, "colocated")["candidate_id"].tolist() == ["c5", "c6"]
    plan = {
        "mode": "disaggregated",
        "prefill": {"instances": 1, "tp": 1},
        "decode": {"instances": 2, "tp": 1},
        "predicted": {"goodput_rps": 2.4},
    }
    assert chosen_candidate(plan, cands) == "c1"
    assert chosen_candidate({"feasible": False, "reason": "x"}, cands) is None
    assert chosen_candidate(None, cands) == "c1"
    view = plan_view(plan)
    assert view.phrase == "1 prefill instance (TP 1) + 2 decode instances (TP 1)" and view.gpus == 3
    colo = candidate_view(cands.iloc[5], _probes())
    assert colo.instances == "2 colocated" and colo.latency_ms[0] == 100 and "chunked" in colo.limits


def test_search_section_absent_without_candidates(tmp_path) -> None:
    section = build_search([RunData(path=tmp_path / "sim")])
    assert section.absent is not None and "sim has no candidates.csv" in section.absent


def test_search_section_figures(tmp_path) -> None:
    run = RunData(path=tmp_path / "s", candidates=_candidates(), probes=_probes())
    section = build_search([run])
    assert section.figure_keys == ("search-heatmap", "search-attainment", "search-pareto")
    reasons = next(i for i in section.items if i.kind == "table" and "by reason" in i.caption)
    assert reasons.rows == (("infeasible", "do not fit in memory", "1", "c3: does not fit in memory"),)
    no_probes = build_search([RunData(path=tmp_path / "s", candidates=_candidates())])
    assert no_probes.figure_keys == ("search-heatmap",)
    assert any("probes.csv" in getattr(i, "text", "") for i in no_probes.items)

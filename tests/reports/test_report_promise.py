"""The Summary states the promise: target rate and whether it is held, how the GPU budget is used,
cost per hour and per million output tokens, how the traffic was judged, and how a tie was broken
(the optional plan.yaml fields ``target``, ``budget``, ``cost``, ``traffic``, ``tie``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rundir_factory import update_plan

from pdplan.reports.promise import (
    TRAFFIC_WORDS,
    budget_sentence,
    cost_sentence,
    promise_lines,
    sustained_sentence,
)
from pdplan.reports.render import render_html
from pdplan.reports.rundir import RunData, load_run
from pdplan.reports.summary import build_summary


@pytest.fixture()
def promised(tmp_path: Path, search_run: Path) -> Path:
    folder = tmp_path / "search"
    shutil.copytree(search_run, folder)
    update_plan(
        folder,
        target={"rate_rps": 40.0, "held": True, "gpus": 6},
        budget={
            "gpus": 16,
            "replicas": 5,
            "gpus_used": 15,
            "goodput_rps": 274.0,
            "layout": "colocated 3× TP1",
        },
        cost={"price_per_gpu_hour": 2.5, "gpus": 6, "per_hour": 15.0, "per_million_output_tokens": 0.8123},
        traffic="as-recorded",
        tie="Tied within the search's resolution with 2 other layouts; chose the one with fewer GPUs",
    )
    return folder


def _texts(run: RunData) -> list[str]:
    return [i.text for i in build_summary([run]).items if i.kind == "paragraph"]


def test_summary_states_target_budget_cost_traffic_and_tie(promised: Path) -> None:
    texts = _texts(load_run(promised))
    assert texts[0] == "Target 40 req/s: held by this plan on 6 GPUs."  # the headline comes first
    assert texts[1].startswith("Recommended: ")
    assert (
        texts[2] == "Tied within the search's resolution with 2 other layouts; chose the one with fewer GPUs."
    )
    assert texts[3] == (
        "Budget of 16 GPUs: 5 replicas of the 3-GPU unit (colocated 3× TP1) on 15 of 16 GPUs: "
        "274 req/s in total."
    )
    assert (
        texts[4]
        == "Cost at $2.50 per GPU-hour: $15.00 per hour for 6 GPUs, $0.812 per million output tokens."
    )
    assert texts[5] == f"Traffic: {TRAFFIC_WORDS['as-recorded']} (traffic: as-recorded)."
    html = render_html([load_run(promised)], strict=True)
    assert "$0.812 per million output tokens" in html and "Target 40 req/s: held" in html


def test_a_target_that_is_not_held_says_so(promised: Path) -> None:
    update_plan(promised, target={"rate_rps": 54.8, "held": False, "gpus": 16}, traffic="stationary")
    texts = _texts(load_run(promised))
    assert texts[0] == "Target 54.8 req/s: NOT held by the best plan found on 16 GPUs."
    assert any("stationary view of the trace (detrended), chosen explicitly" in t for t in texts)


def test_without_the_optional_fields_nothing_is_invented(search_run: Path) -> None:
    texts = _texts(load_run(search_run))
    assert texts[0].startswith("Recommended: ")
    assert not any(t.startswith(("Target", "Budget", "Cost", "Traffic")) for t in texts)


def test_partial_and_malformed_fields() -> None:
    notes: list[str] = []
    assert cost_sentence({"cost": {"price_per_gpu_hour": 2.0, "gpus": 3}}, notes) == (
        "Cost at $2.00 per GPU-hour: $6.00 per hour for 3 GPUs."
    )
    assert budget_sentence({"budget": {"gpus": 16, "layout": "2P:2D (TP1) ×4", "gpus_used": 16}}, notes) == (
        "Budget of 16 GPUs: 2P:2D (TP1) ×4 on 16 GPUs."
    )
    headline, lines, problems = promise_lines({"target": 40, "cost": {}, "traffic": "synthetic"})
    assert headline is None
    assert lines == [f"Traffic: {TRAFFIC_WORDS['synthetic']} (traffic: synthetic)."]
    assert problems == [
        "plan.yaml's 'target' is not a mapping (int); not shown.",
        "plan.yaml's cost has neither per_hour nor per_million_output_tokens; not shown.",
    ]
    section = build_summary([RunData(path=Path("x"), plan={"mode": "colocated", "target": "fast"})])
    assert section.notes == ("x: plan.yaml's 'target' is not a mapping (str); not shown.",)


def test_a_replay_below_its_target_says_the_plan_does_not_hold(tmp_path: Path) -> None:
    plan = {"mode": "colocated", "gpus": 3, "colocated": {"instances": 3, "tp": 1}, "attainment": 0.9}
    summary = {
        "throughput_rps": 54.8,
        "ttft_ms": {"p90": 17_400.0},
        "tpot_ms": {"p90": 71.3},
        "attainment": 0.393,
    }
    run = RunData(path=tmp_path / "r", meta={"kind": "simulate"}, plan=plan, summary=summary)
    assert _texts(run)[-1] == (
        "The simulated run served 54.8 req/s with TTFT p90 17.4 s and TPOT p90 71.3 ms; 39.3% of requests "
        "met the SLO, below the 90% target: the plan does NOT hold at this rate."
    )


def test_a_budget_beside_a_cache_choice_says_it_is_cache_less() -> None:
    # the budget plan is scaled from the layouts' cache-less ranking; beside the cache's higher
    # goodput it must not read as the plan's promise
    budget = {"gpus": 4, "replicas": 1, "gpus_used": 4, "goodput_rps": 3.43, "layout": "colocated 2× (TP2)"}
    plain = budget_sentence({"budget": budget}, [])
    cached = budget_sentence({"budget": budget, "cache_choice": {"goodput_rps": 6.59}}, [])
    assert plain is not None and "prefix cache" not in plain
    assert cached == plain[:-1] + " without a prefix cache."


def test_a_short_replay_says_whether_the_promise_lasts_repeated(promised: Path) -> None:
    short = {"rate_rps": 3638.1, "replay_once_s": 5.32, "min_replay_s": 60.0, "copies": 12}
    update_plan(promised, sustained={**short, "replay_s": 63.9, "attainment": 0.043, "holds": False})
    texts = _texts(load_run(promised))
    line = next(t for t in texts if t.startswith("Short replay"))
    assert "lasts only 5.32 s" in line and "repeated 12× (63.9 s)" in line
    assert "does NOT hold (attainment 0.043)" in line
    lead = next(t for t in texts if t.startswith("Recommended: "))
    assert "holding " in lead and "sustaining" not in lead and "replayed once" in lead
    update_plan(promised, sustained={**short, "replay_s": 63.9, "attainment": 0.95, "holds": True})
    texts = _texts(load_run(promised))
    assert any("it still holds (attainment 0.950)" in t for t in texts)
    assert "sustaining" in next(t for t in texts if t.startswith("Recommended: "))
    notes: list[str] = []
    assert sustained_sentence({"sustained": {"copies": 3}}, notes) is None
    assert notes == ["plan.yaml's sustained lacks rate_rps or replay_once_s; not shown."]

"""Summary and Inputs sections: the recommendation in words, and what produced the run."""

from __future__ import annotations

from pathlib import Path

import yaml

from pdplan.reports.inputs import build_inputs, interarrival_s, traffic_figure
from pdplan.reports.rundir import RunData, load_run
from pdplan.reports.summary import build_summary


def test_search_summary_recommends_and_compares_with_colocated(search_run: Path) -> None:
    run = load_run(search_run)
    plan = yaml.safe_load((search_run / "plan.yaml").read_text())
    section = build_summary([run])
    sentence = section.items[0].text
    assert sentence.startswith(f"Recommended: {plan['prefill']['instances']} prefill instance"), sentence
    assert (
        f"on {plan['gpus']} GPUs" in sentence and "the goodput per GPU of the best colocated plan" in sentence
    )
    table = section.items[1]
    assert [row[0] for row in table.rows] == ["recommended", "best colocated"]
    assert table.rows[0][7] == f"{plan['predicted']['goodput_rps_per_gpu']:.3g}"
    assert table.highlight == (0,)
    assert section.items[2].text.startswith(f"Chosen among {len(run.candidates)} candidates (")


def test_infeasible_search_says_why(tmp_path: Path) -> None:
    run = RunData(path=tmp_path / "s", plan={"feasible": False, "reason": "TTFT bound at every rate"})
    section = build_summary([run])
    assert section.items[0].text == "No plan meets the SLO within this budget: TTFT bound at every rate."


def test_single_plan_simulation_summary(tmp_path: Path) -> None:
    plan = {"mode": "colocated", "gpus": 4, "colocated": {"instances": 2, "tp": 2, "policy": "chunked"}}
    summary = {"throughput_rps": 3.5, "ttft_ms": {"p90": 420.0}, "tpot_ms": {"p90": 31.0}, "attainment": 0.95}
    run = RunData(path=tmp_path / "sim", meta={"kind": "simulate"}, plan=plan, summary=summary)
    texts = [i.text for i in build_summary([run]).items if i.kind == "paragraph"]
    assert texts[0] == "Plan: 2 colocated instances (TP 2) on 4 GPUs."
    assert texts[1] == (
        "The simulated run served 3.5 req/s with TTFT p90 420 ms and TPOT p90 31 ms; "
        "95.0% of requests met the SLO."
    )


def test_summary_absent_for_a_profile_run(profile_run) -> None:
    section = build_summary([load_run(profile_run[0])])
    assert section.absent == "No plan to summarise: prof has no plan.yaml."


def test_traffic_figure_and_inputs_tables(search_run: Path) -> None:
    run = load_run(search_run)
    assert run.requests is not None
    gaps = interarrival_s(run.requests)
    assert len(gaps) == len(run.requests) - 1 and (gaps >= 0).all()
    fig = traffic_figure(run.requests)
    assert "CV" in fig.axes[2].get_title()
    assert [line.get_label() for line in fig.axes[2].lines] == ["Poisson, same rate"]
    section = build_inputs([run])
    assert section.figure_keys == ("inputs-traffic",)
    tables = {t.caption: t for t in section.items if t.kind == "table"}
    runs = tables["Runs in this report and the command lines that produced them."]
    assert runs.rows[0][1] == "search" and runs.rows[0][3].startswith("pdplan simulate")
    setup = tables["Model, hardware and workload."]
    assert ("search", "hardware", "h100-sxm") in setup.rows


def test_inputs_lists_unreadable_files(tmp_path: Path) -> None:
    run = RunData(path=tmp_path / "x", problems={"requests.csv": "missing columns ['status']"})
    section = build_inputs([run])
    problem_table = next(t for t in section.items if t.kind == "table" and "could not be read" in t.caption)
    assert problem_table.rows == (("x", "requests.csv", "missing columns ['status']"),)
    assert "x: requests.csv could not be read" in section.items[0].text

"""``pdplan search`` (the SLO search mode of ``pdplan simulate``): the run directory, infeasible
SLOs (exit 0 with the reason), bad input (one line, exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cli.app import app, main
from pdplan.planner.evaluation import CANDIDATE_COLUMNS
from pdplan.planner.plan import PREDICTED_KEYS, load_plan
from pdplan.planner.probe import PROBE_COLUMNS
from pdplan.sim import REQUEST_COLUMNS, TIMESERIES_COLUMNS

runner = CliRunner()
SHORT_PRESET_REQUESTS = 3000
MODEL = ["--model", "llama-3.1-8b", "--hardware", "h100-sxm"]


def _invoke(args: list[str]):
    result = runner.invoke(app, ["simulate", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _exit_code(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pdplan", "simulate", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code or 0), capsys.readouterr().err


@pytest.fixture
def short_preset(monkeypatch) -> int:
    """A preset replay of 3,000 requests instead of 10,000: the same preset path through the CLI,
    the search and the run directory, at a third of the simulation (the search's own tests use
    3,000-request chat replays too)."""
    from pdplan.planner import traffic

    monkeypatch.setattr(traffic, "PRESET_REPLAY_REQUESTS", SHORT_PRESET_REQUESTS)
    return SHORT_PRESET_REQUESTS


@pytest.fixture
def no_report(monkeypatch):
    """Skip report.html where a test does not look at it (the reports' own tests cover it)."""
    from pdplan.planner.cli import search_cmd

    monkeypatch.setattr(search_cmd, "_report", lambda out: out / "report.html")


def test_search_run_directory(short_preset: int, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--slo", "ttft=1s,tpot=50ms", "--gpus", "3", *MODEL, "--preset", "chat", "--workers", "1"]
    result = _invoke([*args, "--out", out])
    assert "verdict:" in result.output and "Top plans" in result.output
    assert "infeasible:" not in result.output  # a feasible plan without a prefix cache
    candidates = pd.read_csv(out / "candidates.csv")
    assert tuple(candidates.columns) == CANDIDATE_COLUMNS
    assert set(candidates["status"]) <= {"ok", "pruned", "infeasible"}
    assert candidates.loc[candidates["status"] != "ok", "reason"].notna().all()
    probes = pd.read_csv(out / "probes.csv")
    assert tuple(probes.columns) == PROBE_COLUMNS and set(probes["candidate_id"]) <= set(
        candidates["candidate_id"]
    )
    plan = load_plan(out / "plan.yaml")
    assert plan.feasible and 1 <= plan.gpus <= 3
    assert set(plan.predicted) == set(PREDICTED_KEYS) and None not in plan.predicted.values()
    best = candidates[candidates["status"] == "ok"]["goodput_rps_per_gpu"].max()
    # the chosen plan is the best, or the simplest tied with it within the search's resolution
    assert plan.predicted["goodput_rps_per_gpu"] * 1.025 >= best - 1e-9
    per_gpu = candidates["goodput_rps_per_gpu"]
    assert ((per_gpu - plan.predicted["goodput_rps_per_gpu"]).abs() < 1e-5).any(), "the chosen row"
    assert plan.predicted["attainment"] >= 0.9 and plan.model == "llama-3.1-8b"
    assert plan.workload["name"] == "chat"  # the preset's description
    assert plan.workload["num_requests"] == short_preset
    requests = pd.read_csv(out / "requests.csv")
    assert tuple(requests.columns) == REQUEST_COLUMNS
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["attainment"] == pytest.approx(plan.predicted["attainment"])
    assert summary["slo"] == "ttft=1000ms,tpot=50ms"
    assert tuple(pd.read_csv(out / "timeseries.csv").columns) == TIMESERIES_COLUMNS
    assert yaml.safe_load((out / "run.yaml").read_text())["kind"] == "search"
    assert (out / "report.html").stat().st_size > 10_000


def test_infeasible_slo_writes_a_plan_saying_why_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--slo", "ttft=5ms,tpot=50ms", "--gpus", "2", *MODEL, "--preset", "chat", "--workers", "1"]
    result = _invoke([*args, "--out", out])
    assert "infeasible:" in result.output and "TTFT bound" in result.output
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["feasible"] is False and "TTFT bound" in plan["reason"]
    assert load_plan(out / "plan.yaml").feasible is False  # a valid plan file
    assert set(pd.read_csv(out / "candidates.csv")["status"]) == {"infeasible"}
    assert not (out / "requests.csv").exists()
    assert (out / "report.html").is_file()


def test_rate_mode_with_a_price(short_preset: int, no_report, tmp_path: Path) -> None:
    """25 req/s (30 before, on 10,000-request replays): 1P:1D (TP1) holds ~29 req/s on 3,000-request
    replays, and 30 sat on its cliff, where the six replays' spread decides."""
    out = tmp_path / "run"
    args = ["--slo", "ttft=1s,tpot=50ms", "--rate", "25", *MODEL, "--preset", "chat", "--workers", "1"]
    result = _invoke([*args, "--price-per-gpu-hour", "2.5", "--mode", "disaggregated", "--out", out])
    plan = load_plan(out / "plan.yaml")
    assert plan.mode == "disaggregated" and plan.predicted["rate_rps"] == 25
    assert plan.predicted["goodput_rps"] >= 25
    assert f"holds 25 req/s on {plan.gpus} GPUs (${2.5 * plan.gpus:,.2f}/hour)" in " ".join(
        result.output.split()
    )


def test_trace_input(no_report, tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "run"
    trace = shared_data / "traces" / "AzureLLMInferenceTrace_code.csv"
    args = ["--slo", "ttft=2s,tpot=100ms", "--gpus", "2", *MODEL, "--trace", trace, "--workers", "1"]
    _invoke([*args, "--mode", "colocated", "--kv-link", "infiniband", "--out", out])
    plan = load_plan(out / "plan.yaml")
    assert plan.mode == "colocated" and plan.workload["trace"] == str(trace)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slo", "ttft=1"], "unit"),
        (["--slo", "ttft=fast"], "unit"),
        (["--slo", "latency=1s"], "unknown metric"),
        (["--slo", "ttft=-1s"], "ttft"),
        (["--slo", ""], "--slo"),
        (["--slo", "ttft=1s,ttft=2s"], "twice"),
        (["--slo", "ttft=1s", "--attainment", "1.5"], "--attainment"),
        (["--slo", "ttft=1s", "--rate", "10"], "exactly one of --gpus"),
        (["--slo", "ttft=1s", "--mode", "split"], "--mode"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, message) -> None:
    out = tmp_path / "run"
    base = ["--gpus", "2", *MODEL, "--preset", "chat", "--out", out]
    code, err = _exit_code(monkeypatch, capsys, [*args, *base])
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists(), "nothing is written for bad input"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "poetry"], "--preset"),
        (["--preset", "chat", "--trace", "x.csv"], "exactly one of --workload"),
        ([], "exactly one of --workload"),
        (["--preset", "chat", "--kv-link", "carrier-pigeon"], "kv_transfer link"),
        (["--preset", "chat", "--profile", "nowhere"], "either --profile"),
    ],
)
def test_bad_inputs_name_the_option(monkeypatch, capsys, tmp_path, args, message) -> None:
    out = tmp_path / "run"
    code, err = _exit_code(
        monkeypatch, capsys, ["--slo", "ttft=1s", "--gpus", "2", *MODEL, *args, "--out", out]
    )
    assert code == 2 and message in err
    assert not out.exists()

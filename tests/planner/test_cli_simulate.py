"""``pdplan simulate``: run directories for both modes, profile matching, traces, bad input → exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plan_cases as pc
import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cli.app import app, main
from pdplan.planner.inputs import load_workload, read_trace
from pdplan.planner.plan import load_plan
from pdplan.sim import REQUEST_COLUMNS, TIMESERIES_COLUMNS

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"
runner = CliRunner()


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
def no_report(monkeypatch):
    """Skip report.html (the reports' own tests cover it) where a test does not look at it."""
    from pdplan.planner.cli import simulate_cmd

    monkeypatch.setattr(simulate_cmd, "_report", lambda out: None)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return {
        "plan": pc.write_yaml(tmp_path / "plan.yaml", pc.DISAGG_PLAN),
        "workload": pc.write_yaml(tmp_path / "workload.yaml", pc.WORKLOAD),
        "profile": pc.profile_dir(tmp_path, tp=1),
        "out": tmp_path / "run",
    }


def test_disaggregated_run_directory(inputs):
    out = inputs["out"]
    result = _invoke(
        [
            "--plan",
            inputs["plan"],
            "--profile",
            inputs["profile"],
            "--workload",
            inputs["workload"],
            "--out",
            out,
            "--warmup",
            "0",
        ]
    )
    assert "TTFT (ms)" in result.output and "SLO ttft=1000ms,tpot=50ms" in result.output
    requests = pd.read_csv(out / "requests.csv")
    assert tuple(requests.columns) == REQUEST_COLUMNS and len(requests) == 400
    assert set(requests.status) == {"ok"}
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["counts"]["ok"] == 400 and summary["meets_slo"] is True
    assert set(summary["utilisation"]) == {"prefill", "decode"}
    # Constant profile: every prefill batch takes 40 ms and every decode step 8 ms.
    ok = requests[requests.output_tokens > 1]
    tpot = (ok.finish_s - ok.first_token_s) / (ok.output_tokens - 1)
    assert tpot.min() >= 0.008 - 1e-12
    assert ((requests.prefill_end_s - requests.prefill_start_s) >= 0.04 - 1e-12).all()
    series = pd.read_csv(out / "timeseries.csv")
    assert tuple(series.columns) == TIMESERIES_COLUMNS and set(series.role) == {"prefill", "decode"}
    plan = load_plan(out / "plan.yaml")
    assert plan.predicted["rate_rps"] == 8.0 and plan.predicted["ttft_p99_ms"] == summary["ttft_ms"]["p99"]
    assert plan.workload["seed"] == 3  # type: ignore[index]
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["kind"] == "simulate" and run["schema_version"] == 1 and "simpy" in run["versions"]
    assert (out / "report.html").is_file()


def test_same_inputs_same_requests(no_report, inputs, tmp_path):
    args = ["--plan", inputs["plan"], "--profile", inputs["profile"], "--workload", inputs["workload"]]
    _invoke([*args, "--out", tmp_path / "a"])
    _invoke([*args, "--out", tmp_path / "b"])
    assert (tmp_path / "a" / "requests.csv").read_text() == (tmp_path / "b" / "requests.csv").read_text()
    _invoke([*args, "--out", tmp_path / "c", "--seed", "9", "--rate", "4"])
    other = pd.read_csv(tmp_path / "c" / "requests.csv")
    assert other.arrival_s.iloc[-1] > 1.5 * pd.read_csv(tmp_path / "a" / "requests.csv").arrival_s.iloc[-1]


def test_profiles_are_matched_to_roles_by_tp(no_report, inputs, tmp_path):
    plan = pc.write_yaml(tmp_path / "tp.yaml", {**pc.DISAGG_PLAN, "decode": {"instances": 1, "tp": 2}})
    tp2 = pc.profile_dir(tmp_path, tp=2, decode_ms=4.0)
    _invoke(
        [
            "--plan",
            plan,
            "--profile",
            tp2,
            "--profile",
            inputs["profile"],
            "--workload",
            inputs["workload"],
            "--out",
            inputs["out"],
        ]
    )
    requests = pd.read_csv(inputs["out"] / "requests.csv")
    multi = requests[requests.output_tokens > 1]
    assert ((multi.finish_s - multi.first_token_s) / (multi.output_tokens - 1)).min() == pytest.approx(0.004)


def test_colocated_with_an_analytic_profile_and_a_trace(no_report, tmp_path):
    plan = pc.write_yaml(tmp_path / "plan.yaml", pc.COLOCATED_PLAN)
    trace = tmp_path / "trace.csv"
    pd.DataFrame({"arrival_s": np.arange(50) * 0.1, "prompt_tokens": 200, "output_tokens": 20}).to_csv(
        trace, index=False
    )
    out = tmp_path / "run"
    _invoke(["--plan", plan, "--trace", trace, "--rate", "20", "--out", out, "--slo", "ttft=500ms"])
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["counts"]["ok"] == 50 and set(summary["utilisation"]) == {"colocated"}
    assert summary["slo"] == "ttft=500ms"
    requests = pd.read_csv(out / "requests.csv")
    assert requests.arrival_s.iloc[-1] == pytest.approx(49 / 20)  # rescaled to 20 req/s
    assert (requests.prefill_end_s == requests.first_token_s).all()


def test_trace_workload_yaml_and_empirical_lengths(tmp_path):
    pd.DataFrame(
        {"arrival_s": [0.0, 2.0, 4.0], "prompt_tokens": [5, 6, 7], "output_tokens": [1, 2, 3]}
    ).to_csv(tmp_path / "t.csv", index=False)
    pc.write_yaml(tmp_path / "tw.yaml", {"trace": {"path": "t.csv", "format": "csv", "time_scale": 0.5}})
    source = load_workload(tmp_path / "tw.yaml")
    assert source.requests.arrival_s.tolist() == [0.0, 1.0, 2.0] and source.description["time_scale"] == 0.5
    pd.DataFrame({"len": [10, 20, 30]}).to_csv(tmp_path / "lens.csv", index=False)
    workload = {**pc.WORKLOAD, "prompt_tokens": {"dist": "empirical", "path": "lens.csv", "column": "len"}}
    drawn = load_workload(pc.write_yaml(tmp_path / "emp.yaml", workload), rate_rps=2.0)
    assert set(drawn.requests.prompt_tokens.tolist()) <= {10, 20, 30} and drawn.description["rate_rps"] == 2.0


def test_real_azure_trace_replays_at_a_rate(tmp_path):
    path = TRACES / "AzureLLMInferenceTrace_conv.csv"
    if not path.is_file():
        pytest.skip(f"shared trace {path} is absent")
    requests = read_trace(path)
    assert len(requests) == 19366 and requests.at_rate(2.0).mean_rate_rps == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"plan": {"mode": "disaggregated", "prefill": {"instances": 1}, "decod": {}}},
            "unknown keys ['decod']; valid: ['schema_version'",
        ),
        ({"workload": {**pc.WORKLOAD, "arrivals": {}}}, "unknown keys ['arrivals']"),
        (
            {"workload": {**pc.WORKLOAD, "prompt_tokens": {"dist": "pareto", "alpha": 2}}},
            "unknown workload.prompt_tokens.dist 'pareto'; valid: empirical, fixed, lognormal, uniform",
        ),
        (
            {"workload": {**pc.WORKLOAD, "output_tokens": {"dist": "lognormal", "mean": -5, "cv": 1}}},
            "lognormal.mean=-5.0; expected a finite number > 0",
        ),
        ({"args": ["--rate", "-3"]}, "--rate=-3.0; expected a finite number > 0"),
        ({"args": ["--slo", "ttft=fast"]}, "ttft='fast'; expected a positive number with a unit"),
        ({"args": ["--warmup", "1.5"]}, "--warmup 1.5; expected a fraction in [0, 1)"),
        (
            {"no_workload": True, "args": ["--trace", "/no/such/trace.csv"]},
            "trace '/no/such/trace.csv': no such file",
        ),
        ({"args": ["--trace", "x.csv"]}, "give exactly one of --workload W.yaml, --trace F and --preset P"),
        (
            {"no_workload": True, "args": ["--trace", "{plan}", "--trace-format", "parquet"]},
            "unknown --trace-format 'parquet'; valid: azure, csv, mooncake",
        ),
        ({"no_plan": True}, "give --plan plan.yaml to evaluate one plan, or --slo"),
        (
            {"plan": {**pc.DISAGG_PLAN, "decode": {"instances": 1, "tp": 4}}},
            "the plan's decode.tp=4 has no matching --profile (given tp: [1])",
        ),
        (
            {"plan": {**pc.DISAGG_PLAN, "kv_transfer": {"link": "carrier-pigeon"}}},
            "unknown kv_transfer link 'carrier-pigeon'",
        ),
        (
            {"no_profile": True, "args": ["--model", "llama-3.1-8b"]},
            "need --profile DIR, or --model M with --hardware H",
        ),
        (
            {
                "no_profile": True,
                "args": ["--model", "llama-3.1-70b", "--hardware", "h100-sxm"],
                "plan": {**pc.DISAGG_PLAN, "model": "llama-3.1-70b"},
            },
            "has 71.6 GiB",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, inputs, change, message):
    plan = pc.write_yaml(tmp_path / "p.yaml", change.get("plan", pc.DISAGG_PLAN))
    workload = pc.write_yaml(tmp_path / "w.yaml", change.get("workload", pc.WORKLOAD))
    args = [] if change.get("no_plan") else ["--plan", plan]
    args += [] if change.get("no_profile") else ["--profile", inputs["profile"]]
    args += [] if change.get("no_workload") else ["--workload", workload]
    args += [a.replace("{plan}", str(plan)) for a in change.get("args", [])]
    code, err = _exit_code(monkeypatch, capsys, [*args, "--out", tmp_path / "out"])
    assert code == 2
    text = " ".join(err.split())
    assert message in text, text
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "requests.csv").exists()


def test_search_and_plan_options_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--plan runs reject the search's options and the search rejects --plan-only ones (exit 2)."""
    import sys
    from unittest import mock

    from pdplan.planner.cli.app import main

    cases = [
        (["--plan", str(tmp_path / "p.yaml"), "--gpus", "4"], "--gpus apply to the --slo search only"),
        (["--slo", "ttft=1s", "--gpus", "4", "--sample-interval", "1"], "--sample-interval apply to --plan"),
    ]
    for args, message in cases:
        argv = ["pdplan", "simulate", "--out", str(tmp_path / "o"), *args]
        with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, args
        assert message in " ".join(capsys.readouterr().err.split())
        assert not (tmp_path / "o").exists()


def test_a_plan_with_a_prefix_cache_reports_hit_rates_per_tier(tmp_path):
    # multi-turn chat through HBM + DRAM + store: summary.yaml and the report carry the hit rates
    plan = {
        **pc.COLOCATED_PLAN,
        "router": "cache_aware",
        "cache": {"l2": {"capacity_gb": 16}, "l3": {"capacity_gb": 500}},
    }
    workload = {
        **pc.WORKLOAD,
        "prefix": {"kind": "multi_turn", "turns": 4, "conversations": 20, "system_prompt_tokens": 512},
    }
    out = tmp_path / "run"
    args = ["--plan", pc.write_yaml(tmp_path / "plan.yaml", plan), "--out", out]
    args += [
        "--workload",
        pc.write_yaml(tmp_path / "w.yaml", workload),
        "--profile",
        pc.profile_dir(tmp_path),
    ]
    result = _invoke(args)
    assert "prefix cache hit rate" in result.output
    cache = yaml.safe_load((out / "summary.yaml").read_text())["prefix_cache"]
    rates = cache["hit_rate"]
    assert 0.3 < rates["total"] <= 1 and rates["total"] == pytest.approx(
        rates["l1"] + rates["l2"] + rates["l3"]
    )
    assert cache["prompt_tokens"] > 0 and cache["bytes_written"]["l3"] > 0
    assert "prefix cache hit rate" in (out / "report.html").read_text()


def test_fp8_kv_halves_the_bytes_every_tier_moves(tmp_path):
    # --kv-dtype fp8 prices each block in fp8: a store big enough to keep every block writes each
    # distinct block once, so it writes exactly half the bytes of the bf16 run
    plan = {**pc.COLOCATED_PLAN, "cache": {"l3": {"capacity_gb": 500}}}
    workload = {
        **pc.WORKLOAD,
        "prefix": {"kind": "multi_turn", "turns": 3, "conversations": 10, "system_prompt_tokens": 512},
    }
    written = {}
    for kv in ("bf16", "fp8"):
        out = tmp_path / kv
        args = ["--plan", pc.write_yaml(tmp_path / "plan.yaml", plan), "--out", out]
        args += ["--workload", pc.write_yaml(tmp_path / "w.yaml", workload)]
        args += ["--model", "qwen2.5-7b", "--hardware", "h100-sxm"]
        if kv == "fp8":
            args += ["--kv-dtype", "fp8"]
        _invoke(args)
        cache = yaml.safe_load((out / "summary.yaml").read_text())["prefix_cache"]
        written[kv] = cache["bytes_written"]["l3"]
    assert written["bf16"] > 0
    assert written["fp8"] * 2 == written["bf16"]


def test_prompts_beyond_a_measured_prefill_grid_are_named(caplog):
    """A measured profile whose prefill grid ends at 512 tokens extrapolates longer prompts: the
    run says so for the roles that prefill, and stays quiet within the grid or for analytic tables."""
    from dataclasses import replace

    from pdplan.planner.cli.simulate_cmd import _warn_beyond_grid
    from pdplan.planner.inputs import RequestSource
    from pdplan.sim.requests import Requests

    measured = replace(pc.profile(), method="measured")
    measured = replace(measured, prefill=measured.prefill.assign(seq_len=[128, 256, 512]))

    def source(longest: int) -> RequestSource:
        return RequestSource(Requests(np.zeros(2), np.array([64, longest]), np.array([8, 8])), {})

    with caplog.at_level("WARNING"):
        _warn_beyond_grid({"prefill": measured, "decode": measured}, source(1536))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["prefill profile"]
    assert "prompts up to 1536 tokens" in caplog.text and "at most 512" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        _warn_beyond_grid({"colocated": measured}, source(512))
        _warn_beyond_grid({"colocated": pc.profile()}, source(1536))  # analytic
    assert not caplog.records

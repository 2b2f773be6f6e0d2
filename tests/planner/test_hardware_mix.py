"""Pools on different hardware (issue 17): plan.yaml per pool, the KV link between node types, prices
per type and the cost per million output tokens of ``pdplan simulate --plan``."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import plan_cases as pc
import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cli.app import app, main
from pdplan.planner.plan import load_plan, plan_from_dict
from pdplan.planner.pricing import Prices, parse_prices, pool_cost
from pdplan.profiles.errors import ConfigError
from pdplan.profiles.profile import save_profile

runner = CliRunner()
MIXED = {
    **pc.DISAGG_PLAN,
    "hardware": {"prefill": "gpu-a", "decode": "gpu-b"},
    "kv_transfer": {"link": "roce"},
}


@pytest.fixture
def no_report(monkeypatch):
    from pdplan.planner.cli import simulate_cmd

    monkeypatch.setattr(simulate_cmd, "_report", lambda out: None)


def _profile_dir(root: Path, name: str, *, tp: int = 1, decode_ms: float = 8.0) -> Path:
    profile = replace(
        pc.profile(tp=tp, decode_ms=decode_ms), hardware={"name": name, "memory_bytes": 80 << 30}
    )
    return save_profile(profile, root / f"{name}-tp{tp}")


def _exit(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pdplan", "simulate", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code or 0), capsys.readouterr().err


def test_plan_names_hardware_per_pool_and_round_trips():
    plan = plan_from_dict(MIXED)
    assert plan.hardware_of("prefill") == "gpu-a" and plan.hardware_of("decode") == "gpu-b"
    assert plan.to_dict()["hardware"] == {"prefill": "gpu-a", "decode": "gpu-b"}
    assert plan_from_dict(plan.to_dict()) == plan
    single = plan_from_dict(pc.DISAGG_PLAN)
    assert single.to_dict()["hardware"] == "h100-sxm" and single.hardware_of("decode") == "h100-sxm"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kv_transfer": {"link": "nvlink"}}, "different nodes"),
        ({"kv_transfer": {"link": "pcie"}}, "different nodes"),
        ({"hardware": {"prefill": "gpu-a"}}, "hardware.decode"),
        ({"hardware": {"prefill": "gpu-a", "decode": "gpu-b", "colo": "x"}}, "unknown keys"),
    ],
)
def test_bad_hardware_per_pool(change, match):
    with pytest.raises(ConfigError, match=match):
        plan_from_dict({**MIXED, **change})


def test_colocated_plan_cannot_name_pools():
    data = {**pc.COLOCATED_PLAN, "hardware": {"prefill": "a", "decode": "b"}}
    with pytest.raises(ConfigError, match="disaggregated"):
        plan_from_dict(data)


def test_same_type_per_pool_may_use_nvlink():
    plan = plan_from_dict(
        {
            **MIXED,
            "hardware": {"prefill": "h100-sxm", "decode": "h100-sxm"},
            "kv_transfer": {"link": "nvlink"},
        }
    )
    assert plan.hardware_of("decode") == "h100-sxm"


def test_prices():
    assert parse_prices("2.5").of("anything") == 2.5
    prices = parse_prices("h100-sxm=2.5, a100-80g=1.25")
    assert prices.of("a100-80g") == 1.25 and prices.describe() == {"a100-80g": 1.25, "h100-sxm": 2.5}
    with pytest.raises(ConfigError, match="no price for 'l40s'"):
        prices.of("l40s")
    for bad in ("x", "h100-sxm=", "h100-sxm=1,h100-sxm=2", "=3", "0", "a=1e9"):
        with pytest.raises(ConfigError):
            parse_prices(bad)


def test_pool_cost_by_hand():
    # 2 GPUs at $4 + 6 GPUs at $1 = $14/h; 1000 output tok/s = 3.6M tok/h → $14 / 3.6 per million
    cost = pool_cost({"prefill": ("h", 2), "decode": ("a", 6)}, Prices({"h": 4.0, "a": 1.0}), 1000.0)
    assert cost["per_hour"] == 14.0 and cost["gpus"] == 8
    assert cost["per_million_output_tokens"] == pytest.approx(14.0 / 3.6, abs=1e-6)
    assert cost["pools"]["decode"] == {"hardware": "a", "gpus": 6, "price_per_gpu_hour": 1.0, "per_hour": 6.0}
    assert cost["price_per_gpu_hour"] == {"a": 1.0, "h": 4.0}
    assert pool_cost({"colocated": ("h", 2)}, Prices(default=3.0), 0.0)["per_million_output_tokens"] is None


def test_mixed_plan_simulates_on_each_pools_profile_and_costs_it(no_report, tmp_path):
    plan = pc.write_yaml(tmp_path / "plan.yaml", MIXED)
    workload = pc.write_yaml(tmp_path / "w.yaml", pc.WORKLOAD)
    a, b = _profile_dir(tmp_path, "gpu-a"), _profile_dir(tmp_path, "gpu-b", decode_ms=16.0)
    out = tmp_path / "run"
    args = ["--plan", plan, "--profile", a, "--profile", b, "--workload", workload, "--out", out]
    result = runner.invoke(app, ["simulate", *map(str, [*args, "--price-per-gpu-hour", "gpu-a=4,gpu-b=1"])])
    assert result.exit_code == 0, (result.output, result.exception)
    requests = pd.read_csv(out / "requests.csv")
    multi = requests[requests.output_tokens > 1]
    # decode runs on gpu-b's profile (16 ms steps), prefill on gpu-a's (40 ms batches)
    assert ((multi.finish_s - multi.first_token_s) / (multi.output_tokens - 1)).min() == pytest.approx(0.016)
    assert ((requests.prefill_end_s - requests.prefill_start_s) >= 0.04 - 1e-12).all()
    saved = yaml.safe_load((out / "plan.yaml").read_text())
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert saved["hardware"] == {"prefill": "gpu-a", "decode": "gpu-b"}
    cost = saved["cost"]
    assert cost["per_hour"] == 2 * 4 + 2 * 1
    tokens = summary["output_tokens_per_s"]
    assert cost["per_million_output_tokens"] == pytest.approx(10.0 / (tokens * 3600) * 1e6, rel=1e-5)
    assert "per million output tokens" in result.output
    assert load_plan(out / "plan.yaml").pool_hardware == {"prefill": "gpu-a", "decode": "gpu-b"}


def test_profiles_of_two_types_label_the_run_per_pool(no_report, tmp_path):
    """Before issue 17 the run was labelled with the first profile's GPU only."""
    data = {**pc.DISAGG_PLAN, "hardware": "", "decode": {"instances": 1, "tp": 2}}
    plan = pc.write_yaml(tmp_path / "plan.yaml", data)
    workload = pc.write_yaml(tmp_path / "w.yaml", pc.WORKLOAD)
    a, b = _profile_dir(tmp_path, "gpu-a"), _profile_dir(tmp_path, "gpu-b", tp=2)
    out = tmp_path / "run"
    args = ["--plan", plan, "--profile", a, "--profile", b, "--workload", workload, "--out", out]
    result = runner.invoke(app, ["simulate", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert yaml.safe_load((out / "plan.yaml").read_text())["hardware"] == {
        "prefill": "gpu-a",
        "decode": "gpu-b",
    }


def test_analytic_mixed_plan_h100_prefill_a100_decode(no_report, tmp_path):
    """Analytic profiles per pool: the A100's lower bandwidth shows in the decode steps."""
    workload = pc.write_yaml(tmp_path / "w.yaml", {**pc.WORKLOAD, "num_requests": 150})
    tpot = {}
    for name, hardware in (("mixed", {"prefill": "h100-sxm", "decode": "a100-80g"}), ("h100", "h100-sxm")):
        plan = pc.write_yaml(tmp_path / f"{name}.yaml", {**MIXED, "hardware": hardware})
        out = tmp_path / name
        args = [
            "--plan",
            plan,
            "--workload",
            workload,
            "--out",
            out,
            "--price-per-gpu-hour",
            "h100-sxm=3,a100-80g=1.5",
        ]
        result = runner.invoke(app, ["simulate", *map(str, args)])
        assert result.exit_code == 0, (result.output, result.exception)
        tpot[name] = yaml.safe_load((out / "summary.yaml").read_text())["tpot_ms"]["p50"]
        cost = yaml.safe_load((out / "plan.yaml").read_text())["cost"]
        assert cost["per_hour"] == (2 * 3 + 2 * 1.5 if name == "mixed" else 4 * 3)
    assert tpot["mixed"] > tpot["h100"]


def test_bad_mixed_inputs_exit_2(monkeypatch, capsys, tmp_path):
    plan = pc.write_yaml(tmp_path / "plan.yaml", MIXED)
    workload = pc.write_yaml(tmp_path / "w.yaml", pc.WORKLOAD)
    a = _profile_dir(tmp_path, "gpu-a")
    base = ["--plan", plan, "--workload", workload, "--out", tmp_path / "run"]
    code, err = _exit(monkeypatch, capsys, [*base, "--profile", a])
    assert code == 2 and "decode pool runs on gpu-b" in err
    code, err = _exit(monkeypatch, capsys, [*base, "--hardware", "h100-sxm"])
    assert code == 2 and "hardware per pool" in err
    nv = pc.write_yaml(tmp_path / "nv.yaml", {**MIXED, "kv_transfer": {"link": "nvlink"}})
    code, err = _exit(monkeypatch, capsys, ["--plan", nv, "--workload", workload, "--out", tmp_path / "r2"])
    assert code == 2 and "different nodes" in err
    b = _profile_dir(tmp_path, "gpu-b")
    code, err = _exit(
        monkeypatch, capsys, [*base, "--profile", a, "--profile", b, "--price-per-gpu-hour", "gpu-a=2"]
    )
    assert code == 2 and "no price for 'gpu-b'" in err
    assert not (tmp_path / "run").exists()


def test_report_states_cost_per_pool():
    from pdplan.reports.promise import cost_sentence

    cost = pool_cost(
        {"prefill": ("h100-sxm", 2), "decode": ("a100-80g", 6)},
        parse_prices("h100-sxm=2.5,a100-80g=1.3"),
        1000.0,
    )
    text = cost_sentence({"cost": cost}, [])
    assert text is not None
    assert "prefill 2 × h100-sxm at $2.50, decode 6 × a100-80g at $1.30" in text
    assert "per million output tokens" in text


def test_pools_must_serve_one_model_in_one_kv_layout(tmp_path):
    from pdplan.planner.hardware_mix import pool_profiles

    a = _profile_dir(tmp_path, "gpu-a")
    other = replace(pc.profile("qwen2.5-7b"), hardware={"name": "gpu-b", "memory_bytes": 80 << 30})
    b = save_profile(other, tmp_path / "qwen-gpu-b")
    with pytest.raises(ConfigError, match="KV bytes per token"):
        pool_profiles({"prefill": 1, "decode": 1}, {"prefill": "gpu-a", "decode": "gpu-b"}, "", [a, b])

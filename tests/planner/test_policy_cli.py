"""``pdplan simulate --plan P --policy FILE [--diurnal ...]`` (issue 17): policy files, the day, the
per-minute files of the run."""

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
from pdplan.planner.policy_file import parse_diurnal, policy_from_dict
from pdplan.profiles.errors import ConfigError
from pdplan.sim.autoscale import Autoscale, RoleSwitch, Static

runner = CliRunner()
AUTOSCALE = {
    "kind": "autoscale",
    "max_instances": {"prefill": 3, "decode": 3},
    "provision_s": 60,
    "cooldown_s": 300,
    "thresholds": {"prefill_high_tokens": 4096, "prefill_low_tokens": 256},
}


def test_policy_files():
    policy = policy_from_dict(AUTOSCALE)
    assert isinstance(policy, Autoscale) and policy.max_instances == {"prefill": 3, "decode": 3}
    assert policy.thresholds.prefill_high_tokens == 4096 and policy.thresholds.decode_high_kv == 0.7
    assert isinstance(policy_from_dict({"kind": "static"}), Static)
    switch = policy_from_dict({"kind": "role-switch", "switch_s": 10, "cooldown_s": 60})
    assert isinstance(switch, RoleSwitch) and switch.switch_s == 10
    for bad, match in (
        ({"kind": "magic"}, "unknown --policy kind"),
        ({"kind": "static", "switch_s": 3}, "unknown keys"),
        ({"kind": "autoscale"}, "max_instances"),
        ({**AUTOSCALE, "provision_s": "soon"}, "expected a number"),
        ({**AUTOSCALE, "thresholds": {"queue": 3}}, "thresholds"),
        ({**AUTOSCALE, "cooldown_s": -1}, "cooldown_s"),
    ):
        with pytest.raises(ConfigError, match=match):
            policy_from_dict(bad)


def test_diurnal_flag():
    profile = parse_diurnal("mean=3,peak_to_trough=2,hours=6")
    assert profile.mean_rate_rps == 3 and profile.peak_to_trough == 2 and profile.duration_s == 6 * 3600
    for bad in (
        "peak_to_trough=2",
        "mean=x",
        "mean=3,width=2",
        "mean=3,hours=0",
        "mean=3,peak_to_trough=0.5",
    ):
        with pytest.raises(ConfigError):
            parse_diurnal(bad)


def _trace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "arrival_s": np.sort(rng.uniform(0, 600, 600)).round(3),
            "prompt_tokens": rng.integers(64, 2048, 600),
            "output_tokens": rng.integers(2, 64, 600),
        }
    )
    frame.to_csv(tmp_path / "trace.csv", index=False)
    return tmp_path / "trace.csv"


def test_policy_run_writes_minutes_and_changes(tmp_path, monkeypatch):
    from pdplan.planner.cli import simulate_cmd

    monkeypatch.setattr(simulate_cmd, "_report", lambda out: None)
    plan = pc.write_yaml(tmp_path / "plan.yaml", {**pc.DISAGG_PLAN, "prefill": {"instances": 1, "tp": 1}})
    policy = pc.write_yaml(tmp_path / "policy.yaml", AUTOSCALE)
    out = tmp_path / "run"
    args = ["--plan", plan, "--profile", pc.profile_dir(tmp_path), "--trace", _trace(tmp_path)]
    args += ["--diurnal", "mean=1,hours=1", "--policy", policy, "--price-per-gpu-hour", "2", "--out", out]
    result = runner.invoke(app, ["simulate", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "policy autoscale:" in result.output
    minutes = pd.read_csv(out / "fleet_minutes.csv")
    assert minutes.minute.tolist() == list(range(60)) and minutes.arrivals.sum() == 3600
    fleet = yaml.safe_load((out / "fleet.yaml").read_text())
    day = fleet["policies"][0]
    assert day["policy"] == "autoscale" and day["gpu_hours"] == pytest.approx(
        minutes.gpu_hours.iloc[-1], rel=1e-6
    )
    assert day["cost"] == pytest.approx(2 * day["gpu_hours"], rel=1e-6)
    saved = yaml.safe_load((out / "plan.yaml").read_text())
    assert saved["workload"]["diurnal"]["requests"] == 3600
    requests = pd.read_csv(out / "requests.csv")
    assert len(requests) == 3600 and set(requests.status) == {"ok"}


def test_policy_bad_inputs_exit_2(tmp_path, monkeypatch, capsys):
    plan = pc.write_yaml(tmp_path / "plan.yaml", pc.DISAGG_PLAN)
    colo = pc.write_yaml(tmp_path / "colo.yaml", pc.COLOCATED_PLAN)
    policy = pc.write_yaml(tmp_path / "policy.yaml", AUTOSCALE)
    trace = _trace(tmp_path)
    profile = pc.profile_dir(tmp_path)
    cases = [
        (["--plan", colo, "--trace", trace, "--policy", policy], "colocated"),
        (
            ["--plan", plan, "--profile", profile, "--preset", "chat", "--diurnal", "mean=1"],
            "--diurnal stretches a trace",
        ),
        (
            ["--plan", plan, "--profile", profile, "--trace", trace, "--diurnal", "mean=1", "--rate", "3"],
            "leave out --rate",
        ),
        (["--slo", "ttft=1s", "--gpus", "2", "--preset", "chat", "--policy", policy], "--plan runs only"),
    ]
    for args, match in cases:
        monkeypatch.setattr(sys, "argv", ["pdplan", "simulate", *map(str, [*args, "--out", tmp_path / "r"])])
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 2
        assert match in capsys.readouterr().err

"""The search's router and cache-tier choice (``pdplan.planner.cache_choice``): the options, the
choice on prefix traffic, its promise on the user's replay, and bad input."""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cache_choice import CacheOptions, parse_sizes
from pdplan.planner.cli.app import app, main
from pdplan.planner.plan import load_plan
from pdplan.profiles.errors import ConfigError

runner = CliRunner()
MODEL = ["--model", "llama-3.1-8b", "--hardware", "h100-sxm"]
WORKLOAD = {
    "num_requests": 200,
    "seed": 0,
    "arrival": {"process": "poisson", "rate_rps": 10.0},
    "prompt_tokens": {"dist": "lognormal", "mean": 600, "cv": 0.5, "min": 16, "max": 4096},
    "output_tokens": {"dist": "lognormal", "mean": 100, "cv": 0.5, "min": 1, "max": 512},
    "prefix": {"kind": "multi_turn", "turns": 5, "conversations": 20, "system_prompt_tokens": 1024},
}


def _workload(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({**WORKLOAD, **changes}))
    return path


def test_options_run_simplest_first_and_sizes_parse():
    options = CacheOptions(parse_sizes("--cache-l2-gb", "0,64"), parse_sizes("--cache-l3-gb", "0,1000,0"))
    labels = [(router, cache.label) for router, cache in options.options()]
    assert labels == [
        ("least_loaded", "HBM"),
        ("cache_aware", "HBM"),
        ("least_loaded", "HBM + DRAM 64 GB"),
        ("cache_aware", "HBM + DRAM 64 GB"),
        ("least_loaded", "HBM + store 1000 GB"),
        ("cache_aware", "HBM + store 1000 GB"),
        ("least_loaded", "HBM + DRAM 64 GB + store 1000 GB"),
        ("cache_aware", "HBM + DRAM 64 GB + store 1000 GB"),
    ]
    assert parse_sizes("--cache-l2-gb", None) == (0.0,) and not CacheOptions().tiered
    for bad in ("64,x", "-1", "nan", ""):
        with pytest.raises(ConfigError, match="--cache-l2-gb"):
            parse_sizes("--cache-l2-gb", bad)


def test_prefix_traffic_gets_a_router_and_tiers_whose_goodput_the_replay_holds(tmp_path, monkeypatch):
    from pdplan.planner.cli import search_cmd

    monkeypatch.setattr(search_cmd, "_report", lambda out: out / "report.html")
    out = tmp_path / "run"
    workload = _workload(tmp_path)
    args = ["--slo", "ttft=1s,tpot=50ms", "--gpus", "2", *MODEL, "--workload", workload, "--workers", "1"]
    args += ["--mode", "colocated", "--cache-l2-gb", "0,16", "--out", out]
    result = runner.invoke(app, ["simulate", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "prefix cache:" in result.output
    plan = load_plan(out / "plan.yaml")
    note = plan.notes["cache_choice"]
    options = [(o["router"], o["cache"]) for o in note["options"]]
    assert options == [
        ("least_loaded", "HBM"),
        ("cache_aware", "HBM"),
        ("least_loaded", "HBM + DRAM 16 GB"),
        ("cache_aware", "HBM + DRAM 16 GB"),
    ]
    # the first option is searched in full; a later one only past the best so far × 1.025, and
    # the chosen one is the last that got there
    ok = [o for o in note["options"] if o["status"] == "ok"]
    assert note["options"][0]["status"] == "ok"
    assert all(b["goodput_rps"] > a["goodput_rps"] * 1.025 - 1e-6 for a, b in pairwise(ok))
    assert (plan.router, plan.cache.label) == (ok[-1]["router"], ok[-1]["cache"])
    goodput = plan.predicted["goodput_rps"]
    assert goodput == pytest.approx(ok[-1]["goodput_rps"]) and note["fails_at_rps"] > goodput
    assert goodput > note["without_cache_rps"]  # multi-turn chat: the cache pays
    summary = yaml.safe_load((out / "summary.yaml").read_text())
    assert summary["prefix_cache"]["hit_rate"]["total"] == pytest.approx(note["hit_rate"]["total"])
    # the promise: the user's replay of plan.yaml at the goodput holds the SLO
    check = tmp_path / "check"
    replay = ["--plan", out / "plan.yaml", *MODEL, "--workload", workload, "--rate", goodput, "--out", check]
    held = runner.invoke(app, ["simulate", *map(str, replay)])
    assert held.exit_code == 0, held.output
    assert "→ meets" in held.output and "prefix cache hit rate" in held.output


def test_tier_sizes_without_prefixes_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    plain = _workload(tmp_path, prefix=None)
    args = ["--slo", "ttft=1s", "--gpus", "1", *MODEL, "--workload", plain, "--cache-l3-gb", "100"]
    monkeypatch.setattr(sys, "argv", ["pdplan", "simulate", *map(str, [*args, "--out", out])])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "need traffic that names its prefixes" in err and "Traceback" not in err
    assert not out.exists()


def test_the_report_states_the_cache_choice_against_no_cache():
    from pdplan.reports.promise import promise_lines

    choice = {
        "router": "cache_aware",
        "goodput_rps": 44.7,
        "fails_at_rps": 45.6,
        "without_cache_rps": 20.4,
        "hit_rate": {"l1": 0.7, "l2": 0.0, "l3": 0.017, "total": 0.717},
        "options": [{}, {}],
    }
    _, lines, notes = promise_lines({"cache_choice": choice})
    assert notes == [] and len(lines) == 1
    assert "routing (cache_aware)" in lines[0] and "2 router/tier options" in lines[0]
    assert "holds 44.7 req/s" in lines[0] and "misses at 45.6 req/s" in lines[0]
    assert "against 20.4 req/s without a prefix cache" in lines[0] and "L3 1.7%" in lines[0]
    _, lines, notes = promise_lines({"cache_choice": {"router": "cache_aware"}})
    assert lines == [] and "cache_choice lacks" in notes[0]

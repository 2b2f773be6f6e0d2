"""``pdplan deploy`` options that start nothing: --dry-run, plan and option errors (exit code 2).

The parametrized error cases run ``main()`` in this process (``run_pdplan``); the console script
itself answers the unknown target, the missing record and the memory checks below."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from deploy_helpers import free_port, run_pdplan, write_plan
from typer.testing import CliRunner

from pdplan.planner.cli.app import app

pytest.importorskip("sglang_router")


def test_dry_run_prints_every_process_and_the_router_command(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        prefill={"instances": 2, "tp": 1, "max_batch_tokens": 512, "max_batch_size": 4},
        decode={"instances": 1, "tp": 1, "max_batch_size": 16, "max_kv_tokens": 8192},
    )
    port = free_port()
    result = CliRunner().invoke(
        app, ["deploy", str(plan), "--port", str(port), "--dry-run"], terminal_width=250
    )
    assert result.exit_code == 0, result.output
    for name in ("prefill-0", "prefill-1", "decode-0", "router"):
        assert f"{name}: " in result.output
    assert "-m sglang_router.launch_router --pd-disaggregation --prefill http://127.0.0.1:" in result.output
    assert f"--port {port}" in result.output and "--max-kv-tokens 8192" in result.output
    assert "threads:" in result.output
    assert not (tmp_path / "deploy.json").exists() and not list(Path.cwd().glob("runs/deploy-*/deploy.json"))


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"prefill": {"instances": 1, "tp": 2}, "decode": {"instances": 1}}, "tp=2"),
        ({"prefill": {"instances": 1}}, "needs decode"),
        ({"prefill": {"instances": 1, "gpus": 3}, "decode": {"instances": 1}}, "unknown keys ['gpus']"),
        ({"prefill": {"instances": "two"}, "decode": {"instances": 1}}, "prefill.instances='two'"),
        ({"feasible": False, "reason": "TTFT bound"}, "infeasible (TTFT bound)"),
    ],
)
def test_bad_plans_exit_2_with_one_line(tmp_path: Path, sections: dict, message: str) -> None:
    plan = write_plan(tmp_path / "plan.yaml", **sections)
    done = run_pdplan("deploy", str(plan), "--dry-run")
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_unknown_target_and_missing_record(tmp_path: Path, pdplan_script: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", prefill={"instances": 1}, decode={"instances": 1})
    done = subprocess.run(
        [str(pdplan_script), "deploy", str(plan), "--target", "slurm"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--target" in done.stderr
    done = subprocess.run(
        [str(pdplan_script), "deploy", "--stop", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "deploy.json" in done.stderr


def test_weights_beyond_memory_are_refused_before_starting(tmp_path: Path, pdplan_script: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "schema_version: 1\nmode: disaggregated\nmodel: llama-3.1-70b\nprefill: {instances: 1}\n"
        "decode: {instances: 1}\nkv_transfer: {link: loopback}\n"
    )
    done = subprocess.run(
        [str(pdplan_script), "deploy", str(plan), "--port", str(free_port()), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "for weights alone" in done.stderr
    assert not (tmp_path / "run").exists()


def test_weights_beyond_memory_are_refused_even_when_the_port_is_taken(
    tmp_path: Path, pdplan_script: Path
) -> None:
    """The memory check comes first: its answer does not depend on which ports happen to be free."""
    import socket

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "schema_version: 1\nmode: disaggregated\nmodel: llama-3.1-70b\nprefill: {instances: 1}\n"
        "decode: {instances: 1}\nkv_transfer: {link: loopback}\n"
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        done = subprocess.run(
            [str(pdplan_script), "deploy", str(plan), "--port", str(busy.getsockname()[1]), "--dry-run"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2 and "for weights alone" in done.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--kv-timeout-s", "nan"], "--kv-timeout-s nan"),
        (["--kv-timeout-s", "inf"], "--kv-timeout-s inf"),
        (["--kv-timeout-s", "0"], "--kv-timeout-s 0"),
        (["--max-queue", "-1"], "--max-queue -1"),
        (["--devices", "cuda:0,x"], "'x' is not a GPU"),
    ],
)
def test_bad_runtime_options_exit_2(tmp_path: Path, option: list[str], message: str) -> None:
    plan = write_plan(tmp_path / "plan.yaml", prefill={"instances": 1}, decode={"instances": 1})
    done = run_pdplan("deploy", str(plan), "--port", str(free_port()), "--dry-run", *option)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_devices_as_help_shows_them(tmp_path: Path) -> None:
    """``--devices cuda:0,1`` (the form ``--help`` shows) places workers on GPUs 0 and 1."""
    plan = write_plan(tmp_path / "plan.yaml", prefill={"instances": 1}, decode={"instances": 1})
    result = CliRunner().invoke(
        app, ["deploy", str(plan), "--port", str(free_port()), "--devices", "cuda:0,1", "--dry-run"],
        terminal_width=250,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "--device cuda:0" in result.output and "--device cuda:1" in result.output
    # One instance per role: power_of_two (the plan's least_loaded) needs two, the router refuses it.
    assert "--prefill-policy round_robin --decode-policy round_robin" in result.output


def test_chunked_plans_run_chunked_prefill(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        prefill={"instances": 1, "max_batch_tokens": 512, "chunk_tokens": 128},
        decode={"instances": 1},
    )
    result = CliRunner().invoke(
        app, ["deploy", str(plan), "--port", str(free_port()), "--dry-run"], terminal_width=250
    )
    assert result.exit_code == 0, result.output
    assert "--chunk-tokens 128" in result.output and "does not split" not in result.output

"""Deployment lifecycle: a colocated plan behind the router's regular mode stopped with Ctrl-C, and a
supervisor killed outright taking every process it started with it (no orphans)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from deploy_helpers import alive, group_members, start_deploy, stream_events, write_plan

pytest.importorskip("torch")
pytest.importorskip("sglang_router")


def _all_gone(record: dict, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(alive(p["pid"]) or group_members(p["pgid"]) for p in record["processes"]):
            return True
        time.sleep(0.2)
    return False


def test_colocated_deployment_serves_and_stops_on_ctrl_c(tmp_path: Path, pdplan_script: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml",
        mode="colocated",
        colocated={
            "instances": 1,
            "tp": 1,
            "max_batch_size": 4,
            "chunk_tokens": 256,
            "policy": "prefill-first",
        },
    )
    dep = start_deploy(pdplan_script, plan, tmp_path / "run")
    try:
        router = dep.process("router")
        assert "--worker-urls" in router["command"] and "--pd-disaggregation" not in router["command"]
        sampling = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
        with httpx.Client(timeout=60) as client:
            body = {"input_ids": [5, 6, 7], "sampling_params": sampling, "stream": True}
            events, done = stream_events(client, f"{dep.endpoint}/generate", body)
        assert done and len(events) == 4
    finally:
        os.kill(dep.proc.pid, signal.SIGINT)  # what Ctrl-C sends
    try:
        code = dep.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(dep.proc.pid, signal.SIGKILL)  # leave nothing running behind a failed test
        raise
    assert code == 0
    record = dep.record()
    assert record["status"] == "stopped"
    assert _all_gone(record, 1.0)


def test_killed_supervisor_leaves_no_orphans(tmp_path: Path, pdplan_script: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.yaml", prefill={"instances": 1}, decode={"instances": 1, "max_kv_tokens": 4096}
    )
    dep = start_deploy(pdplan_script, plan, tmp_path / "run")
    record = dep.record()
    os.kill(dep.proc.pid, signal.SIGKILL)  # no chance to clean up: the children must go by themselves
    dep.proc.wait(timeout=10)
    assert _all_gone(record, 20.0), [p["name"] for p in record["processes"] if alive(p["pid"])]
    # deploy.json was last written as "ready"; its readers must not believe it any more.
    assert dep.record()["status"] == "ready"
    from pdplan.realrun.supervisor import read_deployment

    assert read_deployment(dep.out)["status"] == "failed"
    done = subprocess.run(
        [str(pdplan_script), "deploy", "--status", str(dep.out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "status: failed (supervisor gone" in done.stdout, done.stdout

"""A colocated plan: colocated workers behind sglang-router's regular mode, started and stopped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from deploy_helpers import alive, start_deploy, stream_events, write_plan

pytest.importorskip("torch")
pytest.importorskip("sglang_router")


def test_colocated_deployment_serves_and_stops(tmp_path: Path, pdplan_script: Path) -> None:
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
        router = dep.record()["processes"][-1]
        assert "--worker-urls" in router["command"] and "--pd-disaggregation" not in router["command"]
        with httpx.Client(timeout=60) as client:
            sampling = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
            body = {"input_ids": [5, 6, 7], "sampling_params": sampling, "stream": True}
            events, done = stream_events(client, f"{dep.endpoint}/generate", body)
        assert done and len(events) == 4
    finally:
        subprocess.run([str(pdplan_script), "deploy", "--stop", str(dep.out)], check=False, timeout=60)
    assert dep.proc.wait(timeout=30) == 0
    assert not any(alive(p["pid"]) for p in dep.record()["processes"])

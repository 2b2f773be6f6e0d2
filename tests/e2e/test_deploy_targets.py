"""``pdplan deploy --target sglang|vllm|k8s`` end to end: the files it writes, its errors (exit 2, one
line), and ``--execute --stand-in``: the SGLang bundle started on this host with pdplan's workers in
SGLang's place behind the real sglang-router, answering requests, recorded in ``deploy.json`` for the
bench, and stopped with ``pdplan deploy --stop``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from deploy_helpers import free_port, run_pdplan, stream_events, write_plan

SECTIONS = {
    "prefill": {"instances": 1, "tp": 1, "max_batch_tokens": 256, "max_batch_size": 8},
    "decode": {"instances": 1, "tp": 1, "max_batch_size": 8, "max_kv_tokens": 4096},
    "router": "round_robin",
}


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script), "deploy", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("target", "files"),
    [
        ("sglang", {"node-0.sh", "router.sh", "hosts.env"}),
        ("vllm", {"node-0.sh", "proxy.sh", "hosts.env"}),
        ("k8s", {"manifests.yaml"}),
    ],
)
def test_writes_the_bundle_with_plan_and_versions(tmp_path: Path, target: str, files: set[str]) -> None:
    plan = write_plan(tmp_path / "plan.yaml", **SECTIONS)
    out = tmp_path / "out"
    done = run_pdplan("deploy", str(plan), "--target", target, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert files | {"README.md", "plan.yaml", "launch.yaml"} == {p.name for p in out.iterdir()}
    record = yaml.safe_load((out / "launch.yaml").read_text())
    assert record["target"] == target and record["engine_versions"]
    assert (out / "plan.yaml").read_text() == plan.read_text()
    again = run_pdplan("deploy", str(plan), "--target", target, "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr


def test_engine_bundles_are_written_without_torch(tmp_path: Path) -> None:
    """Writing an SGLang/vLLM/Kubernetes bundle (and refusing a bad one) needs no torch: the check
    is deterministic (which modules got imported), where start-up time would depend on the load."""
    plan = write_plan(tmp_path / "plan.yaml", **SECTIONS)
    argv = ["pdplan", "deploy", str(plan), "--target", "vllm", "--out", str(tmp_path / "o")]
    probe = (
        f"import sys\nsys.argv = {argv!r}\n"
        "from pdplan.planner.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules)"
    )
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "torch imported: False" in shown.stdout, shown.stdout[-300:] + shown.stderr[-300:]
    assert (tmp_path / "o" / "launch.yaml").exists()


def test_dry_run_prints_and_writes_nothing(tmp_path: Path, pdplan_script: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", **SECTIONS)
    done = _run(pdplan_script, str(plan), "--target", "sglang", "--dry-run", "--out", str(tmp_path / "o"))
    assert (
        done.returncode == 0
        and "sglang.launch_server" in done.stdout
        and "--pd-disaggregation" in done.stdout
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "changes", "message"),
    [
        (("--target", "vllm", "--execute"), {}, "--execute runs --target sglang only"),
        (("--target", "sglang", "--stand-in"), {}, "--stand-in only applies with --execute"),
        (("--target", "vllm"), {"router": "least_loaded"}, "round-robin only"),
        (("--target", "k8s", "--flavor", "helm"), {}, "--flavor 'helm'"),
        (("--target", "sglang", "--transfer-backend", "rdma"), {}, "launch.transfer_backend 'rdma'"),
        (("--target", "sglang"), {"model": "llama-3.1-8b"}, "--model-path"),
        (("--target", "sglang"), {"feasible": False, "reason": "TTFT bound"}, "infeasible (TTFT bound)"),
        (("--target", "vllm", "--devices", "cuda:0"), {}, "--devices applies to --target local only"),
        (("--target", "local", "--flavor", "lws", "--dry-run"), {}, "--flavor applies to --target sglang"),
    ],
)
def test_errors_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], changes: dict, message: str
) -> None:
    plan = write_plan(tmp_path / "plan.yaml", **{**SECTIONS, **changes})
    done = run_pdplan("deploy", str(plan), *args, "--out", str(tmp_path / "o"))
    assert done.returncode == 2, done.stdout
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "o").exists()


def test_execute_without_sglang_points_at_the_stand_in(tmp_path: Path, pdplan_script: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        pytest.skip("SGLang is installed here")
    plan = write_plan(tmp_path / "plan.yaml", **SECTIONS)
    done = _run(pdplan_script, str(plan), "--target", "sglang", "--execute", "--port", str(free_port()),
                "--out", str(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2 and "--stand-in" in done.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_execute_with_the_stand_in_serves_the_plan(tmp_path: Path, pdplan_script: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sglang_router")
    plan = write_plan(tmp_path / "plan.yaml", **SECTIONS)
    out, port = tmp_path / "out", free_port()
    console = (tmp_path / "console.txt").open("wb")
    argv = [str(pdplan_script), "deploy", str(plan), "--target", "sglang", "--execute", "--stand-in"]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--out", str(out)],
        stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        record = _wait_ready(out / "run" / "deploy.json", proc, tmp_path / "console.txt")
        endpoint = f"http://127.0.0.1:{port}"
        names = {p["name"]: p for p in record["processes"]}
        assert set(names) == {"prefill-0", "decode-0", "router"}
        assert "pdplan.realrun.targets.standin" in names["prefill-0"]["command"]
        assert "--disaggregation-mode prefill" in names["prefill-0"]["command"]
        with httpx.Client(timeout=60.0) as client:
            body = {
                "input_ids": [5, 6, 7, 8],
                "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True},
            }
            reply = client.post(f"{endpoint}/generate", json=body)
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["output_ids"]) == 5
            events, done = stream_events(
                client, f"{endpoint}/v1/completions",
                {"model": "m", "prompt": "pd", "max_tokens": 4, "stream": True, "temperature": 0},
            )  # fmt: skip
            assert done and sum(len(e["choices"][0].get("text", "")) > 0 for e in events) >= 1
        stop = _run(pdplan_script, "--stop", str(out / "run"))
        assert stop.returncode == 0, stop.stderr
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        console.close()
    assert (out / "node-0.sh").is_file() and (out / "run" / "logs" / "prefill-0.log").is_file()


def _wait_ready(record: Path, proc: subprocess.Popen[bytes], console: Path, timeout_s: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pdplan deploy exited with {proc.returncode}:\n{console.read_text()}")
        try:
            data = json.loads(record.read_text())
            if data["status"] == "ready":
                return data
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {timeout_s} s:\n{console.read_text()}")


def test_router_override_is_recorded(tmp_path: Path, pdplan_script: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", **{**SECTIONS, "router": "least_loaded"})
    out = tmp_path / "out"
    done = _run(pdplan_script, str(plan), "--target", "vllm", "--router", "round_robin", "--out", str(out))
    assert done.returncode == 0, done.stderr
    note = "router round_robin (--router) instead of the plan's least_loaded"
    assert note in (out / "README.md").read_text()
    assert any(note in n for n in yaml.safe_load((out / "launch.yaml").read_text())["notes"])

"""Helpers shared by the real-run tests (imported by name, like ``simcases`` in tests/sim)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

#: Untied test model (see its config.json for why the catalog tiny-llama cannot serve these tests).
TEST_MODEL = Path(__file__).resolve().parent / "models" / "pd-test-llama"
#: The KV hand-off secret of the workers the tests start (one test "deployment").
TEST_SECRET = "pdplan-test-deployment-secret-0123456789"


def bench_module(name: str) -> Any:
    """``bench/<name>.py`` loaded from its file, registered as ``name`` (so it can import its
    siblings' modules loaded the same way) — not by putting bench/ on sys.path: bench/profile.py
    would shadow the standard library's ``profile`` for the rest of the session (cProfile, hence
    torch._dynamo, break)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[2] / f"bench/{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_worker(
    *args: str, timeout_s: float = 120.0, secret: str = TEST_SECRET
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m pdplan.realrun.worker ARGS --port <free>`` (with the test deployment's
    hand-off secret) and wait for its /health."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pdplan.realrun.worker", *args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PDPLAN_KV_SECRET": secret},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("worker not healthy in time")


def gauge(url: str, name: str) -> float:
    """The value of ``pdplan_worker_<name>`` in a worker's /metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=5.0).text.splitlines():
        if line.startswith(f"pdplan_worker_{name}{{"):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")

"""Helpers for the deploy end-to-end tests: a plan file, a running ``pdplan deploy``, SSE reading."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

#: Untied test model (tests/realrun/models/pd-test-llama/config.json says why not tiny-llama).
TEST_MODEL = Path(__file__).resolve().parents[1] / "realrun" / "models" / "pd-test-llama"


def free_port() -> int:
    """A free port *below* the kernel's ephemeral range: a deployment takes the ports after it in
    sequence, and inside that range an outgoing connection (a health check) can take one of them
    between the choice and the worker's bind, failing the worker's start."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low - 64))
        if all(_bindable(p) for p in range(port, port + 16)):
            return port
    with socket.socket() as probe:  # no free block below it: any free port
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Ran:
    """What ``run_pdplan`` saw: like ``subprocess.CompletedProcess`` with text output."""

    returncode: int
    stdout: str
    stderr: str


def run_pdplan(*args: str) -> Ran:
    """``pdplan ARGS`` in this process through ``main()``, the console script's entry point (its
    exit code, one-line errors and files, without ~1.5 s of interpreter start and imports per call;
    the console script itself is run as a subprocess by the other deploy tests). An exception
    other than ``SystemExit`` propagates: that is the traceback a user would have seen."""
    from pdplan.planner.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["pdplan", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            else:
                code = 0
    finally:
        sys.argv = argv
    return Ran(code, out.getvalue(), err.getvalue())


def write_plan(path: Path, mode: str = "disaggregated", **sections: dict[str, Any]) -> Path:
    plan: dict[str, Any] = {"schema_version": 1, "mode": mode, "model": str(TEST_MODEL), "hardware": "cpu"}
    if mode == "disaggregated":
        plan["kv_transfer"] = {"link": "loopback"}
    plan.update(sections)
    path.write_text(yaml.safe_dump(plan))
    return path


@dataclass
class Deployment:
    out: Path
    endpoint: str
    proc: subprocess.Popen[bytes]
    output: Path

    def record(self) -> dict[str, Any]:
        return json.loads((self.out / "deploy.json").read_text())

    def process(self, name: str) -> dict[str, Any]:
        return next(p for p in self.record()["processes"] if p["name"] == name)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_deploy(
    script: Path, plan: Path, out: Path, extra: tuple[str, ...] = (), timeout_s: float = 150.0
) -> Deployment:
    """Run ``pdplan deploy`` in the background and wait until deploy.json says ready."""
    port = free_port()
    output = out.parent / f"{out.name}.console.txt"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [str(script), "deploy", str(plan), "--port", str(port), "--out", str(out), *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # A shell without job control starts background jobs (`pytest &`) with SIGINT ignored,
            # and Python keeps an inherited SIG_IGN: undo it, so Ctrl-C reaches pdplan deploy as it
            # does from a terminal however the suite itself was started.
            preexec_fn=_default_sigint,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pdplan deploy exited with {proc.returncode}:\n{output.read_text()}")
        try:
            if json.loads((out / "deploy.json").read_text())["status"] == "ready":
                return Deployment(out, f"http://127.0.0.1:{port}", proc, output)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    raise AssertionError(f"deployment not ready within {timeout_s} s:\n{output.read_text()}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def stream_events(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """POST a streaming request; returns the parsed ``data:`` events and whether ``[DONE]`` came."""
    events: list[dict[str, Any]] = []
    done = False
    with client.stream("POST", url, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
            else:
                events.append(json.loads(line[len("data: ") :]))
    return events, done

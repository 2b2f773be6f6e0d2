"""``Supervisor``: starts, watches and stops the processes of a local deployment, and ``deploy.json``.

Every process starts in its own process group (``start_new_session``), with its output in
``<out>/logs/<name>.log``, and is told to die with the supervisor: the kernel sends it SIGTERM when
the supervisor exits (``PR_SET_PDEATHSIG`` on Linux), and workers also poll for their parent. Stopping
sends SIGTERM to each process *group* (router first, so no new requests arrive), waits, then SIGKILLs
what is left; so no orphans survive Ctrl-C, ``pdplan deploy --stop DIR``, or an exception.

``deploy.json`` records, for each process, its PID, process group, start time (in clock ticks since
boot, from ``/proc/PID/stat``, so a recycled PID is never mistaken for it), URL, device, threads and
command; plus the supervisor's own PID so ``--stop`` can ask it to shut down cleanly first.
``deploy.json`` is only as true as its writer is alive: read it with :func:`read_deployment`, which
reports ``failed`` (``supervisor gone``) for a record whose supervisor no longer runs, whatever the
file says.

A worker that crashes is restarted on the same ports and devices after a backoff (1 s, doubling up
to 30 s, back to 1 s once a restarted worker stayed up for a minute); the deployment is ``degraded``
until it answers ``/health`` again, then ``ready``. Each worker gets the deployment's KV hand-off
secret (:mod:`kv_auth`) in its environment, never on its command line or in ``deploy.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from pdplan.profiles.errors import DeployError
from pdplan.realrun.deployment import LaunchPlan, ProcessSpec
from pdplan.realrun.kv_auth import SECRET_ENV, new_secret
from pdplan.realrun.procfs import group_members, is_alive, start_ticks

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll otherwise
DEPLOY_FILE = "deploy.json"
Progress = Callable[[str], None]
#: Restart backoff of a crashed worker: first delay, cap, and the uptime that resets it.
BACKOFF_FIRST_S, BACKOFF_MAX_S, BACKOFF_RESET_S = 1.0, 30.0, 60.0
#: The processes in front of the workers: if one exits, the deployment has failed.
FRONT_ROLES = ("router", "gateway")


def _die_with_parent_hook() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


@dataclass
class _Proc:
    spec: ProcessSpec
    popen: subprocess.Popen[bytes]
    ticks: int | None
    log_file: IO[bytes]
    reported: bool = False
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None  # when a crashed worker is started again
    healthy: bool = True


class Supervisor:
    """Owns the processes of one deployment (see the module docstring)."""

    def __init__(self, launch: LaunchPlan, out_dir: Path, command: str = "") -> None:
        self.launch = launch
        self.out_dir = out_dir
        self.command = command
        self.status = "starting"
        self.ready_s: float | None = None
        self._procs: list[_Proc] = []
        self._stopped = False
        self._secret = new_secret()
        self.restart_workers = True

    # --- starting ---------------------------------------------------------------------------------
    def start(self, progress: Progress | None = None, timeout_s: float = 180.0) -> float:
        """Start the workers, wait until each answers ``/health``, then start the router and wait
        until it reports every worker healthy. Returns seconds from the first spawn to ready.

        Raises:
            DeployError: a process exited while starting, or not ready within ``timeout_s`` (all
                processes started so far are stopped first).
        """
        say = progress or (lambda _msg: None)
        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        begin = time.monotonic()
        try:
            hook = _die_with_parent_hook()
            for spec in self.launch.workers:
                self._spawn(spec, hook)
            self._write()
            say(f"started {len(self.launch.workers)} workers; waiting for /health")
            self._wait_workers(begin + timeout_s, say)
            self._spawn(self.launch.router, hook)
            self._write()
            say("workers healthy; router started")
            self._wait_router(begin + timeout_s, self.launch.router.url)
            if self.launch.gateway is not None:
                self._spawn(self.launch.gateway, hook)
                self._write()
                say("router ready; gateway started")
                self._wait_router(begin + timeout_s, self.launch.gateway.url)
        except BaseException:
            self.status = "failed"
            self.stop()
            raise
        self.ready_s = time.monotonic() - begin
        self.status = "ready"
        self._write()
        return self.ready_s

    def _spawn(self, spec: ProcessSpec, hook: Callable[[], None] | None) -> None:
        self._procs.append(self._popen(spec, hook))

    def _popen(self, spec: ProcessSpec, hook: Callable[[], None] | None) -> _Proc:
        argv = list(spec.argv)
        if spec.role not in FRONT_ROLES or spec.role == "gateway":
            argv += ["--parent-pid", str(os.getpid())]
        log_file = (self.out_dir / spec.log_name).open("ab")
        env = {**os.environ, **spec.env}
        if spec.role not in FRONT_ROLES:
            env[SECRET_ENV] = self._secret
        else:
            env.pop(SECRET_ENV, None)
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=hook,
        )
        log.info("started %s (pid %d)", spec.name, popen.pid)
        log.debug("%s: %s", spec.name, shlex.join(argv))
        return _Proc(spec, popen, start_ticks(popen.pid), log_file, started_at=time.monotonic())

    def _tail(self, proc: _Proc, lines: int = 15) -> str:
        text = (self.out_dir / proc.spec.log_name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _check_exits(self) -> None:
        for proc in self._procs:
            code = proc.popen.poll()
            if code is not None:
                raise DeployError(
                    f"{proc.spec.name} exited with code {code} while starting; last lines of "
                    f"{self.out_dir / proc.spec.log_name}:\n{self._tail(proc)}"
                )

    def _wait_workers(self, deadline: float, say: Progress) -> None:
        import httpx

        pending = [p for p in self._procs if p.spec.role != "router"]
        with httpx.Client(timeout=2.0) as client:
            while pending:
                self._check_exits()
                for proc in list(pending):
                    with contextlib.suppress(httpx.TransportError):
                        if client.get(f"{proc.spec.url}/health").status_code == 200:
                            pending.remove(proc)
                            say(f"{proc.spec.name} healthy at {proc.spec.url}")
                if pending and time.monotonic() > deadline:
                    names = ", ".join(p.spec.name for p in pending)
                    raise DeployError(f"workers not healthy in time: {names} (see {self.out_dir / 'logs'})")
                time.sleep(0.2)

    def _wait_router(self, deadline: float, url: str) -> None:
        import httpx

        want = len(self.launch.workers)
        with httpx.Client(timeout=2.0) as client:
            while True:
                self._check_exits()
                with contextlib.suppress(httpx.TransportError, ValueError):
                    reply = client.get(f"{url}/readiness")
                    if reply.status_code == 200 and reply.json().get("healthy_workers") == want:
                        return
                if time.monotonic() > deadline:
                    raise DeployError(f"router at {url} did not report {want} healthy workers")
                time.sleep(0.2)

    # --- watching ---------------------------------------------------------------------------------
    def poll(self) -> list[str]:
        """Report processes that exited since the last call (one line each), restart crashed workers
        whose backoff has passed, and mark restarted workers healthy once they answer ``/health``;
        updates deploy.json when anything changed."""
        lines: list[str] = []
        now = time.monotonic()
        changed = False
        for i, proc in enumerate(self._procs):
            code = proc.popen.poll()
            if code is not None and not proc.reported:
                proc.reported, proc.healthy, changed = True, False, True
                up_s = now - proc.started_at
                if up_s >= BACKOFF_RESET_S:
                    proc.backoff_s = BACKOFF_FIRST_S
                line = f"{proc.spec.name} (pid {proc.popen.pid}) exited with code {code}"
                if proc.spec.role not in FRONT_ROLES and self.restart_workers and not self._stopped:
                    proc.restart_at = now + proc.backoff_s
                    line += f"; restarting in {proc.backoff_s:g} s"
                lines.append(line)
                log.error("%s; see %s", line, self.out_dir / proc.spec.log_name)
            if proc.restart_at is not None and now >= proc.restart_at and not self._stopped:
                proc.log_file.close()
                fresh = self._popen(proc.spec, _die_with_parent_hook())
                fresh.restarts, fresh.healthy = proc.restarts + 1, False
                fresh.backoff_s = min(BACKOFF_MAX_S, proc.backoff_s * 2)
                self._procs[i] = fresh
                lines.append(f"{proc.spec.name} restarted (pid {fresh.popen.pid}, restart {fresh.restarts})")
                changed = True
            elif (
                code is None
                and not proc.healthy
                and proc.spec.role not in FRONT_ROLES
                and self._answers_health(proc.spec.url)
            ):
                proc.healthy, changed = True, True
                lines.append(f"{proc.spec.name} (pid {proc.popen.pid}) is healthy again")
        if changed:
            self.status = self._overall()
            self._write()
        return lines

    def _overall(self) -> str:
        if any(p.spec.role in FRONT_ROLES and p.popen.poll() is not None for p in self._procs):
            return "failed"
        return "ready" if all(p.healthy and p.popen.poll() is None for p in self._procs) else "degraded"

    @staticmethod
    def _answers_health(url: str) -> bool:
        import httpx

        try:
            return httpx.get(f"{url}/health", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the worker called ``name`` (fault injection for tests and bench/soak.py);
        returns its PID."""
        for proc in self._procs:
            if proc.spec.name == name and proc.popen.poll() is None:
                os.kill(proc.popen.pid, sig)
                return proc.popen.pid
        raise DeployError(f"no running worker called {name!r}")

    def worker_pids(self) -> dict[str, int]:
        """PIDs of the running processes by name."""
        return {p.spec.name: p.popen.pid for p in self._procs if p.popen.poll() is None}

    @property
    def router_alive(self) -> bool:
        fronts = [p for p in self._procs if p.spec.role in FRONT_ROLES]
        return bool(fronts) and all(p.popen.poll() is None for p in fronts)

    # --- stopping ---------------------------------------------------------------------------------
    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group (router first), wait up to ``grace_s``, SIGKILL the rest."""
        if self._stopped:
            return
        self._stopped = True
        ordered = sorted(self._procs, key=lambda p: p.spec.role not in FRONT_ROLES)
        for proc in ordered:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in ordered:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in ordered:
            members = group_members(proc.popen.pid) if Path("/proc").is_dir() else []
            if proc.popen.poll() is None or members:
                log.warning(
                    "%s did not stop within %.0f s; killing its process group", proc.spec.name, grace_s
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
            proc.log_file.close()
        if self.status != "failed":
            self.status = "stopped"
        self._write()

    # --- deploy.json ------------------------------------------------------------------------------
    def _write(self) -> None:
        procs = []
        for proc in self._procs:
            spec = proc.spec
            procs.append(
                {
                    "name": spec.name,
                    "role": spec.role,
                    "pid": proc.popen.pid,
                    "pgid": proc.popen.pid,
                    "start_ticks": proc.ticks,
                    "url": spec.url,
                    "port": spec.port,
                    "bootstrap_port": spec.bootstrap_port,
                    "device": spec.device,
                    "threads": spec.threads,
                    "cpus": list(spec.cpus),
                    "log": spec.log_name,
                    "command": shlex.join(proc.popen.args),  # type: ignore[arg-type]
                    "exit_code": proc.popen.poll(),
                    "restarts": proc.restarts,
                    "healthy": proc.healthy,
                }
            )
        write_json_atomic(
            self.out_dir / DEPLOY_FILE,
            {
                "schema_version": 1,
                "status": self.status,
                "mode": self.launch.mode,
                "endpoint": self.launch.endpoint,
                "cpu_split": self.launch.cpu_note,
                "command": self.command,
                "supervisor_pid": os.getpid(),
                "supervisor_start_ticks": start_ticks(os.getpid()),
                "ready_s": self.ready_s,
                "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "processes": procs,
            },
        )


def read_deployment(out_dir: Path) -> dict[str, Any]:
    """``out_dir/deploy.json`` as its reader should believe it: a record that says ``starting``,
    ``ready`` or ``degraded`` while its supervisor no longer runs says ``failed`` instead (with
    ``status_reason``), since nobody watches or restarts its processes any more.

    Raises:
        DeployError: no readable deploy.json in ``out_dir``.
    """
    path = out_dir / DEPLOY_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise DeployError(f"{path}: no readable deployment record ({err})") from None
    sup, ticks = data.get("supervisor_pid"), data.get("supervisor_start_ticks")
    live = data.get("status") in ("starting", "ready", "degraded")
    if live and isinstance(sup, int) and not is_alive(sup, ticks if isinstance(ticks, int) else None):
        data["status"] = "failed"
        data["status_reason"] = f"supervisor gone (pid {sup} no longer runs)"
    return data


def stop_deployment(out_dir: Path, grace_s: float = 10.0) -> list[str]:
    """Stop the deployment recorded in ``out_dir/deploy.json`` (from another process).

    Asks the supervisor to stop (SIGTERM) and waits for it; then stops any recorded process group that
    is still alive. Returns one line per process this call had to stop itself.

    Raises:
        DeployError: no readable deploy.json in ``out_dir``.
    """
    path = out_dir / DEPLOY_FILE
    try:
        data = json.loads(path.read_text())
        procs = data["processes"]
    except (OSError, ValueError, KeyError) as err:
        raise DeployError(f"{path}: no readable deployment record ({err})") from None
    sup, sup_ticks = data.get("supervisor_pid"), data.get("supervisor_start_ticks")
    if isinstance(sup, int) and sup != os.getpid() and is_alive(sup, sup_ticks):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 5.0
        while is_alive(sup, sup_ticks) and time.monotonic() < deadline:
            time.sleep(0.1)
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [p for p in procs if is_alive(p["pid"], p.get("start_ticks")) or group_members(p["pgid"])]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p["pgid"], sig)
            if sig == signal.SIGTERM:
                stopped.append(f"{p['name']} (pid {p['pid']})")
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while live and time.monotonic() < deadline:
            live = [p for p in live if is_alive(p["pid"], p.get("start_ticks")) or group_members(p["pgid"])]
            time.sleep(0.1)
    data = json.loads(path.read_text())
    if data.get("status") not in ("stopped", "failed"):
        data["status"] = "stopped"
        data["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(path, data)
    return stopped

"""``--execute``: an SGLang bundle's processes on this host, as a ``LaunchPlan`` for pdplan's
supervisor (the same one ``--target local`` uses: logs, ``deploy.json``, health waits, ``--stop``).

Engines run through ``engine_exec`` (the real SGLang, when importable and the GPUs are present) or
through ``standin`` (pdplan's worker in SGLang's place); the router is the production
``sglang_router``. Only a one-node bundle runs here; a multi-node one runs with its node scripts.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys

from pdplan.profiles.errors import DeployError
from pdplan.realrun.deployment import LaunchPlan, ProcessSpec
from pdplan.realrun.targets.bundle import Bundle, substitute_hosts
from pdplan.realrun.targets.flags import SGLANG, SGLANG_ROUTER, check_argv
from pdplan.realrun.targets.standin import worker_argv

HOST = "127.0.0.1"


def check_engine(bundle: Bundle) -> None:
    """Refuse to execute where SGLang is not importable or there are fewer GPUs than the bundle uses.

    Raises:
        DeployError: naming what is missing (and the ``--stand-in`` alternative).
    """
    if importlib.util.find_spec("sglang") is None:
        raise DeployError(
            f"--execute: SGLang is not importable by {sys.executable} (pip install 'sglang[all]'); "
            "--stand-in runs pdplan's workers in its place"
        )
    needed = max((_gpu_end(p.argv) for p in bundle.processes if p.role != "router"), default=0)
    have = _gpu_count()
    if have < needed:
        raise DeployError(f"--execute: the plan uses GPUs 0..{needed - 1} on one node; this host has {have}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _gpu_end(argv: tuple[str, ...]) -> int:
    get = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    return int(get.get("--base-gpu-id", "0")) + int(get.get("--tp-size", "1"))


def _gpu_count() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def launch_plan(bundle: Bundle, stand_in: bool) -> LaunchPlan:
    """The supervisor's processes for a one-node SGLang bundle, addresses on 127.0.0.1.

    Raises:
        DeployError: the bundle spans nodes, or one of its ports is taken on this host.
    """
    nodes = sorted({p.node for p in bundle.processes})
    if nodes != [0]:
        raise DeployError(
            f"--execute runs a one-node plan on this host; this one uses {len(nodes)} nodes: run its "
            "node-k.sh scripts on each node"
        )
    hosts = {"NODE0": HOST}
    workers, router = [], None
    # SGLang learns a prefill's bootstrap address from each request; pdplan's decode workers accept
    # only their own deployment's prefills (issue 14), so the stand-in is told them up front
    peers = ",".join(
        f"{HOST}:{p.bootstrap_port}" for p in bundle.processes if p.role == "prefill" and p.bootstrap_port
    )
    for p in bundle.processes:
        argv = substitute_hosts(p.argv, hosts)
        for port in (p.port, p.bootstrap_port):
            if port is not None and not _port_free(port):
                raise DeployError(f"--execute: port {port} ({p.name}) is already in use on {HOST}")
        if p.role == "router":
            assert tuple(argv[: len(SGLANG_ROUTER.entry)]) == SGLANG_ROUTER.entry, argv
            # its metrics on this host too, on a free port (the router's default, 29000, may be taken)
            metrics = ["--prometheus-host", HOST, "--prometheus-port", str(_free_port())]
            check_argv(SGLANG_ROUTER, [*argv[len(SGLANG_ROUTER.entry) :], *metrics])
            full = (sys.executable, *argv[1:], *metrics)
            router = ProcessSpec(p.name, "router", full, p.url(HOST), p.port)
            continue
        assert tuple(argv[: len(SGLANG.entry)]) == SGLANG.entry, argv
        args = argv[len(SGLANG.entry) :]
        if stand_in:
            worker_argv(list(args))  # refuses here what the stand-in could not run (tp > 1, DP, ...)
            full = (sys.executable, "-m", "pdplan.realrun.targets.standin", *args)
        else:
            full = (sys.executable, "-m", "pdplan.realrun.targets.engine_exec", sys.executable, *argv[1:])
        env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        if stand_in and p.role == "decode":
            env["PDPLAN_STANDIN_PREFILL_PEERS"] = peers
        workers.append(ProcessSpec(p.name, p.role, full, p.url(HOST), p.port, p.bootstrap_port, env=env))
    assert router is not None, "an sglang bundle has a router"
    mode = "colocated" if all(w.role == "colocated" for w in workers) else "disaggregated"
    what = "pdplan stand-in workers" if stand_in else "SGLang servers"
    return LaunchPlan(tuple(workers), router, mode, f"{len(workers)} {what} on {HOST}")

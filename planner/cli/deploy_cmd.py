"""``pdplan deploy``: run a plan as real worker processes behind the production sglang-router.

``pdplan deploy PLAN --target local [--devices cpu|cuda:0,1] [--port 8000] [--out DIR] [--dry-run]``
starts one worker per instance (``python -m pdplan.realrun.worker``; CPU cores or GPUs split between
them), waits for their ``/health``, starts ``python -m sglang_router.launch_router`` on an internal
127.0.0.1 port and the pdplan gateway (``python -m pdplan.realrun.gateway``) on ``--port`` in front of
it, prints the endpoint and stays in the foreground, restarting workers that die (with backoff).
``pdplan deploy --status DIR`` prints the state of a deployment (``failed`` once its supervisor is
gone). Ctrl-C, SIGTERM, or
``pdplan deploy --stop DIR`` from another shell stops every process. ``--dry-run`` prints the
processes and their command lines and starts nothing.

Writes into ``--out``: ``deploy.json`` (processes, PIDs, URLs, status), ``logs/<name>.log``,
``plan.yaml`` (a copy), ``run.yaml`` and ``report.html``.

``--target sglang|vllm|k8s`` writes engine launch scripts or Kubernetes manifests instead
(``pdplan.planner.cli.deploy_targets``).
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pdplan.planner.plan import Plan
    from pdplan.realrun.deployment import DeploymentSpec, LaunchPlan

log = logging.getLogger(__name__)
TARGETS = ("local", "sglang", "vllm", "k8s")


class _Stop(BaseException):
    """Raised by the SIGTERM handler to leave the foreground loop (like Ctrl-C)."""


def deploy(
    plan: Annotated[
        Path | None, typer.Argument(help="plan.yaml to deploy (from pdplan simulate/search).")
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="Where to run: local, or launch files for sglang, vllm, k8s.")
    ] = "local",
    devices: Annotated[str, typer.Option("--devices", help="cpu, or GPUs as cuda:0,1,...")] = "cpu",
    port: Annotated[
        int, typer.Option("--port", help="Router port on 127.0.0.1 (workers take the next ports).")
    ] = 8000,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: runs/deploy-<time>).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print processes and commands; start nothing.")
    ] = False,
    stop: Annotated[
        Path | None, typer.Option("--stop", help="Stop the deployment recorded in this run directory.")
    ] = None,
    status: Annotated[
        Path | None,
        typer.Option("--status", help="Print the status of the deployment in this run directory."),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="HF directory with safetensors (default: seeded random weights)."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer directory (default: --weights, else byte-level)."),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the random weights (same in every worker).")
    ] = 0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Waiting requests per worker before it answers 503.")
    ] = 128,
    kv_timeout_s: Annotated[
        float, typer.Option("--kv-timeout-s", help="Longest wait for a KV hand-off.")
    ] = 60.0,
    flavor: Annotated[str, typer.Option("--flavor", help="k8s: rbg (RoleBasedGroup) or lws.")] = "rbg",
    engine: Annotated[
        str, typer.Option("--engine", help="k8s: the engine in the pods, sglang or vllm.")
    ] = "sglang",
    model_path: Annotated[
        str | None, typer.Option("--model-path", help="sglang/vllm/k8s: model on the nodes (HF id or dir).")
    ] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="sglang/vllm/k8s: GPUs per node (default 8).")
    ] = None,
    transfer_backend: Annotated[
        str | None, typer.Option("--transfer-backend", help="sglang/vllm/k8s: KV transfer, mooncake or nixl.")
    ] = None,
    execute: Annotated[
        bool,
        typer.Option("--execute", help="sglang: start the one-node bundle here and serve until stopped."),
    ] = False,
    stand_in: Annotated[
        bool, typer.Option("--stand-in", help="with --execute: pdplan's workers in SGLang's place.")
    ] = False,
    router: Annotated[
        str | None, typer.Option("--router", help="sglang/vllm/k8s: route with this policy, not the plan's.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Use an --out that holds another kind of pdplan run.")
    ] = False,
) -> None:
    """Launch a plan as prefill/decode (or colocated) workers behind sglang-router."""
    from pdplan.profiles.errors import ConfigError, choices_error

    if stop is not None:
        _stop(stop)
        return
    if status is not None:
        _status(status)
        return
    if plan is None:
        raise ConfigError("PLAN: expected a plan.yaml to deploy (or --stop DIR)")
    if target not in TARGETS:
        raise choices_error("--target", target, TARGETS)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected 1..65535")
    from pdplan.realrun.worker_config import check_max_queue, check_timeout

    check_max_queue(max_queue)
    check_timeout("--kv-timeout-s", kv_timeout_s)
    from pdplan.planner.cli.deploy_targets import check_options

    check_options(
        target,
        {"--devices": devices != "cpu", "--weights": weights is not None,
         "--tokenizer": tokenizer is not None, "--seed": seed != 0, "--max-queue": max_queue != 128,
         "--kv-timeout-s": kv_timeout_s != 60.0},
        {"--flavor": flavor != "rbg", "--engine": engine != "sglang", "--model-path": model_path is not None,
         "--gpus-per-node": gpus_per_node is not None, "--transfer-backend": transfer_backend is not None,
         "--execute": execute, "--stand-in": stand_in, "--router": router is not None},
    )  # fmt: skip
    if target != "local":
        from pdplan.planner.cli.deploy_targets import TargetRequest, deploy_target

        request = TargetRequest(
            target, flavor, engine, model_path, gpus_per_node, transfer_backend, port,
            execute, stand_in, dry_run, router,
        )  # fmt: skip
        deploy_target(plan, request, out)
        return
    if out is not None and not dry_run:
        from pdplan.planner.rundir import claim_out

        claim_out(out, "deploy", force=force)
    from pdplan.realrun.deployment import LaunchOptions, build_launch, check_cpu_memory, parse_devices

    device_list = parse_devices(devices)
    spec = _load_spec(plan, weights, tokenizer, seed)
    opts = LaunchOptions(device_list, port=port, max_queue=max_queue, kv_timeout_s=kv_timeout_s)
    # Memory first: a deployment that cannot fit is refused whatever else is wrong (ports included).
    memory = check_cpu_memory(spec, opts) if device_list == ("cpu",) else ""
    launch = build_launch(spec, opts)
    _print_launch(launch, show_commands=dry_run, memory=memory)
    if dry_run:
        return
    _run(plan, launch, out or Path("runs") / time.strftime("deploy-%Y%m%d-%H%M%S"))


def _load_spec(plan_path: Path, weights: Path | None, tokenizer: str | None, seed: int) -> DeploymentSpec:
    """``plan.yaml`` (read strictly by ``pdplan.planner.plan.load_plan``) → what the deployment runs.

    A plan's ``chunk_tokens`` runs as chunked prefill in the workers (``--chunk-tokens``); a colocated
    ``chunked`` policy also runs its prompt slices inside the decode steps (``--schedule chunked``).
    A plan's ``cache: {l1: true}`` gives every prefill and colocated worker a prefix cache
    (``--prefix-cache``, ``pdplan.realrun.prefix_cache``); L2/L3 tiers are refused: the local
    workers keep no host-memory or store tier.
    """
    from pdplan.planner.plan import load_plan
    from pdplan.profiles.errors import ConfigError
    from pdplan.realrun.deployment import DeploymentSpec, InstanceGroup

    plan = load_plan(plan_path)
    if not plan.feasible:
        raise ConfigError(
            f"plan {str(plan_path)!r} is infeasible ({plan.reason or 'no reason given'}); nothing to deploy"
        )
    if not plan.model:
        raise ConfigError(f"plan {str(plan_path)!r}: model is empty; expected a catalog name or a model path")
    staged = {role: pp for role, pp in plan.pps.items() if pp > 1}
    if staged:
        role, pp = next(iter(staged.items()))
        raise ConfigError(
            f"plan {str(plan_path)!r}: {role}.pp={pp}: the local workers run no pipeline stages; "
            "use --target sglang (--pp-size) or --target vllm (--pipeline-parallel-size)"
        )
    groups = []
    if plan.mode == "disaggregated":
        assert plan.prefill is not None and plan.decode is not None, "checked by Plan"
        p, d = plan.prefill, plan.decode
        groups.append(
            InstanceGroup(
                "prefill",
                p.instances,
                p.tp,
                p.max_batch_size,
                p.step_tokens,
                chunk_tokens=p.step_tokens if p.chunk_tokens else None,
            )
        )
        groups.append(InstanceGroup("decode", d.instances, d.tp, d.max_batch_size, 2048, d.max_kv_tokens))
    else:
        assert plan.colocated is not None, "checked by Plan"
        c = plan.colocated
        chunk = c.chunk_tokens if c.policy == "chunked" else None
        groups.append(
            InstanceGroup(
                "colocated",
                c.instances,
                c.tp,
                c.max_batch_size,
                c.step_tokens,
                c.max_kv_tokens,
                c.policy,
                chunk,
            )
        )
    if weights is not None and not weights.is_dir():
        raise ConfigError(f"--weights {str(weights)!r}: not a directory")
    tok = tokenizer or (str(weights) if weights is not None else "bytes")
    return DeploymentSpec(
        plan.model, plan.mode, tuple(groups), str(weights) if weights else None, tok, seed, plan.router,
        _prefix_cache_pages(plan, plan_path),
    )  # fmt: skip


def _prefix_cache_pages(plan: Plan, plan_path: Path) -> int | None:
    """The workers' prefix cache page size for the plan's ``cache:`` (``None``: no cache).

    Raises:
        ConfigError: the plan has L2 or L3 tiers (not run by the local workers).
    """
    from pdplan.profiles.errors import ConfigError
    from pdplan.realrun.prefix_cache import DEFAULT_PAGE_TOKENS

    cache = plan.cache
    if cache is None:
        return None
    if cache.l2 is not None or cache.l3 is not None:
        raise ConfigError(
            f"plan {str(plan_path)!r}: cache.l2/cache.l3 tiers are not run by the local workers, which "
            "keep only L1 (a prefix cache in each worker's KV); remove them to deploy locally, or use "
            "--target sglang (HiCache)"
        )
    return DEFAULT_PAGE_TOKENS if cache.l1 else None


def _print_launch(launch: LaunchPlan, show_commands: bool, memory: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{launch.mode} deployment: {len(launch.workers)} workers + router")
    for column in ("process", "role", "address", "bootstrap", "device", "threads", "cpus"):
        table.add_column(column)
    for p in launch.processes:
        cpus = ",".join(map(str, p.cpus)) or "-"
        table.add_row(
            p.name, p.role, p.url, str(p.bootstrap_port or "-"), p.device, str(p.threads or "-"), cpus
        )
    console.print(table)
    console.print(f"threads: {launch.cpu_note}", highlight=False)
    if memory:
        console.print(memory, highlight=False)
    if show_commands:
        for p in launch.processes:
            extra = "  (+ --parent-pid <pid of pdplan deploy>)" if p.role != "router" else ""
            console.print(f"[bold]{p.name}[/]: {shlex.join(p.argv)}{extra}", highlight=False, soft_wrap=True)


def _run(plan: Path, launch: LaunchPlan, out: Path) -> None:
    import atexit

    from rich.console import Console

    from pdplan.profiles.errors import ConfigError
    from pdplan.realrun.supervisor import Supervisor

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "deploy.json").is_file())):
        raise ConfigError(f"--out {str(out)!r}: exists and is not an empty or deploy run directory")
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["pdplan", *sys.argv[1:]])
    _write_atomic(out / "plan.yaml", plan.read_text())
    _write_run_yaml(out, command)
    console = Console()
    sup = Supervisor(launch, out, command)
    atexit.register(sup.stop)
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with console.status("starting workers") as status:
            ready_s = sup.start(progress=lambda msg: status.update(msg))
        console.print(f"[bold green]ready[/] in {ready_s:.1f} s: {launch.endpoint}  (logs: {out / 'logs'})")
        _report(out)
        console.print(f"stop with Ctrl-C or: pdplan deploy --stop {out}")
        while sup.router_alive:
            for line in sup.poll():
                console.print(f"[bold]worker:[/] {line}", highlight=False)
            time.sleep(0.5)
        sup.poll()
        console.print("[bold red]the router exited[/]; stopping the deployment")
    except (KeyboardInterrupt, _Stop):
        console.print("stopping")
    finally:
        # A second Ctrl-C or SIGTERM must not interrupt the stop itself.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        sup.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        console.print(f"stopped; deployment record: {out / 'deploy.json'}")


def _raise_stop(_signum: int, _frame: object) -> None:
    raise _Stop()


def _stop(run_dir: Path) -> None:
    from pdplan.realrun.supervisor import stop_deployment

    stopped = stop_deployment(run_dir)
    for line in stopped:
        typer.echo(f"stopped {line}")
    typer.echo(f"deployment in {run_dir} is stopped")


def _status(run_dir: Path) -> None:
    """One line per process and the deployment's status as :func:`read_deployment` judges it (a
    record whose supervisor is gone is ``failed``, whatever deploy.json says)."""
    from pdplan.realrun.procfs import is_alive
    from pdplan.realrun.supervisor import read_deployment

    data = read_deployment(run_dir)
    for p in data.get("processes", []):
        alive = isinstance(p, dict) and is_alive(int(p.get("pid", 0)), p.get("start_ticks"))
        typer.echo(f"{p.get('name')}: pid {p.get('pid')} {'running' if alive else 'not running'}")
    reason = f" ({data['status_reason']})" if data.get("status_reason") else ""
    typer.echo(f"status: {data.get('status')}{reason}  endpoint: {data.get('endpoint')}")


def _report(out: Path) -> None:
    from pdplan.reports import write_report

    write_report(out)


def _write_atomic(path: Path, text: str) -> None:
    from pdplan.profiles.atomic import write_file

    write_file(path, text)


def _write_run_yaml(out: Path, command: str) -> None:
    """``run.yaml`` per the run-directory contract (kind: deploy)."""
    import platform
    from datetime import datetime, timezone
    from importlib import metadata

    import yaml

    versions = {"python": platform.python_version()}
    for package in ("pdplan", "numpy", "torch", "sglang-router", "aiohttp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    run = {
        "schema_version": 1,
        "kind": "deploy",
        "command": command,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
    }
    _write_atomic(out / "run.yaml", yaml.safe_dump(run, sort_keys=False))

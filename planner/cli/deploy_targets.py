"""``pdplan deploy PLAN --target sglang|vllm|k8s``: a plan as engine launch scripts or manifests.

Writes into ``--out`` (whole or not at all): the target's files (``node-k.sh``, ``router.sh`` or
``proxy.sh``, ``hosts.env``, ``README.md``; or ``manifests.yaml``), the plan as given (``plan.yaml``)
and ``launch.yaml`` (target, engine versions, processes, notes). ``--dry-run`` prints the files and
writes nothing. ``--execute`` (sglang) then starts the one-node bundle on this host under pdplan's
supervisor, as ``--target local`` does, into ``OUT/run`` (``deploy.json`` holds the endpoint that
``pdplan bench`` measures); ``--stand-in`` runs pdplan's workers in SGLang's place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from pdplan.planner.plan import Plan
    from pdplan.realrun.deployment import LaunchPlan
    from pdplan.realrun.targets.bundle import Bundle
    from pdplan.realrun.targets.layout import TargetPlan

ENGINE_TARGETS = ("sglang", "vllm", "k8s")


@dataclass(frozen=True)
class TargetRequest:
    """What the command line asked of an engine target."""

    target: str
    flavor: str = "rbg"
    engine: str = "sglang"
    model_path: str | None = None
    gpus_per_node: int | None = None
    transfer_backend: str | None = None
    port: int = 8000
    execute: bool = False
    stand_in: bool = False
    dry_run: bool = False
    router: str | None = None


def check_options(target: str, local_only: dict[str, bool], engine_only: dict[str, bool]) -> None:
    """Refuse options the chosen target would ignore (each dict: option -> given).

    Raises:
        ConfigError: naming the first such option.
    """
    from pdplan.profiles.errors import ConfigError

    wrong = [o for o, given in (local_only if target != "local" else engine_only).items() if given]
    if wrong:
        where = "--target local only" if target != "local" else "--target sglang, vllm or k8s only"
        raise ConfigError(f"{wrong[0]} applies to {where}; --target is {target}")


def target_plan(plan: Plan, req: TargetRequest) -> TargetPlan:
    """The launch view of ``plan``, with the command line's settings over the plan's ``launch:``."""
    from pdplan.realrun.targets.layout import LaunchSettings, Ports, TargetPlan

    settings = plan.launch or LaunchSettings()
    if req.model_path is not None:
        settings = replace(settings, model_path=req.model_path)
    if req.gpus_per_node is not None:
        settings = replace(settings, gpus_per_node=req.gpus_per_node)
    if req.transfer_backend is not None:
        settings = replace(settings, transfer_backend=req.transfer_backend)
    router = plan.router
    if req.router is not None:
        from pdplan.profiles.errors import choices_error
        from pdplan.sim.router import ROUTERS

        if req.router not in ROUTERS:
            raise choices_error("--router", req.router, ROUTERS)
        router = req.router
    pools = [
        (r, getattr(plan, r)) for r in ("prefill", "decode", "colocated") if getattr(plan, r) is not None
    ]
    ports = Ports(router=req.port)
    if req.execute:  # on this host: engine and bootstrap ports right after the router's
        count = sum(pool.instances for _, pool in pools)
        ports = Ports(engine=req.port + 1, bootstrap=req.port + 1 + count, router=req.port)
    return TargetPlan(
        mode=plan.mode,
        model=plan.model,
        pools=tuple(pools),
        router=router,
        mem_fraction=plan.gpu_memory_utilisation,  # None: each engine's own default
        hardware=plan.hardware,
        settings=settings,
        ports=ports,
        dtype=plan.dtype,
        kv_dtype=plan.kv_dtype,
    )


def build_bundle(tplan: TargetPlan, req: TargetRequest) -> Bundle:
    from pdplan.realrun.targets import k8s, sglang, vllm

    if req.target == "sglang":
        return sglang.build(tplan)
    if req.target == "vllm":
        return vllm.build(tplan)
    return k8s.build(tplan, req.flavor, req.engine)


def deploy_target(plan_path: Path, req: TargetRequest, out: Path | None) -> Path | None:
    """Write (or print) the bundle; with ``--execute``, run it. Returns the bundle directory.

    Raises:
        ConfigError / DeployError: an infeasible plan, or anything the target cannot express.
    """
    from rich.console import Console

    from pdplan.planner.plan import load_plan
    from pdplan.profiles.errors import ConfigError

    if req.execute and req.target != "sglang":
        raise ConfigError(f"--execute runs --target sglang only; for {req.target} use the files it writes")
    if req.stand_in and not req.execute:
        raise ConfigError("--stand-in only applies with --execute")
    plan = load_plan(plan_path)
    if not plan.feasible:
        raise ConfigError(
            f"plan {str(plan_path)!r} is infeasible ({plan.reason or 'no reason given'}); nothing to deploy"
        )
    tplan = target_plan(plan, req)
    bundle = build_bundle(tplan, req)
    if tplan.router != plan.router:
        note = (
            f"router {tplan.router} (--router) instead of the plan's {plan.router}, which the simulation used"
        )
        readme = bundle.files["README.md"].rstrip("\n") + f"\n\n- {note}\n"
        bundle = replace(bundle, notes=(*bundle.notes, note), files={**bundle.files, "README.md": readme})
    files = dict(bundle.files)
    files["plan.yaml"] = plan_path.read_text()
    files["launch.yaml"] = _launch_yaml(bundle, req)
    console = Console()
    if req.dry_run:
        for name, text in files.items():
            if name != "plan.yaml":
                console.rule(name)
                console.print(text, highlight=False, markup=False, soft_wrap=True)
        return None
    launch = None
    if req.execute:  # refuse before writing anything: no engine, too few GPUs, a port in use
        from pdplan.realrun.targets.execute import check_engine, launch_plan

        if not req.stand_in:
            check_engine(bundle)
        launch = launch_plan(bundle, req.stand_in)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    where = out or Path("runs") / f"deploy-{req.target}-{stamp}"
    replace(bundle, files=files).write(where)
    versions = ", ".join(f"{k} {v}" for k, v in bundle.versions.items())
    console.print(f"wrote {len(files)} files for {req.target} ({versions}) to {where}", highlight=False)
    for note in bundle.notes:
        console.print(f"[bold yellow]note:[/] {note}", highlight=False)
    if launch is not None:
        _execute(plan_path, launch, where)
    return where


def _launch_yaml(bundle: Bundle, req: TargetRequest) -> str:
    from importlib.metadata import version

    record = {
        "schema_version": 1,
        "target": req.target,
        **({"flavor": req.flavor, "engine": req.engine} if req.target == "k8s" else {}),
        "pdplan": version("pdplan"),
        "engine_versions": dict(bundle.versions),
        "notes": list(bundle.notes),
        "processes": [
            {
                "name": p.name,
                "role": p.role,
                "node": p.node,
                "port": p.port,
                "argv": list(p.argv),
                "env": dict(p.env),
            }
            for p in bundle.processes
        ],
    }
    return yaml.safe_dump(record, sort_keys=False)


def _execute(plan_path: Path, launch: LaunchPlan, where: Path) -> None:
    from pdplan.planner.cli.deploy_cmd import _print_launch, _run

    _print_launch(launch, show_commands=False)
    _run(plan_path, launch, where / "run")

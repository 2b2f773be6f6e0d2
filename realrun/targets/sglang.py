"""``--target sglang``: a plan as ``sglang.launch_server`` commands plus ``sglang_router``, one runnable
script per node, and the way back (scripts → plan) that the round-trip test holds it to.

Plan → SGLang flags (each checked against ``flags.SGLANG``):

- ``tp`` (GPUs per stage) → ``--tp-size``; ``pp`` (pipeline stages, when > 1) → ``--pp-size``, the
  stages spread over the instance's nodes by ``--nnodes``; ``launch.<role>`` DP attention → ``--dp-size N
  --enable-dp-attention`` (inside the same TP GPUs), EP → ``--ep-size``;
- ``max_batch_size`` → ``--max-running-requests``; prefill/colocated ``max_batch_tokens`` →
  ``--max-prefill-tokens``; ``chunk_tokens`` (chunked) → ``--chunked-prefill-size``, none or
  ``prefill-first`` → ``--chunked-prefill-size -1`` (no chunking);
- decode/colocated ``max_kv_tokens`` → ``--max-total-tokens``; ``gpu_memory_utilisation`` →
  ``--mem-fraction-static``;
- the role and ``launch.transfer_backend`` → ``--disaggregation-mode``,
  ``--disaggregation-transfer-backend``, ``--disaggregation-bootstrap-port`` (prefill);
- ``launch.kv_store: mooncake`` → ``--enable-hierarchical-cache --hicache-storage-backend mooncake`` on
  the roles that prefill;
- colocated ``reuse_preempted_kv: false`` (simulated without the prefix cache) →
  ``--disable-radix-cache``;
- plan ``dtype`` / ``kv_dtype`` → ``--dtype`` (float types) or ``--quantization fp8``, and
  ``--kv-cache-dtype fp8_e4m3`` (``flags.dtype_flags``; int4 needs an int4 checkpoint: a note);
- placement → ``--base-gpu-id``, ``--port``; across nodes ``--dist-init-addr --nnodes --node-rank``;
- ``router`` → ``sglang_router.launch_router --policy`` (``flags.SGLANG_ROUTER_POLICIES``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from pdplan.profiles.engine import sglang_mem_fraction_static
from pdplan.profiles.errors import DeployError
from pdplan.realrun.targets import flags
from pdplan.realrun.targets.bundle import Bundle, Process, shell_command
from pdplan.realrun.targets.layout import (
    LaunchSettings,
    Placement,
    Pool,
    RoleParallel,
    TargetPlan,
    check_model_path,
    node_var,
    place,
)
from pdplan.realrun.targets.scripts import hosts_env, node_script, readme, router_script
from pdplan.sim.cluster import ColocatedPool, DecodePool, PrefillPool


def engine_argv(plan: TargetPlan, p: Placement, rank: int) -> list[str]:
    """The ``sglang.launch_server`` command of rank ``rank`` of instance ``p`` (checked)."""
    pool, par = p.pool, p.parallel
    node = p.nodes[rank]
    args = ["--model-path", plan.model_path, "--host", f"${{{node_var(node)}}}", "--port", str(p.port)]
    args += ["--tp-size", str(pool.tp)]
    if pool.pp > 1:
        args += ["--pp-size", str(pool.pp)]
    if par.dp_attention:
        args += ["--dp-size", str(par.dp), "--enable-dp-attention"]
    if par.ep > 1:
        args += ["--ep-size", str(par.ep)]
    args += [
        "--mem-fraction-static",
        f"{plan.mem_fraction if plan.mem_fraction is not None else sglang_mem_fraction_static(pool.tp):g}",
        "--max-running-requests",
        str(pool.max_batch_size),
    ]
    if isinstance(pool, PrefillPool):
        args += ["--max-prefill-tokens", str(pool.max_batch_tokens)]
        args += ["--chunked-prefill-size", str(pool.chunk_tokens or -1)]
    elif isinstance(pool, ColocatedPool):
        args += ["--max-prefill-tokens", str(pool.max_batch_tokens)]
        args += ["--chunked-prefill-size", str(pool.chunk_tokens if pool.policy == "chunked" else -1)]
    if not isinstance(pool, PrefillPool) and pool.max_kv_tokens is not None:
        args += ["--max-total-tokens", str(pool.max_kv_tokens)]
    args += ["--base-gpu-id", str(p.base_gpu)]
    if p.role in ("prefill", "decode"):
        args += ["--disaggregation-mode", p.role]
        args += ["--disaggregation-transfer-backend", plan.settings.transfer_backend]
        if p.role == "prefill":
            args += ["--disaggregation-bootstrap-port", str(p.bootstrap_port)]
    if len(p.nodes) > 1:
        leader = f"${{{node_var(p.nodes[0])}}}:{p.dist_port}"
        args += ["--dist-init-addr", leader, "--nnodes", str(len(p.nodes)), "--node-rank", str(rank)]
    if plan.settings.kv_store == "mooncake" and p.role != "decode":
        args += ["--enable-hierarchical-cache", "--hicache-storage-backend", "mooncake"]
    if isinstance(pool, ColocatedPool) and not pool.reuse_preempted_kv:
        args.append("--disable-radix-cache")  # the plan was simulated without the prefix cache
    args += flags.dtype_flags(plan.dtype, plan.kv_dtype, kv_fp8="fp8_e4m3")
    args.append("--enable-metrics")
    flags.check_argv(flags.SGLANG, args)
    return [*flags.SGLANG.entry, *args]


def router_argv(plan: TargetPlan, placements: tuple[Placement, ...]) -> tuple[list[str], str]:
    """The router's command (checked) and a note when its policy only approximates the plan's."""
    if plan.router not in flags.SGLANG_ROUTER_POLICIES:
        raise DeployError(f"plan router {plan.router!r}: sglang-router has no such policy")
    policy, note = flags.SGLANG_ROUTER_POLICIES[plan.router]
    host = f"${{{node_var(0)}}}"
    args: list[str] = []
    if plan.mode == "disaggregated":
        args.append("--pd-disaggregation")
        for p in placements:
            if p.role == "prefill":
                args += ["--prefill", _url(p), str(p.bootstrap_port)]
        for p in placements:
            if p.role == "decode":
                args += ["--decode", _url(p)]
    else:
        args += ["--worker-urls", *(_url(p) for p in placements)]
    args += ["--policy", policy, "--host", host, "--port", str(plan.ports.router)]
    flags.check_argv(flags.SGLANG_ROUTER, args)
    return [*flags.SGLANG_ROUTER.entry, *args], note


def _url(p: Placement) -> str:
    return f"http://${{{node_var(p.nodes[0])}}}:{p.port}"


def build(plan: TargetPlan) -> Bundle:
    """Scripts per node, ``router.sh``, ``hosts.env`` and a README for ``plan`` on SGLang.

    Raises:
        ConfigError / DeployError: the plan cannot be expressed (each names the field or flag).
    """
    check_model_path(plan)
    placements, num_nodes = place(plan)
    processes = []
    for p in placements:
        for rank, node in enumerate(p.nodes):
            name = p.name if rank == 0 else f"{p.name}.rank{rank}"
            processes.append(
                Process(
                    name, p.role, node, tuple(engine_argv(plan, p, rank)), p.port, rank == 0,
                    p.bootstrap_port if p.role == "prefill" else None,
                )
            )  # fmt: skip
    argv, note = router_argv(plan, placements)
    processes.append(Process("router", "router", 0, tuple(argv), plan.ports.router))
    notes = tuple(n for n in (note, flags.int4_note(plan.dtype)) if n)
    versions = {"sglang": flags.SGLANG.version, "sglang-router": flags.SGLANG_ROUTER.version}
    files = {"hosts.env": hosts_env(num_nodes)}
    for node in range(num_nodes):
        mine = [(p.name, shell_command(p.argv)) for p in processes if p.node == node and p.role != "router"]
        files[f"node-{node}.sh"] = node_script("sglang", node, num_nodes, mine, versions)
    files["router.sh"] = router_script("sglang", shell_command(argv), versions, num_nodes)
    files["README.md"] = readme("sglang", plan, placements, num_nodes, notes, versions)
    return Bundle("sglang", files, tuple(processes), notes, versions)


# --- the way back: scripts -> plan ---------------------------------------------------------------
def commands_in(text: str) -> list[list[str]]:
    """The commands of a generated script (continuation lines joined, output redirection dropped)."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["exec"]:
            words = words[1:]
        if len(words) >= 3 and words[0] == "python3" and words[1] == "-m":
            while words and (words[-1] in ("&", "2>&1") or words[-1].startswith(">")):
                words.pop()
            if len(words) >= 2 and words[-2] == ">":
                words = words[:-2]
            out.append(words)
    return out


def parse_bundle(files: Mapping[str, str]) -> TargetPlan:
    """Read a ``--target sglang`` bundle back into the plan it launches (pools, router, settings).

    Raises:
        DeployError: a flag outside the table, or instances of one role that differ.
    """
    engines, router = [], None
    for name in sorted(files):
        if not name.endswith(".sh"):
            continue
        for words in commands_in(files[name]):
            if words[2] == "sglang.launch_server":
                engines.append(dict(_pairs(flags.SGLANG, words[3:])))
            elif words[2] == "sglang_router.launch_router":
                router = dict(_pairs(flags.SGLANG_ROUTER, words[3:]))
    if router is None or not engines:
        raise DeployError("not an sglang bundle: no router or no engine command found")
    leaders = [e for e in engines if e.get("--node-rank", ["0"]) == ["0"]]
    by_role: dict[str, list[dict[str, list[str]]]] = {}
    for e in leaders:
        by_role.setdefault(e.get("--disaggregation-mode", ["null"])[0], []).append(e)
    mode = "colocated" if "null" in by_role else "disaggregated"
    pools: list[tuple[str, Pool]] = []
    parallel: dict[str, RoleParallel] = {}
    gpus_per_node = 8
    for role_flag, role in (("prefill", "prefill"), ("decode", "decode"), ("null", "colocated")):
        group = by_role.get(role_flag)
        if not group:
            continue
        shapes = {tuple(sorted((k, tuple(v)) for k, v in e.items() if k in _SHAPE)) for e in group}
        if len(shapes) > 1:
            raise DeployError(f"{role} instances differ in their settings; a plan pool has one shape")
        e = group[0]
        pools.append((role, _pool(role, e, len(group))))
        par = RoleParallel(
            int(_one(e, "--dp-size", 1)), int(_one(e, "--ep-size", 1)), "--enable-dp-attention" in e
        )
        if par != RoleParallel():
            parallel[role] = par
        if "--nnodes" in e:
            width = int(_one(e, "--tp-size", 1)) * int(_one(e, "--pp-size", 1))
            gpus_per_node = width // int(_one(e, "--nnodes", 1))
    first = leaders[0]
    backend = _one(first, "--disaggregation-transfer-backend", "mooncake")
    store = "mooncake" if any(e.get("--hicache-storage-backend") == ["mooncake"] for e in engines) else None
    settings = LaunchSettings(
        str(_one(first, "--model-path", "")), str(backend), gpus_per_node, store, parallel
    )
    reverse = {policy: name for name, (policy, _note) in flags.SGLANG_ROUTER_POLICIES.items()}
    dtype = "fp8" if _one(first, "--quantization", "") == "fp8" else first.get("--dtype", [None])[0]
    return TargetPlan(
        mode=mode,
        model=settings.model_path or "",
        pools=tuple(pools),
        router=reverse[_one(router, "--policy", "round_robin")],
        mem_fraction=float(_one(first, "--mem-fraction-static", 0.9)),
        settings=settings,
        dtype=dtype,
        kv_dtype="fp8" if _one(first, "--kv-cache-dtype", "auto").startswith("fp8") else None,
    )


_SHAPE = (
    "--tp-size", "--pp-size", "--dp-size", "--ep-size", "--enable-dp-attention", "--max-running-requests",
    "--max-prefill-tokens", "--chunked-prefill-size", "--max-total-tokens", "--mem-fraction-static",
)  # fmt: skip


def _pairs(table: flags.FlagTable, args: list[str]) -> list[tuple[str, list[str]]]:
    pairs = flags.flag_values(table, args)
    seen = [f for f, _ in pairs if f not in ("--prefill", "--decode")]
    if len(seen) != len(set(seen)):
        raise DeployError(f"{table.engine}: a flag is given twice in {' '.join(args)}")
    if table is flags.SGLANG_ROUTER:  # --prefill/--decode repeat: keep them all
        merged: dict[str, list[str]] = {}
        for f, v in pairs:
            merged.setdefault(f, []).extend(v)
        return list(merged.items())
    return pairs


def _one(e: Mapping[str, list[str]], flag: str, default: object) -> str:
    values = e.get(flag)
    return values[0] if values else str(default)


def _pool(role: str, e: Mapping[str, list[str]], instances: int) -> Pool:
    tp, pp = int(_one(e, "--tp-size", 1)), int(_one(e, "--pp-size", 1))
    batch = int(_one(e, "--max-running-requests", 0))
    chunk = int(_one(e, "--chunked-prefill-size", -1))
    kv = int(_one(e, "--max-total-tokens", 0)) or None
    if role == "prefill":
        tokens = int(_one(e, "--max-prefill-tokens", 16384))
        return PrefillPool(instances, tp, tokens, batch, chunk if chunk > 0 else None, pp=pp)
    if role == "decode":
        return DecodePool(instances, tp, batch, kv, pp=pp)
    tokens = int(_one(e, "--max-prefill-tokens", 16384))
    reuse = "--disable-radix-cache" not in e
    if chunk > 0:
        return ColocatedPool(
            instances, tp, "chunked", batch, tokens, chunk, kv, reuse_preempted_kv=reuse, pp=pp
        )
    return ColocatedPool(
        instances, tp, "prefill-first", batch, tokens, max_kv_tokens=kv, reuse_preempted_kv=reuse, pp=pp
    )

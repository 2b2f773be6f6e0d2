"""``--target vllm``: a plan as ``vllm serve`` commands, one script per node, and the front end.

Plan → vLLM (each flag checked against ``flags.VLLM``):

- ``tp`` (GPUs per stage) → ``--tensor-parallel-size``; ``pp`` > 1 → ``--pipeline-parallel-size``
  (an instance inside one node; vLLM runs stages on other nodes only on a Ray cluster,
  ``examples/online_serving/multi-node-serving.sh``, which this target does not write); with DP
  attention ``--data-parallel-size dp`` and TP ``tp/dp`` (the same GPUs); ``launch.<role>.ep`` →
  ``--enable-expert-parallel`` (vLLM's EP spans every GPU of the instance, so only ep = tp is expressible);
- ``max_batch_size`` → ``--max-num-seqs``; chunked → ``--enable-chunked-prefill
  --max-num-batched-tokens chunk``, not chunked → ``--no-enable-chunked-prefill
  --max-num-batched-tokens max_batch_tokens --max-model-len max_batch_tokens`` (vLLM requires the
  context within the batch budget without chunking; said in the README's notes);
- ``max_kv_tokens`` → ``--block-size 16 --num-gpu-blocks-override ceil(tokens/16)``;
- colocated ``reuse_preempted_kv: false`` → ``--no-enable-prefix-caching``;
- plan ``dtype`` / ``kv_dtype`` → ``--dtype`` (float types) or ``--quantization fp8``, and
  ``--kv-cache-dtype fp8`` (int4 needs an int4 checkpoint: a note);
  ``gpu_memory_utilisation`` → ``--gpu-memory-utilization``;
- a disaggregated role → ``--kv-transfer-config`` with ``kv_connector`` NixlConnector or
  MooncakeConnector and ``kv_role`` kv_producer (prefill) or kv_consumer (decode);
- placement → ``CUDA_VISIBLE_DEVICES`` (vLLM has no base-GPU flag), ``--port``, and per instance a
  NIXL side-channel port / Mooncake bootstrap port (``VLLM_NIXL_SIDE_CHANNEL_PORT``,
  ``VLLM_MOONCAKE_BOOTSTRAP_PORT``).

The front: disaggregated plans go through vLLM's own proxy (``toy_proxy_server.py`` from vLLM's source
tree, round-robin only); colocated plans through sglang-router's regular mode (``--worker-urls``),
which routes OpenAI requests to any server with ``/health``.

Not expressible, so an error: a KV store (``launch.kv_store``), EP other than the whole instance, an
instance across nodes without DP attention (vLLM needs a Ray cluster for that), a router policy the
front does not have.
"""

from __future__ import annotations

import json
import math

from pdplan.profiles.engine import VLLM_GPU_MEMORY_UTILIZATION
from pdplan.profiles.errors import DeployError
from pdplan.realrun.targets import flags
from pdplan.realrun.targets.bundle import Bundle, Process, shell_command
from pdplan.realrun.targets.layout import Placement, TargetPlan, check_model_path, node_var, place
from pdplan.realrun.targets.scripts import hosts_env, node_script, readme, router_script
from pdplan.sim.cluster import ColocatedPool, PrefillPool

BLOCK_TOKENS = 16  # vLLM's default KV block size on CUDA
NIXL_SIDE_PORT, MOONCAKE_BOOTSTRAP_PORT = 5600, 8998  # vLLM defaults 5557 / 8998; one range per slot
PROXY_PATH = "${VLLM_SRC}/tests/v1/kv_connector/nixl_integration/toy_proxy_server.py"


def engine_process(plan: TargetPlan, p: Placement, rank: int) -> Process:
    """``vllm serve`` for rank ``rank`` (node) of instance ``p``, with its environment (checked)."""
    pool, par = p.pool, p.parallel
    node = p.nodes[rank]
    host = f"${{{node_var(node)}}}"
    if plan.settings.kv_store:
        raise DeployError(
            f"launch.kv_store={plan.settings.kv_store}: the vllm target writes no KV store connector"
        )
    if par.ep not in (1, pool.tp):
        raise DeployError(
            f"launch.{p.role}.ep={par.ep}: vLLM's --enable-expert-parallel spans all {pool.tp} GPUs of the "
            "instance; only ep=1 or ep=tp can be expressed"
        )
    args = ["--host", host, "--port", str(p.port)]
    dp = par.dp if par.dp_attention else 1
    args += ["--tensor-parallel-size", str(pool.tp // dp)]
    if pool.pp > 1:
        if len(p.nodes) > 1:
            raise DeployError(
                f"{p.role}: tp={pool.tp} × pp={pool.pp} spans {len(p.nodes)} nodes: vLLM runs pipeline "
                "stages across nodes only on a Ray cluster, which this target does not write; "
                "use --target sglang"
            )
        args += ["--pipeline-parallel-size", str(pool.pp)]
    if len(p.nodes) > 1:
        if not par.dp_attention:
            raise DeployError(
                f"{p.role}.tp={pool.tp} spans {len(p.nodes)} nodes: vLLM runs TP across nodes only on a Ray "
                "cluster, which this target does not write; use DP attention (launch.<role>.dp_attention)"
            )
        local = dp // len(p.nodes)
        args += ["--data-parallel-size", str(dp), "--data-parallel-size-local", str(local)]
        args += [
            "--data-parallel-address",
            f"${{{node_var(p.nodes[0])}}}",
            "--data-parallel-rpc-port",
            str(p.dist_port),
        ]
        if rank:
            args += ["--headless", "--data-parallel-start-rank", str(rank * local)]
    elif dp > 1:
        args += ["--data-parallel-size", str(dp)]
    if par.ep > 1:
        args.append("--enable-expert-parallel")
    fraction = plan.mem_fraction if plan.mem_fraction is not None else VLLM_GPU_MEMORY_UTILIZATION
    args += ["--max-num-seqs", str(pool.max_batch_size), "--gpu-memory-utilization", f"{fraction:g}"]
    if isinstance(pool, ColocatedPool) and not pool.reuse_preempted_kv:
        args.append("--no-enable-prefix-caching")  # the plan was simulated without the prefix cache
    args += flags.dtype_flags(plan.dtype, plan.kv_dtype, kv_fp8="fp8")
    chunk = pool.chunk_tokens if isinstance(pool, PrefillPool) else None
    if isinstance(pool, ColocatedPool) and pool.policy == "chunked":
        chunk = pool.chunk_tokens
    if isinstance(pool, (PrefillPool, ColocatedPool)):
        if chunk:
            args += [
                "--enable-chunked-prefill",
                "--max-num-batched-tokens",
                str(min(chunk, pool.max_batch_tokens)),
            ]
        else:
            # vLLM refuses max_num_batched_tokens < max_model_len without chunking
            # (SchedulerConfig._verify_args), so the context is capped at the prefill budget
            tokens = str(pool.max_batch_tokens)
            args += [
                "--no-enable-chunked-prefill",
                "--max-num-batched-tokens",
                tokens,
                "--max-model-len",
                tokens,
            ]
    if not isinstance(pool, PrefillPool) and pool.max_kv_tokens is not None:
        blocks = math.ceil(pool.max_kv_tokens / BLOCK_TOKENS)
        args += ["--block-size", str(BLOCK_TOKENS), "--num-gpu-blocks-override", str(blocks)]
    env = [
        ("CUDA_VISIBLE_DEVICES", ",".join(str(g) for g in range(p.base_gpu, p.base_gpu + p.gpus_per_node)))
    ]
    if p.role in ("prefill", "decode"):
        backend = plan.settings.transfer_backend
        config = {"kv_connector": flags.VLLM_CONNECTORS[backend], "kv_role": flags.VLLM_KV_ROLES[p.role]}
        args += ["--kv-transfer-config", json.dumps(config, separators=(",", ":"))]
        if backend == "nixl":
            env += [
                ("VLLM_NIXL_SIDE_CHANNEL_HOST", host),
                ("VLLM_NIXL_SIDE_CHANNEL_PORT", str(NIXL_SIDE_PORT + 100 * p.slot)),
            ]
        elif p.role == "prefill":
            env.append(("VLLM_MOONCAKE_BOOTSTRAP_PORT", str(MOONCAKE_BOOTSTRAP_PORT + p.slot)))
    flags.check_argv(flags.VLLM, args)
    name = p.name if rank == 0 else f"{p.name}.rank{rank}"
    argv = (*flags.VLLM.entry, plan.model_path, *args)
    return Process(name, p.role, node, argv, p.port, rank == 0, None, tuple(env))


def front_argv(plan: TargetPlan, placements: tuple[Placement, ...]) -> tuple[list[str], str, dict[str, str]]:
    """The proxy (disaggregated) or router (colocated) command, its script name and engine versions."""
    host = f"${{{node_var(0)}}}"
    if plan.mode == "colocated":
        policy, note = flags.SGLANG_ROUTER_POLICIES[plan.router]
        if note:
            raise DeployError(
                f"plan router {plan.router!r}: {note}; set router: round_robin or random to deploy"
            )
        urls = [f"http://${{{node_var(p.nodes[0])}}}:{p.port}" for p in placements]
        args = ["--worker-urls", *urls, "--policy", policy, "--host", host, "--port", str(plan.ports.router)]
        flags.check_argv(flags.SGLANG_ROUTER, args)
        return (
            [*flags.SGLANG_ROUTER.entry, *args],
            "router.sh",
            {"sglang-router": flags.SGLANG_ROUTER.version},
        )
    if plan.router != "round_robin":
        raise DeployError(
            f"plan router {plan.router!r}: vLLM's disaggregation proxy routes round-robin only; set "
            "router: round_robin in plan.yaml (and re-simulate) to deploy on vllm"
        )
    args = ["--host", host, "--port", str(plan.ports.router)]
    for role, key in (("prefill", "prefiller"), ("decode", "decoder")):
        mine = [p for p in placements if p.role == role]
        args += [f"--{key}-hosts", *(f"${{{node_var(p.nodes[0])}}}" for p in mine)]
        args += [f"--{key}-ports", *(str(p.port) for p in mine)]
    flags.check_argv(flags.VLLM_PROXY, args)
    return ["python3", PROXY_PATH, *args], "proxy.sh", {}


def build(plan: TargetPlan) -> Bundle:
    """Scripts per node, the front script, ``hosts.env`` and a README for ``plan`` on vLLM.

    Raises:
        ConfigError / DeployError: the plan cannot be expressed (each names the field or flag).
    """
    check_model_path(plan)
    placements, num_nodes = place(plan)
    processes = [engine_process(plan, p, rank) for p in placements for rank in range(len(p.nodes))]
    argv, front, extra = front_argv(plan, placements)
    versions = {"vllm": flags.VLLM.version, **extra}
    notes = []
    for p in placements:
        kv = getattr(p.pool, "max_kv_tokens", None)
        if kv is not None and kv % BLOCK_TOKENS:
            notes.append(
                f"{p.role}.max_kv_tokens={kv} rounds up to {math.ceil(kv / BLOCK_TOKENS)} blocks of 16"
            )
            break
    for p in placements:
        cmd = next(q.argv for q in processes if q.name == p.name)
        if "--no-enable-chunked-prefill" in cmd and isinstance(p.pool, (PrefillPool, ColocatedPool)):
            notes.append(
                f"{p.role}: without chunked prefill vLLM needs --max-model-len ≤ --max-num-batched-tokens, "
                f"so prompt + output is capped at {p.pool.max_batch_tokens} tokens (the plan caps the prompt)"
            )
            break
    if front == "proxy.sh":
        notes.append("proxy.sh runs vLLM's toy_proxy_server.py from a vLLM source checkout: set VLLM_SRC")
    if flags.int4_note(plan.dtype):
        notes.append(flags.int4_note(plan.dtype))
    processes.append(
        Process("router" if front == "router.sh" else "proxy", "router", 0, tuple(argv), plan.ports.router)
    )
    files = {"hosts.env": hosts_env(num_nodes)}
    for node in range(num_nodes):
        mine = [
            (p.name, shell_command(p.argv, p.env)) for p in processes if p.node == node and p.role != "router"
        ]
        files[f"node-{node}.sh"] = node_script("vllm", node, num_nodes, mine, versions)
    files[front] = router_script("vllm", shell_command(argv), versions, num_nodes, what=front[:-3])
    files["README.md"] = readme("vllm", plan, placements, num_nodes, notes, versions, front=front)
    return Bundle("vllm", files, tuple(processes), tuple(notes), versions)

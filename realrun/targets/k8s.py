"""``--target k8s --flavor rbg|lws``: a plan as Kubernetes manifests.

- ``rbg``: one ``RoleBasedGroup`` (``workloads.x-k8s.io/v1alpha2``) with a ``router`` role and one role
  per plan pool (``prefill``/``decode`` or ``backend``), replicas = instances; an instance that spans
  nodes uses ``leaderWorkerPattern`` (size = nodes), else ``standalonePattern``; a ``mooncake-master``
  role when the plan uses a Mooncake KV store. Shapes follow ``sgl-project/rbg
  examples/inference/{pd-disagg-standalone,pd-disagg-leader-worker,pd-disagg-kvcache-reuse-with-mooncake}``.
- ``lws``: one ``LeaderWorkerSet`` (``leaderworkerset.x-k8s.io/v1``) per pool (size = nodes per
  instance) as in ``kubernetes-sigs/lws docs/examples/sglang/lws.yaml``, plus the router as a
  ``Deployment``; a ``Service`` in front of the router in both flavors.

Each engine pod runs the engine command of ``--target sglang`` / ``vllm`` with in-cluster addressing:
``--host 0.0.0.0`` (the pod network), port 8000, KV bootstrap 8998, rendezvous at the leader's
address from the controller's environment (``$(RBG_LWP_LEADER_ADDRESS)`` / ``$(LWS_LEADER_ADDRESS)``,
group size, worker index). GPUs are requested as ``nvidia.com/gpu`` per pod; pods land on the plan's
GPU model through the GPU feature discovery label ``nvidia.com/gpu.product``; readiness and liveness
probes hit the engine's ``/health`` (the leader's, for multi-node instances).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from pdplan.profiles.errors import ConfigError, DeployError
from pdplan.realrun.targets import flags, sglang, vllm
from pdplan.realrun.targets.bundle import Bundle
from pdplan.realrun.targets.layout import Placement, TargetPlan, check_model_path, place

FLAVORS = ("rbg", "lws")
ENGINES = ("sglang", "vllm")
POD_PORT, POD_BOOTSTRAP, POD_DIST = 8000, 8998, 5000
#: plan hardware -> GPU feature discovery's nvidia.com/gpu.product (the nvidia-smi name, dashes for spaces)
GPU_PRODUCTS = {
    "h100-sxm": "NVIDIA-H100-80GB-HBM3",
    "h100-pcie": "NVIDIA-H100-PCIe",
    "h200": "NVIDIA-H200",
    "a100-80g": "NVIDIA-A100-SXM4-80GB",
    "a100-40g": "NVIDIA-A100-SXM4-40GB",
    "l40s": "NVIDIA-L40S",
}
_ENV = {
    "rbg": ("RBG_LWP_LEADER_ADDRESS", "RBG_LWP_GROUP_SIZE", "RBG_LWP_WORKER_INDEX"),
    "lws": ("LWS_LEADER_ADDRESS", "LWS_GROUP_SIZE", "LWS_WORKER_INDEX"),
}


class _NoAliases(yaml.SafeDumper):
    """Spell out repeated values (a shared command list) instead of YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _name(plan: TargetPlan, name: str | None) -> str:
    if name:
        return name
    base = plan.model_path.rstrip("/").rsplit("/", 1)[-1].lower()
    clean = "".join(c if c.isalnum() else "-" for c in base).strip("-")[:40] or "model"
    return f"pdplan-{clean}"


def _engine_command(plan: TargetPlan, p: Placement, engine: str, flavor: str) -> list[str]:
    """The engine's argv for every pod of instance ``p``, with in-cluster addressing."""
    leader_env, size_env, index_env = _ENV[flavor]
    if engine == "vllm":
        if len(p.nodes) > 1:
            raise DeployError(
                f"{p.role}.tp={p.pool.tp} spans nodes: the k8s target writes multi-node instances "
                "for sglang only"
            )
        argv = list(vllm.engine_process(plan, p, 0).argv)
    else:
        argv = sglang.engine_argv(plan, p, 0)
    rewrite = {
        "--host": "0.0.0.0",
        "--port": str(POD_PORT),
        "--disaggregation-bootstrap-port": str(POD_BOOTSTRAP),
        "--base-gpu-id": "0",
        "--dist-init-addr": f"$({leader_env}):{POD_DIST}",
        "--nnodes": f"$({size_env})",
        "--node-rank": f"$({index_env})",
    }
    for i, arg in enumerate(argv[:-1]):
        if arg in rewrite:
            argv[i + 1] = rewrite[arg]
    return argv


def _container(name: str, image: str, argv: list[str], gpus: int, probe: str | None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image, "command": argv}
    container["ports"] = [{"name": "http", "containerPort": POD_PORT}]
    if gpus:
        container["resources"] = {
            "limits": {"nvidia.com/gpu": str(gpus)},
            "requests": {"nvidia.com/gpu": str(gpus)},
        }
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if probe:
        container.update(_probes(probe))
    return container


def _probes(path: str) -> dict[str, Any]:
    def get() -> dict[str, Any]:  # a fresh mapping per probe: no YAML anchors in the output
        return {"path": path, "port": POD_PORT}

    return {
        "readinessProbe": {"httpGet": get(), "initialDelaySeconds": 30, "periodSeconds": 10},
        "livenessProbe": {
            "httpGet": get(),
            "initialDelaySeconds": 300,
            "periodSeconds": 30,
            "failureThreshold": 5,
        },
    }


def _pod_spec(containers: list[dict[str, Any]], plan: TargetPlan, gpus: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if gpus:
        spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
        product = GPU_PRODUCTS.get(plan.hardware)
        if product:
            spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return spec


def _role_name(role: str) -> str:
    return "backend" if role == "colocated" else role


def _router_argv(plan: TargetPlan, engine: str, urls: dict[str, list[str]]) -> list[str]:
    """The front for in-cluster URLs (``urls``: role -> instance URLs)."""
    if engine == "vllm" and plan.mode == "disaggregated":
        raise DeployError(
            "vllm's disaggregation proxy is a test script, not an image: use --engine sglang on k8s"
        )
    policy, _note = flags.SGLANG_ROUTER_POLICIES[plan.router]
    args: list[str] = []
    if plan.mode == "disaggregated":
        args.append("--pd-disaggregation")
        for url in urls["prefill"]:
            args += ["--prefill", url, str(POD_BOOTSTRAP)]
        for url in urls["decode"]:
            args += ["--decode", url]
    else:
        args += ["--worker-urls", *urls["colocated"]]
    args += ["--policy", policy, "--host", "0.0.0.0", "--port", str(POD_PORT)]
    flags.check_argv(flags.SGLANG_ROUTER, args)
    return [*flags.SGLANG_ROUTER.entry, *args]


def build(plan: TargetPlan, flavor: str, engine: str = "sglang", name: str | None = None) -> Bundle:
    """``manifests.yaml`` (+ README) for ``plan``.

    Raises:
        ConfigError: unknown flavor or engine. DeployError: what the manifests cannot express.
    """
    if flavor not in FLAVORS:
        raise ConfigError(f"--flavor {flavor!r}; expected one of {list(FLAVORS)}")
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}; expected one of {list(ENGINES)}")
    check_model_path(plan)
    group = _name(plan, name)
    placements, _nodes = place(plan)
    firsts: dict[str, Placement] = {}
    for p in placements:  # one template per pool: instance 0 with in-pod addressing
        firsts.setdefault(p.role, replace(p, base_gpu=0, slot=0))
    table = flags.SGLANG if engine == "sglang" else flags.VLLM
    docs = (_rbg if flavor == "rbg" else _lws)(plan, group, firsts, engine, table)
    notes = []
    if plan.hardware not in GPU_PRODUCTS:
        notes.append(f"hardware {plan.hardware!r} has no GPU product label: pods carry no nodeSelector")
    if plan.router != "round_robin" and flags.SGLANG_ROUTER_POLICIES[plan.router][1]:
        notes.append(flags.SGLANG_ROUTER_POLICIES[plan.router][1])
    versions = {engine: table.version, "sglang-router": flags.SGLANG_ROUTER.version}
    text = (
        f"# Written by pdplan deploy --target k8s --flavor {flavor}; engine versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; images {table.image}, {flags.SGLANG_ROUTER.image}.\n"
    )
    text += yaml.dump_all(docs, Dumper=_NoAliases, sort_keys=False)
    readme = [
        f"# {plan.mode} deployment of {plan.model_path} on Kubernetes ({flavor})",
        "",
        f"`kubectl apply -f manifests.yaml`; the endpoint is the `{group}` Service, port {POD_PORT}.",
        "",
        *(f"- {n}" for n in notes),
        "",
    ]
    return Bundle("k8s", {"manifests.yaml": text, "README.md": "\n".join(readme)}, (), tuple(notes), versions)


def _urls(plan: TargetPlan, group: str, flavor: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for role, pool in plan.pools:
        r = _role_name(role)
        if flavor == "rbg":  # the examples' per-instance DNS: <group>-<role>-<i>.s-<group>-<role>
            out[role] = [f"http://{group}-{r}-{i}.s-{group}-{r}:{POD_PORT}" for i in range(pool.instances)]
        else:  # LWS leader pods: <lws>-<i> under the headless service <lws>
            out[role] = [f"http://{group}-{r}-{i}.{group}-{r}:{POD_PORT}" for i in range(pool.instances)]
    return out


def _rbg(
    plan: TargetPlan, group: str, firsts: dict[str, Placement], engine: str, table: flags.FlagTable
) -> list[Any]:
    urls = _urls(plan, group, "rbg")
    router = _container("router", flags.SGLANG_ROUTER.image, _router_argv(plan, engine, urls), 0, "/health")
    roles: list[dict[str, Any]] = []
    if plan.settings.kv_store == "mooncake":
        roles.append(_mooncake_master(group))
    engine_roles = [_role_name(r) for r, _ in plan.pools]
    roles.append(
        {
            "name": "router",
            "replicas": 1,
            "dependencies": engine_roles,
            "standalonePattern": {"template": {"spec": _pod_spec([router], plan, 0)}},
        }
    )
    for role, pool in plan.pools:
        p = firsts[role]
        argv = _engine_command(plan, p, engine, "rbg")
        spec: dict[str, Any] = {"name": _role_name(role), "replicas": pool.instances}
        if plan.settings.kv_store == "mooncake":
            spec["dependencies"] = ["mooncake-master"]
        if len(p.nodes) == 1:
            c = _container(engine, table.image, argv, p.gpus_per_node, "/health")
            _mooncake_env(plan, group, role, c)
            spec["standalonePattern"] = {"template": {"spec": _pod_spec([c], plan, p.gpus_per_node)}}
        else:
            c = _container(engine, table.image, argv, p.gpus_per_node, None)
            _mooncake_env(plan, group, role, c)
            leader = {"spec": {"containers": [{"name": engine, **_probes("/health")}]}}
            spec["leaderWorkerPattern"] = {
                "size": len(p.nodes),
                "template": {"spec": _pod_spec([c], plan, p.gpus_per_node)},
                "leaderTemplatePatch": leader,
            }
        roles.append(spec)
    rbg = {
        "apiVersion": "workloads.x-k8s.io/v1alpha2",
        "kind": "RoleBasedGroup",
        "metadata": {"name": group, "labels": {"app.kubernetes.io/managed-by": "pdplan"}},
        "spec": {"roles": roles},
    }
    selector = {"rbg.workloads.x-k8s.io/group-name": group, "rbg.workloads.x-k8s.io/role-name": "router"}
    return [rbg, _service(group, selector)]


def _mooncake_master(group: str) -> dict[str, Any]:
    argv = [
        "mooncake_master", "--rpc_port", "50051", "--enable_http_metadata_server",
        "--http_metadata_server_port", "8080",
    ]  # fmt: skip
    probe = {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 10, "periodSeconds": 10}
    c = {
        "name": "mooncake-master",
        "image": flags.SGLANG.image,
        "command": argv,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": probe,
    }
    return {
        "name": "mooncake-master",
        "replicas": 1,
        "standalonePattern": {"template": {"spec": {"containers": [c]}}},
    }


def _mooncake_env(plan: TargetPlan, group: str, role: str, container: dict[str, Any]) -> None:
    if plan.settings.kv_store != "mooncake" or role == "decode":
        return
    master = f"s-{group}-mooncake-master"
    container["env"] = [
        {"name": "MOONCAKE_MASTER", "value": f"{master}:50051"},
        {"name": "MOONCAKE_TE_META_DATA_SERVER", "value": f"http://{master}:8080/metadata"},
        {"name": "MOONCAKE_PROTOCOL", "value": "rdma"},
    ]


def _service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "pdplan"}},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP", "targetPort": POD_PORT}],
        },
    }


def _lws(
    plan: TargetPlan, group: str, firsts: dict[str, Placement], engine: str, table: flags.FlagTable
) -> list[Any]:
    if plan.settings.kv_store:
        raise DeployError("launch.kv_store: the lws flavor writes no Mooncake master; use --flavor rbg")
    docs: list[Any] = []
    for role, pool in plan.pools:
        p = firsts[role]
        name = f"{group}-{_role_name(role)}"
        argv = _engine_command(plan, p, engine, "lws")
        gpus = p.gpus_per_node
        leader = _container(engine, table.image, argv, gpus, "/health")
        template: dict[str, Any] = {"size": len(p.nodes), "restartPolicy": "RecreateGroupOnPodRestart"}
        template["leaderTemplate"] = {
            "metadata": {"labels": {"role": "leader"}},
            "spec": _pod_spec([leader], plan, gpus),
        }
        if len(p.nodes) > 1:
            worker = _container(engine, table.image, argv, gpus, None)
            template["workerTemplate"] = {"spec": _pod_spec([worker], plan, gpus)}
        else:
            template["workerTemplate"] = {"spec": _pod_spec([dict(leader)], plan, gpus)}
        docs.append(
            {
                "apiVersion": "leaderworkerset.x-k8s.io/v1",
                "kind": "LeaderWorkerSet",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "pdplan"}},
                "spec": {"replicas": pool.instances, "leaderWorkerTemplate": template},
            }
        )
    urls = _urls(plan, group, "lws")
    router = _container("router", flags.SGLANG_ROUTER.image, _router_argv(plan, engine, urls), 0, "/health")
    labels = {"app.kubernetes.io/name": group, "app.kubernetes.io/component": "router"}
    docs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{group}-router", "labels": {"app.kubernetes.io/managed-by": "pdplan"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [router]}},
            },
        }
    )
    docs.append(_service(group, labels))
    return docs

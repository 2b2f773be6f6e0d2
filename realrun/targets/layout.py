"""What a launch target needs from a plan, and where every instance runs (nodes, GPUs, ports).

``TargetPlan`` is the part of ``plan.yaml`` a launch carries (the CLI builds it, so ``realrun`` does not
import the planner). ``LaunchSettings`` is the plan's optional ``launch:`` section — what the search does
not decide but an engine needs: the model path on the nodes, the KV transfer backend, GPUs per node, a
KV store, and per-role DP/EP::

    launch:
      model_path: meta-llama/Llama-3.1-70B-Instruct   # default: the plan's model, when it is a path
      transfer_backend: mooncake                      # mooncake | nixl
      gpus_per_node: 8
      kv_store: mooncake                              # HiCache on a Mooncake store (SGLang); optional
      decode: {dp: 16, ep: 16, dp_attention: true}    # per role; default dp=1, ep=1, no DP attention

An instance uses ``tp × pp`` GPUs (with DP attention, SGLang's attention DP ranks live inside those TP
GPUs, so the plan's GPU count holds; ``pp`` pipeline stages of ``tp`` GPUs each, one per node when
they span nodes). :func:`place` packs instances onto nodes first-fit, never splitting an instance
that fits on one node; an instance larger than a node spans whole nodes (``tp × pp`` a multiple of
``gpus_per_node``). Ports are fixed and readable: instance ``k`` of a node serves on ``30000 + k`` with
its KV bootstrap on ``8998 + k`` (SGLang's default bootstrap port) and, across nodes, its
``torch.distributed`` rendezvous on ``5000 + k``; the router listens on node 0, port 8000 (``Ports``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.cluster import ColocatedPool, DecodePool, PrefillPool

Pool = PrefillPool | DecodePool | ColocatedPool
ROLES = ("prefill", "decode", "colocated")
TRANSFER_BACKENDS = ("mooncake", "nixl")
KV_STORES = ("mooncake",)
ENGINE_PORT, BOOTSTRAP_PORT, DIST_PORT, ROUTER_PORT = 30000, 8998, 5000, 8000


@dataclass(frozen=True)
class Ports:
    """First port of each kind on a node; instance ``k`` of a node adds ``k``."""

    engine: int = ENGINE_PORT
    bootstrap: int = BOOTSTRAP_PORT
    dist: int = DIST_PORT
    router: int = ROUTER_PORT


@dataclass(frozen=True)
class RoleParallel:
    """Data and expert parallelism inside one instance of a role."""

    dp: int = 1
    ep: int = 1
    dp_attention: bool = False


@dataclass(frozen=True)
class LaunchSettings:
    """The plan's ``launch:`` section (see the module docstring)."""

    model_path: str | None = None
    transfer_backend: str = "mooncake"
    gpus_per_node: int = 8
    kv_store: str | None = None
    parallel: Mapping[str, RoleParallel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.transfer_backend not in TRANSFER_BACKENDS:
            raise choices_error("launch.transfer_backend", self.transfer_backend, TRANSFER_BACKENDS)
        if self.kv_store is not None and self.kv_store not in KV_STORES:
            raise choices_error("launch.kv_store", self.kv_store, KV_STORES)
        if not _positive_int(self.gpus_per_node):
            raise ConfigError(f"launch.gpus_per_node={self.gpus_per_node!r}; expected an integer ≥ 1")

    def role(self, role: str) -> RoleParallel:
        return self.parallel.get(role, RoleParallel())

    def to_dict(self) -> dict[str, Any]:
        """The ``launch:`` mapping, defaults left out."""
        out: dict[str, Any] = {}
        if self.model_path:
            out["model_path"] = self.model_path
        if self.transfer_backend != "mooncake":
            out["transfer_backend"] = self.transfer_backend
        if self.gpus_per_node != 8:
            out["gpus_per_node"] = self.gpus_per_node
        if self.kv_store:
            out["kv_store"] = self.kv_store
        for role in ROLES:
            par = self.parallel.get(role)
            if par is not None and par != RoleParallel():
                out[role] = {f.name: getattr(par, f.name) for f in fields(par)}
        return out


SETTINGS_KEYS = ("model_path", "transfer_backend", "gpus_per_node", "kv_store", *ROLES)


def launch_from_dict(raw: Any, source: str = "plan") -> LaunchSettings:
    """A ``LaunchSettings`` from the plan's ``launch:`` mapping (strict: unknown keys are errors)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: launch must be a mapping with keys {list(SETTINGS_KEYS)}")
    unknown = [k for k in raw if k not in SETTINGS_KEYS]
    if unknown:
        raise ConfigError(f"{source}: launch: unknown keys {unknown}; valid: {list(SETTINGS_KEYS)}")
    parallel = {}
    valid = [f.name for f in fields(RoleParallel)]
    for role in ROLES:
        if raw.get(role) is None:
            continue
        section = raw[role]
        if not isinstance(section, Mapping) or any(k not in valid for k in section):
            raise ConfigError(f"{source}: launch.{role} must be a mapping with keys {valid}; got {section!r}")
        par = RoleParallel(**section)
        for key in ("dp", "ep"):
            if not _positive_int(getattr(par, key)):
                raise ConfigError(
                    f"{source}: launch.{role}.{key}={getattr(par, key)!r}; expected an integer ≥ 1"
                )
        if not isinstance(par.dp_attention, bool):
            raise ConfigError(
                f"{source}: launch.{role}.dp_attention={par.dp_attention!r}; expected true or false"
            )
        parallel[role] = par
    kwargs = {k: raw[k] for k in ("model_path", "transfer_backend", "gpus_per_node", "kv_store") if k in raw}
    return LaunchSettings(parallel=parallel, **kwargs)


@dataclass(frozen=True)
class TargetPlan:
    """What a launch carries from the plan: the pools per role (in launch order) and the settings."""

    mode: str
    model: str
    pools: tuple[tuple[str, Pool], ...]
    router: str = "least_loaded"
    mem_fraction: float | None = None  # None: each engine's own default (pdplan.profiles.engine)
    hardware: str = ""
    settings: LaunchSettings = field(default_factory=LaunchSettings)
    ports: Ports = field(default_factory=Ports)
    #: serving weight and KV dtypes the plan was simulated with (None: the checkpoint's own)
    dtype: str | None = None
    kv_dtype: str | None = None

    @property
    def model_path(self) -> str:
        return self.settings.model_path or self.model


@dataclass(frozen=True)
class Placement:
    """One instance: its role, pool, parallelism, the nodes it spans (leader first) and its ports."""

    role: str
    index: int
    pool: Pool
    parallel: RoleParallel
    nodes: tuple[int, ...]
    base_gpu: int
    slot: int  # the instance's index among those whose leader is the same node
    ports: Ports = field(default_factory=Ports)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def gpus(self) -> int:
        return self.pool.tp * self.pool.pp

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // len(self.nodes)

    @property
    def port(self) -> int:
        return self.ports.engine + self.slot

    @property
    def bootstrap_port(self) -> int:
        return self.ports.bootstrap + self.slot

    @property
    def dist_port(self) -> int:
        return self.ports.dist + self.slot


def place(plan: TargetPlan) -> tuple[tuple[Placement, ...], int]:
    """Every instance's nodes, first GPU and ports; and the number of nodes used.

    Raises:
        ConfigError: an instance larger than a node whose TP is not a whole number of nodes; DP
            attention with a TP not divisible by DP; EP that does not divide TP.
    """
    per_node = plan.settings.gpus_per_node
    used: list[int] = []  # GPUs taken on each node
    slots: list[int] = []  # instances led by each node
    out = []
    for role, pool in plan.pools:
        par = plan.settings.role(role)
        _check_parallel(role, pool.tp, par)
        width = pool.tp * pool.pp  # GPUs per instance
        for i in range(pool.instances):
            if width > per_node:
                if width % per_node:
                    shape = f"{role}.tp={pool.tp}" + (f" × pp={pool.pp} = {width}" if pool.pp > 1 else "")
                    raise ConfigError(
                        f"{shape} spans nodes of {per_node} GPUs (launch.gpus_per_node) but is "
                        f"not a multiple of {per_node}"
                    )
                first = len(used)
                span = width // per_node
                used += [per_node] * span
                slots += [1] + [0] * (span - 1)
                nodes = tuple(range(first, first + span))
                out.append(Placement(role, i, pool, par, nodes, 0, 0, plan.ports))
                continue
            node = next((n for n, u in enumerate(used) if u + width <= per_node), len(used))
            if node == len(used):
                used.append(0)
                slots.append(0)
            out.append(Placement(role, i, pool, par, (node,), used[node], slots[node], plan.ports))
            used[node] += width
            slots[node] += 1
    return tuple(out), max(1, len(used))


def _check_parallel(role: str, tp: int, par: RoleParallel) -> None:
    if par.dp > 1 and not par.dp_attention:
        raise ConfigError(
            f"launch.{role}.dp={par.dp} without dp_attention would run {par.dp} replicas of TP {tp} in one "
            f"instance, {par.dp}x the plan's GPUs; express replicas as {role}.instances instead"
        )
    if par.dp_attention and tp % par.dp:
        raise ConfigError(f"launch.{role}: DP attention needs tp ({tp}) divisible by dp ({par.dp})")
    if tp % par.ep:
        raise ConfigError(f"launch.{role}.ep={par.ep}: expert parallelism must divide tp ({tp})")


def check_model_path(plan: TargetPlan) -> None:
    """Raises ConfigError when the plan names a catalog model and no path to the weights is given."""
    path = plan.model_path
    if not path or ("/" not in path and not Path(path).exists()):
        raise ConfigError(
            f"plan model {path!r} is not a model path: give --model-path (a Hugging Face repo id or a "
            "directory on the nodes), or launch.model_path in plan.yaml"
        )


def node_var(node: int) -> str:
    """The shell variable holding a node's address in ``hosts.env``."""
    return f"NODE{node}"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1

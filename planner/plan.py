"""``Plan``: a serving layout and what is predicted for it — ``plan.yaml`` (DESIGN.md schema).

A plan composes the simulator's user-facing types (``PrefillPool``, ``DecodePool``,
``ColocatedPool``, ``KvLink``) with the model and hardware names, the SLO, and the predicted
figures. ``load_plan``/``plan_from_dict`` are strict: unknown keys are errors that list the valid
ones, and every value is checked where the simulator's types are built. ``kv_transfer`` may give
only a known ``link`` label (nvlink, infiniband, roce, pcie, tcp, loopback); the numbers then come
from ``pdplan.profiles.hardware.link_preset``, and numbers given next to a label win.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pdplan.planner.slo import DEFAULT_ATTAINMENT, SLO, parse_slo
from pdplan.profiles.atomic import write_file
from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.profile import Profile
from pdplan.profiles.validate import integer, load_yaml, number
from pdplan.realrun.targets.layout import LaunchSettings, launch_from_dict
from pdplan.sim.cluster import (
    ColocatedCluster,
    ColocatedPool,
    DecodePool,
    DisaggregatedCluster,
    KvLink,
    PrefillPool,
)
from pdplan.sim.costs import colocated_cluster, disaggregated_cluster
from pdplan.sim.prefix_cache import PrefixCache, cache_from_dict, cache_to_dict
from pdplan.sim.router import ROUTERS

SCHEMA_VERSION = 1
MODES = ("disaggregated", "colocated")
PLAN_KEYS = (
    "schema_version",
    "mode",
    "model",
    "hardware",
    "gpus",
    "prefill",
    "decode",
    "colocated",
    "kv_transfer",
    "router",
    "cache",
    "engine",
    "gpu_memory_utilisation",
    "slo",
    "attainment",
    "workload",
    "predicted",
    "feasible",
    "reason",
    "traffic",
    "confirmed",
    "sustained",
    "tie",
    "target",
    "budget",
    "cost",
    "cache_choice",
    "launch",
    "dtype",
    "kv_dtype",
)
#: What a search adds about its promise (free-form, for people and reports; never simulated):
#: how the traffic was judged, the confirmation on the user's replays, whether it lasts on the trace
#: repeated (``pdplan.planner.sustained``), a tie, a target rate's
#: check, the chosen unit scaled to the budget, the cost, and the router/cache tiers chosen.
NOTE_KEYS = ("traffic", "confirmed", "sustained", "tie", "target", "budget", "cost", "cache_choice")
PREDICTED_KEYS = (
    "goodput_rps",
    "goodput_rps_per_gpu",
    "rate_rps",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p90_ms",
    "tpot_p99_ms",
    "attainment",
)
#: Largest plan values: 100k instances, TP 1024, 10M-token batches and KV budgets.
_MAX_SIZE = {
    "instances": 100_000,
    "tp": 1024,
    "max_batch_size": 1_000_000,
    "max_batch_tokens": 10_000_000,
    "max_kv_tokens": 10**12,
    "chunk_tokens": 10_000_000,
    "pp": 1024,
}
_SECTIONS: dict[str, type] = {"prefill": PrefillPool, "decode": DecodePool, "colocated": ColocatedPool}


@dataclass(frozen=True)
class Plan:
    """One serving layout. ``prefill``/``decode``/``kv_transfer`` are set in ``disaggregated``
    mode and ``colocated`` in ``colocated`` mode (an infeasible plan, ``feasible=False``, may
    have none). ``gpus`` is derived from the pools."""

    mode: str
    prefill: PrefillPool | None = None
    decode: DecodePool | None = None
    colocated: ColocatedPool | None = None
    kv_transfer: KvLink | None = None
    model: str = ""
    hardware: str = ""
    router: str = "least_loaded"
    #: the prefix cache and its KV tiers (``cache:``; ``pdplan.sim.prefix_cache``), simulated
    #: when the workload names its prompts' prefixes
    cache: PrefixCache | None = None
    #: the serving engine (pdplan.profiles.engine): its KV sizing; its step overhead is in the profile
    engine: str = "vllm"
    #: the engine's memory fraction (vLLM gpu_memory_utilization, SGLang mem_fraction_static);
    #: None: the engine's default
    gpu_memory_utilisation: float | None = None
    slo: SLO | None = None
    attainment: float = DEFAULT_ATTAINMENT
    workload: str | dict[str, Any] | None = None
    predicted: dict[str, float | None] = field(default_factory=dict)
    feasible: bool = True
    reason: str = ""
    notes: dict[str, Any] = field(default_factory=dict)  # NOTE_KEYS
    #: optional ``launch:`` section for engine targets (``pdplan.realrun.targets.layout.LaunchSettings``)
    launch: LaunchSettings | None = None
    #: serving weight dtype (fp8, int4, ...) and KV cache dtype when not the model config's (None)
    dtype: str | None = None
    kv_dtype: str | None = None
    #: hardware per pool when the pools run on different GPU types (``plan.yaml`` then has
    #: ``hardware: {prefill: h100-sxm, decode: a100-80g}``); empty: every pool on ``hardware``
    pool_hardware: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise choices_error("plan mode", self.mode, MODES)
        if self.router not in ROUTERS:
            raise choices_error("plan router", self.router, ROUTERS)
        if not (isinstance(self.attainment, (int, float)) and 0 < self.attainment <= 1):
            raise ConfigError(f"plan attainment={self.attainment!r}; expected a fraction in (0, 1]")
        from pdplan.profiles.engine import get_engine

        get_engine(self.engine)
        from pdplan.profiles.model_spec import KV_DTYPE_BYTES, WEIGHT_BITS

        if self.dtype is not None and self.dtype not in WEIGHT_BITS:
            raise choices_error("plan dtype", self.dtype, WEIGHT_BITS)
        if self.kv_dtype is not None and self.kv_dtype not in KV_DTYPE_BYTES:
            raise choices_error("plan kv_dtype", self.kv_dtype, KV_DTYPE_BYTES)
        util = self.gpu_memory_utilisation
        if util is not None and not (isinstance(util, (int, float)) and 0 < util <= 1):
            raise ConfigError(f"plan gpu_memory_utilisation={util!r}; expected a fraction in (0, 1]")
        bad = [k for k in self.notes if k not in NOTE_KEYS]
        if bad:
            raise ConfigError(f"plan: unknown keys {bad}; valid: {list(NOTE_KEYS)}")
        unknown = [k for k in self.predicted if k not in PREDICTED_KEYS]
        if unknown:
            raise ConfigError(f"plan predicted: unknown keys {unknown}; valid: {list(PREDICTED_KEYS)}")
        if self.pool_hardware:
            from pdplan.planner.hardware_mix import check_pool_hardware

            check_pool_hardware(self.mode, self.pool_hardware, self.kv_transfer)
        if not self.feasible:
            return
        needed = ("prefill", "decode", "kv_transfer") if self.mode == "disaggregated" else ("colocated",)
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ConfigError(f"plan: mode {self.mode} needs {', '.join(missing)}")
        extra = [
            name
            for name in ("prefill", "decode", "colocated", "kv_transfer")
            if name not in needed and getattr(self, name) is not None
        ]
        if extra:
            raise ConfigError(f"plan: mode {self.mode} does not use {', '.join(extra)}")

    @property
    def gpus(self) -> int:
        """GPUs the layout uses (0 when it has no pools)."""
        pools = (self.prefill, self.decode) if self.mode == "disaggregated" else (self.colocated,)
        return sum(p.gpus for p in pools if p is not None)

    @property
    def tps(self) -> dict[str, int]:
        """TP per role in use (``prefill``/``decode`` or ``colocated``)."""
        pools = {"prefill": self.prefill, "decode": self.decode, "colocated": self.colocated}
        return {role: pool.tp for role, pool in pools.items() if pool is not None}

    @property
    def pps(self) -> dict[str, int]:
        """Pipeline stages per role in use (keys as ``tps``)."""
        pools = {"prefill": self.prefill, "decode": self.decode, "colocated": self.colocated}
        return {role: pool.pp for role, pool in pools.items() if pool is not None}

    def hardware_of(self, role: str) -> str:
        """The hardware the ``role`` pool runs on (``hardware`` unless the pools differ)."""
        return self.pool_hardware.get(role, self.hardware)

    def cluster(self, profiles: Mapping[str, Profile]) -> DisaggregatedCluster | ColocatedCluster:
        """The cluster ``pdplan.sim.simulate`` takes, from a profile per role (keys as ``tps``).

        Raises:
            ConfigError: an infeasible plan. ProfileError: a profile's TP differs from its role's,
            or the model does not fit.
        """
        if not self.feasible:
            raise ConfigError(f"plan is infeasible ({self.reason or 'no reason given'}); nothing to simulate")
        util = None if self.gpu_memory_utilisation is None else float(self.gpu_memory_utilisation)
        profiles = {
            role: p if p.engine == self.engine else replace(p, engine=self.engine)
            for role, p in profiles.items()
        }
        if self.mode == "colocated":
            assert self.colocated is not None
            colocated = colocated_cluster(self.colocated, profiles["colocated"], util)
            if self.cache is None:
                return colocated
            kv_bytes = profiles["colocated"].model.kv_bytes_per_token(profiles["colocated"].dtype)
            return replace(colocated, cache=self.cache, kv_bytes_per_token=kv_bytes)
        assert self.prefill and self.decode and self.kv_transfer
        pair = (profiles["prefill"], profiles["decode"])
        cluster = disaggregated_cluster(self.prefill, self.decode, self.kv_transfer, pair, util)
        return cluster if self.cache is None else replace(cluster, cache=self.cache)

    def to_dict(self) -> dict[str, Any]:
        """The ``plan.yaml`` mapping (DESIGN.md key order; absent sections left out)."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "mode": self.mode,
            "model": self.model,
            "hardware": dict(self.pool_hardware) if self.pool_hardware else self.hardware,
            "gpus": self.gpus,
        }
        for name in ("prefill", "decode", "colocated", "kv_transfer"):
            value = getattr(self, name)
            if value is not None:  # ``pp`` only when pipelined, so older plans read back unchanged
                out[name] = {
                    f.name: getattr(value, f.name)
                    for f in fields(value)
                    if not (f.name == "pp" and getattr(value, f.name) == 1)
                }
        out.update(
            {
                "router": self.router,
                "engine": self.engine,
                "gpu_memory_utilisation": self.gpu_memory_utilisation,
                "slo": self.slo.spec if self.slo else None,
                "attainment": self.attainment,
                "workload": self.workload,
                "predicted": dict(self.predicted),
                "feasible": self.feasible,
            }
        )
        if self.cache is not None:
            out["cache"] = cache_to_dict(self.cache)
        if self.reason:
            out["reason"] = self.reason
        out.update({k: self.notes[k] for k in NOTE_KEYS if k in self.notes})
        if self.launch is not None:
            out["launch"] = self.launch.to_dict()
        for key in ("dtype", "kv_dtype"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def plan_from_dict(data: Mapping[str, Any], *, source: str = "plan") -> Plan:
    """A ``Plan`` from a ``plan.yaml`` mapping (strict).

    Raises:
        ConfigError: unknown keys (the valid ones listed), a wrong schema version, bad values, or a
            ``gpus`` that disagrees with the pools.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    _check_keys(source, data, PLAN_KEYS)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ConfigError(f"{source}: schema_version {version!r}; expected {SCHEMA_VERSION}")
    if "mode" not in data:
        raise ConfigError(f"{source}: missing key 'mode' ({' or '.join(MODES)})")
    kwargs: dict[str, Any] = {"mode": data["mode"]}
    for name, cls in _SECTIONS.items():
        if data.get(name) is not None:
            kwargs[name] = _section(source, name, cls, data[name])
    if data.get("kv_transfer") is not None:
        kwargs["kv_transfer"] = kv_link_from_dict(data["kv_transfer"], source=source)
    if data.get("cache") is not None:
        kwargs["cache"] = cache_from_dict(data["cache"], source=source)
    if isinstance(data.get("hardware"), Mapping):
        from pdplan.planner.hardware_mix import pool_hardware_from_dict

        kwargs["pool_hardware"] = pool_hardware_from_dict(data["hardware"], source=source)
        kwargs["hardware"] = "+".join(dict.fromkeys(kwargs["pool_hardware"].values()))
    single = () if "pool_hardware" in kwargs else ("hardware",)
    for key in ("model", "router", "engine", "reason", "dtype", "kv_dtype", *single):
        if data.get(key) is not None:
            kwargs[key] = str(data[key])
    for key in ("gpu_memory_utilisation", "attainment", "workload", "feasible"):
        if data.get(key) is not None:
            kwargs[key] = data[key]
    if data.get("slo"):
        kwargs["slo"] = parse_slo(str(data["slo"]))
    if data.get("predicted") is not None:
        if not isinstance(data["predicted"], Mapping):
            raise ConfigError(f"{source}: predicted must be a mapping of {list(PREDICTED_KEYS)}")
        kwargs["predicted"] = dict(data["predicted"])
    notes = {k: data[k] for k in NOTE_KEYS if data.get(k) is not None}
    for key, value in notes.items():
        if not isinstance(value, (Mapping, str)):
            raise ConfigError(f"{source}: {key} must be a mapping or a string; got {value!r}")
    kwargs["notes"] = notes
    if data.get("launch") is not None:
        kwargs["launch"] = launch_from_dict(data["launch"], source=source)
    if not isinstance(kwargs.get("feasible", True), bool):
        raise ConfigError(f"{source}: feasible={kwargs['feasible']!r}; expected true or false")
    plan = Plan(**kwargs)
    gpus = data.get("gpus")
    if gpus is not None and plan.feasible and gpus != plan.gpus:
        raise ConfigError(f"{source}: gpus={gpus!r} but the pools use {plan.gpus} (instances × tp × pp)")
    return plan


def kv_link_from_dict(raw: Any, *, source: str = "plan") -> KvLink:
    """A ``KvLink`` from ``{link, bandwidth_gbps, latency_ms, contention, layerwise_overlap}``; a
    known ``link`` label fills the numbers that are not given."""
    valid = ("link", *(f.name for f in fields(KvLink) if f.name != "link"))
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: kv_transfer must be a mapping with keys {list(valid)}")
    _check_keys(f"{source}: kv_transfer", raw, valid)
    values = dict(raw)
    label = str(values.pop("link", "custom"))
    if "bandwidth_gbps" not in values or "latency_ms" not in values:
        from pdplan.profiles.hardware import link_preset

        preset = link_preset(label)  # ConfigError listing the labels when unknown
        values.setdefault("bandwidth_gbps", preset.bandwidth_gbps)
        values.setdefault("latency_ms", preset.latency_ms)
    for key in ("bandwidth_gbps", "latency_ms"):
        number(f"{source}: kv_transfer.{key}", values[key], high=1e6)
    try:
        return KvLink(link=label, **values)
    except TypeError as err:
        raise ConfigError(f"{source}: kv_transfer: {err}") from None


def load_plan(path: str | Path) -> Plan:
    """Read and check ``plan.yaml``.

    Raises:
        ConfigError: missing or unreadable file, bad YAML, or anything ``plan_from_dict`` rejects.
    """
    file = Path(path)
    data = load_yaml(file, "--plan")
    return plan_from_dict(data if data is not None else {}, source=str(file))


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan.yaml`` atomically (temp file in the same directory, then rename)."""
    return write_file(path, lambda fh: yaml.safe_dump(plan.to_dict(), fh, sort_keys=False))


def _section(source: str, name: str, cls: type, raw: Any) -> Any:
    valid = [f.name for f in fields(cls)]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {name} must be a mapping with keys {valid}")
    _check_keys(f"{source}: {name}", raw, tuple(valid))
    if "instances" not in raw:
        raise ConfigError(f"{source}: {name} needs 'instances'")
    values = {k: v for k, v in raw.items() if v is not None}
    for key, value in values.items():
        if key in (
            "instances",
            "tp",
            "pp",
            "max_batch_size",
            "max_batch_tokens",
            "max_kv_tokens",
            "chunk_tokens",
        ):
            integer(f"{source}: {name}.{key}", value, low=1, high=_MAX_SIZE[key])
    return cls(**values)


def _check_keys(where: str, data: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {list(valid)}")

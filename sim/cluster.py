"""Cluster layouts the simulator runs: instance pools per role, the KV link, and their costs.

User-facing (they appear in ``plan.yaml``): ``PrefillPool``, ``DecodePool``, ``ColocatedPool``,
``KvLink``. Derived from a profile (``pdplan.sim.costs``): ``InstanceCost``. What ``simulate``
takes: ``DisaggregatedCluster`` or ``ColocatedCluster``. All are validated on construction with
messages that name the field and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.pipeline import PipelineSend
from pdplan.sim.prefix_cache import PrefixCache

POLICIES = ("prefill-first", "chunked")
#: KV admission on decode and colocated instances: ``preempt`` allocates KV as tokens are produced
#: and preempts (recompute) when it runs out, as vLLM and SGLang do; ``reserve`` reserves prompt +
#: output at admission so nothing is ever preempted (conservative).
ADMISSIONS = ("preempt", "reserve")
#: Colocated instances also take ``preempt-prompt``: as ``preempt``, but a chunked prompt's KV is
#: taken whole at admission and held, where ``preempt`` admits it when its whole sequence fits and
#: then takes KV chunk by chunk, as vLLM V1 does (``pdplan.sim.colocated_chunkkv``).
COLOCATED_ADMISSIONS = (*ADMISSIONS, "preempt-prompt")
CONTENTION = ("none", "per_instance", "shared")


@dataclass(frozen=True)
class PrefillPool:
    """Prefill instances: FCFS batches of up to ``max_batch_tokens`` new tokens and
    ``max_batch_size`` prompts. With ``chunk_tokens`` set, a batch holds at most that many tokens
    and a prompt that does not fit is split across consecutive batches (chunked prefill, as
    SGLang's ``--chunked-prefill-size``); without it, a prompt longer than ``max_batch_tokens`` is
    rejected."""

    instances: int
    tp: int = 1
    max_batch_tokens: int = 8192
    max_batch_size: int = 64
    chunk_tokens: int | None = None
    #: pipeline stages of ``tp`` GPUs each (``pdplan.profiles.pipeline``; ``pdplan.sim.prefill``)
    pp: int = 1

    def __post_init__(self) -> None:
        _ints("prefill", self, ("instances", "tp", "max_batch_tokens", "max_batch_size", "pp"))
        if self.chunk_tokens is not None:
            _ints("prefill", self, ("chunk_tokens",))

    @property
    def gpus(self) -> int:
        return self.instances * self.tp * self.pp

    @property
    def width(self) -> int:
        """GPUs of one instance: ``tp × pp``."""
        return self.tp * self.pp

    @property
    def step_tokens(self) -> int:
        """Most new tokens one prefill batch processes."""
        return min(self.max_batch_tokens, self.chunk_tokens or self.max_batch_tokens)


@dataclass(frozen=True)
class DecodePool:
    """Decode instances: continuous batching of up to ``max_batch_size`` sequences within the KV
    capacity (``max_kv_tokens`` when set, else what memory leaves; see ``pdplan.sim.costs``), with
    KV ``admission`` as in ``ADMISSIONS``."""

    instances: int
    tp: int = 1
    max_batch_size: int = 256
    max_kv_tokens: int | None = None
    admission: str = "preempt"
    #: pipeline stages; a decode step is then a round of ``pp`` micro-batches (the profile's table)
    pp: int = 1

    def __post_init__(self) -> None:
        if self.admission not in ADMISSIONS:
            raise choices_error("decode.admission", self.admission, ADMISSIONS)
        _ints("decode", self, ("instances", "tp", "max_batch_size", "pp"))
        if self.max_kv_tokens is not None:
            _ints("decode", self, ("max_kv_tokens",))

    @property
    def gpus(self) -> int:
        return self.instances * self.tp * self.pp

    @property
    def width(self) -> int:
        """GPUs of one instance: ``tp × pp``."""
        return self.tp * self.pp


@dataclass(frozen=True)
class ColocatedPool:
    """Instances that run both phases. ``policy``:

    - ``prefill-first`` (vLLM's default scheduler without chunked prefill): whenever waiting
      prompts can be admitted, the next step prefills up to ``max_batch_tokens`` of them and the
      running decodes pause;
    - ``chunked`` (Sarathi-Serve, Agrawal et al., OSDI 2024; SGLang/vLLM chunked prefill): every
      step carries all running decodes plus prompt chunks filling a token budget of
      ``chunk_tokens`` (each decode counts one token).
    """

    instances: int
    tp: int = 1
    policy: str = "chunked"
    max_batch_size: int = 256
    max_batch_tokens: int = 8192
    chunk_tokens: int = 2048
    max_kv_tokens: int | None = None
    admission: str = "preempt"
    #: under ``admission: preempt``, a re-admitted request reuses what is left of its freed KV in
    #: the engine's prefix cache instead of recomputing it all (vLLM V1 and SGLang keep freed KV
    #: cached by default); False recomputes everything (prefix caching off)
    reuse_preempted_kv: bool = True
    #: pipeline stages; every step (prefill, decode round, mixed) runs through all of them, priced by
    #: the profile's tables (no overlap of prefill steps across stages: conservative)
    pp: int = 1

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise choices_error("colocated.policy", self.policy, POLICIES)
        if self.admission not in COLOCATED_ADMISSIONS:
            raise choices_error("colocated.admission", self.admission, COLOCATED_ADMISSIONS)
        if not isinstance(self.reuse_preempted_kv, bool):
            raise ConfigError(
                f"colocated.reuse_preempted_kv={self.reuse_preempted_kv!r}; expected true or false"
            )
        _ints(
            "colocated", self, ("instances", "tp", "max_batch_size", "max_batch_tokens", "chunk_tokens", "pp")
        )
        if self.max_kv_tokens is not None:
            _ints("colocated", self, ("max_kv_tokens",))

    @property
    def gpus(self) -> int:
        return self.instances * self.tp * self.pp

    @property
    def width(self) -> int:
        """GPUs of one instance: ``tp × pp``."""
        return self.tp * self.pp

    @property
    def step_tokens(self) -> int:
        return self.chunk_tokens if self.policy == "chunked" else self.max_batch_tokens


@dataclass(frozen=True)
class KvLink:
    """The prefill → decode KV transfer path.

    A transfer of ``b`` bytes occupies the link for ``b / (bandwidth_gbps·10⁹)`` s and arrives
    ``latency_ms`` later. ``contention``: ``none`` (every transfer gets the full bandwidth),
    ``per_instance`` (each prefill instance's NIC is one FIFO link, as with one RDMA NIC per
    instance), ``shared`` (one FIFO link for the whole cluster). ``layerwise_overlap``: KV is sent
    layer by layer while the prefill runs (as Mooncake's and DistServe's layer-wise transfer), so a
    transfer may start with its prefill batch and ends no earlier than the batch end plus one
    layer's share. ``link`` is a label for reports.
    """

    bandwidth_gbps: float
    latency_ms: float = 0.0
    contention: str = "per_instance"
    layerwise_overlap: bool = False
    link: str = "custom"

    def __post_init__(self) -> None:
        if not _is_number(self.bandwidth_gbps) or not self.bandwidth_gbps > 0:
            raise ConfigError(f"kv_transfer.bandwidth_gbps={self.bandwidth_gbps!r}; expected > 0")
        if not _is_number(self.latency_ms) or not self.latency_ms >= 0:
            raise ConfigError(f"kv_transfer.latency_ms={self.latency_ms!r}; expected ≥ 0")
        if self.contention not in CONTENTION:
            raise choices_error("kv_transfer.contention", self.contention, CONTENTION)
        if not isinstance(self.layerwise_overlap, bool):
            raise ConfigError(
                f"kv_transfer.layerwise_overlap={self.layerwise_overlap!r}; expected true or false"
            )


@dataclass(frozen=True)
class InstanceCost:
    """What one instance of a role costs: its latency model and KV capacity (tokens)."""

    latency: LatencyModel
    kv_capacity_tokens: int
    #: pipeline stages and their sends (``pdplan.profiles.pipeline``): a prefill instance then runs
    #: batches as a tandem of ``pp`` stages (``pdplan.sim.prefill``)
    pp: int = 1
    pp_send: PipelineSend | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kv_capacity_tokens, int) or self.kv_capacity_tokens < 1:
            raise ConfigError(f"kv_capacity_tokens={self.kv_capacity_tokens!r}; expected an integer ≥ 1")
        assert (self.pp > 1) == (self.pp_send is not None), "a pipelined instance has its sends"


@dataclass(frozen=True)
class DisaggregatedCluster:
    """Prefill and decode pools joined by a KV link.

    ``kv_bytes_per_token`` is the *whole model's* KV per token (what crosses the link);
    ``num_layers`` sets the last layer's share under layer-wise overlap. ``cache``: the prefill
    instances' prefix cache and its tiers (``pdplan.sim.prefix_cache``; used when the requests
    carry prefix blocks).
    """

    prefill: PrefillPool
    decode: DecodePool
    link: KvLink
    prefill_cost: InstanceCost
    decode_cost: InstanceCost
    kv_bytes_per_token: int
    num_layers: int = 1
    cache: PrefixCache | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kv_bytes_per_token, int) or self.kv_bytes_per_token < 0:
            raise ConfigError(f"kv_bytes_per_token={self.kv_bytes_per_token!r}; expected an integer ≥ 0")
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ConfigError(f"num_layers={self.num_layers!r}; expected an integer ≥ 1")

    @property
    def gpus(self) -> int:
        return self.prefill.gpus + self.decode.gpus


@dataclass(frozen=True)
class ColocatedCluster:
    """A pool of colocated instances; ``cache``: their prefix cache and its tiers
    (``pdplan.sim.prefix_cache``), whose L2/L3 loads need ``kv_bytes_per_token`` (whole model)."""

    pool: ColocatedPool
    cost: InstanceCost
    cache: PrefixCache | None = None
    kv_bytes_per_token: int = 0

    @property
    def gpus(self) -> int:
        return self.pool.gpus


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ints(role: str, obj: object, fields: tuple[str, ...]) -> None:
    for field in fields:
        value = getattr(obj, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{role}.{field}={value!r}; expected an integer ≥ 1")

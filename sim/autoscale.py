"""Cluster policies that change a disaggregated cluster while it runs: static, autoscaling of each
pool, and role switching.

The cluster is a set of **units** (one instance's GPUs each). A unit serves one role and is in one
state: ``provisioning`` (GPUs allocated and billed, not serving yet), ``active`` (the router may send
it new requests), ``draining`` (no new requests; it finishes what it holds), ``switching`` (drained,
changing role: the switch cost), or ``released``. GPUs are counted from the moment a unit is
requested until it is released, so a provisioning delay and a switch cost are paid for.

A controller looks at the cluster every ``interval_s`` (after every other event at that time) and,
while a unit drains, checks it every ``poll_s`` (a drain is noticed at the first check after it
ends):

- **pressure** of the prefill pool: prompt tokens routed to its active instances and not yet
  prefilled (queued or in the running batch), per active instance; of the decode pool: the KV its
  active instances hold or have reserved, plus the prompts whose prefill is done and that wait
  there for KV, as a share of their KV capacity (``ElasticRun.kv_demand``).
- ``Static``: never changes anything (today's simulator, for comparison on equal terms).
- ``Autoscale``: per pool, when the pressure exceeds ``high`` and no unit of that pool is still
  provisioning, request one more unit (active ``provision_s`` later), up to ``max_instances``; when
  it has stayed below ``low`` at every check for ``cooldown_s`` (a stabilisation window, as the
  Kubernetes HPA's scale-down window) and as long since that pool's last action, drain its least
  loaded active unit and release it once drained, down to ``min_instances``.
- ``RoleSwitch``: a fixed set of units (prefill and decode must use the same TP); when one pool's
  pressure exceeds its ``high`` while the other's is below its ``low``, drain the least loaded
  active unit of the quiet pool; once drained it switches (``switch_s``) and joins the busy pool.
  One switch at a time, and none within ``cooldown_s`` of the last one — the supervisor of
  Xinference's PD design and Dynamo's planner act on queue and KV-utilisation signals this way.

Routing: least outstanding tokens among the *active* instances of a role (lowest index on ties),
the simulator's ``least_loaded``. A prefill unit that drains still completes its KV transfers (the
prefill side's KV is not modelled as a limit, ``pdplan.sim.prefill``). GPU-seconds are integrated
exactly over ``[0, horizon_s]`` from the units' state changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.cluster import DisaggregatedCluster
from pdplan.sim.decode import PreemptingDecodeInstance
from pdplan.sim.disagg import Run
from pdplan.sim.kernel import INSTANCE, Event
from pdplan.sim.records import SimResult
from pdplan.sim.requests import Requests

#: The controller runs after every other event at its time.
CONTROL = INSTANCE + 1
PROVISIONING, ACTIVE, DRAINING, SWITCHING, RELEASED = (
    "provisioning",
    "active",
    "draining",
    "switching",
    "released",
)
ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class Thresholds:
    """When a pool is busy (``> high``) or quiet (``< low``): prefill in outstanding prompt tokens
    per active instance, decode in committed KV share of its active instances."""

    prefill_high_tokens: float = 16384.0
    prefill_low_tokens: float = 2048.0
    decode_high_kv: float = 0.7
    decode_low_kv: float = 0.3

    def __post_init__(self) -> None:
        if not 0 <= self.prefill_low_tokens < self.prefill_high_tokens:
            raise ConfigError(
                f"prefill thresholds low={self.prefill_low_tokens!r} high={self.prefill_high_tokens!r}; "
                "expected 0 ≤ low < high"
            )
        if not 0 <= self.decode_low_kv < self.decode_high_kv:
            raise ConfigError(
                f"decode thresholds low={self.decode_low_kv!r} high={self.decode_high_kv!r}; "
                "expected 0 ≤ low < high"
            )


@dataclass(frozen=True)
class Static:
    """No change while the run lasts."""

    name: str = "static"
    interval_s: float = 60.0
    poll_s: float = 1.0


@dataclass(frozen=True)
class Autoscale:
    """Scale each pool between ``min_instances`` and ``max_instances`` (per role)."""

    max_instances: dict[str, int]
    thresholds: Thresholds = field(default_factory=Thresholds)
    provision_s: float = 120.0
    cooldown_s: float = 300.0
    interval_s: float = 60.0
    poll_s: float = 1.0
    min_instances: int = 1
    name: str = "autoscale"

    def __post_init__(self) -> None:
        _positive(self, ("interval_s", "poll_s"))
        _non_negative(self, ("provision_s", "cooldown_s"))
        if sorted(self.max_instances) != sorted(ROLES) or any(
            v < self.min_instances for v in self.max_instances.values()
        ):
            raise ConfigError(
                f"autoscale max_instances={self.max_instances!r}; expected ≥ min_instances per role"
            )


@dataclass(frozen=True)
class RoleSwitch:
    """Move units between roles; the cluster's size never changes."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    switch_s: float = 30.0
    cooldown_s: float = 120.0
    interval_s: float = 60.0
    poll_s: float = 1.0
    min_instances: int = 1
    name: str = "role-switch"

    def __post_init__(self) -> None:
        _positive(self, ("interval_s", "poll_s"))
        _non_negative(self, ("switch_s", "cooldown_s"))


Policy = Static | Autoscale | RoleSwitch


@dataclass
class Unit:
    role: str
    slot: int
    state: str
    since_s: float


@dataclass(frozen=True)
class Change:
    """One state change of a unit (the timeline)."""

    time_s: float
    unit: int
    role: str
    state: str


@dataclass(frozen=True, eq=False)
class ElasticResult:
    """The run's records (``SimResult``), every unit state change, and GPU-seconds over the
    horizon (``gpu_s``), with ``tp`` GPUs per unit."""

    result: SimResult
    changes: tuple[Change, ...]
    initial: tuple[tuple[str, str], ...]  # (role, state) of each unit at time 0
    gpu_s: float
    horizon_s: float
    tp: int
    policy: str

    def counts_at(self, times: Sequence[float]) -> dict[str, np.ndarray]:
        """Units active per role and units allocated (not released) at each of ``times``."""
        roles = [role for role, _ in self.initial]
        states = [state for _, state in self.initial]
        out = {key: np.zeros(len(times)) for key in ("prefill", "decode", "allocated")}
        changes = list(self.changes)
        j = 0
        for i, t in enumerate(times):
            while j < len(changes) and changes[j].time_s <= t:
                c = changes[j]
                if c.unit == len(roles):
                    roles.append(c.role)
                    states.append(c.state)
                else:
                    roles[c.unit], states[c.unit] = c.role, c.state
                j += 1
            for role, state in zip(roles, states, strict=True):
                if state == ACTIVE:
                    out[role][i] += 1
                if state != RELEASED:
                    out["allocated"][i] += 1
        return out


class ElasticRun(Run):
    """A disaggregated run whose units change role or number under a ``Policy``."""

    def __init__(
        self, requests: Requests, cluster: DisaggregatedCluster, policy: Policy, horizon_s: float
    ) -> None:
        p0, d0 = cluster.prefill.instances, cluster.decode.instances
        if isinstance(policy, Autoscale):
            slots = {
                "prefill": max(p0, policy.max_instances["prefill"]),
                "decode": max(d0, policy.max_instances["decode"]),
            }
        elif isinstance(policy, RoleSwitch):
            if cluster.prefill.tp != cluster.decode.tp:
                raise ConfigError(
                    f"role switching needs one TP for both roles; prefill tp={cluster.prefill.tp}, "
                    f"decode tp={cluster.decode.tp}"
                )
            slots = {"prefill": p0 + d0, "decode": p0 + d0}
        else:
            slots = {"prefill": p0, "decode": d0}
        wide = replace(
            cluster,
            prefill=replace(cluster.prefill, instances=slots["prefill"]),
            decode=replace(cluster.decode, instances=slots["decode"]),
        )
        super().__init__(requests, wide, "least_loaded", np.random.default_rng(0))
        self.policy = policy
        self.horizon_s = horizon_s
        self.tp = cluster.prefill.tp
        self.units: list[Unit] = []
        if isinstance(policy, RoleSwitch):  # unit k uses slot k in either role
            self.units = [Unit("prefill" if k < p0 else "decode", k, ACTIVE, 0.0) for k in range(p0 + d0)]
        else:
            self.units = [Unit("prefill", k, ACTIVE, 0.0) for k in range(p0)]
            self.units += [Unit("decode", k, ACTIVE, 0.0) for k in range(d0)]
        self.initial = tuple((u.role, u.state) for u in self.units)
        self.changes: list[Change] = []
        self.last_action = {"prefill": -float("inf"), "decode": -float("inf"), "switch": -float("inf")}
        self.gpu_s = 0.0
        #: since when each pool's pressure has stayed below its low threshold (None: not now)
        self.low_since: dict[str, float | None] = {"prefill": None, "decode": None}
        self._polling = False  # a drain check is scheduled (only while a unit drains)
        self._billed_to = 0.0
        self.active: dict[str, list[int]] = {"prefill": [], "decode": []}
        self._refresh_active()
        loads = {"prefill": self.prefill_load, "decode": self.decode_load}
        self.choose_prefill = lambda rid: min(self.active["prefill"], key=loads["prefill"].__getitem__)
        self.choose_decode = lambda rid: min(self.active["decode"], key=loads["decode"].__getitem__)

    # --- bookkeeping ------------------------------------------------------------------------------
    def _refresh_active(self) -> None:
        for role in ROLES:
            self.active[role] = sorted(u.slot for u in self.units if u.role == role and u.state == ACTIVE)

    def _bill(self, now: float) -> None:
        """GPU-seconds of the allocated units from the last change to ``now`` (within the horizon)."""
        end = min(now, self.horizon_s)
        if end > self._billed_to:
            allocated = sum(1 for u in self.units if u.state != RELEASED)
            self.gpu_s += allocated * self.tp * (end - self._billed_to)
            self._billed_to = end

    def _set(self, k: int, state: str, now: float, role: str | None = None) -> None:
        self._bill(now)
        unit = self.units[k]
        unit.state, unit.since_s = state, now
        if role is not None:
            unit.role = role
        self.changes.append(Change(now, k, unit.role, state))
        self._refresh_active()
        if state == DRAINING and not self._polling:
            self._polling = True
            self.env.at(now + self.policy.poll_s, CONTROL, self._poll)

    def _add(self, role: str, now: float) -> None:
        self._bill(now)
        used = {u.slot for u in self.units if u.role == role and u.state != RELEASED}
        slot = next(
            s for s in range(len(self.prefills if role == "prefill" else self.decodes)) if s not in used
        )
        self.units.append(Unit(role, slot, PROVISIONING, now))
        k = len(self.units) - 1
        self.changes.append(Change(now, k, role, PROVISIONING))
        assert isinstance(self.policy, Autoscale), "only autoscaling adds units"
        self.env.at(now + self.policy.provision_s, CONTROL, lambda e: self._set(k, ACTIVE, self.env.now))

    def _load(self, unit: Unit) -> int:
        return (self.prefill_load if unit.role == "prefill" else self.decode_load)[unit.slot]

    def _drained(self, unit: Unit) -> bool:
        if unit.role == "prefill":
            instance = self.prefills[unit.slot]
            return self.prefill_load[unit.slot] == 0 and not instance.busy and not instance.queue
        return self.decode_load[unit.slot] == 0

    def kv_demand(self, slot: int) -> int:
        """KV tokens decode instance ``slot`` holds or has reserved, plus the prompts waiting there
        for KV (their prefill is done). Requests still queued for prefill do not count: a prefill
        backlog must not make the decode pool look busy."""
        instance = self.decodes[slot]
        waiting = sum(self.prompt[rid] for rid in instance.waiters)
        if isinstance(instance, PreemptingDecodeInstance):  # KV grows per token; ctx at segment start
            return instance.reserved + instance.ctx + waiting
        return self.cluster.decode_cost.kv_capacity_tokens - instance.kv_free + waiting

    def pressure(self) -> dict[str, float]:
        """Prefill: outstanding prompt tokens per active instance; decode: KV demand (``kv_demand``)
        as a share of the active instances' KV capacity."""
        p, d = self.active["prefill"], self.active["decode"]
        prefill = sum(self.prefill_load[i] for i in p) / len(p) if p else float("inf")
        capacity = self.cluster.decode_cost.kv_capacity_tokens * len(d)
        decode = sum(self.kv_demand(i) for i in d) / capacity if d else float("inf")
        return {"prefill": prefill, "decode": decode}

    # --- the controller ---------------------------------------------------------------------------
    def _busy(self) -> bool:
        work = any(self.prefill_load) or any(self.decode_load) or self.next_arrival < self.num_requests
        moving = any(u.state in (PROVISIONING, DRAINING, SWITCHING) for u in self.units)
        return work or moving

    def _poll(self, event: object) -> None:
        now = self.env.now
        for k, unit in enumerate(self.units):
            if unit.state == DRAINING and self._drained(unit):
                if isinstance(self.policy, RoleSwitch):
                    self._set(k, SWITCHING, now)
                    other = "prefill" if unit.role == "decode" else "decode"
                    self.env.at(now + self.policy.switch_s, CONTROL, self._switcher(k, other))
                else:
                    self._set(k, RELEASED, now)
        self._polling = any(u.state == DRAINING for u in self.units)
        if self._polling:
            self.env.at(now + self.policy.poll_s, CONTROL, self._poll)

    def _switcher(self, k: int, role: str) -> Callable[[Event], None]:
        """The callback that ends unit ``k``'s switch: active in ``role``."""

        def switched(event: Event) -> None:
            self._set(k, ACTIVE, self.env.now, role=role)

        return switched

    def _control(self, event: object) -> None:
        now = self.env.now
        policy = self.policy
        if isinstance(policy, Autoscale):
            self._autoscale(policy, now)
        elif isinstance(policy, RoleSwitch):
            self._switch(policy, now)
        if self._busy():
            self.env.at(now + policy.interval_s, CONTROL, self._control)

    def _least_loaded(self, role: str) -> int:
        candidates = [k for k, u in enumerate(self.units) if u.role == role and u.state == ACTIVE]
        return min(candidates, key=lambda k: (self._load(self.units[k]), self.units[k].slot))

    def _autoscale(self, policy: Autoscale, now: float) -> None:
        pressure = self.pressure()
        limits = policy.thresholds
        high = {"prefill": limits.prefill_high_tokens, "decode": limits.decode_high_kv}
        low = {"prefill": limits.prefill_low_tokens, "decode": limits.decode_low_kv}
        for role in ROLES:
            live = [u for u in self.units if u.role == role and u.state in (ACTIVE, PROVISIONING)]
            provisioning = any(u.state == PROVISIONING for u in live)
            if pressure[role] > high[role] and not provisioning and len(live) < policy.max_instances[role]:
                self._add(role, now)
                self.last_action[role] = now
                self.low_since[role] = None
                continue
            if pressure[role] >= low[role]:
                self.low_since[role] = None
                continue
            since = self.low_since[role]
            if since is None:
                since = self.low_since[role] = now
            quiet_s = now - since
            if (
                len(self.active[role]) > policy.min_instances
                and not provisioning
                and quiet_s >= policy.cooldown_s
                and now - self.last_action[role] >= policy.cooldown_s
            ):
                self._set(self._least_loaded(role), DRAINING, now)
                self.last_action[role] = now
                self.low_since[role] = now  # the next one needs another quiet cool-down

    def _switch(self, policy: RoleSwitch, now: float) -> None:
        if any(u.state in (DRAINING, SWITCHING) for u in self.units):
            return
        if now - self.last_action["switch"] < policy.cooldown_s:
            return
        pressure, limits = self.pressure(), policy.thresholds
        to_prefill = (
            pressure["prefill"] > limits.prefill_high_tokens and pressure["decode"] < limits.decode_low_kv
        )
        to_decode = (
            pressure["decode"] > limits.decode_high_kv and pressure["prefill"] < limits.prefill_low_tokens
        )
        source = "decode" if to_prefill else "prefill" if to_decode else None
        if source is not None and len(self.active[source]) > policy.min_instances:
            self._set(self._least_loaded(source), DRAINING, now)
            self.last_action["switch"] = now

    def run_elastic(self, until_s: float | None = None) -> ElasticResult:
        if not isinstance(self.policy, Static) and self.num_requests:
            self.env.at(self.policy.interval_s, CONTROL, self._control)
        result = self.run(until_s)
        self._bill(self.horizon_s)
        return ElasticResult(
            result=result,
            changes=tuple(self.changes),
            initial=self.initial,
            gpu_s=self.gpu_s,
            horizon_s=self.horizon_s,
            tp=self.tp,
            policy=self.policy.name,
        )


def simulate_elastic(
    requests: Requests, cluster: DisaggregatedCluster, policy: Policy, horizon_s: float | None = None
) -> ElasticResult:
    """Simulate ``requests`` on ``cluster`` (its pools' instance counts are the starting point)
    under ``policy``; GPU-seconds are counted over ``[0, horizon_s]`` (default: the last arrival,
    relative to the first).

    Raises:
        ConfigError: role switching with two TPs, bad policy values.
    """
    if horizon_s is None:
        horizon_s = float(requests.arrival_s[-1] - requests.arrival_s[0]) if len(requests) else 0.0
    return ElasticRun(requests, cluster, policy, horizon_s).run_elastic()


def _positive(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"{type(obj).__name__.lower()} {name}={value!r}; expected > 0")


def _non_negative(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ConfigError(f"{type(obj).__name__.lower()} {name}={value!r}; expected ≥ 0")

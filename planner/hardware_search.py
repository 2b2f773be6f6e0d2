"""The hardware search: which GPU type per pool gives the most goodput per dollar on a budget.

``run_hardware_search(HardwareSpec) -> HardwareResult``. Given hardware types with prices per
GPU-hour (and optionally how many GPUs of each are available) and a budget in dollars per hour,
it enumerates, for every ordered pair of types (prefill on one, decode on the other — the same
type included), the disaggregated layouts that spend the budget: P prefill instances and as many
decode instances as the rest of the budget buys (goodput grows with instances, so under a cost cap
the best layout of a pair and P uses the whole budget), and for every type the colocated layout
that spends it. Each layout's goodput is found exactly as the main search finds it
(``pdplan.planner.rate.find_goodput`` on the search's ``Traffic``, each probe a simulation), and
layouts are ranked by **goodput per dollar** (requests served per dollar at the goodput). The
result names the best mixed layout and the best single-type layout of each type, so the report
can show them side by side at equal cost.

Coarser than the main search on purpose: one TP per type (the smallest at which the model fits),
the simulator's default batch limits, one KV link for every disaggregated layout (the pools of a
mixed layout are on two kinds of node, so it must be an inter-node link; single-type layouts are
given the same link so the comparison is on equal terms). A layout whose capacity bound cannot
reach the rate it would need to beat the best goodput per dollar so far *of its group* is pruned
without a probe, and one that misses the SLO at that rate after one probe is ``below_need``. The
groups are: all mixed layouts; each type's single-type disaggregated layouts; each type's colocated
layout — so the best of each group is exact and the comparison at equal cost is fair.

The promise is the main search's (``pdplan.planner.confirm``): each group's best goodput is
confirmed on the user's replays (for a synthetic workload, its seed and five more with the
spread margin), re-ranking until every group's best is confirmed; in rate mode a layout holds the
target only if every replay does. A trace as recorded is its own replay: nothing is re-simulated.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pdplan.planner.bounds import Demand, capacity_bound
from pdplan.planner.confirm import goodput_on_replays, holds_at
from pdplan.planner.hardware_mix import INTRA_NODE_LINKS
from pdplan.planner.probe import Probe, SloTargets, probe_requests
from pdplan.planner.profileset import DEFAULT_TPS
from pdplan.planner.rate import NEVER, OK, RatePolicy, find_goodput
from pdplan.planner.space import Candidate
from pdplan.planner.traffic import Traffic
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.profile import Profile
from pdplan.sim.cluster import ColocatedPool, DecodePool, InstanceCost, KvLink, PrefillPool
from pdplan.sim.costs import colocated_cluster, disaggregated_cluster, instance_cost

log = logging.getLogger(__name__)
MIXED, SINGLE, COLOCATED = "mixed", "single", "colocated"
#: rate mode: a layout probed at the target rate that holds it / misses it / was not probed
#: because a cheaper layout of its group already holds it
HELD, MISSED, COSTLIER = "held", "missed", "costlier"
#: rate mode: layouts up to this multiple of each role's fewest instances (by bound) are tried
RATE_MODE_FACTOR = 2
#: rounds of confirming each group's best on the replays before giving up on a stable best
MAX_CONFIRM_ROUNDS = 8


@dataclass(frozen=True)
class Offer:
    """One hardware type: its price per GPU-hour and, optionally, how many GPUs there are."""

    name: str
    price_per_gpu_hour: float
    available_gpus: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.price_per_gpu_hour) and self.price_per_gpu_hour > 0):
            raise ConfigError(f"price of {self.name}: {self.price_per_gpu_hour!r}; expected > 0")
        if self.available_gpus is not None and self.available_gpus < 1:
            raise ConfigError(f"{self.name}: {self.available_gpus} GPUs available; expected ≥ 1")


@dataclass(frozen=True)
class HardwareSpec:
    """What to search: ``model`` on the ``offers`` within ``budget_per_hour`` dollars (ranked by
    goodput per dollar), or — with ``target_rate_rps`` instead — the cheapest layout of each group
    that holds that rate (``rate_layouts``)."""

    model: str
    offers: tuple[Offer, ...]
    traffic: Traffic
    slo: SloTargets
    link: KvLink
    budget_per_hour: float | None
    colocated: bool = True
    policy: RatePolicy = field(default_factory=RatePolicy)
    target_rate_rps: float | None = None

    def __post_init__(self) -> None:
        names = [o.name for o in self.offers]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"--hardware {','.join(names)}: the hardware search needs ≥ 2 distinct types")
        if (self.budget_per_hour is None) == (self.target_rate_rps is None):
            raise ConfigError("a search over several --hardware types needs --budget-per-hour D or --rate R")
        if self.budget_per_hour is not None and not (
            math.isfinite(self.budget_per_hour) and self.budget_per_hour > 0
        ):
            raise ConfigError(f"--budget-per-hour {self.budget_per_hour!r}; expected > 0 dollars")
        rate = self.target_rate_rps
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"--rate {rate!r}; expected > 0 req/s")
        if self.link.link in INTRA_NODE_LINKS:
            raise ConfigError(
                f"--kv-link {self.link.link}: pools on two GPU types are on different nodes; "
                "use infiniband, roce or tcp"
            )


@dataclass(frozen=True)
class Layout:
    """A candidate of the hardware search: a layout and the hardware of each of its pools."""

    candidate: Candidate
    hardware: Mapping[str, str]  # role → type
    cost_per_hour: float

    @property
    def kind(self) -> str:
        if self.candidate.mode == "colocated":
            return COLOCATED
        return MIXED if self.hardware["prefill"] != self.hardware["decode"] else SINGLE

    @property
    def label(self) -> str:
        c = self.candidate
        if c.colocated is not None:
            return f"colocated {c.colocated.instances}× {self.hardware['colocated']} (TP{c.colocated.tp})"
        assert c.prefill is not None and c.decode is not None
        p, d = c.prefill, c.decode
        return (
            f"{p.instances}P {self.hardware['prefill']} (TP{p.tp}) : "
            f"{d.instances}D {self.hardware['decode']} (TP{d.tp})"
        )


@dataclass(frozen=True)
class LayoutResult:
    layout: Layout
    status: str  # ok | pruned | below_need | never
    goodput_rps: float | None
    probes: tuple[Probe, ...] = ()
    bound_rps: float = math.nan
    #: rate mode: the target rate this layout was shown to hold (its goodput is not searched)
    held_rps: float | None = None

    @property
    def cost_per_million_output_tokens(self) -> float | None:
        """Dollars per million output tokens served at the goodput (or the held rate): the hourly
        cost over the output tokens per hour of the passing probe at that rate."""
        rate = self.goodput_rps if self.goodput_rps is not None else self.held_rps
        at = [p for p in self.probes if p.meets_slo and p.rate_rps == rate]
        if not at or at[0].output_tokens_per_s <= 0:
            return None
        return self.layout.cost_per_hour / (at[0].output_tokens_per_s * 3600.0) * 1e6

    @property
    def requests_per_dollar(self) -> float | None:
        rate = self.goodput_rps if self.goodput_rps is not None else self.held_rps
        if rate is None:
            return None
        return rate * 3600.0 / self.layout.cost_per_hour


@dataclass(frozen=True, eq=False)
class HardwareResult:
    spec: HardwareSpec
    results: tuple[LayoutResult, ...]
    tps: Mapping[str, int]
    wall_s: float

    def ranked(self, kind: str | None = None) -> list[LayoutResult]:
        """Best first: by goodput per dollar, or (rate mode) the cheapest layouts that hold the rate."""
        ok = [r for r in self.results if r.status in (OK, HELD) and kind in (None, r.layout.kind)]
        if self.spec.target_rate_rps is not None:
            return sorted(ok, key=lambda r: (r.layout.cost_per_hour, r.layout.candidate.gpus, r.layout.label))
        return sorted(ok, key=lambda r: (-(r.requests_per_dollar or 0.0), r.layout.label))

    @property
    def chosen(self) -> LayoutResult | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def best_single(self, kind: str | None = None) -> dict[str, LayoutResult]:
        """The best layout on one type only, per type: of ``kind`` (``single`` — disaggregated on
        one type — or ``colocated``), or of both when None."""
        out: dict[str, LayoutResult] = {}
        for r in self.ranked():
            if r.layout.kind != MIXED and kind in (None, r.layout.kind):
                out.setdefault(next(iter(r.layout.hardware.values())), r)
        return out

    def best_mixed(self) -> LayoutResult | None:
        ranked = self.ranked(MIXED)
        return ranked[0] if ranked else None


def enumerate_layouts(spec: HardwareSpec, tps: Mapping[str, int]) -> list[Layout]:
    """Every layout that spends the budget (see the module docstring), in a fixed order."""
    layouts: list[Layout] = []
    offers = [o for o in spec.offers if o.name in tps]
    budget = spec.budget_per_hour
    assert budget is not None, "budget mode"
    for pre in offers:
        for dec in offers:
            tp_p, tp_d = tps[pre.name], tps[dec.name]
            per_p, per_d = tp_p * pre.price_per_gpu_hour, tp_d * dec.price_per_gpu_hour
            for p in range(1, int(budget // per_p) + 1):
                d = int(round((budget - p * per_p) / per_d, 9) // 1)
                d = min(d, _room(dec, p * tp_p if dec is pre else 0) // tp_d)
                if pre.available_gpus is not None and p * tp_p > pre.available_gpus:
                    break
                if d < 1:
                    break
                cand = Candidate(
                    f"{pre.name}:{dec.name}:{p}:{d}",
                    "disaggregated",
                    PrefillPool(p, tp_p),
                    DecodePool(d, tp_d),
                )
                hw = {"prefill": pre.name, "decode": dec.name}
                layouts.append(Layout(cand, hw, p * per_p + d * per_d))
    if spec.colocated:
        for offer in offers:
            tp = tps[offer.name]
            n = min(int(round(budget / (tp * offer.price_per_gpu_hour), 9) // 1), _room(offer, 0) // tp)
            if n >= 1:
                cand = Candidate(f"{offer.name}:colocated:{n}", "colocated", colocated=ColocatedPool(n, tp))
                layouts.append(Layout(cand, {"colocated": offer.name}, n * tp * offer.price_per_gpu_hour))
    return layouts


def _group(layout: Layout) -> str:
    """Mixed layouts compete together; single-type layouts per (kind, type)."""
    return MIXED if layout.kind == MIXED else f"{layout.kind}:{next(iter(layout.hardware.values()))}"


def _room(offer: Offer, used: int) -> int:
    return (1 << 30) if offer.available_gpus is None else offer.available_gpus - used


class _Costs:
    """Profiles and instance costs per hardware type (built once)."""

    def __init__(self, spec: HardwareSpec) -> None:
        self.profiles: dict[str, Profile] = {}
        self.unfit: dict[str, str] = {}
        from pdplan.profiles.analytic import analytic_profile
        from pdplan.profiles.hardware import get_hardware
        from pdplan.profiles.model_spec import load_model_spec

        model = load_model_spec(spec.model)
        for offer in spec.offers:
            get_hardware(offer.name)  # an unknown name is the user's mistake, not "does not fit"
            reasons = []
            for tp in DEFAULT_TPS:  # the smallest TP at which the model fits
                try:
                    self.profiles[offer.name] = analytic_profile(model, offer.name, tp=tp)
                    break
                except (ConfigError, ProfileError) as err:
                    reasons.append(f"tp={tp}: {err}")
            if offer.name not in self.profiles:
                self.unfit[offer.name] = "; ".join(reasons)

    def roles(self, layout: Layout) -> dict[str, InstanceCost]:
        c = layout.candidate
        if c.colocated is not None:
            pool = c.colocated
            prof = self.profiles[layout.hardware["colocated"]]
            return {
                "colocated": instance_cost(
                    prof, max_step_tokens=pool.step_tokens, max_batch_size=pool.max_batch_size
                )
            }
        assert c.prefill is not None and c.decode is not None
        p_prof, d_prof = self.profiles[layout.hardware["prefill"]], self.profiles[layout.hardware["decode"]]
        return {
            "prefill": instance_cost(
                p_prof, max_step_tokens=c.prefill.step_tokens, max_batch_size=c.prefill.max_batch_size
            ),
            "decode": instance_cost(
                d_prof, max_step_tokens=c.decode.max_batch_size, max_batch_size=c.decode.max_batch_size
            ),
        }

    def cluster(self, layout: Layout, link: KvLink) -> Any:
        c = layout.candidate
        if c.colocated is not None:
            return colocated_cluster(c.colocated, self.profiles[layout.hardware["colocated"]])
        assert c.prefill is not None and c.decode is not None
        pair = (self.profiles[layout.hardware["prefill"]], self.profiles[layout.hardware["decode"]])
        return disaggregated_cluster(c.prefill, c.decode, link, pair)


Progress = Callable[[int, int], None]


def run_hardware_search(spec: HardwareSpec, progress: Progress | None = None) -> HardwareResult:
    """Rank every layout of ``spec`` by goodput per dollar (see the module docstring).

    Raises:
        ConfigError: no type can serve the model.
    """
    start = time.perf_counter()
    costs = _Costs(spec)
    if not costs.profiles:
        raise ConfigError(f"{spec.model} fits on none of the hardware types: {costs.unfit}")
    tps = {name: prof.tp for name, prof in costs.profiles.items()}
    demand = Demand.of(spec.traffic.requests)
    if spec.target_rate_rps is not None:
        return _cheapest(spec, costs, tps, demand, start)
    layouts = enumerate_layouts(spec, tps)
    bounds = {
        id(layout): capacity_bound(layout.candidate, costs.roles(layout), demand).rate_rps
        for layout in layouts
    }
    # best bound per dollar first, so the incumbent is strong early and prunes the rest
    order = sorted(
        layouts, key=lambda lay: (-bounds[id(lay)] / lay.cost_per_hour, lay.candidate.candidate_id)
    )
    # goodput (req/s) per dollar-per-hour of the best layout so far, per group: all mixed layouts,
    # and each type's single-type layouts, so each group's best is found (the report compares them)
    best_per_dollar: dict[str, float] = {}
    decided: dict[str, LayoutResult] = {}
    traffic, slo = spec.traffic, spec.slo
    for i, layout in enumerate(order):
        bound = bounds[id(layout)]
        group = _group(layout)
        need = best_per_dollar.get(group, 0.0) * layout.cost_per_hour
        if not math.isfinite(bound) or bound <= need:
            decided[layout.candidate.candidate_id] = LayoutResult(layout, "pruned", None, bound_rps=bound)
            continue
        cluster = costs.cluster(layout, spec.link)

        def probe(rate: float, cluster: Any = cluster) -> Probe:
            requests = traffic.probe_list(rate)
            return probe_requests(cluster, requests, rate, slo, traffic.warmup_fraction, traffic.stability)

        outcome = find_goodput(
            probe, bound, target_attainment=slo.attainment, need_rps=need, policy=spec.policy
        )
        result = LayoutResult(layout, outcome.status, outcome.goodput_rps, outcome.probes, bound)
        decided[layout.candidate.candidate_id] = result
        if outcome.status == OK and outcome.goodput_rps is not None:
            best_per_dollar[group] = max(
                best_per_dollar.get(group, 0.0), outcome.goodput_rps / layout.cost_per_hour
            )
        if progress is not None:
            progress(i + 1, len(order))
    _confirm_group_bests(spec, costs, decided)
    results = tuple(decided[lay.candidate.candidate_id] for lay in layouts)
    return HardwareResult(spec, results, tps, time.perf_counter() - start)


def _confirm_group_bests(spec: HardwareSpec, costs: _Costs, decided: dict[str, LayoutResult]) -> None:
    """Confirm each group's best goodput on the user's replays, as the main search does
    (``pdplan.planner.confirm``: the seed and five more, with the spread margin), until every
    group's best is a confirmed one (a confirmed goodput can be lower, so another layout may
    lead). Where the probes already are the replays (a trace as recorded) nothing is re-simulated."""
    if spec.traffic.probes_are_replays:
        return
    confirmed: set[str] = set()
    for _ in range(MAX_CONFIRM_ROUNDS):
        bests: dict[str, LayoutResult] = {}
        ok = [r for r in decided.values() if r.status == OK and r.goodput_rps is not None]
        for r in sorted(ok, key=lambda r: (-(r.requests_per_dollar or 0.0), r.layout.label)):
            bests.setdefault(_group(r.layout), r)
        todo = [r for r in bests.values() if r.layout.candidate.candidate_id not in confirmed]
        if not todo:
            return
        for r in todo:
            cid = r.layout.candidate.candidate_id
            confirmed.add(cid)
            assert r.goodput_rps is not None
            cluster = costs.cluster(r.layout, spec.link)
            conf = goodput_on_replays(
                cluster, spec.traffic, spec.slo, r.bound_rps, r.goodput_rps, spec.policy
            )
            log.info("%s: search %.4g req/s, replays %s", r.layout.label, r.goodput_rps, conf.goodput_rps)
            status = OK if conf.goodput_rps is not None else NEVER
            decided[cid] = replace(
                r, status=status, goodput_rps=conf.goodput_rps, probes=r.probes + conf.probes
            )


def rate_layouts(
    spec: HardwareSpec, tps: Mapping[str, int], unit_bounds: Mapping[str, Mapping[str, float]]
) -> list[Layout]:
    """Rate mode: for each pairing (and colocated per type), the layouts whose capacity bound
    reaches the target — each role from its fewest instances by bound to ``RATE_MODE_FACTOR`` ×
    that (plus one) — within the GPUs available, cheapest first. ``unit_bounds`` maps a group key
    (``pre:dec`` or ``name``) to one instance's bound per role."""
    assert spec.target_rate_rps is not None
    rate = spec.target_rate_rps
    offers = [o for o in spec.offers if o.name in tps]
    layouts: list[Layout] = []
    for pre in offers:
        for dec in offers:
            unit = unit_bounds[f"{pre.name}:{dec.name}"]
            p_min, d_min = (max(1, math.ceil(rate / unit[role])) for role in ("prefill", "decode"))
            for p in range(p_min, RATE_MODE_FACTOR * p_min + 2):
                for d in range(d_min, RATE_MODE_FACTOR * d_min + 2):
                    used_p, used_d = p * tps[pre.name], d * tps[dec.name]
                    if pre is dec and used_p + used_d > _room(pre, 0):
                        continue
                    if used_p > _room(pre, 0) or used_d > _room(dec, 0):
                        continue
                    cand = Candidate(
                        f"{pre.name}:{dec.name}:{p}:{d}",
                        "disaggregated",
                        PrefillPool(p, tps[pre.name]),
                        DecodePool(d, tps[dec.name]),
                    )
                    cost = used_p * pre.price_per_gpu_hour + used_d * dec.price_per_gpu_hour
                    layouts.append(Layout(cand, {"prefill": pre.name, "decode": dec.name}, cost))
    if spec.colocated:
        for offer in offers:
            n_min = max(1, math.ceil(rate / unit_bounds[offer.name]["colocated"]))
            for n in range(n_min, RATE_MODE_FACTOR * n_min + 2):
                if n * tps[offer.name] <= _room(offer, 0):
                    cand = Candidate(
                        f"{offer.name}:colocated:{n}",
                        "colocated",
                        colocated=ColocatedPool(n, tps[offer.name]),
                    )
                    cost = n * tps[offer.name] * offer.price_per_gpu_hour
                    layouts.append(Layout(cand, {"colocated": offer.name}, cost))
    return sorted(
        layouts, key=lambda lay: (lay.cost_per_hour, lay.candidate.gpus, lay.candidate.candidate_id)
    )


def _cheapest(
    spec: HardwareSpec, costs: _Costs, tps: Mapping[str, int], demand: Demand, start: float
) -> HardwareResult:
    """Rate mode: each group's cheapest layout that holds the target rate (one probe per layout,
    in cost order, until one holds)."""
    assert spec.target_rate_rps is not None
    rate = spec.target_rate_rps
    unit_bounds: dict[str, dict[str, float]] = {}
    names = list(tps)
    for pre in names:
        for dec in names:
            one = Layout(
                Candidate("unit", "disaggregated", PrefillPool(1, tps[pre]), DecodePool(1, tps[dec])),
                {"prefill": pre, "decode": dec},
                1.0,
            )
            unit_bounds[f"{pre}:{dec}"] = dict(
                capacity_bound(one.candidate, costs.roles(one), demand).by_role
            )
        one = Layout(
            Candidate("unit", "colocated", colocated=ColocatedPool(1, tps[pre])), {"colocated": pre}, 1.0
        )
        unit_bounds[pre] = dict(capacity_bound(one.candidate, costs.roles(one), demand).by_role)
    traffic, slo = spec.traffic, spec.slo
    held: set[str] = set()
    results = []
    for layout in rate_layouts(spec, tps, unit_bounds):
        group = _group(layout)
        if group in held:
            results.append(LayoutResult(layout, COSTLIER, None))
            continue
        cluster = costs.cluster(layout, spec.link)
        # held on the user's replays (the trace itself, or the seed and five more)
        probe = holds_at(cluster, traffic, slo, rate)
        if probe.meets_slo:
            held.add(group)
        status = HELD if probe.meets_slo else MISSED
        results.append(
            LayoutResult(layout, status, None, (probe,), held_rps=rate if probe.meets_slo else None)
        )
    return HardwareResult(spec, tuple(results), tps, time.perf_counter() - start)

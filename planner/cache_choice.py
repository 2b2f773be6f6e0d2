"""Choosing the chosen layout's routing policy and cache tiers (issue 16).

A stage after the layout search (``pdplan.planner.search``), run when the traffic names its
prefixes (a Mooncake trace's ``hash_ids``, a CSV's ``prefix_hashes``, a workload's ``prefix:``).
The layouts are searched and ranked as before (no prefix cache, least-loaded routing); then the
chosen layout is tried with every option:

- **router**: ``least_loaded`` and ``cache_aware`` (sglang-router's policy,
  ``pdplan.sim.cache_router``);
- **tiers**: L1 always (the engine's radix cache in HBM, on by default in SGLang), and each L2
  (host DRAM per instance) and L3 (shared store) size the user offers (``--cache-l2-gb``,
  ``--cache-l3-gb``: candidate sizes, 0 for none; default: none), at the default bandwidths of
  ``pdplan.sim.prefix_cache``.

Each option's goodput is searched on the user's own replays, as every promise is
(``pdplan.planner.confirm``): bracketed between a rate at which every replay holds the SLO and a
simulated rate at which one misses it. Options are tried simplest first — less tier capacity, then
``least_loaded`` before ``cache_aware`` — and a later option must hold the SLO at the best goodput
so far × (1 + the rate search's tolerance) to be searched further; one that cannot is not chosen
(a tie goes to the simpler option, as a tie between layouts goes to fewer GPUs). The chosen
option's goodput is the plan's promise; its operating point is simulated at that rate with the
per-tier hit rates and bytes moved (``CacheStats``). When no option holds as much as the layout
without a prefix cache (the search's own, confirmed figure), the plan stays without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pdplan.planner.confirm import replay_probe
from pdplan.planner.probe import judge, simulate_requests
from pdplan.planner.rate import OK, find_goodput
from pdplan.planner.screen import Screen
from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.sim.prefix_cache import (
    DEFAULT_L2_GBPS,
    DEFAULT_L3_GBPS,
    DEFAULT_L3_LATENCY_MS,
    CacheTier,
    PrefixCache,
    cache_to_dict,
)

if TYPE_CHECKING:
    from pdplan.planner.search import SearchResult

ROUTER_OPTIONS = ("least_loaded", "cache_aware")


def parse_sizes(flag: str, text: str | None) -> tuple[float, ...]:
    """``--cache-l2-gb 0,64,256`` → (0.0, 64.0, 256.0); ``None`` → (0.0,) (no such tier).

    Raises:
        ConfigError: a size that is not a finite number ≥ 0.
    """
    if text is None:
        return (0.0,)
    sizes: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {text!r}: {part.strip()!r} is not a size in GB (≥ 0; 0 = no tier)")
        sizes.append(value)
    return tuple(dict.fromkeys(sizes))


@dataclass(frozen=True)
class CacheOptions:
    """Candidate L2 sizes per instance and L3 sizes (GB; 0 = no tier) and the routers to try."""

    l2_gb: tuple[float, ...] = (0.0,)
    l3_gb: tuple[float, ...] = (0.0,)
    routers: tuple[str, ...] = ROUTER_OPTIONS

    def __post_init__(self) -> None:
        for router in self.routers:
            if router not in ROUTER_OPTIONS:
                raise choices_error("cache router", router, ROUTER_OPTIONS)
        assert self.l2_gb and self.l3_gb and self.routers, "at least one option per axis"

    @property
    def tiered(self) -> bool:
        """Whether the user offered any L2/L3 size."""
        return any(self.l2_gb) or any(self.l3_gb)

    def options(self) -> list[tuple[str, PrefixCache]]:
        """Every (router, cache), simplest first: least tier capacity, then the routers' order."""
        out = []
        for l2 in self.l2_gb:
            for l3 in self.l3_gb:
                cache = PrefixCache(
                    l2=CacheTier(l2, DEFAULT_L2_GBPS) if l2 > 0 else None,
                    l3=CacheTier(l3, DEFAULT_L3_GBPS, DEFAULT_L3_LATENCY_MS) if l3 > 0 else None,
                )
                for rank, router in enumerate(self.routers):
                    out.append(((l3, l2, rank), router, cache))
        out.sort(key=lambda item: item[0])
        return [(router, cache) for _, router, cache in out]


@dataclass(frozen=True)
class CacheTrial:
    """One option on the chosen layout: its goodput on the replays (``None``: not searched past
    the rate it needed to win, or none held), the lowest rate at which a replay missed, probes."""

    router: str
    cache: PrefixCache
    status: str  # ok | below_need | never (pdplan.planner.rate)
    goodput_rps: float | None
    fails_at_rps: float | None
    probes: int

    def describe(self) -> dict[str, Any]:
        return {
            "router": self.router,
            "cache": self.cache.label,
            "status": self.status,
            "goodput_rps": None if self.goodput_rps is None else round(self.goodput_rps, 6),
            "fails_at_rps": None if self.fails_at_rps is None else round(self.fails_at_rps, 6),
            "probes": self.probes,
        }


@dataclass(frozen=True)
class CacheChoice:
    """The chosen option, every option tried (in order), the layout's goodput without a prefix
    cache (least-loaded routing, the search's own figure), and the chosen option's cache figures
    at its operating point (``CacheStats.as_dict``)."""

    chosen: CacheTrial
    trials: tuple[CacheTrial, ...]
    without_cache_rps: float
    stats: dict[str, Any]

    @property
    def router(self) -> str:
        return self.chosen.router

    @property
    def cache(self) -> PrefixCache:
        return self.chosen.cache

    def describe(self) -> dict[str, Any]:
        """``plan.yaml``'s ``cache_choice`` note."""
        return {
            "router": self.router,
            "cache": cache_to_dict(self.cache),
            "goodput_rps": self.chosen.describe()["goodput_rps"],
            "fails_at_rps": self.chosen.describe()["fails_at_rps"],
            "without_cache_rps": round(self.without_cache_rps, 6),
            "hit_rate": {k: round(v, 6) for k, v in self.stats["hit_rate"].items()},
            "bytes_loaded": self.stats["bytes_loaded"],
            "bytes_written": self.stats["bytes_written"],
            "options": [t.describe() for t in self.trials],
        }


def choose_cache(result: SearchResult, options: CacheOptions) -> SearchResult:
    """``result`` with the chosen layout's router and cache tiers chosen (see the module doc):
    ``cache_choice`` set, the operating point re-simulated with them at the chosen option's
    goodput (or at the target rate in rate mode). Unchanged when no plan was chosen or the traffic
    names no prefixes.

    Raises:
        ConfigError: L2/L3 sizes offered for traffic that names no prefixes.
    """
    spec = result.spec
    prefix = spec.requests.prefix
    if prefix is None:
        if options.tiered:
            raise ConfigError(
                "--cache-l2-gb/--cache-l3-gb need traffic that names its prefixes (a Mooncake trace's "
                "hash_ids, a CSV's prefix_hashes column, or a workload's prefix: key)"
            )
        return result
    chosen = result.chosen
    if chosen is None or chosen.goodput_rps is None:
        return result
    screen = Screen(spec)
    base = replace(screen.cluster(chosen.candidate), kv_bytes_per_token=spec.profiles.kv_bytes_per_token)
    traffic, slo, policy = spec.traffic, spec.slo, spec.rate_policy
    # where the first failing rate is looked for: the cache-less bound with the shared prefixes'
    # prefill work gone (an upper guide only; the rate search climbs past it if a probe holds)
    shared = prefix.shared_fraction()
    guide = max(chosen.bound_rps or chosen.goodput_rps, chosen.goodput_rps) / max(0.05, 1.0 - shared)
    trials: list[CacheTrial] = []
    best: CacheTrial | None = None
    for router, cache in options.options():
        cluster = replace(base, cache=cache)
        # a more complex option must beat the best so far by more than the rate resolution
        need = (
            0.0 if best is None or best.goodput_rps is None else best.goodput_rps * (1.0 + policy.tolerance)
        )
        outcome = find_goodput(
            replay_probe(cluster, traffic, slo, router),
            max(guide, 1.25 * need),
            target_attainment=slo.attainment,
            need_rps=need,
            policy=policy,
            start_rps=chosen.goodput_rps,
        )
        goodput = outcome.goodput_rps if outcome.status == OK else None
        failing = [p.rate_rps for p in outcome.probes if not p.meets_slo and p.rate_rps > (goodput or 0.0)]
        trial = CacheTrial(
            router, cache, outcome.status, goodput, min(failing) if failing else None, len(outcome.probes)
        )
        trials.append(trial)
        if outcome.status == OK:  # past the need: better than the best by more than the tolerance
            best = trial
    if best is None or best.goodput_rps is None or best.goodput_rps < chosen.goodput_rps:
        return result  # no option holds as much as without a cache: the cache-less promise stands
    rate = spec.target_rate_rps or best.goodput_rps
    cluster = replace(base, cache=best.cache)
    operating = simulate_requests(cluster, traffic.replays(rate)[0], router=best.router)
    _, summary = judge(operating, rate, slo, traffic.warmup_fraction, traffic.stability)
    assert operating.cache is not None, "traffic with prefixes and a cache yields cache figures"
    summary["prefix_cache"] = operating.cache.as_dict()
    choice = CacheChoice(best, tuple(trials), chosen.goodput_rps, operating.cache.as_dict())
    return replace(
        result,
        operating=operating,
        operating_summary=summary,
        operating_requests=len(operating.records),
        operating_rate_rps=rate,
        cache_choice=choice,
    )

"""One probe of the rate search: simulate a cluster at one request rate and judge it against the SLO.

``SloTargets`` is the search's view of an SLO (DESIGN.md): the parsed ``SLO`` — per-request
thresholds met jointly by at least ``attainment`` of the requests, and percentile thresholds
(``ttft_p99=2s``) — plus that attainment target. Every probe of a search replays the *same*
request list, time-scaled to the probe's rate (common random numbers), and leaves the first
``warmup_fraction`` of arrivals out of every figure (the cluster starts empty).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from pdplan.planner.slo import DEFAULT_ATTAINMENT, SLO
from pdplan.planner.stability import backlog_growth
from pdplan.profiles.errors import ConfigError
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster
from pdplan.sim.costs import StepCoef
from pdplan.sim.records import REJECTED, UNFINISHED, SimResult
from pdplan.sim.requests import Requests
from pdplan.sim.simulate import EarlyStop, SimOptions, simulate, simulate_prefill_side
from pdplan.sim.summary import percentile_key, summarize

PROBE_PERCENTILES = (50.0, 90.0, 99.0)
PROBE_COLUMNS = (
    "candidate_id",
    "rate_rps",
    "attainment",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p90_ms",
    "tpot_p99_ms",
    "output_tokens_per_s",
    "meets_slo",
)


@dataclass(frozen=True)
class SloTargets:
    """An SLO (``pdplan.planner.slo``) and the fraction of requests that must attain its
    per-request thresholds."""

    slo: SLO
    attainment: float = DEFAULT_ATTAINMENT

    def __post_init__(self) -> None:
        if not (isinstance(self.attainment, (int, float)) and not isinstance(self.attainment, bool)) or not (
            0 < self.attainment <= 1
        ):
            raise ConfigError(f"--attainment {self.attainment!r}; expected a fraction in (0, 1]")

    @property
    def per_request_ms(self) -> Mapping[str, float]:
        return self.slo.per_request_ms

    @property
    def percentile_ms(self) -> tuple[tuple[str, float, float], ...]:
        return self.slo.percentile_ms

    @property
    def attainment_thresholds_ms(self) -> dict[str, float]:
        """What the ``attainment`` column counts: the per-request thresholds, or — for an SLO of
        percentiles only — every threshold read as a per-request one (the strictest per metric)."""
        if self.slo.per_request_ms:
            return dict(self.slo.per_request_ms)
        out: dict[str, float] = {}
        for metric, _, limit in self.slo.percentile_ms:
            out[metric] = min(out.get(metric, math.inf), limit)
        return out


@dataclass(frozen=True)
class Probe:
    """The outcome of one probe (one row of ``probes.csv`` without the candidate id)."""

    rate_rps: float
    attainment: float
    ttft_ms: tuple[float, float, float]  # p50, p90, p99
    tpot_ms: tuple[float, float, float]
    output_tokens_per_s: float
    meets_slo: bool
    num_requests: int
    violated: str = ""  # the SLO terms that failed, e.g. "attainment 0.71 < 0.9" or "ttft_p99"
    prefill_side: bool = False  # a failure proven on the prefill side alone (``prefill_side_probe``)

    def row(self, candidate_id: str) -> dict[str, Any]:
        return {
            "candidate_id": candidate_id,
            "rate_rps": self.rate_rps,
            "attainment": self.attainment,
            "ttft_p50_ms": self.ttft_ms[0],
            "ttft_p90_ms": self.ttft_ms[1],
            "ttft_p99_ms": self.ttft_ms[2],
            "tpot_p50_ms": self.tpot_ms[0],
            "tpot_p90_ms": self.tpot_ms[1],
            "tpot_p99_ms": self.tpot_ms[2],
            "output_tokens_per_s": self.output_tokens_per_s,
            "meets_slo": self.meets_slo,
        }


def simulate_at(
    cluster: DisaggregatedCluster | ColocatedCluster, requests: Requests, rate_rps: float
) -> SimResult:
    """``requests`` time-scaled to mean rate ``rate_rps``, simulated on ``cluster``."""
    return simulate(requests.at_rate(rate_rps), cluster, SimOptions(router="least_loaded"))


def judge(
    result: SimResult,
    rate_rps: float,
    slo: SloTargets,
    warmup_fraction: float,
    stability: bool = False,
) -> tuple[Probe, dict[str, Any]]:
    """The probe outcome of a finished simulation, and its summary (``summary.yaml`` figures).

    The SLO is judged exactly as ``pdplan simulate --plan`` judges it (``SLO.violations`` on the
    requests table: a percentile counts every measured request that is not ``ok`` as infinitely
    slow; with ``stability``, a run whose backlog grows fails too, ``pdplan.planner.stability``),
    so a plan the search says holds at a rate also holds when simulated on its own.
    """
    columns = result.records.columns()
    summary = summarize(
        columns,
        slo_ms=slo.attainment_thresholds_ms,
        warmup_fraction=warmup_fraction,
        utilisation=result.utilisation,
        percentiles=slo.slo.percentiles,
    )
    failed = slo.slo.violations(summary, slo.attainment, columns, warmup_fraction)
    if failed and slo.per_request_ms and failed[0].startswith("attainment"):
        failed[0] += f" ({_shares(result, slo, warmup_fraction)})"
    if stability:
        test = backlog_growth(columns, warmup_fraction)
        summary["backlog_growth_fraction"] = test.growth_fraction
        if not test.stable:
            failed.append(test.violation)
    summary["slo"] = slo.slo.spec
    probe = Probe(
        rate_rps=float(rate_rps),
        attainment=float(summary["attainment"] or 0.0),
        ttft_ms=_triple(summary["ttft_ms"]),
        tpot_ms=_triple(summary["tpot_ms"]),
        output_tokens_per_s=float(summary["output_tokens_per_s"]),
        meets_slo=not failed,
        num_requests=len(result.records),
        violated="; ".join(failed),
    )
    return probe, summary


def run_probe(
    cluster: DisaggregatedCluster | ColocatedCluster,
    requests: Requests,
    rate_rps: float,
    slo: SloTargets,
    warmup_fraction: float,
    stability: bool = False,
) -> Probe:
    """Simulate ``requests`` at ``rate_rps`` on ``cluster`` and judge the SLO."""
    return judge(simulate_at(cluster, requests, rate_rps), rate_rps, slo, warmup_fraction, stability)[0]


def simulate_requests(
    cluster: DisaggregatedCluster | ColocatedCluster,
    requests: Requests,
    stop: EarlyStop | None = None,
    router: str = "least_loaded",
) -> SimResult:
    """``requests`` as given (already at their rate), simulated as ``pdplan simulate --plan`` does."""
    return simulate(requests, cluster, SimOptions(router=router), np.random.default_rng(0), stop=stop)


def early_stop(slo: SloTargets, requests: Requests, warmup_fraction: float) -> EarlyStop | None:
    """When a probe may stop early: once more measured requests have certainly missed a
    per-request threshold (a TTFT, TPOT or E2E that can only grow, or a rejection) than the
    attainment target allows, it has failed whatever happens next (``EarlyStop``). ``None``
    without per-request thresholds.

    The allowance is the most misses with which ``judge`` still passes the run (its attainment is
    rounded as ``summarize`` rounds it), so a run that stops would have failed had it run on.
    """
    limits = slo.per_request_ms
    n = len(requests)
    if not limits or n < 2:
        return None
    excluded = math.floor(warmup_fraction * n)
    return EarlyStop(
        max_late=max_misses(slo.attainment, n - excluded),
        measured_from=excluded,
        every_s=max(requests.span_s / 64.0, min(limits.values()) / 1000.0),
        ttft_ms=limits.get("ttft"),
        tpot_ms=limits.get("tpot"),
        e2e_ms=limits.get("e2e"),
    )


def max_misses(attainment: float, measured: int) -> int:
    """The most of ``measured`` requests that may miss while the attainment, rounded to 6
    decimals as ``summarize`` reports it, still meets ``attainment``."""
    late = max(0, math.floor((1.0 - attainment) * measured))
    while late > 0 and round((measured - late) / measured, 6) < attainment:
        late -= 1
    while late < measured and round((measured - late - 1) / measured, 6) >= attainment:
        late += 1
    return late


def probe_requests(
    cluster: DisaggregatedCluster | ColocatedCluster,
    requests: Requests,
    rate_rps: float,
    slo: SloTargets,
    warmup_fraction: float,
    stability: bool,
    router: str = "least_loaded",
) -> Probe:
    """One probe of ``requests`` (already at ``rate_rps``), stopped early once it has certainly failed."""
    stop = early_stop(slo, requests, warmup_fraction)
    result = simulate_requests(cluster, requests, stop, router)
    probe = judge(result, rate_rps, slo, warmup_fraction, stability)[0]
    if stop is not None and not probe.meets_slo and np.any(result.records.status_code == UNFINISHED):
        # the attainment of a stopped run counts its unfinished requests as misses: an upper bound
        why = f"stopped early: more than {stop.max_late} measured requests had certainly missed the SLO"
        probe = replace(probe, violated=f"{probe.violated}; {why}" if probe.violated else why)
    return probe


def prefill_side_probe(
    cluster: DisaggregatedCluster | ColocatedCluster,
    requests: Requests,
    rate_rps: float,
    slo: SloTargets,
    warmup_fraction: float,
) -> Probe | None:
    """A failing probe proven on a disaggregated cluster's prefill side alone, or ``None``.

    The prefill timeline is the full run's, and a first token comes no earlier than its prompt's
    prefill end (``simulate_prefill_side``). When more measured requests than the attainment
    allows were rejected, or had their prompt prefilled (or were still waiting for it when the run
    stopped) more than the TTFT threshold after arrival, the full probe fails too — at a fraction
    of its cost, since nothing decodes. ``None``: not proven (the full probe decides), no TTFT
    threshold, a colocated cluster or one with a prefix cache. The probe's attainment is an upper
    bound (every request not proven late counted as on time); its latency figures are not known.
    """
    limit_ms = slo.per_request_ms.get("ttft")
    stop = early_stop(slo, requests, warmup_fraction)
    if not isinstance(cluster, DisaggregatedCluster) or cluster.cache is not None:
        return None
    if limit_ms is None or stop is None:
        return None
    stop = replace(stop, tpot_ms=None, e2e_ms=None)
    result = simulate_prefill_side(requests, cluster, stop)
    rec = result.records
    measured = np.arange(len(rec)) >= stop.measured_from
    with np.errstate(invalid="ignore"):
        lower = np.where(np.isnan(rec.first_token_s), result.end_s, rec.first_token_s) - rec.arrival_s
        late = measured & ((rec.status_code == REJECTED) | (lower * 1000.0 > limit_ms))
    missed = int(np.count_nonzero(late))
    if missed <= stop.max_late:
        return None
    total = int(np.count_nonzero(measured))
    bound = (total - missed) / total
    nan3 = (math.nan, math.nan, math.nan)
    why = (
        f"attainment ≤ {bound:.6g} < {slo.attainment:g}: more than {stop.max_late} measured requests "
        f"were prefilled > {limit_ms:g} ms after arrival (prefill side simulated alone; stopped early)"
    )
    return Probe(rate_rps, bound, nan3, nan3, math.nan, False, len(rec), violated=why, prefill_side=True)


def prefill_side_key(
    cluster: DisaggregatedCluster | ColocatedCluster, max_footprint_tokens: int | None = None
) -> tuple[Any, ...] | None:
    """Everything of ``cluster`` that ``prefill_side_probe`` reads, or ``None`` where it does not
    apply (a colocated cluster, a prefix cache).

    ``simulate_prefill_side`` runs the prefill pool (its limits; its instance cost: step costs,
    pipeline stages), rejects what the prefill or decode KV cannot hold and hands off to a sink that
    ignores the link (whose fields are keyed anyway) without routing to a decode instance; nothing
    else of the cluster is read. So two clusters with the same key give the same prefill-side
    probe on the same requests, rate and SLO — e.g. layouts that differ only in the decode batch
    limit, or in the decode instances and TP at the same GPU count — and one proof serves both
    (``waves.Scheduler``).
    ``max_footprint_tokens``: the largest prompt + output of the requests, when every probe replays
    the same token counts; a decode KV capacity at or above it rejects nothing, whatever its size
    (the engine sizes it by the batch limit), so it enters the key capped there.
    """
    if not isinstance(cluster, DisaggregatedCluster) or cluster.cache is not None:
        return None
    decode_kv = cluster.decode_cost.kv_capacity_tokens
    if max_footprint_tokens is not None:
        decode_kv = min(decode_kv, max_footprint_tokens)
    cost = cluster.prefill_cost  # its step costs, and every other field (KV capacity, pipeline stages)
    rest = tuple((f.name, getattr(cost, f.name)) for f in fields(cost) if f.name != "latency")
    return (
        cluster.prefill,
        StepCoef.of(cost.latency),
        rest,
        decode_kv,
        cluster.link,
    )


def _shares(result: SimResult, slo: SloTargets, warmup_fraction: float) -> str:
    """How many measured requests meet each per-request threshold on its own, worst first, e.g.
    ``tpot 74% ≤ 50 ms, ttft 95% ≤ 1000 ms`` (what tells which threshold binds)."""
    rec = result.records
    n = len(rec)
    keep = np.ones(n, dtype=bool)
    keep[np.argsort(rec.arrival_s, kind="stable")[: math.floor(warmup_fraction * n)]] = False
    ok = rec.status_code == 0
    with np.errstate(invalid="ignore"):
        values = {
            "ttft": (rec.first_token_s - rec.arrival_s) * 1000.0,
            "e2e": (rec.finish_s - rec.arrival_s) * 1000.0,
            "tpot": (rec.finish_s - rec.first_token_s) / np.maximum(rec.output_tokens - 1, 1) * 1000.0,
        }
        shares = {
            metric: float(np.count_nonzero(keep & ok & (values[metric] <= limit))) / max(1, keep.sum())
            for metric, limit in slo.per_request_ms.items()
        }
    parts = sorted(shares.items(), key=lambda kv: kv[1])
    return ", ".join(f"{m} {share:.0%} ≤ {slo.per_request_ms[m]:g} ms" for m, share in parts)


def _triple(stats: Mapping[str, float] | None) -> tuple[float, float, float]:
    if stats is None:
        return (math.nan, math.nan, math.nan)
    a, b, c = (float(stats[percentile_key(q)]) for q in PROBE_PERCENTILES)
    return (a, b, c)

"""The search's shortcuts cannot change what it finds: a probe stopped early fails exactly when the
whole run does, its allowance of misses is exactly what the SLO check allows, and a layout pruned
because no tie can choose it could not have been chosen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pdplan.planner.evaluation import STATUS_OK, Evaluation, choose
from pdplan.planner.presets import get_preset
from pdplan.planner.probe import (
    SloTargets,
    early_stop,
    judge,
    max_misses,
    prefill_side_probe,
    simulate_requests,
)
from pdplan.planner.profileset import ProfileSet, analytic_profile_set
from pdplan.planner.screen import Screen, Screened
from pdplan.planner.search import SearchSpec
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import Candidate, SpaceGrid, enumerate_candidates
from pdplan.planner.traffic import synthetic
from pdplan.planner.waves import InlineExecutor, Scheduler
from pdplan.sim.cluster import KvLink
from pdplan.sim.simulate import simulate_prefill_side
from pdplan.sim.workload import draw_requests

LINK = KvLink(450.0, 0.01, link="nvlink")
GRID = SpaceGrid(tps=(1,), decode_max_batch_size=(256,), colocated_chunk_tokens=(2048,))


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return analytic_profile_set("llama-3.1-8b", "h100-sxm", tps=(1,))


def _spec(profiles: ProfileSet, slo: str = "ttft=1s,tpot=50ms", gpus: int = 4) -> SearchSpec:
    load = get_preset("chat").workload(num_requests=1500, seed=0)
    return SearchSpec(
        profiles=profiles,
        traffic=synthetic(load),
        slo=SloTargets(parse_slo(slo)),
        link=LINK,
        max_gpus=gpus,
        grid=GRID,
    )


def _candidate(spec: SearchSpec, label: str) -> Candidate:
    """The candidate of the spec's grid with ``label`` (e.g. ``disaggregated 1P:1D (TP1)``),
    chunked when colocated."""
    for c in enumerate_candidates(spec.max_gpus or 1, modes=spec.modes, grid=spec.grid):
        if c.label == label and (c.colocated is None or c.colocated.policy == "chunked"):
            return c
    raise AssertionError(f"no candidate {label}")


@pytest.mark.parametrize(
    ("label", "slo_text"),
    [
        ("colocated 1× (TP1)", "tpot=30ms"),  # TPOT binds: prefill chunks slow the decodes
        ("colocated 1× (TP1)", "e2e=8s"),
        ("disaggregated 1P:1D (TP1)", "ttft=800ms,tpot=40ms"),  # the decode batch caps TPOT
        ("disaggregated 1P:1D (TP1)", "e2e=8s"),
    ],
)
def test_an_early_stopped_probe_fails_exactly_when_the_whole_run_does(
    profiles: ProfileSet, label: str, slo_text: str
) -> None:
    """TPOT and E2E misses count as soon as they are certain (a TPOT-only SLO stops too), and a
    stopped probe's verdict is the whole run's."""
    spec = _spec(profiles, slo_text, gpus=2)
    cluster = Screen(spec).cluster(_candidate(spec, label))
    load = get_preset("chat").workload(num_requests=1500, seed=0)
    stopped = held = 0
    for rate in (2.0, 10.0, 20.0, 30.0, 50.0, 80.0):
        requests = draw_requests(load.with_rate(rate))
        stop = early_stop(spec.slo, requests, 0.05)
        assert stop is not None
        whole = judge(simulate_requests(cluster, requests), rate, spec.slo, 0.05)[0]
        result = simulate_requests(cluster, requests, stop)
        fast = judge(result, rate, spec.slo, 0.05)[0]
        assert fast.meets_slo == whole.meets_slo, f"{rate} req/s: {fast.violated} vs {whole.violated}"
        if np.any(result.records.status == "unfinished"):
            stopped += 1
            assert not fast.meets_slo and fast.attainment <= whole.attainment + 1e-9
        else:
            assert fast.attainment == whole.attainment, "a run that was not stopped is untouched"
        held += whole.meets_slo
    assert stopped >= 1 and held >= 1, "the rates span a holding and a stopped run"


def test_the_allowance_is_the_most_misses_that_still_pass() -> None:
    assert max_misses(0.9, 1000) == 100  # 900/1000 attains 0.9 exactly: it passes
    assert max_misses(0.9, 18398) == 1839
    assert max_misses(1.0, 500) == 0
    for measured in (1, 7, 999, 1000, 18398):
        for attainment in (0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
            late = max_misses(attainment, measured)
            assert round((measured - late) / measured, 6) >= attainment
            if late < measured:
                assert round((measured - late - 1) / measured, 6) < attainment


def _scheduler(spec: SearchSpec, best: dict[str, Evaluation]) -> Scheduler:
    scheduler = Scheduler(spec, Screen(spec), InlineExecutor(), {}, lambda: None)
    scheduler.best.update(best)
    return scheduler


def _open(spec: SearchSpec, candidate: Candidate) -> Screened:
    item = Screen(spec).screen(candidate)
    assert isinstance(item, Screened)
    return replace(item, ceiling_rps=1e9)  # no bound prunes it: the need alone decides


def test_a_simpler_layout_needs_to_tie_only_where_a_tie_can_choose_it(profiles: ProfileSet) -> None:
    spec = _spec(profiles)
    margin = 1.0 + spec.rate_policy.tolerance
    big = _candidate(spec, "disaggregated 3P:1D (TP1)")
    small = _candidate(spec, "disaggregated 1P:1D (TP1)")  # simpler than ``big``
    colocated = _candidate(spec, "colocated 4× (TP1)")
    disagg_best = Evaluation(big, STATUS_OK, goodput_rps=4 * 10.0)
    for colocated_per_gpu, tie_possible in ((10.0, True), (10.1, True), (11.0, False), (13.0, False)):
        top = Evaluation(colocated, STATUS_OK, goodput_rps=4 * colocated_per_gpu)
        scheduler = _scheduler(spec, {"disaggregated": disagg_best, "colocated": top})
        need, why = scheduler._need(_open(spec, small))
        assert not why
        even = 10.0 * small.gpus
        assert need == pytest.approx(min(even * margin, max(even, colocated_per_gpu * small.gpus) / margin))
        if tie_possible:
            assert need < even * margin, "within a tie of the overall best, it only needs to tie"
        else:
            assert need == pytest.approx(even * margin), "no tie can choose it: beat its mode's best"
        # Sound: whatever holds just below the need, and however high the final top goes, the
        # tie rule never chooses it and it is not its mode's best by more than the resolution.
        below = Evaluation(small, STATUS_OK, goodput_rps=need * 0.999)
        for final_top in (colocated_per_gpu, colocated_per_gpu * 1.01, colocated_per_gpu * 1.2):
            final = Evaluation(colocated, STATUS_OK, goodput_rps=4 * final_top)
            ranked = sorted([final, disagg_best, below], key=lambda e: -(e.goodput_rps_per_gpu or 0.0))
            chosen, _ = choose(ranked, spec.rate_policy.tolerance)
            assert chosen is not below or need <= even / margin * (1 + 1e-12)
            assert (below.goodput_rps_per_gpu or 0.0) < 10.0 * margin
    # the leading mode keeps the tie rule unchanged: a simpler layout only needs to tie
    lead = _scheduler(spec, {"disaggregated": disagg_best})
    need, _ = lead._need(_open(spec, small))
    assert need == pytest.approx(10.0 * small.gpus / margin)


@pytest.mark.parametrize("overlap", [False, True])
def test_the_prefill_side_alone_is_the_full_runs_prefill_side(profiles: ProfileSet, overlap: bool) -> None:
    """What a need probe may prove on the prefill side alone: the same rejections, prefill starts
    and ends as the full run, and a first-token bound no later than the first token."""
    link = replace(LINK, layerwise_overlap=overlap)
    spec = replace(_spec(profiles, "ttft=800ms,tpot=40ms", gpus=3), link=link)
    cluster = Screen(spec).cluster(_candidate(spec, "disaggregated 2P:1D (TP1)"))
    requests = draw_requests(get_preset("chat").workload(num_requests=1500, seed=0).with_rate(60.0))
    full = simulate_requests(cluster, requests).records
    alone = simulate_prefill_side(requests, cluster).records
    assert np.array_equal(full.status_code == 1, alone.status_code == 1), "the same rejections"
    for name in ("prefill_start_s", "prefill_end_s"):
        assert np.array_equal(getattr(full, name), getattr(alone, name), equal_nan=True), name
    served = full.status_code == 0
    assert np.all(alone.first_token_s[served] <= full.first_token_s[served])


@pytest.mark.parametrize("label", ["disaggregated 1P:1D (TP1)", "disaggregated 2P:1D (TP1)"])
def test_a_failure_proven_on_the_prefill_side_is_a_failure(profiles: ProfileSet, label: str) -> None:
    spec = _spec(profiles, "ttft=800ms,tpot=40ms", gpus=3)
    cluster = Screen(spec).cluster(_candidate(spec, label))
    load = get_preset("chat").workload(num_requests=1500, seed=0)
    proven = 0
    for rate in (10.0, 30.0, 45.0, 60.0, 90.0, 140.0):
        requests = draw_requests(load.with_rate(rate))
        whole = judge(simulate_requests(cluster, requests), rate, spec.slo, 0.05)[0]
        fast = prefill_side_probe(cluster, requests, rate, spec.slo, 0.05)
        if fast is not None:
            proven += 1
            assert not fast.meets_slo and not whole.meets_slo, f"{rate} req/s"
            assert fast.attainment >= whole.attainment - 1e-9, "its attainment is an upper bound"
        if whole.meets_slo:
            assert fast is None
    assert proven >= 1, "some rate is proven to fail on the prefill side"
    # a colocated cluster has no separate prefill side
    colocated = Screen(spec).cluster(_candidate(spec, "colocated 1× (TP1)"))
    assert prefill_side_probe(colocated, draw_requests(load.with_rate(90.0)), 90.0, spec.slo, 0.05) is None

"""A failure proven on the prefill side alone is reused for every layout with the same prefill side
(``probe.prefill_side_key``), and the search records exactly what it records without the reuse."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import pytest

from pdplan.planner import waves
from pdplan.planner.evaluation import STATUS_PRUNED
from pdplan.planner.presets import get_preset
from pdplan.planner.probe import SloTargets, prefill_side_key, prefill_side_probe
from pdplan.planner.profileset import ProfileSet, analytic_profile_set
from pdplan.planner.screen import Screen
from pdplan.planner.search import SearchSpec
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import SpaceGrid, enumerate_candidates
from pdplan.planner.traffic import as_recorded
from pdplan.sim.cluster import KvLink
from pdplan.sim.requests import Requests
from pdplan.sim.workload import draw_requests

LINK = KvLink(450.0, 0.01, link="nvlink")
#: two decode batch limits and two prefill token budgets: layouts that share a prefill side and
#: layouts that do not
GRID = SpaceGrid(
    tps=(1,),
    decode_max_batch_size=(128, 256),
    prefill_max_batch_tokens=(2048, 8192),
    colocated_chunk_tokens=(2048,),
)


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return analytic_profile_set("llama-3.1-8b", "h100-sxm", tps=(1,))


def _requests() -> Requests:
    return draw_requests(get_preset("chat").workload(num_requests=1500, seed=0))


def _spec(profiles: ProfileSet, gpus: int = 4) -> SearchSpec:
    """A trace's search: every probe replays the same tokens, time-scaled."""
    return SearchSpec(
        profiles=profiles,
        traffic=as_recorded(_requests()),
        slo=SloTargets(parse_slo("ttft=800ms,tpot=40ms")),
        link=LINK,
        max_gpus=gpus,
        grid=GRID,
        modes=("disaggregated",),
    )


def test_layouts_with_one_key_give_one_prefill_side_probe(profiles: ProfileSet) -> None:
    """The key names everything the prefill-side run reads: layouts that share it get equal
    probes (at rates that prove and rates that do not), and the grid's other prefill sides differ."""
    spec = _spec(profiles, gpus=3)
    screen = Screen(spec)
    base = _requests()
    footprint = int((base.prompt_tokens + base.output_tokens).max())
    groups: dict[tuple[object, ...], list[Any]] = {}
    for candidate in enumerate_candidates(3, modes=spec.modes, grid=spec.grid):
        cluster = screen.cluster(candidate)
        key = prefill_side_key(cluster, footprint)
        assert key is not None
        groups.setdefault(key, []).append(cluster)
    assert any(len(g) >= 2 for g in groups.values()), "some layouts share a prefill side"
    one = next(iter(groups.values()))[0]
    cost = one.prefill_cost
    smaller = replace(one, prefill_cost=replace(cost, kv_capacity_tokens=cost.kv_capacity_tokens - 1))
    assert prefill_side_key(smaller, footprint) != prefill_side_key(one, footprint), "cost fields count"
    assert len(groups) >= 4, "prefill limits and instance counts give different sides"
    proven = 0
    for rate in (20.0, 90.0):
        requests = base.at_rate(rate)
        for clusters in groups.values():
            probes = [prefill_side_probe(c, requests, rate, spec.slo, 0.05) for c in clusters]
            assert all(p == probes[0] for p in probes), f"{rate} req/s: one key, different probes"
            proven += probes[0] is not None
    assert proven >= 1
    colocated = Screen(_spec(profiles)).cluster(
        next(c for c in enumerate_candidates(2, grid=GRID) if c.colocated is not None)
    )
    assert prefill_side_key(colocated) is None


def _decisions(spec: SearchSpec) -> tuple[list[object], int]:
    screen = Screen(spec)
    decided: dict[str, object] = {}
    items = []
    for candidate in enumerate_candidates(spec.max_gpus or 1, modes=spec.modes, grid=spec.grid):
        item = screen.screen(candidate)
        if isinstance(item, waves.Screened):
            items.append(item)
    with waves.executor(spec.workers) as pool:
        scheduler = waves.Scheduler(spec, screen, pool, decided, lambda: None)  # type: ignore[arg-type]
        scheduler.run(items)
    return [decided[k] for k in sorted(decided)], scheduler.reused


def test_the_search_decides_the_same_with_and_without_reuse(
    profiles: ProfileSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(profiles)
    with_reuse, reused = _decisions(spec)
    assert reused >= 1, "some prefill-side proof was reused"
    monkeypatch.setattr(waves, "prefill_side_key", lambda cluster, footprint: None)
    without, none = _decisions(spec)
    assert none == 0
    assert with_reuse == without, "reusing a proof changes no evaluation, probe or reason"
    pruned = [e for e in with_reuse if getattr(e, "status", "") == STATUS_PRUNED and e.probes]  # type: ignore[attr-defined]
    assert any(e.probes[0].prefill_side for e in pruned)  # type: ignore[attr-defined]
    monkeypatch.undo()
    # two workers: searches started ahead skip a prefill side being proven; nothing else changes
    # (compared as tables: a NaN that crossed a process boundary is not the same float object)
    two, _ = _decisions(replace(spec, workers=2))
    pd.testing.assert_frame_equal(_table(two), _table(with_reuse))


def _table(evaluations: list[Any]) -> pd.DataFrame:
    """Every evaluation's row of candidates.csv with its probes' rows of probes.csv."""
    rows = []
    for e in evaluations:
        probes = [p.row(e.candidate.candidate_id) for p in e.probes] or [{}]
        rows += [{**e.row(), **{f"probe_{k}": v for k, v in p.items()}} for p in probes]
    return pd.DataFrame(rows)

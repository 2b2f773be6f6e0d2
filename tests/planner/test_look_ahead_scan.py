"""Looking ahead judges each later candidate pruned once, not once per wave (``Scheduler._look_ahead``):
a search of tens of thousands of candidates, nearly all pruned by their ceiling, once spent minutes
of the main process re-scanning them for every wave. What starts ahead changes no decision."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from pdplan.planner import waves
from pdplan.planner.presets import get_preset
from pdplan.planner.probe import SloTargets
from pdplan.planner.profileset import analytic_profile_set
from pdplan.planner.screen import Screen
from pdplan.planner.search import SearchSpec
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import SpaceGrid, enumerate_candidates
from pdplan.planner.traffic import as_recorded
from pdplan.sim.cluster import KvLink
from pdplan.sim.workload import draw_requests

GRID = SpaceGrid(
    tps=(1,), decode_max_batch_size=(128,), prefill_max_batch_tokens=(8192,), colocated_chunk_tokens=(2048,)
)


def _decide(
    spec: SearchSpec, pool: waves.Executor, monkeypatch: pytest.MonkeyPatch
) -> tuple[pd.DataFrame, int, int]:
    """The decisions as a table, the ``_need`` calls looking ahead, and the candidates screened."""
    screen = Screen(spec)
    items = [
        screen.screen(c) for c in enumerate_candidates(spec.max_gpus or 1, modes=spec.modes, grid=spec.grid)
    ]
    items = [i for i in items if isinstance(i, waves.Screened)]
    calls = {"ahead": 0}
    need = waves.Scheduler._need
    look = waves.Scheduler._look_ahead

    def counting_look(self, *args):  # type: ignore[no-untyped-def]
        self._looking = True
        try:
            return look(self, *args)
        finally:
            self._looking = False

    def counting_need(self, item):  # type: ignore[no-untyped-def]
        calls["ahead"] += getattr(self, "_looking", False)
        return need(self, item)

    monkeypatch.setattr(waves.Scheduler, "_look_ahead", counting_look)
    monkeypatch.setattr(waves.Scheduler, "_need", counting_need)
    decided: dict[str, waves.Evaluation] = {}
    scheduler = waves.Scheduler(spec, screen, pool, decided, lambda: None)
    scheduler.run(items)
    rows = [decided[k].row() for k in sorted(decided)]
    return pd.DataFrame(rows), calls["ahead"], len(items)


def test_each_later_candidate_is_judged_pruned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SearchSpec(
        profiles=analytic_profile_set("llama-3.1-8b", "h100-sxm", tps=(1,)),
        traffic=as_recorded(draw_requests(get_preset("chat").workload(num_requests=300, seed=0))),
        slo=SloTargets(parse_slo("ttft=800ms,tpot=40ms")),
        link=KvLink(450.0, 0.01, link="nvlink"),
        max_gpus=24,
        grid=GRID,
    )
    alone, none_ahead, _ = _decide(spec, waves.InlineExecutor(), monkeypatch)
    assert none_ahead == 0, "one worker looks nowhere ahead"
    # two workers' look-ahead, its searches run inline (same results, one process)
    two, ahead, screened = _decide(replace(spec, workers=2), waves.InlineExecutor(), monkeypatch)
    pd.testing.assert_frame_equal(two, alone)
    waves_count = 1 + screened // waves.WAVE_SIZE
    assert screened > 200 and ahead > 0
    # judged once when pruned, plus the few still live re-judged per wave (bounded by the room
    # and the candidates kept for a prefill side being proven); re-scanning every later candidate
    # for every wave would take about screened × waves / 2
    assert ahead < 3 * screened, (ahead, screened, waves_count)

"""A promise on a trace replayed once must last: the chosen plan is also judged on the trace
repeated when the replay at its rate is short (``pdplan.planner.sustained``)."""

from __future__ import annotations

import numpy as np
import pytest

from pdplan.planner.presets import get_preset
from pdplan.planner.probe import SloTargets, probe_requests
from pdplan.planner.profileset import analytic_profile_set
from pdplan.planner.screen import Screen
from pdplan.planner.search import SearchSpec
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import SpaceGrid, enumerate_candidates
from pdplan.planner.sustained import MIN_SUSTAINED_S, check_sustained, repeated
from pdplan.planner.traffic import as_recorded, synthetic
from pdplan.sim.cluster import KvLink
from pdplan.sim.requests import Requests
from pdplan.sim.workload import draw_requests

GRID = SpaceGrid(tps=(1,), colocated_chunk_tokens=(2048,), colocated_max_batch_size=(256,))


def test_repeated_keeps_the_requests_and_the_mean_rate() -> None:
    base = Requests(np.array([0.0, 1.0, 1.5, 4.0]), np.array([10, 20, 30, 40]), np.array([1, 2, 3, 4]))
    three = repeated(base, 3)
    assert len(three) == 12
    # each copy one mean gap (4 s / 3) after the previous copy's last arrival
    np.testing.assert_allclose(three.arrival_s[4:8], base.arrival_s + 4.0 * 4 / 3)
    np.testing.assert_array_equal(three.prompt_tokens, np.tile(base.prompt_tokens, 3))
    np.testing.assert_array_equal(three.output_tokens, np.tile(base.output_tokens, 3))
    assert three.mean_rate_rps == pytest.approx(base.mean_rate_rps)
    assert repeated(base, 1) is base


@pytest.fixture(scope="module")
def setting() -> tuple[SearchSpec, object]:
    trace = draw_requests(get_preset("chat").workload(num_requests=2000, seed=0))
    spec = SearchSpec(
        profiles=analytic_profile_set("llama-3.1-8b", "h100-sxm", tps=(1,)),
        traffic=as_recorded(trace),
        slo=SloTargets(parse_slo("ttft=1s,tpot=50ms")),
        link=KvLink(450.0, 0.01, link="nvlink"),
        max_gpus=4,
        grid=GRID,
        modes=("colocated",),
    )
    four = next(c for c in enumerate_candidates(4, modes=("colocated",), grid=GRID) if c.gpus == 4)
    return spec, Screen(spec).cluster(four)


def test_a_replay_that_holds_only_while_the_cluster_fills_is_caught(setting) -> None:  # type: ignore[no-untyped-def]
    spec, cluster = setting
    rate = 88.0  # 2,000 requests in 22.7 s on four instances
    once = spec.traffic.replays(rate)[0]
    assert once.span_s < MIN_SUSTAINED_S
    assert probe_requests(cluster, once, rate, spec.slo, 0.05, False).meets_slo, "the replay once holds"
    check = check_sustained(cluster, spec.traffic, spec.slo, rate)
    assert check is not None and check.copies == 3 and check.span_s >= MIN_SUSTAINED_S
    assert check.holds is False, "repeated, the queue that the short replay ended before builds"
    assert "does NOT hold" in check.sentence()
    note = check.describe()
    assert note["holds"] is False and note["copies"] == 3 and note["attainment"] < 0.9


def test_a_rate_the_plan_sustains_holds_repeated_and_a_long_replay_is_not_checked(setting) -> None:  # type: ignore[no-untyped-def]
    spec, cluster = setting
    check = check_sustained(cluster, spec.traffic, spec.slo, 56.0)  # 35.7 s once
    assert check is not None and check.copies == 2 and check.holds is True
    assert "still holds" in check.sentence()
    assert check_sustained(cluster, spec.traffic, spec.slo, 20.0) is None  # 100 s once: long enough
    workload = get_preset("chat").workload(num_requests=200, seed=0)
    assert check_sustained(cluster, synthetic(workload), spec.slo, 88.0) is None  # not a trace

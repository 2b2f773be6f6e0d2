"""Bisection on rate (``pdplan.planner.rate.find_goodput``) against probes with a known answer."""

from __future__ import annotations

import itertools
import math

import pytest

from pdplan.planner.probe import Probe
from pdplan.planner.rate import BELOW_NEED, NEVER, OK, RatePolicy, find_goodput

TARGET = 0.9


def threshold_probe(goodput: float, log: list[float], steep: float = 4.0):
    """Attainment 1 up to ``goodput``, then falling linearly (slope ``steep`` per unit of rate/goodput)."""

    def probe(rate: float) -> Probe:
        log.append(rate)
        attainment = 1.0 if rate <= goodput else max(0.0, 1.0 - steep * (rate / goodput - 1.0))
        return Probe(rate, attainment, (1.0,) * 3, (1.0,) * 3, 1.0, rate <= goodput, 100)

    return probe


@pytest.mark.parametrize("goodput", [3.0, 40.0, 74.9, 99.0])
def test_goodput_is_a_passing_rate_within_tolerance(goodput: float) -> None:
    log: list[float] = []
    policy = RatePolicy(tolerance=0.02)
    out = find_goodput(threshold_probe(goodput, log), 100.0, target_attainment=TARGET, policy=policy)
    assert out.status == OK
    assert out.goodput_rps is not None
    assert out.goodput_rps <= goodput  # a rate that was simulated and met the SLO
    assert out.goodput_rps >= goodput / 1.02 - 1e-9
    assert out.goodput_rps in log
    above = [r for r in log if r > out.goodput_rps]
    assert above and min(above) <= out.goodput_rps * 1.02 + 1e-9, "bracketed by a failing probe"
    assert [p.rate_rps for p in out.probes] == log
    assert out.best_probe is not None and out.best_probe.rate_rps == out.goodput_rps


def test_probe_count_is_logarithmic_in_the_bracket() -> None:
    log: list[float] = []
    policy = RatePolicy(tolerance=0.01)
    find_goodput(threshold_probe(90.0, log), 100.0, target_attainment=TARGET, policy=policy)
    # first probe at 85, the bound at 100 (fails), then geometric halving of [85, 100]:
    # ln(100/85)/ln(1.01) ≈ 16 → 4 steps
    assert len(log) <= 7


def test_stops_after_one_probe_when_it_cannot_beat_the_best() -> None:
    log: list[float] = []
    out = find_goodput(threshold_probe(50.0, log), 100.0, target_attainment=TARGET, need_rps=60.0)
    assert out.status == BELOW_NEED
    assert out.goodput_rps is None
    assert log == [60.0]


def test_starts_at_the_need_and_bisects_up_when_it_holds() -> None:
    log: list[float] = []
    out = find_goodput(threshold_probe(80.0, log), 100.0, target_attainment=TARGET, need_rps=60.0)
    assert log[0] == 60.0
    assert out.status == OK and out.goodput_rps is not None
    assert 80.0 / 1.025 <= out.goodput_rps <= 80.0


def test_clear_violation_steps_down_by_half_and_gives_up_below_the_floor() -> None:
    log: list[float] = []
    policy = RatePolicy(min_fraction=1 / 16)
    out = find_goodput(threshold_probe(1e-6, log, steep=1.0), 100.0, target_attainment=TARGET, policy=policy)
    assert out.status == NEVER
    assert log[0] == pytest.approx(85.0)
    assert all(b == pytest.approx(a / 2) for a, b in itertools.pairwise(log))
    assert min(log) >= 100.0 / 16 and len(log) == math.floor(math.log2(85.0 / (100.0 / 16))) + 1


def test_mild_violation_steps_down_by_a_fifth() -> None:
    log: list[float] = []
    # at 85 the probe misses with attainment 1 − (85/80 − 1) ≈ 0.94: not a clear violation
    out = find_goodput(threshold_probe(80.0, log, steep=1.0), 100.0, target_attainment=TARGET)
    assert log[1] == pytest.approx(85.0 * 0.8)
    assert out.status == OK


@pytest.mark.parametrize("goodput", [100.0, 130.0, 390.0])
def test_a_bound_that_holds_is_not_a_result_the_search_climbs_past_it(goodput: float) -> None:
    """A finite replay can hold at (or above) the capacity bound; the goodput still comes from a
    bracket of simulated probes, never from the bound."""
    log: list[float] = []
    policy = RatePolicy(tolerance=0.02)
    out = find_goodput(threshold_probe(goodput, log), 100.0, target_attainment=TARGET, policy=policy)
    assert out.status == OK and out.goodput_rps is not None and out.bracketed
    assert goodput / 1.02 - 1e-9 <= out.goodput_rps <= goodput
    assert any(r > goodput for r in log), "a failing probe above the goodput was simulated"


def test_climbing_stops_at_the_policy_limit_and_says_it_is_unbracketed() -> None:
    log: list[float] = []
    out = find_goodput(threshold_probe(1e9, log), 100.0, target_attainment=TARGET)
    assert out.status == OK and not out.bracketed
    assert out.goodput_rps is not None and out.goodput_rps >= 400.0
    assert all(p.meets_slo for p in out.probes)


def test_start_rps_is_the_first_probe() -> None:
    log: list[float] = []
    find_goodput(threshold_probe(50.0, log), 100.0, target_attainment=TARGET, start_rps=47.0)
    assert log[0] == 47.0

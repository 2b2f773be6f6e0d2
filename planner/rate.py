"""Finding a candidate's goodput: bisection on request rate, bracketed by probes, with early stops.

Goodput is the highest rate at which the SLO holds (DESIGN.md). Attainment falls with rate, so
the search brackets the goodput between a rate that met the SLO (``lo``) and a rate that was
*simulated and missed it* (``hi``), and halves the bracket geometrically until
``hi / lo ≤ 1 + tolerance``; the goodput reported is ``lo``. The capacity bound
(``pdplan.planner.bounds``) only guides and prunes: it is where the search looks for the first
failing rate, and if a probe there still holds (a finite replay can), the search keeps climbing
until one fails. A bound is never reported as a goodput.

Early stops, which is where a search saves most of its probes:

- **cannot beat the best**: a candidate only matters if it beats the best plan found so far, i.e.
  holds the SLO at ``need_rps`` (the best goodput per GPU × this candidate's GPUs). The first
  probe is at ``need_rps``; if it misses the SLO, the candidate stops there (one probe).
- **clear violation**: below the first passing rate the search steps down, by half when
  attainment is far below target (a clear violation) and by a fifth otherwise; once the rate is
  below ``min_fraction`` of the bound, the candidate is infeasible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pdplan.planner.probe import Probe

OK, BELOW_NEED, NEVER = "ok", "below_need", "never"


@dataclass(frozen=True)
class RatePolicy:
    """How finely and from where the rate search runs.

    ``tolerance``: stop when hi/lo ≤ 1 + tolerance (2.5 %: finer than the seed-to-seed spread of
    goodput at the default window, see ``pdplan.planner.search``). ``start_fraction``: the first
    probe's share of the bound when there is nothing to beat (the simulated goodput of the
    standard search sits at 0.8-1.0 of it). ``clear_margin``: attainment this far below target is
    a clear violation (step down by half). ``min_fraction``: give up below this share of the
    bound. ``climb``: the factor to step up by when a probe at or above the bound still holds;
    ``max_over_bound``: how far above the bound to climb before giving up on finding a failing
    rate (the outcome then says the goodput is at least the last rate that held).
    """

    tolerance: float = 0.025
    start_fraction: float = 0.85
    clear_margin: float = 0.25
    min_fraction: float = 1.0 / 64
    climb: float = 1.25
    max_over_bound: float = 4.0

    def __post_init__(self) -> None:
        assert 0 < self.tolerance < 1, "tolerance is a fraction"
        assert 0 < self.start_fraction <= 1, "start_fraction is a share of the bound"
        assert 0 < self.min_fraction < self.start_fraction, "min_fraction below start_fraction"


@dataclass(frozen=True)
class RateOutcome:
    """``status``: ``ok`` (goodput found), ``below_need`` (missed the SLO at the rate it needed to
    beat the best), ``never`` (missed it at every rate tried, down to the floor)."""

    status: str
    goodput_rps: float | None
    probes: tuple[Probe, ...]
    bracketed: bool = True  # a failing probe above the goodput was simulated

    @property
    def best_probe(self) -> Probe | None:
        """The passing probe at the goodput (the operating point)."""
        passing = [p for p in self.probes if p.meets_slo]
        return max(passing, key=lambda p: p.rate_rps) if passing else None


def find_goodput(
    probe: Callable[[float], Probe],
    upper_rps: float,
    *,
    target_attainment: float,
    need_rps: float = 0.0,
    policy: RatePolicy = RatePolicy(),
    start_rps: float | None = None,
) -> RateOutcome:
    """The highest rate at which ``probe(rate).meets_slo``, bracketed by a failing probe above it
    to within ``policy.tolerance``.

    Args:
        probe: simulates one rate (deterministic for a rate).
        upper_rps: the capacity bound: where the first failing rate is looked for.
        target_attainment: the SLO's attainment target (for the clear-violation step).
        need_rps: the rate the candidate must hold to matter (0: no incumbent). Must be below
            ``upper_rps`` (the caller prunes otherwise).
        policy: tolerance and start.
        start_rps: the first rate to probe when there is nothing to beat (default: the policy's
            share of the bound).
    """
    assert math.isfinite(upper_rps) and upper_rps > 0, f"upper bound {upper_rps} must be finite and > 0"
    assert need_rps < upper_rps, "the caller prunes candidates whose bound is below the need"
    probes: list[Probe] = []
    lo: float | None = None
    hi: float | None = None  # the lowest rate simulated that missed the SLO
    if need_rps > 0:
        rate = need_rps
    else:
        rate = start_rps if start_rps is not None else policy.start_fraction * upper_rps
    floor = policy.min_fraction * upper_rps
    while True:
        result = probe(rate)
        probes.append(result)
        if result.meets_slo:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
            if need_rps > 0 and rate <= need_rps:
                return RateOutcome(BELOW_NEED, None, tuple(probes))
        if lo is None:
            clear = result.attainment < target_attainment - policy.clear_margin
            rate *= 0.5 if clear else 0.8
            if rate < floor:
                return RateOutcome(NEVER, None, tuple(probes))
            continue
        if hi is None:  # nothing has failed yet: look at the bound, then above it
            if lo >= policy.max_over_bound * upper_rps:
                return RateOutcome(OK, lo, tuple(probes), bracketed=False)
            rate = upper_rps if lo < upper_rps / (1.0 + policy.tolerance) else lo * policy.climb
            continue
        if hi / lo <= 1.0 + policy.tolerance:
            return RateOutcome(OK, lo, tuple(probes))
        rate = math.sqrt(lo * hi)

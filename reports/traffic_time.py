"""Traffic over time: the arrival rate per minute of a run, its peak-to-mean ratio, and the share of
the requests arriving in each minute that met the per-request SLO, against the attainment target.

A plan's goodput is a mean rate; a recorded trace swings around its mean from minute to minute, and
the minutes where it peaks are where the plan is tight. This figure shows them. It reads
``requests.csv`` (``arrival_s``, ``status``, ``first_token_s``, ``finish_s``, ``output_tokens``)
and the SLO and attainment target from ``plan.yaml`` (else ``summary.yaml``). A request meets the
SLO as ``pdplan.sim.summary`` judges it: status ok, and TTFT, E2E and TPOT (for more than one output
token) within their per-request thresholds; a rejected, failed or unfinished request does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdplan.reports.figure import COLORS, SLO_COLOR, Margins, new_figure, style, to_svg
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Item, Paragraph
from pdplan.reports.slo import SloLine
from pdplan.reports.units import fmt_count, fmt_pct, fmt_rps, fmt_s

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

MINUTE_S = 60.0
MIN_MINUTES = 10  # a run shorter than this many minutes gets ~60 shorter bins instead
MIN_PER_BIN = 20  # requests per short bin on average, at least
_NICE_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)


def bin_width_s(span_s: float, num_requests: int | None = None) -> float:
    """60 s for a run of at least ten minutes; else the nice width ≥ span/60 (about 60 bins),
    widened until a bin holds ``MIN_PER_BIN`` requests on average, so one late request in a bin
    of four does not read as a 75 % minute."""
    if span_s >= MIN_MINUTES * MINUTE_S:
        return MINUTE_S
    want = max(span_s, 1e-9) / 60
    if num_requests and span_s > 0:
        want = max(want, MIN_PER_BIN * span_s / num_requests)
    return next((nice for nice in _NICE_S if nice >= want), MINUTE_S)


def meets_slo(requests: pd.DataFrame, slo: list[SloLine]) -> np.ndarray:
    """Per request: did it meet every per-request threshold (percentile lines are not per-request)."""
    ok = requests["status"].astype(str).to_numpy() == "ok"
    arrival = requests["arrival_s"].to_numpy(dtype=float)
    first = requests["first_token_s"].to_numpy(dtype=float)
    finish = requests["finish_s"].to_numpy(dtype=float)
    outputs = requests["output_tokens"].to_numpy(dtype=float)
    meets = ok.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        for line in slo:
            if line.percentile is not None:
                continue
            if line.metric == "ttft":
                meets &= (first - arrival) * 1000 <= line.threshold_ms
            elif line.metric == "e2e":
                meets &= (finish - arrival) * 1000 <= line.threshold_ms
            elif line.metric == "tpot":
                tpot_ms = (finish - first) / np.maximum(outputs - 1, 1) * 1000
                meets &= (outputs <= 1) | (tpot_ms <= line.threshold_ms)
    return meets


@dataclass(frozen=True)
class TrafficBins:
    """Arrivals and SLO attainment per time bin (times from the first arrival)."""

    width_s: float
    start_s: np.ndarray
    end_s: np.ndarray
    arrivals: np.ndarray
    met: np.ndarray

    @property
    def rate_rps(self) -> np.ndarray:
        return self.arrivals / (self.end_s - self.start_s)

    @property
    def attainment(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.arrivals > 0, self.met / self.arrivals, np.nan)

    @property
    def mean_rps(self) -> float:
        return float(self.arrivals.sum() / (self.end_s[-1] - self.start_s[0]))

    @property
    def peak_to_mean(self) -> float:
        return float(self.rate_rps.max() / self.mean_rps) if self.mean_rps > 0 else math.nan


def traffic_bins(requests: pd.DataFrame, slo: list[SloLine], width_s: float | None = None) -> TrafficBins:
    """Bins of ``width_s`` (default ``bin_width_s`` of the span) from the first arrival.

    The last bin takes the arrivals after the last full bin; when that tail is shorter than half a
    bin it joins the bin before, so no rate is computed over a sliver of time.
    """
    arrival = requests["arrival_s"].to_numpy(dtype=float)
    keep = np.isfinite(arrival)
    arrival = arrival[keep]
    assert arrival.size, "traffic_bins needs at least one arrival"
    met = meets_slo(requests, slo)[keep]
    t0 = float(arrival.min())
    span = float(arrival.max()) - t0
    width = width_s or bin_width_s(span, int(arrival.size))
    full = int(span // width)
    edges = list(np.arange(full + 1) * width)
    tail = span - full * width
    if full == 0:
        edges = [0.0, max(span, width)]
    elif tail >= width / 2:
        edges.append(span)
    else:
        edges[-1] = span
    edges_arr = np.asarray(edges, dtype=float)
    idx = np.clip(np.searchsorted(edges_arr, arrival - t0, side="right") - 1, 0, len(edges_arr) - 2)
    bins = len(edges_arr) - 1
    return TrafficBins(
        width_s=width,
        start_s=edges_arr[:-1],
        end_s=edges_arr[1:],
        arrivals=np.bincount(idx, minlength=bins).astype(float),
        met=np.bincount(idx, weights=met.astype(float), minlength=bins),
    )


def traffic_figure(bins: TrafficBins, target: float | None) -> MplFigure:
    """Arrival rate per bin (top, with the mean) and SLO attainment per bin (bottom, with the
    target; bins below it marked)."""
    unit, scale = ("min", MINUTE_S) if bins.width_s >= MINUTE_S else ("s", 1.0)
    left = bins.start_s / scale
    widths = (bins.end_s - bins.start_s) / scale
    with style():
        fig = new_figure(7.5, 4.4, Margins(top_in=0.3, hspace=0.15))
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.bar(left, bins.rate_rps, width=widths, align="edge", color=COLORS[0], alpha=0.8, linewidth=0)
        top.axhline(
            bins.mean_rps,
            color="#444444",
            linestyle="--",
            linewidth=1,
            label=f"mean {fmt_rps(bins.mean_rps)}",
        )
        top.set_ylabel("arrivals (req/s)")
        top.set_title(f"peak {fmt_rps(bins.rate_rps.max())} = {bins.peak_to_mean:.2f}× the mean", fontsize=9)
        top.legend(loc="lower right")
        attain = bins.attainment
        centres = left + widths / 2
        bottom.step(
            np.append(left, left[-1] + widths[-1]),
            np.append(attain, attain[-1]),
            where="post",
            color=COLORS[2],
            linewidth=1.4,
            label="met the SLO",
        )
        if target is not None:
            bottom.axhline(
                target,
                color=SLO_COLOR,
                linestyle=":",
                linewidth=1.2,
                label=f"attainment target {fmt_pct(target, 0)}",
            )
            below = np.isfinite(attain) & (attain < target)
            if below.any():
                bottom.scatter(
                    centres[below], attain[below], s=12, color=SLO_COLOR, zorder=3, label="below target"
                )
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_ylabel("share meeting SLO")
        bottom.set_xlabel(f"time since the first arrival ({unit})")
        bottom.legend(loc="lower right")
    return fig


def traffic_sentence(bins: TrafficBins, target: float | None) -> str:
    """The figure in words: mean, peak and peak-to-mean; attainment range; bins below target."""
    minutes = bins.width_s == MINUTE_S
    word = "minute" if minutes else f"{fmt_s(bins.width_s).replace(' ', '-')} bin"

    def at(i: int) -> str:
        start = float(bins.start_s[i])
        return f"minute {int(start // MINUTE_S) + 1}" if minutes else f"from {start:g} s"

    rate = bins.rate_rps
    peak = int(np.argmax(rate))
    text = (
        f"Arrivals per {word}: mean {fmt_rps(bins.mean_rps)}, peak {fmt_rps(rate[peak])} "
        f"({at(peak)}), peak-to-mean {bins.peak_to_mean:.2f}"
    )
    attain = bins.attainment
    finite = np.isfinite(attain)
    if finite.any():
        worst = int(np.nanargmin(attain))
        text += (
            f"; share meeting the SLO per {word} from {fmt_pct(attain[worst])} "
            f"({at(worst)}) to {fmt_pct(np.nanmax(attain))}"
        )
        if target is not None:
            below = int((attain[finite] < target).sum())
            text += f"; {below} of the {int(finite.sum())} {word}s below the {fmt_pct(target, 0)} target"
    return text + f" ({fmt_count(bins.arrivals.sum())} requests)."


def attainment_target(run: RunData) -> float | None:
    """plan.yaml's ``attainment`` (the target the search held the plan to), when it has one."""
    value = (run.plan or {}).get("attainment")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return None
    return float(value)


def traffic_items(runs: list[RunData], slo: list[SloLine], key: str = "operating-traffic") -> list[Item]:
    """The traffic-over-time figure and its sentence for every run with arrivals."""
    items: list[Item] = []
    with_arrivals = [r for r in runs if r.requests is not None and r.requests["arrival_s"].notna().any()]
    judged = [line for line in slo if line.percentile is None]
    for n, run in enumerate(with_arrivals):
        assert run.requests is not None
        bins = traffic_bins(run.requests, slo)
        target = attainment_target(run)
        name = f"{key}{n}" if n else key
        width = (
            "one minute"
            if bins.width_s == MINUTE_S
            else f"{fmt_s(bins.width_s)} (the run is shorter than {MIN_MINUTES} minutes: about span/60, "
            f"and at least {MIN_PER_BIN} requests per bin on average)"
        )
        items.append(
            Figure(
                name,
                f"Traffic over time in {run.label}: arrivals per bin of {width}, and the share of the "
                "requests arriving in each bin that met the per-request SLO"
                + (f" ({', '.join(line.condition for line in judged)})" if judged else " (none given)")
                + "; a rejected or unfinished request does not. Where the rate peaks is where the "
                "plan is tight.",
                to_svg(traffic_figure(bins, target if judged else None), name),
            )
        )
        items.append(Paragraph(f"{run.label}: " + traffic_sentence(bins, target if judged else None)))
    return items

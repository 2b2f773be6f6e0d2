"""Section 5, Validation: predicted vs measured, per metric with the error in percent, and per
request (the two ``requests.csv`` share a schema, so comparing is a join on ``req_id``).

A pair is a bench run and its ``predicted/`` sub-directory, or, in a combined report, a simulate or
search run and a bench run. Metrics come from ``summary.yaml`` and, where it lacks one, are
computed from ``requests.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pdplan.reports.figure import COLORS, SLO_COLOR, Margins, log_axis, ms_axis, new_figure, style, to_svg
from pdplan.reports.operating import cdf_figure, request_latencies
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Heading, Item, Paragraph, Section, Table
from pdplan.reports.units import fmt_ms, fmt_num, fmt_pct, fmt_rps, fmt_tok_s

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

LATENCY_METRICS = tuple(
    f"{m}_{s}_ms" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p90", "p99")
)
RATE_METRICS = ("throughput_rps", "output_tokens_per_s", "attainment", "goodput_rps")
RASTER_POINTS = 3000
TOLERANCE_PCT = 10.0  # the band drawn around zero error


_RATE_LABELS = {
    "throughput_rps": "throughput",
    "output_tokens_per_s": "output tokens",
    "attainment": "SLO attainment",
    "goodput_rps": "goodput (req/s)",
}


def metric_label(name: str) -> str:
    """'ttft_p50_ms' → 'TTFT p50' (its values carry their unit); rate metrics by their plain names."""
    if name in _RATE_LABELS:
        return _RATE_LABELS[name]
    metric, stat, _unit = name.split("_")
    return f"{metric.upper()} {stat}"


def metric_value(name: str, value: Any) -> str:
    """A metric's value in the unit that fits it (``1.29 s``, ``54.8 req/s``, ``12.8k tok/s``)."""
    if name.endswith("_ms"):
        return fmt_ms(value)
    if name == "throughput_rps":
        return fmt_rps(value)
    if name == "output_tokens_per_s":
        return fmt_tok_s(value)
    if name == "attainment":
        return fmt_pct(value)
    return fmt_num(value)


def run_metrics(run: RunData) -> dict[str, float]:
    """Latency percentiles, throughput and attainment of a run (summary.yaml first)."""
    out: dict[str, float] = {}
    summary = run.summary or {}
    for name in LATENCY_METRICS:
        metric, stat, _ = name.split("_")
        block = summary.get(f"{metric}_ms")
        if isinstance(block, dict) and isinstance(block.get(stat), (int, float)):
            out[name] = float(block[stat])
    for name in RATE_METRICS:
        if isinstance(summary.get(name), (int, float)) and not isinstance(summary.get(name), bool):
            out[name] = float(summary[name])
    if run.requests is not None:
        values = request_latencies(run.requests)
        for name in LATENCY_METRICS:
            metric, stat, _ = name.split("_")
            if metric not in values:
                continue
            data = values[metric]
            if name not in out and data.size:
                out[name] = float(np.mean(data) if stat == "mean" else np.percentile(data, float(stat[1:])))
        req = run.requests
        span = float(req["finish_s"].max() - req["arrival_s"].min()) if len(req) else 0.0
        ok = req[req["status"] == "ok"]
        if "throughput_rps" not in out and span > 0:
            out["throughput_rps"] = len(ok) / span
        if "output_tokens_per_s" not in out and span > 0:
            out["output_tokens_per_s"] = float(ok["output_tokens"].sum()) / span
    return out


def compare(predicted: dict[str, float], measured: dict[str, float]) -> pd.DataFrame:
    """One row per metric both sides have: predicted, measured, error % (vs measured)."""
    names = [n for n in (*LATENCY_METRICS, *RATE_METRICS) if n in predicted and n in measured]
    pred = np.array([predicted[n] for n in names], dtype=float)
    meas = np.array([measured[n] for n in names], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(meas != 0, (pred - meas) / np.abs(meas) * 100, np.nan)
    return pd.DataFrame({"metric": names, "predicted": pred, "measured": meas, "error_pct": err})


def error_figure(table: pd.DataFrame) -> MplFigure:
    """Error % per metric as horizontal bars, with the ±10 % band."""
    with style():
        fig = new_figure(7.0, 0.9 + 0.22 * max(1, len(table)), Margins(left_in=1.4, top_in=0.15))
        ax = fig.add_subplot()
        y = np.arange(len(table))[::-1]
        err = table["error_pct"].to_numpy(dtype=float)
        colors = [COLORS[0] if abs(e) <= TOLERANCE_PCT else SLO_COLOR for e in np.nan_to_num(err)]
        ax.axvspan(
            -TOLERANCE_PCT,
            TOLERANCE_PCT,
            color="#cccccc",
            alpha=0.4,
            linewidth=0,
            label=f"±{TOLERANCE_PCT:g}%",
        )
        ax.barh(y, np.nan_to_num(err), color=colors)
        ax.set_yticks(y, [metric_label(m) for m in table["metric"]])
        ax.axvline(0, color="#444444", linewidth=0.8)
        ax.set_xlabel("prediction error vs measurement (%)")
        ax.legend(loc="lower right")
    return fig


def joined_requests(predicted: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """TTFT and E2E (ms) of every request that completed in both runs, matched by ``req_id``."""

    def latencies(req: pd.DataFrame) -> pd.DataFrame:
        ok = req[req["status"] == "ok"]
        return pd.DataFrame(
            {
                "req_id": ok["req_id"],
                "ttft_ms": (ok["first_token_s"] - ok["arrival_s"]) * 1000,
                "e2e_ms": (ok["finish_s"] - ok["arrival_s"]) * 1000,
            }
        )

    return latencies(predicted).merge(latencies(measured), on="req_id", suffixes=("_pred", "_meas"))


def requests_figure(joined: pd.DataFrame) -> MplFigure:
    """Predicted vs measured TTFT and E2E per request; the diagonal is a perfect prediction."""
    raster = len(joined) > RASTER_POINTS
    with style():
        fig = new_figure(7.5, 3.3, Margins(left_in=0.95, wspace=0.45))  # room for '400 ms' ticks
        for ax, metric in zip(fig.subplots(1, 2), ("ttft", "e2e"), strict=True):
            x = joined[f"{metric}_ms_meas"].to_numpy(dtype=float)
            y = joined[f"{metric}_ms_pred"].to_numpy(dtype=float)
            ax.scatter(x, y, s=6, alpha=0.4, color=COLORS[0], rasterized=raster, linewidths=0)
            both = np.concatenate([x, y])
            both = both[np.isfinite(both) & (both > 0)]
            if both.size:
                lo, hi = float(both.min()), float(both.max())
                ax.plot([lo, hi], [lo, hi], color=SLO_COLOR, linewidth=1, label="predicted = measured")
                if hi / lo > 100:
                    log_axis(ax, "both")
            ms_axis(ax.xaxis)
            ms_axis(ax.yaxis)
            ax.set_xlabel(f"measured {metric.upper()}")
            ax.set_ylabel(f"predicted {metric.upper()}")
            ax.legend(loc="upper left", fontsize=7)
    return fig


def error_over_time(predicted: pd.DataFrame, measured: pd.DataFrame, windows: int = 10) -> pd.DataFrame:
    """Signed error (%) of the median TTFT and TPOT of the requests arriving in each of ``windows``
    equal slices of the measured run (matched by ``req_id``); NaN where a slice has none."""

    def per_request(req: pd.DataFrame) -> pd.DataFrame:
        ok = req[req["status"] == "ok"]
        many = ok["output_tokens"] > 1
        return pd.DataFrame(
            {
                "req_id": ok["req_id"],
                "arrival_s": ok["arrival_s"],
                "ttft": (ok["first_token_s"] - ok["arrival_s"]) * 1000,
                "tpot": ((ok["finish_s"] - ok["first_token_s"]) / (ok["output_tokens"] - 1)).where(many)
                * 1000,
            }
        )

    joined = (
        per_request(predicted)
        .drop(columns="arrival_s")
        .merge(per_request(measured), on="req_id", suffixes=("_pred", "_meas"))
    )
    if joined.empty:
        return pd.DataFrame(columns=["start_s", "ttft_error_pct", "tpot_error_pct"])
    t = joined["arrival_s"].to_numpy(dtype=float)
    edges = np.linspace(t.min(), t.max(), windows + 1)
    index = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, windows - 1)
    rows = []
    for w in range(windows):
        inside = joined[index == w]
        row = {"start_s": float(edges[w])}
        for metric in ("ttft", "tpot"):
            pred, meas = inside[f"{metric}_pred"].median(), inside[f"{metric}_meas"].median()
            row[f"{metric}_error_pct"] = (pred / meas - 1) * 100 if meas and np.isfinite(meas) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def over_time_figure(table: pd.DataFrame) -> MplFigure:
    """The error of median TTFT and TPOT per arrival window, with the ±10 % band."""
    with style():
        fig = new_figure(7.0, 2.8)
        ax = fig.add_subplot()
        ax.axhspan(-TOLERANCE_PCT, TOLERANCE_PCT, color="#cccccc", alpha=0.4, linewidth=0)
        for color, metric in zip(COLORS, ("ttft", "tpot"), strict=False):
            errors = table[f"{metric}_error_pct"]
            ax.plot(table["start_s"], errors, marker="o", color=color, label=metric.upper())
        ax.axhline(0, color="#444444", linewidth=0.8)
        ax.set_xlabel("arrival window start (s)")
        ax.set_ylabel("median error (%)")
        ax.legend(loc="best", fontsize=7)
    return fig


def pairs(runs: Sequence[RunData]) -> list[tuple[RunData, RunData]]:
    """(predicted, measured) pairs among the runs, as documented in the module docstring."""
    out = [(run.predicted, run) for run in runs if run.predicted is not None]
    benches = [run for run in runs if run.kind == "bench" and run.predicted is None]
    sims = [
        run
        for run in runs
        if run.kind in ("simulate", "search") and (run.summary is not None or run.requests is not None)
    ]
    if benches and sims:
        out.extend((sims[0], bench) for bench in benches)
    return out


def build_validation(runs: Sequence[RunData]) -> Section:
    """The Validation section; absent unless a measured run comes with a prediction."""
    found = pairs(runs)
    if not found:
        return Section(
            "validation",
            "Validation",
            absent=(
                "No measured run with a prediction to compare: validation needs a bench run with a "
                "predicted/ sub-directory, or a simulate/search run and a bench run in one report."
            ),
        )
    items: list[Item] = []
    for n, (pred, meas) in enumerate(found):
        key = f"validation{n}" if n else "validation"
        pred_name = f"{pred.path.parent.name}/predicted" if pred.path.name == "predicted" else pred.label
        if len(found) > 1:
            items.append(Heading(f"{pred_name} vs {meas.label}"))
        items.extend(_pair_items(pred, meas, pred_name, key))
    return Section("validation", "Validation", items=tuple(items))


def _pair_items(pred: RunData, meas: RunData, pred_name: str, key: str) -> list[Item]:
    table = compare(run_metrics(pred), run_metrics(meas))
    if table.empty:
        return [Paragraph(f"{pred_name} and {meas.label} share no metric to compare.")]
    errors = np.abs(table["error_pct"].to_numpy(dtype=float))
    items: list[Item] = [
        Paragraph(
            f"Prediction ({pred_name}) vs measurement ({meas.label}): median |error| "
            f"{np.nanmedian(errors):.1f}% over {len(table)} metrics, worst "
            f"{metric_label(table['metric'].iloc[int(np.nanargmax(errors))])} at "
            f"{table['error_pct'].iloc[int(np.nanargmax(errors))]:+.1f}%."
            if np.isfinite(errors).any()
            else "No metric has a nonzero measured value."
        ),
        Figure(
            f"{key}-errors",
            "Prediction error per metric (bars outside the grey band are off "
            f"by more than {TOLERANCE_PCT:g}%).",
            to_svg(error_figure(table), f"{key}-errors"),
        ),
        Table(
            "Predicted vs measured.",
            ("metric", "predicted", "measured", "error"),
            tuple(
                (metric_label(m), metric_value(m, p), metric_value(m, v), _pct(e))
                for m, p, v, e in table.itertuples(index=False)
            ),
        ),
    ]
    if pred.requests is not None and meas.requests is not None:
        samples = [
            ("predicted", request_latencies(pred.requests)),
            ("measured", request_latencies(meas.requests)),
        ]
        items.append(
            Figure(
                f"{key}-cdf",
                "TTFT and TPOT distributions, predicted and measured.",
                to_svg(cdf_figure(samples, []), f"{key}-cdf"),
            )
        )
        trend = error_over_time(pred.requests, meas.requests)
        if not trend.empty:
            items.append(
                Figure(
                    f"{key}-over-time",
                    "Error of the median TTFT and TPOT over the run (requests by arrival window; "
                    "a drift shows a queue the prediction does or does not build).",
                    to_svg(over_time_figure(trend), f"{key}-over-time"),
                )
            )
        joined = joined_requests(pred.requests, meas.requests)
        if joined.empty:
            items.append(Paragraph("No request ids in common: no per-request comparison."))
        else:
            items.append(
                Figure(
                    f"{key}-requests",
                    f"Per request ({len(joined)} matched by req_id): predicted vs measured latency.",
                    to_svg(requests_figure(joined), f"{key}-requests"),
                )
            )
    return items


def _pct(value: Any) -> str:
    return f"{float(value):+.1f}%" if np.isfinite(float(value)) else "—"

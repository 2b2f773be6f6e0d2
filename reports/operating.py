"""Section 3, Operating point: TTFT and TPOT CDFs with the SLO lines, queue length, batch size and
KV use over time per role, and the run's summary figures.

Reads ``requests.csv`` (per-request latencies; of every run, and of a bench run's ``predicted/``,
overlaid in one CDF), ``summary.yaml``, ``timeseries.csv`` and the SLO from ``plan.yaml`` or
``summary.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pdplan.reports.figure import (
    COLORS,
    ROLE_COLORS,
    SLO_COLOR,
    Margins,
    bin_series,
    downsample_sorted,
    log_axis,
    ms_axis,
    new_figure,
    style,
    to_svg,
)
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Heading, Item, Paragraph, Section, Table
from pdplan.reports.slo import SloLine, parse_slo, slo_for
from pdplan.reports.traffic_time import traffic_items
from pdplan.reports.units import fmt_count, fmt_ms, fmt_num, fmt_pct, fmt_rps, fmt_tok_s

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

CDF_POINTS = 400  # per curve; quantiles in between are interpolated by the reader's eye anyway
SERIES_BINS = 300  # per role and metric
ROLES = ("prefill", "decode", "colocated")
BUSY_NOTE = (
    "Busy time: the share of the run during which an instance had work (a batch in flight). A decode "
    "instance is busy whenever any request is decoding, so busy time can be near 100% far below the "
    "goodput: it is not a measure of headroom."
)


def request_latencies(requests: pd.DataFrame) -> dict[str, np.ndarray]:
    """TTFT, TPOT and E2E in ms of the requests with status ok (DESIGN.md definitions).

    TPOT = (finish − first token) / (output_tokens − 1), defined for requests with > 1 token.
    """
    ok = requests[requests["status"] == "ok"]
    ttft = (ok["first_token_s"] - ok["arrival_s"]).to_numpy(dtype=float) * 1000
    e2e = (ok["finish_s"] - ok["arrival_s"]).to_numpy(dtype=float) * 1000
    many = ok[ok["output_tokens"] > 1]
    tpot = ((many["finish_s"] - many["first_token_s"]) / (many["output_tokens"] - 1)).to_numpy(
        dtype=float
    ) * 1000
    return {
        name: values[np.isfinite(values)] for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e))
    }


def cdf_figure(samples: Sequence[tuple[str, dict[str, np.ndarray]]], slo: Sequence[SloLine]) -> MplFigure:
    """TTFT (left) and TPOT (right) CDFs, one line per labelled sample, SLO thresholds as lines."""
    with style():
        fig = new_figure(7.5, 3.2)
        axes = fig.subplots(1, 2)
        for ax, metric in zip(axes, ("ttft", "tpot"), strict=True):
            high = 0.0
            low = np.inf
            for i, (label, values) in enumerate(samples):
                x, p = downsample_sorted(values[metric], CDF_POINTS)
                if x.size == 0:
                    continue
                high, low = max(high, float(x[-1])), min(low, float(x[0]))
                ax.plot(
                    x,
                    p,
                    color=COLORS[i % len(COLORS)],
                    linewidth=1.6,
                    label=label,
                    drawstyle="steps-post" if x.size < CDF_POINTS else "default",
                )
            for line in slo_for(metric, list(slo)):
                ax.axvline(
                    line.threshold_ms, color=SLO_COLOR, linestyle="--", linewidth=1.2, label=line.label
                )
                if line.percentile is not None:
                    ax.axhline(line.percentile / 100, color=SLO_COLOR, linestyle=":", linewidth=1)
            if low > 0 and high / low > 100:
                log_axis(ax, "x")
            ms_axis(ax.xaxis)
            ax.set_xlabel(metric.upper())
            ax.set_ylabel("fraction of requests")
            ax.set_ylim(0, 1.01)
            ax.legend(loc="lower right", fontsize=7)
    return fig


def timeseries_figure(timeseries: pd.DataFrame) -> MplFigure:
    """Queue length, batch size and KV use (%) over time: one column per role, mean over the
    role's instances with their min–max band."""
    from matplotlib.ticker import MaxNLocator

    roles = [r for r in ROLES if (timeseries["role"] == r).any()]
    roles += sorted(set(timeseries["role"]) - set(ROLES))
    ts = timeseries.assign(
        kv_used_pct=100
        * timeseries["kv_used_tokens"]
        / timeseries["kv_capacity_tokens"].where(timeseries["kv_capacity_tokens"] > 0)
    )
    metrics = (("queue_len", "queue length"), ("batch_size", "batch size"), ("kv_used_pct", "KV used (%)"))
    with style():
        fig = new_figure(1.2 + 2.8 * len(roles), 5.6, Margins(top_in=0.35, hspace=0.12, wspace=0.25))
        axes = fig.subplots(len(metrics), len(roles), sharex=True, squeeze=False)
        for col, role in enumerate(roles):
            mine = ts[ts["role"] == role]
            color = ROLE_COLORS.get(role, COLORS[col % len(COLORS)])
            count = mine["instance"].nunique()
            axes[0][col].set_title(f"{role} ({count} instance{'s' if count != 1 else ''})")
            for row, (name, ylabel) in enumerate(metrics):
                ax = axes[row][col]
                t, mean, lo, hi = bin_series(mine["time_s"].to_numpy(), mine[name].to_numpy(), SERIES_BINS)
                if t.size:
                    ax.fill_between(t, lo, hi, color=color, alpha=0.2, linewidth=0)
                    ax.plot(t, mean, color=color, linewidth=1.2, label="mean over instances")
                if col == 0:
                    ax.set_ylabel(ylabel)
                if row == len(metrics) - 1:
                    ax.set_xlabel("time (s)")
                if name == "kv_used_pct":
                    ax.set_ylim(0, 105)
                else:  # counts: whole ticks from zero, even when a queue stays empty
                    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
                    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    return fig


def build_operating(runs: Sequence[RunData]) -> Section:
    """CDFs over every run with requests (a bench's ``predicted/`` included), time series and
    summary table per run."""
    samples = latency_samples(runs)
    excluded = sum(_warmup(run) for run in _with_requests(runs))
    summaries = [run for run in runs if run.summary is not None]
    series = [run for run in runs if run.timeseries is not None]
    if not samples and not summaries and not series:
        why = "; ".join(run.why_absent("requests.csv", "summary.yaml", "timeseries.csv") for run in runs)
        return Section("operating", "Operating point", absent=f"No simulated or measured run: {why}.")
    slo, notes = _slo(runs)
    items: list[Item] = []
    if samples:
        items.append(
            Figure(
                "operating-cdf",
                "TTFT and TPOT of every completed request (CDF); dashed: the SLO thresholds."
                + (" Warm-up requests are left out, as in summary.yaml." if excluded else ""),
                to_svg(cdf_figure(samples, slo), "operating-cdf"),
            )
        )
        items.extend(Paragraph(_attainment_text(label, values, slo)) for label, values in samples if slo)
        items.extend(traffic_items([run for run in runs if run.requests is not None], slo))
    else:
        items.append(Paragraph("No latency CDFs: no run has a readable requests.csv."))
    if summaries:
        items.append(_summary_table(summaries))
        if any(_dict(_get(run.summary, "utilisation")) for run in summaries):
            items.append(Paragraph(BUSY_NOTE))
    for n, run in enumerate(series):
        assert run.timeseries is not None
        if len(series) > 1:
            items.append(Heading(f"Load over time: {run.label}"))
        key = f"operating-timeseries{n}" if n else "operating-timeseries"
        items.append(
            Figure(
                key,
                "Queue length, batch size and KV-cache use over time per role "
                "(line: mean over instances; band: min–max).",
                to_svg(timeseries_figure(run.timeseries), key),
            )
        )
    if not series:
        items.append(
            Paragraph(
                "No load over time: " + "; ".join(run.why_absent("timeseries.csv") for run in runs) + "."
            )
        )
    return Section("operating", "Operating point", items=tuple(items), notes=tuple(notes))


def latency_samples(runs: Sequence[RunData]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(label, latencies) of every run with requests, a bench's ``predicted/`` included, without
    the warm-up requests its summary.yaml left out."""
    samples = []
    for run in _with_requests(runs):
        assert run.requests is not None
        samples.append((_sample_label(run), request_latencies(run.requests.iloc[_warmup(run) :])))
    return samples


def _with_requests(runs: Sequence[RunData]) -> list[RunData]:
    out = []
    for run in runs:
        if run.requests is not None:
            out.append(run)
        if run.predicted is not None and run.predicted.requests is not None:
            out.append(run.predicted)
    return out


def _warmup(run: RunData) -> int:
    """How many of the earliest arrivals summary.yaml left out (``warmup_excluded``), so the CDF
    describes the same requests as the summary's percentiles."""
    value = (run.summary or {}).get("warmup_excluded")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _sample_label(run: RunData) -> str:
    kind = "predicted" if run.path.name == "predicted" else run.kind
    name = run.path.parent.name if run.path.name == "predicted" else run.label
    return f"{name} ({kind})"


def _slo(runs: Sequence[RunData]) -> tuple[list[SloLine], list[str]]:
    for run in runs:
        for source in (run.plan, run.summary):
            if source is not None and source.get("slo"):
                return parse_slo(source["slo"])
            if source is not None and isinstance(source.get("slo_ms"), dict):
                return parse_slo(source["slo_ms"], default_unit="ms")
    return [], []


def _attainment_text(label: str, values: dict[str, np.ndarray], slo: Sequence[SloLine]) -> str:
    parts = []
    for line in slo:
        data = values.get(line.metric)
        if data is None or data.size == 0:
            continue
        if line.percentile is None:
            share = float(np.mean(data <= line.threshold_ms))
            parts.append(f"{100 * share:.1f}% within {line.condition}")
        else:
            value = float(np.percentile(data, line.percentile))
            verdict = "meets" if value <= line.threshold_ms else "misses"
            parts.append(
                f"{line.metric.upper()} p{line.percentile:g} = {fmt_ms(value)} ({verdict} {line.condition})"
            )
    return f"{label}: " + "; ".join(parts) + "." if parts else f"{label}: no latency samples."


def _summary_table(runs: Sequence[RunData]) -> Table:
    header = ("metric", *(run.label for run in runs))
    rows: list[tuple[str, ...]] = []
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        for stat in ("mean", "p50", "p90", "p99"):
            cells = [fmt_ms(_get(run.summary, metric, stat)) for run in runs]
            rows.append((f"{metric[:-3].upper()} {stat}", *cells))
    for key, name, fmt in (
        ("throughput_rps", "throughput", fmt_rps),
        ("output_tokens_per_s", "output tokens", fmt_tok_s),
        ("attainment", "SLO attainment", fmt_pct),
    ):
        rows.append((name, *(fmt(_get(run.summary, key)) for run in runs)))
    statuses = sorted({s for run in runs for s in _counts(run.summary)})
    for status in statuses:
        rows.append((f"requests {status}", *(fmt_count(_counts(run.summary).get(status)) for run in runs)))
    roles = sorted({r for run in runs for r in _dict(_get(run.summary, "utilisation"))})
    for role in roles:  # summary.yaml's "utilisation": the share of time an instance had work
        rows.append(
            (
                f"busy time {role}",
                *(fmt_pct(_dict(_get(run.summary, "utilisation")).get(role)) for run in runs),
            )
        )
    cached = [run for run in runs if isinstance(_get(run.summary, "prefix_cache"), dict)]
    if cached:  # summary.yaml's "prefix_cache" (pdplan.sim.prefix_cache.CacheStats.as_dict)
        tiers = (("total", "prefix cache hit rate"), ("l1", "from L1 (HBM)"), ("l2", "from L2 (DRAM)"))
        for tier, name in (*tiers, ("l3", "from L3 (store)")):
            rows.append(
                (name, *(fmt_pct(_get(run.summary, "prefix_cache", "hit_rate", tier)) for run in runs))
            )
        for tier in ("l2", "l3"):
            rows.append(
                (
                    f"GB loaded from {tier.upper()}",
                    *(fmt_num(_gb(_get(run.summary, "prefix_cache", "bytes_loaded", tier))) for run in runs),
                )
            )
    return Table("summary.yaml of each run.", header, tuple(rows))


def _gb(value: Any) -> float | None:
    return value / 1e9 if isinstance(value, (int, float)) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _get(mapping: dict[str, Any] | None, *keys: str) -> Any:
    value: Any = mapping
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _counts(summary: dict[str, Any] | None) -> dict[str, Any]:
    """Status counts: a ``counts`` mapping, or top-level ``num_<status>`` / ``<status>`` keys."""
    summary = summary or {}
    if isinstance(summary.get("counts"), dict):
        return summary["counts"]
    found = {}
    for status in ("ok", "rejected", "failed", "unfinished"):
        for key in (status, f"num_{status}", f"{status}_count"):
            if isinstance(summary.get(key), (int, float)):
                found[status] = summary[key]
    return found

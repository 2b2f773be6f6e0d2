"""Section 2, Search: goodput per GPU over (prefill, decode) instance counts, SLO attainment vs
request rate for the top plans, and the throughput-vs-interactivity Pareto front.

Reads ``candidates.csv`` and ``probes.csv`` (and ``plan.yaml`` for the chosen plan and the
attainment target). The figure builders return matplotlib figures so tests can inspect them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdplan.reports.figure import (
    COLORS,
    MODE_COLORS,
    SLO_COLOR,
    new_figure,
    num_axis,
    pareto_front,
    style,
    to_svg,
)
from pdplan.reports.heatmap import heatmap_figure, pruning_sentence, reason_kinds
from pdplan.reports.plans import candidate_view, chosen_candidate, ranked
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Heading, Item, Paragraph, Section, Table
from pdplan.reports.units import fmt_count, fmt_num, fmt_pct

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

DEFAULT_ATTAINMENT = 0.9  # DESIGN.md: --attainment defaults to 0.9
TOP_PLANS = 4
RASTER_POINTS = 3000  # scatter clouds larger than this are embedded as a bitmap


def attainment_figure(probes: pd.DataFrame, lines: Sequence[tuple[str, str]], target: float) -> MplFigure:
    """SLO attainment vs request rate, one line per ``(candidate_id, label)``; the target dashed."""
    with style():
        fig = new_figure(7.0, 3.4)
        ax = fig.add_subplot()
        for i, (cid, label) in enumerate(lines):
            curve = probes[probes["candidate_id"] == cid].groupby("rate_rps")["attainment"].mean()
            colo = "colocated" in label
            ax.plot(
                curve.index.to_numpy(dtype=float),
                curve.to_numpy(dtype=float),
                marker="o",
                markersize=3,
                linestyle="--" if colo else "-",
                color=COLORS[i % len(COLORS)],
                label=label,
            )
        label = f"attainment target {fmt_pct(target, 0)}"
        ax.axhline(target, color=SLO_COLOR, linestyle=":", linewidth=1.2, label=label)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel("SLO attainment")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower left", fontsize=7)
    return fig


def pareto_points(probes: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """Each probe as (mode, tokens/s per user, output tokens/s per GPU, meets_slo).

    Tokens/s per user is 1000 / TPOT p50 (ms): the decode speed one user sees.
    """
    info = candidates[["candidate_id", "mode", "gpus"]]
    merged = probes.merge(info, on="candidate_id", how="inner")
    out = pd.DataFrame(
        {
            "mode": merged["mode"],
            "tokens_per_s_per_user": 1000.0 / merged["tpot_p50_ms"],
            "tokens_per_s_per_gpu": merged["output_tokens_per_s"] / merged["gpus"],
            "meets_slo": merged["meets_slo"],
        }
    )
    keep = np.isfinite(out["tokens_per_s_per_user"]) & np.isfinite(out["tokens_per_s_per_gpu"])
    return out[keep].reset_index(drop=True)


def pareto_figure(points: pd.DataFrame) -> MplFigure:
    """Every probe as a dot, and the Pareto front per mode as a line."""
    with style():
        fig = new_figure(7.0, 3.6)
        ax = fig.add_subplot()
        raster = len(points) > RASTER_POINTS
        for mode in ("disaggregated", "colocated"):
            mine = points[points["mode"] == mode]
            if mine.empty:
                continue
            color = MODE_COLORS[mode]
            x, y = mine["tokens_per_s_per_user"].to_numpy(), mine["tokens_per_s_per_gpu"].to_numpy()
            ok = mine["meets_slo"].to_numpy(dtype=bool)
            ax.scatter(
                x[ok],
                y[ok],
                s=9,
                color=color,
                alpha=0.5,
                rasterized=raster,
                label=f"{mode} probe (meets SLO)",
            )
            ax.scatter(
                x[~ok],
                y[~ok],
                s=9,
                facecolors="none",
                edgecolors=color,
                alpha=0.4,
                linewidths=0.6,
                rasterized=raster,
                label=f"{mode} probe (misses SLO)",
            )
            front = pareto_front(x, y)
            ax.plot(
                x[front],
                y[front],
                color=color,
                linewidth=2,
                drawstyle="steps-post",
                label=f"{mode} Pareto front",
            )
        ax.set_xlabel("tokens/s per user (1000 / TPOT p50)")
        ax.set_ylabel("output tokens/s per GPU")
        num_axis(ax.yaxis)
        if ax.get_legend_handles_labels()[0]:  # an infeasible search has no probes to label
            ax.legend(fontsize=7, loc="best")
    return fig


def build_search(runs: Sequence[RunData]) -> Section:
    """The Search section over every run that has ``candidates.csv``."""
    with_search = [run for run in runs if run.candidates is not None]
    if not with_search:
        why = "; ".join(run.why_absent("candidates.csv") for run in runs)
        return Section("search", "Search", absent=f"Not a search run: {why}.")
    items: list[Item] = []
    for n, run in enumerate(with_search):
        if len(with_search) > 1:
            items.append(Heading(run.label))
        items.extend(_run_search(run, f"search{n}" if n else "search"))
    return Section("search", "Search", items=tuple(items))


def _run_search(run: RunData, key: str) -> list[Item]:
    cands = run.candidates
    assert cands is not None
    chosen = chosen_candidate(run.plan, cands)
    items: list[Item] = []
    kinds = reason_kinds(cands)
    items.append(Paragraph(pruning_sentence(cands, kinds)))
    if (cands["mode"] == "disaggregated").any():
        items.append(
            Figure(
                f"{key}-heatmap",
                "Best goodput per GPU for each (prefill, decode) instance count over TP and batch "
                "limits; outlined: the chosen plan. Hatched //: no candidate of the cell met the SLO "
                "and at least one was pruned (it could not beat the best plan, so it was not "
                "simulated to its goodput); cross-hatched: every candidate of the cell is infeasible "
                "(does not fit, latency floor above the SLO, or misses it at every rate).",
                to_svg(heatmap_figure(cands, chosen), f"{key}-heatmap"),
            )
        )
    if run.probes is None:
        items.append(Paragraph(f"No attainment or Pareto figures: {run.why_absent('probes.csv')}."))
    else:
        target = float((run.plan or {}).get("attainment") or DEFAULT_ATTAINMENT)
        lines = _top_lines(cands, chosen)
        items.append(
            Figure(
                f"{key}-attainment",
                "SLO attainment vs request rate for the top plans "
                "(solid) and the best colocated plan (dashed).",
                to_svg(attainment_figure(run.probes, lines, target), f"{key}-attainment"),
            )
        )
        points = pareto_points(run.probes, cands)
        items.append(
            Figure(
                f"{key}-pareto",
                "Throughput per GPU vs tokens/s per user over every "
                "probe of the search; lines: the Pareto front of each mode.",
                to_svg(pareto_figure(points), f"{key}-pareto"),
            )
        )
    items.append(_top_table(cands, chosen))
    reasons = _reasons_table(cands, kinds)
    if reasons is not None:
        items.append(reasons)
    return items


def _label(row: pd.Series) -> str:
    view = candidate_view(row, None)
    return f"{row['candidate_id']}: {view.instances}, {view.tp} ({fmt_num(view.goodput_rps_per_gpu)}/GPU)"


def _top_lines(cands: pd.DataFrame, chosen: str | None) -> list[tuple[str, str]]:
    disagg = ranked(cands, "disaggregated")
    ids = [str(c) for c in disagg["candidate_id"].head(TOP_PLANS)]
    if chosen is not None and chosen not in ids and chosen in set(disagg["candidate_id"]):
        ids = [chosen, *ids[:-1]]
    lines = [(cid, _label(cands[cands["candidate_id"] == cid].iloc[0])) for cid in ids]
    colo = ranked(cands, "colocated")
    if not colo.empty:
        lines.append((str(colo.iloc[0]["candidate_id"]), _label(colo.iloc[0])))
    return lines


def _top_table(cands: pd.DataFrame, chosen: str | None, limit: int = 10) -> Table:
    best = ranked(cands).head(limit)
    rows, highlight = [], []
    for rank, (_, row) in enumerate(best.iterrows(), start=1):
        view = candidate_view(row, None)
        if str(row["candidate_id"]) == chosen:
            highlight.append(rank - 1)
        rows.append(
            (
                str(rank),
                str(row["candidate_id"]),
                view.mode,
                view.instances,
                view.tp,
                view.limits or "—",
                fmt_num(view.gpus),
                fmt_num(view.goodput_rps),
                fmt_num(view.goodput_rps_per_gpu),
            )
        )
    header = (
        "rank",
        "candidate",
        "mode",
        "instances",
        "TP",
        "batch limits",
        "GPUs",
        "goodput (req/s)",
        "per GPU",
    )
    return Table(
        f"Top {len(rows)} feasible candidates by goodput per GPU (of {len(cands)}).",
        header,
        tuple(rows),
        highlight=tuple(highlight),
    )


def _reasons_table(cands: pd.DataFrame, kinds: pd.Series) -> Table | None:
    rejected = cands[cands["status"] != "ok"]
    if rejected.empty:
        return None
    table = pd.DataFrame(
        {
            "status": rejected["status"].astype(str),
            "kind": kinds,
            "candidate_id": rejected["candidate_id"].astype(str),
            "reason": rejected["reason"].astype(str),
        }
    )
    rows = []
    for (status, kind), group in table.groupby(["status", "kind"], sort=True):
        first = group.iloc[0]
        rows.append(
            (
                str(status),
                str(kind),
                fmt_count(len(group)),
                f"{first['candidate_id']}: {first['reason'] or '—'}",
            )
        )
    rows.sort(key=lambda row: (row[0], -int(row[2].replace(",", ""))))
    return Table(
        "Candidates that were pruned (could not beat the best plan) or are infeasible, by reason.",
        ("status", "why", "count", "example"),
        tuple(rows),
    )

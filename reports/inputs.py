"""Section 6, Inputs: prompt/output length histograms and the inter-arrival distribution, then the
hardware, model, workload, versions and command line of every run.

Reads ``requests.csv`` (the traffic), ``plan.yaml`` (model, hardware, workload, SLO, KV link),
``profile.yaml`` (model shape, hardware) and ``run.yaml`` (command, versions, time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pdplan.reports.figure import COLORS, SLO_COLOR, Margins, new_figure, style, to_svg
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Item, Paragraph, Section, Table
from pdplan.reports.units import fmt_num, fmt_rps

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

BINS = 40


def interarrival_s(requests: pd.DataFrame) -> np.ndarray:
    """Gaps between consecutive arrivals (s), in arrival order."""
    arrivals = np.sort(requests["arrival_s"].to_numpy(dtype=float))
    arrivals = arrivals[np.isfinite(arrivals)]
    return np.diff(arrivals)


def traffic_figure(requests: pd.DataFrame) -> MplFigure:
    """Histograms of prompt and output tokens, and of inter-arrival gaps with the exponential
    density of the same mean (what a Poisson process of that rate would give)."""
    gaps = interarrival_s(requests)
    with style():
        fig = new_figure(7.5, 2.8, Margins(top_in=0.35, wspace=0.45))
        axes = fig.subplots(1, 3)
        for ax, column, title in (
            (axes[0], "prompt_tokens", "prompt tokens"),
            (axes[1], "output_tokens", "output tokens"),
        ):
            values = requests[column].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                ax.hist(values, bins=BINS, color=COLORS[0], alpha=0.8, histtype="stepfilled")
                ax.set_title(
                    f"{title}: mean {fmt_num(values.mean())}, p99 {fmt_num(np.percentile(values, 99))}",
                    fontsize=8,
                )
            ax.set_xlabel(title)
            ax.set_ylabel("requests")
        ax = axes[2]
        if gaps.size:
            mean = float(gaps.mean())
            cv = float(gaps.std() / mean) if mean > 0 else float("nan")
            ax.hist(
                gaps,
                bins=BINS,
                density=True,
                color=COLORS[2],
                alpha=0.8,
                histtype="stepfilled",
                label="measured",
            )
            if mean > 0:
                grid = np.linspace(0, float(gaps.max()), 100)
                ax.plot(
                    grid,
                    np.exp(-grid / mean) / mean,
                    color=SLO_COLOR,
                    linewidth=1.2,
                    label="Poisson, same rate",
                )
            ax.set_title(f"inter-arrival: {fmt_rps(1 / mean if mean > 0 else 0)}, CV {cv:.2f}", fontsize=8)
            ax.legend(fontsize=7)
        ax.set_xlabel("gap between arrivals (s)")
        ax.set_ylabel("density")
    return fig


def build_inputs(runs: Sequence[RunData]) -> Section:
    """Traffic figure from the first run with requests; metadata tables from every run."""
    items: list[Item] = []
    traffic = next((run for run in runs if run.requests is not None), None)
    if traffic is not None:
        assert traffic.requests is not None
        items.append(
            Figure(
                "inputs-traffic",
                f"The traffic of {traffic.label}: {len(traffic.requests)} requests.",
                to_svg(traffic_figure(traffic.requests), "inputs-traffic"),
            )
        )
    else:
        why = "; ".join(run.why_absent("requests.csv") for run in runs)
        items.append(Paragraph(f"No traffic figures: {why}."))
    setup = _setup_rows(runs)
    if setup:
        items.append(Table("Model, hardware and workload.", ("run", "item", "value"), tuple(setup)))
    items.append(_runs_table(runs))
    versions = _versions_table(runs)
    if versions is not None:
        items.append(versions)
    problems = [(run.label, name, why) for run in runs for name, why in run.problems.items()]
    if problems:
        items.append(
            Table(
                "Files that could not be read (their sections say so).",
                ("run", "file", "problem"),
                tuple(problems),
            )
        )
    return Section("inputs", "Inputs", items=tuple(items))


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return fmt_num(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _setup_rows(runs: Sequence[RunData]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for run in runs:
        if run.profile is not None:
            spec = run.profile.model
            rows.append(
                (
                    run.label,
                    "model",
                    f"{spec.name} ({spec.model_type}): {spec.num_layers} "
                    f"layers, hidden {spec.hidden_size}, {spec.num_heads} heads / "
                    f"{spec.num_kv_heads} KV heads, {spec.num_params / 1e9:.2f}B params, "
                    f"{run.profile.dtype}, TP {run.profile.tp}",
                )
            )
            rows.append((run.label, "hardware", _text(run.profile.hardware)))
        plan = run.plan or {}
        for key in ("model", "hardware", "workload", "slo", "attainment", "kv_transfer"):
            if plan.get(key) not in (None, "", {}):
                rows.append((run.label, key, _text(plan[key])))
    return rows


def _all_runs(runs: Sequence[RunData]) -> list[RunData]:
    out = []
    for run in runs:
        out.append(run)
        if run.predicted is not None:
            out.append(run.predicted)
    return out


def _runs_table(runs: Sequence[RunData]) -> Table:
    rows = []
    for run in _all_runs(runs):
        command = run.meta.get("command")
        rows.append(
            (
                str(run.path),
                run.kind,
                str(run.meta.get("created_at") or "—"),
                str(command) if command else "— (no run.yaml)",
            )
        )
    return Table(
        "Runs in this report and the command lines that produced them.",
        ("directory", "kind", "created (UTC)", "command"),
        tuple(rows),
    )


def _versions_table(runs: Sequence[RunData]) -> Table | None:
    rows = []
    for run in _all_runs(runs):
        sources = [("run.yaml", run.meta.get("versions"))]
        if run.profile is not None:
            sources.append(("profile.yaml", run.profile.versions))
        for source, versions in sources:
            if isinstance(versions, dict) and versions:
                rows.append((run.label, source, _text(versions)))
    if not rows:
        return None
    return Table("Software versions.", ("run", "from", "versions"), tuple(rows))

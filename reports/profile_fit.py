"""Section 4, Profile: measured points vs the fitted latency model with the roofline, the fit error,
and the op-level breakdown when the profile has one.

Reads the profile files (``profile.yaml``, ``prefill.csv``, ``decode.csv``, ``ops.csv``) through
``pdplan.profiles.profile.load_profile``, which fits the latency model and its leave-one-out error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdplan.profiles.profile import Profile
from pdplan.reports.figure import COLORS, Margins, log_axis, new_figure, style, to_svg
from pdplan.reports.roofline import Roofline, decode_work, prefill_work, roofline_for
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Heading, Item, Paragraph, Section, Table
from pdplan.reports.units import fmt_ms_fine, fmt_num

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

MAX_CURVES = 6  # per panel; more groups than this are thinned evenly
OP_ORDER = ("gemm", "attention", "allreduce", "other")


def _pick(values: Sequence[float], limit: int) -> list[float]:
    ordered = sorted(set(values))
    if len(ordered) <= limit:
        return ordered
    idx = np.unique(np.linspace(0, len(ordered) - 1, limit).round().astype(int))
    return [ordered[i] for i in idx]


def fitted_prefill_ms(profile: Profile, num_seqs: float, seq_len: np.ndarray) -> np.ndarray:
    """The fitted model for ``num_seqs`` sequences of each length in ``seq_len``."""
    return np.array([profile.latency.prefill_ms([int(n)] * int(num_seqs)) for n in seq_len])


def fitted_decode_ms(profile: Profile, batch_size: np.ndarray, context_len: float) -> np.ndarray:
    """The fitted model for each batch size, every sequence holding ``context_len`` tokens."""
    return np.array([profile.latency.decode_ms(int(b), int(b * context_len)) for b in batch_size])


def points_word(profile: Profile) -> str:
    """What the profile's points are: 'measured' latencies, or 'analytic model' points (a profile
    computed with ``--analytic`` measured nothing)."""
    return "analytic model" if profile.method == "analytic" else profile.method


def _panel(
    ax: Axes, groups: list[tuple[str, pd.DataFrame, np.ndarray, np.ndarray, np.ndarray | None]], xlabel: str
) -> None:
    """One log-log panel: per group the profile's points as dots, fitted line, dashed roofline."""
    for i, (label, measured, grid, fitted, roof) in enumerate(groups):
        color = COLORS[i % len(COLORS)]
        ax.plot(measured["x"], measured["latency_ms"], "o", color=color, markersize=4, label=label)
        ax.plot(grid, fitted, "-", color=color, linewidth=1.2)
        if roof is not None:
            ax.plot(grid, roof, "--", color=color, linewidth=0.9, alpha=0.7)
    log_axis(ax, "both")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7, loc="upper left")


def fit_figure(profile: Profile, roofline: Roofline | None) -> MplFigure:
    """Prefill (left) and decode (right): dots measured, lines fitted, dashed the roofline bound."""
    pre, dec = profile.prefill, profile.decode
    prefill_groups = []
    for s in _pick(pre["num_seqs"].tolist(), MAX_CURVES):
        rows = pre[pre["num_seqs"] == s]
        grid = np.geomspace(max(1, rows["seq_len"].min()), rows["seq_len"].max(), 40)
        roof = roofline.time_ms(*prefill_work(profile, np.full_like(grid, s), grid)) if roofline else None
        prefill_groups.append(
            (f"{int(s)} seq", rows.assign(x=rows["seq_len"]), grid, fitted_prefill_ms(profile, s, grid), roof)
        )
    decode_groups = []
    for c in _pick(dec["context_len"].tolist(), MAX_CURVES):
        rows = dec[dec["context_len"] == c]
        grid = np.unique(np.geomspace(max(1, rows["batch_size"].min()), rows["batch_size"].max(), 40).round())
        roof = roofline.time_ms(*decode_work(profile, grid, np.full_like(grid, c))) if roofline else None
        decode_groups.append(
            (
                f"ctx {int(c)}",
                rows.assign(x=rows["batch_size"]),
                grid,
                fitted_decode_ms(profile, grid, c),
                roof,
            )
        )
    with style():
        fig = new_figure(7.5, 3.4, Margins(top_in=0.3))
        left, right = fig.subplots(1, 2)
        _panel(left, prefill_groups, "prompt tokens per sequence")
        left.set_title("prefill")
        _panel(right, decode_groups, "decode batch size")
        right.set_title("decode")
    return fig


def fit_errors(profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Relative error (fitted / measured − 1) at every measured prefill and decode point."""
    pre, dec = profile.prefill, profile.decode
    pre_fit = np.array(
        [
            profile.latency.prefill_ms([int(n)] * int(s))
            for s, n in zip(pre["num_seqs"], pre["seq_len"], strict=True)
        ]
    )
    dec_fit = np.array(
        [
            profile.latency.decode_ms(int(b), int(b * c))
            for b, c in zip(dec["batch_size"], dec["context_len"], strict=True)
        ]
    )
    pre_ms = pre["latency_ms"].to_numpy(dtype=float)
    dec_ms = dec["latency_ms"].to_numpy(dtype=float)
    return pre_fit / np.maximum(pre_ms, 1e-9) - 1, dec_fit / np.maximum(dec_ms, 1e-9) - 1


def error_figure(profile: Profile) -> MplFigure:
    """Fit error (%) of every measured point against its measured latency, both phases."""
    pre_err, dec_err = fit_errors(profile)
    with style():
        fig = new_figure(7.5, 2.8, Margins(top_in=0.3, wspace=0.12))
        left, right = fig.subplots(1, 2, sharey=True)
        for ax, table, err, title in (
            (left, profile.prefill, pre_err, "prefill"),
            (right, profile.decode, dec_err, "decode"),
        ):
            ax.axhline(0, color="#444444", linewidth=0.8)
            ax.plot(table["latency_ms"], 100 * err, "o", markersize=4, color=COLORS[0])
            log_axis(ax, "x")
            ax.set_xlabel(f"{points_word(profile)} latency (ms)")
            ax.set_title(f"{title}: median |error| {100 * np.median(np.abs(err)):.1f}%")
        left.set_ylabel("fit error (%)")
    return fig


_SHAPE_COLUMNS = {
    "prefill": (("num_seqs", "seq_len"), ("batch_size", "context_len")),
    "decode": (("batch_size", "context_len"), ("num_seqs", "seq_len")),
}


def _shape_columns(rows: pd.DataFrame, phase: str) -> tuple[str, str] | None:
    """The (size, length) columns that describe this phase's shapes in ``ops.csv`` (RUNDIR.md:
    ``num_seqs``/``batch_size`` and ``seq_len``/``context_len``, blank where not applicable)."""
    for size, length in _SHAPE_COLUMNS.get(phase, _SHAPE_COLUMNS["prefill"]):
        if {size, length} <= set(rows.columns) and rows[[size, length]].notna().all(axis=None):
            return size, length
    return None


def ops_figure(ops: pd.DataFrame) -> MplFigure:
    """Share of each op class in the measured time, per phase and shape (stacked bars)."""
    phases = [p for p in ("prefill", "decode") if (ops["phase"] == p).any()]
    with style():
        fig = new_figure(7.5, 3.1, Margins(top_in=0.3, bottom_in=0.8, right_in=0.95))
        axes = fig.subplots(1, max(1, len(phases)), squeeze=False)[0]
        for ax, phase in zip(axes, phases, strict=False):
            mine = ops[ops["phase"] == phase]
            columns = _shape_columns(mine, phase)
            if columns is None:
                ax.set_title(f"{phase}: no shape columns")
                continue
            size, length = columns
            table = mine.pivot_table(
                index=[size, length], columns="op", values="latency_ms", aggfunc="sum", fill_value=0.0
            )
            keep = _pick(list(range(len(table))), 12)
            table = table.iloc[[int(k) for k in keep]]
            share = table.div(table.sum(axis=1).where(table.sum(axis=1) > 0), axis=0) * 100
            bottom = np.zeros(len(share))
            names = [op for op in OP_ORDER if op in share.columns]
            names += sorted(set(share.columns) - set(OP_ORDER))
            for i, op in enumerate(names):
                ax.bar(range(len(share)), share[op], bottom=bottom, color=COLORS[i % len(COLORS)], label=op)
                bottom += share[op].to_numpy()
            ax.set_xticks(
                range(len(share)), [f"{int(a)}×{int(b)}" for a, b in share.index], rotation=60, fontsize=6
            )
            ax.set_title(f"{phase} ({size} × {length})")
            ax.set_ylabel("share of time (%)")
        labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
        if labelled:
            labelled[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def build_profile(runs: Sequence[RunData]) -> Section:
    """The Profile section over every run that holds a readable profile."""
    with_profile = [run for run in runs if run.profile is not None]
    if not with_profile:
        why = "; ".join(run.why_absent("profile.yaml") for run in runs)
        return Section("profile", "Profile", absent=f"No profile in this report: {why}.")
    items: list[Item] = []
    for n, run in enumerate(with_profile):
        assert run.profile is not None
        if len(with_profile) > 1:
            items.append(Heading(run.label))
        items.extend(_run_profile(run.profile, f"profile{n}" if n else "profile"))
    return Section("profile", "Profile", items=tuple(items))


def _run_profile(profile: Profile, key: str) -> list[Item]:
    roofline, why = roofline_for(profile)
    points = points_word(profile)
    device = profile.hardware.get("device") or profile.hardware.get("name", "?")
    intro = (
        f"{profile.method.capitalize()} profile of {profile.model.name} ({profile.dtype}, TP "
        f"{profile.tp}) on {device}: {len(profile.prefill)} prefill and {len(profile.decode)} "
        "decode points."
    )
    roof_text = (
        f" Dashed: the roofline bound from {roofline.source} ({fmt_num(roofline.peak_tflops)} "
        f"TFLOP/s, {fmt_num(roofline.mem_bandwidth_gbps)} GB/s)."
        if roofline
        else f" {why}"
    )
    items: list[Item] = [
        Paragraph(intro + roof_text),
        Figure(
            f"{key}-fit",
            f"{points.capitalize()} latency (dots) vs the fitted latency model (lines) and the "
            "roofline lower bound (dashed).",
            to_svg(fit_figure(profile, roofline), f"{key}-fit"),
        ),
        Figure(
            f"{key}-error",
            f"Relative error of the fitted model at each {points} point.",
            to_svg(error_figure(profile), f"{key}-error"),
        ),
        _model_table(profile),
    ]
    if profile.ops is not None and {"phase", "op", "latency_ms"} <= set(profile.ops.columns):
        items.append(
            Figure(
                f"{key}-ops",
                f"Op-level breakdown of the {points} time (ops.csv).",
                to_svg(ops_figure(profile.ops), f"{key}-ops"),
            )
        )
    return items


def _model_table(profile: Profile) -> Table:
    model = profile.latency
    rows = []
    for phase, coef, terms, knee, unit, loo in (
        (
            "prefill",
            model.prefill_coef,
            ("base", "per seq", "per token", "per pair"),
            model.prefill_knee_tokens,
            "tokens",
            model.prefill_loo,
        ),
        (
            "decode",
            model.decode_coef,
            ("base", "per seq", "per context token"),
            model.decode_knee_batch,
            "seqs",
            model.decode_loo,
        ),
    ):
        formula = " + ".join(
            fmt_ms_fine(c) if t == "base" else f"{fmt_ms_fine(c)} {t}"
            for c, t in zip(coef, terms, strict=True)
        )
        if phase == "decode" and model.experts is not None:  # a MoE: the expert weights B tokens touch
            formula += f" + {fmt_ms_fine(model.decode_expert_coef)} per GB of experts read"
        if phase == "decode" and model.decode_ramp_ms:  # a CPU profile's one-row GEMV vs packed GEMM
            formula += f" + {fmt_ms_fine(model.decode_ramp_ms)} × (1 − {model.decode_ramp_rate:g}^seqs)"
        median = f"{100 * loo.median:.1f}%" if loo else "—"
        worst = f"{100 * loo.max:.1f}%" if loo else "—"
        shown_knee = f"{knee:,.0f} {unit}" if knee > 0 else "none"
        rows.append((phase, formula, median, worst, str(loo.num_points) if loo else "—", shown_knee))
    return Table(
        "Fitted latency model and its leave-one-out relative error. Below the roofline knee a step "
        "is bound by reading the weights: a prefill of fewer tokens, or a decode step of fewer "
        "sequences, costs as much as one at the knee (the per-token or per-seq term counts the knee).",
        ("phase", "model", "LOO median error", "LOO max error", "points", "roofline knee"),
        tuple(rows),
    )

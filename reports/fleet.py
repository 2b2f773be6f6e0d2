"""Hardware and cluster policies in the report: the hardware search's mixed plan beside the best
single-type plans at equal cost (``hardware.csv``), and cluster policies over a day in one figure
(``fleet_minutes.csv`` + ``fleet.yaml``).

Both are read from the run directory here (the files are written by ``pdplan.planner``, which the
reports may not import: the columns are restated below). Their items join the Search section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pdplan.profiles.errors import PdplanError
from pdplan.profiles.validate import load_yaml
from pdplan.reports.figure import COLORS, ROLE_COLORS, SLO_COLOR, Margins, new_figure, style, to_svg
from pdplan.reports.rundir import RunData
from pdplan.reports.section import Figure, Item, Paragraph, Table
from pdplan.reports.units import fmt_money, fmt_num, fmt_pct, fmt_rps

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

HARDWARE_FILE, MINUTES_FILE, FLEET_FILE = "hardware.csv", "fleet_minutes.csv", "fleet.yaml"
_HARDWARE_NEEDS = ("kind", "layout", "cost_per_hour", "status", "goodput_rps", "requests_per_dollar")
_MINUTE_NEEDS = ("policy", "minute", "attainment", "prefill_instances", "decode_instances", "gpu_hours")


def fleet_items(runs: Sequence[RunData]) -> tuple[list[Item], list[str]]:
    """The items of every run that holds a hardware search or a policy day, and notes on files
    that could not be read."""
    items: list[Item] = []
    notes: list[str] = []
    for run in runs:
        for reader in (_hardware, _policies):
            try:
                items.extend(reader(run))
            except (OSError, ValueError, KeyError, PdplanError) as err:
                notes.append(f"{run.label}: {type(err).__name__}: {err}")
    return items, notes


# --- hardware search ----------------------------------------------------------------------------
def _hardware(run: RunData) -> list[Item]:
    path = run.path / HARDWARE_FILE
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    missing = [c for c in _HARDWARE_NEEDS if c not in frame.columns]
    if missing:
        raise ValueError(f"{HARDWARE_FILE} lacks columns {missing}")
    rate_mode = "held_rps" in frame.columns and (frame.status == "held").any()
    ok = frame[frame.status.isin(("ok", "held"))]
    if rate_mode:  # the cheapest layouts that hold the target rate
        ok = ok.sort_values(["cost_per_hour", "layout"])
    else:
        ok = ok.sort_values("requests_per_dollar", ascending=False)
    if ok.empty:
        return [Paragraph("Hardware search: no layout met the SLO on this budget.")]
    best_rows = [("best overall", ok.iloc[0])]
    for kind, words in (("mixed", "best mixed (prefill and decode on two types)"),):
        part = ok[ok.kind == kind]
        if not part.empty:
            best_rows.append((words, part.iloc[0]))
    for kind in ("single", "colocated"):
        part = ok[ok.kind == kind]
        hw_col = "prefill_hardware" if kind == "single" else "colocated_hardware"
        for name, group in part.groupby(hw_col, sort=True):
            best_rows.append(
                (f"best {'disaggregated' if kind == 'single' else 'colocated'} on {name} only", group.iloc[0])
            )
    rows = tuple(
        (
            label,
            str(r.layout),
            fmt_money(r.cost_per_hour),
            fmt_rps(r.held_rps if rate_mode else r.goodput_rps),
            fmt_num(r.requests_per_dollar),
            fmt_money(r.get("cost_per_million_output_tokens")),
            f"{r.requests_per_dollar / best_rows[0][1].requests_per_dollar:.3f}",
        )
        for label, r in best_rows
    )
    table = Table(
        "Hardware search for a target rate: the cheapest mixed plan beside the cheapest single-type "
        "plans that hold it (requests per $ at that rate; the ratio is to the cheapest)."
        if rate_mode
        else "Hardware search at equal cost: the mixed plan beside the best single-type plans (goodput "
        "per dollar = requests served per dollar at the goodput; the ratio is to the best).",
        (
            "plan",
            "layout",
            "cost/h",
            "holds" if rate_mode else "goodput",
            "requests per $",
            "$ / M output tok",
            "ratio",
        ),
        rows,
        highlight=(0,),
    )
    budget = frame.cost_per_hour.max()
    words = (
        f"Hardware search: {len(frame)} layouts within about {fmt_money(budget)} per hour, "
        f"{len(ok)} simulated to their goodput; the others were pruned (their capacity bound "
        "could not beat the best of their group) or missed the SLO."
    )
    return [
        Paragraph(words),
        table,
        Figure("hardware-per-dollar", "Goodput per dollar by layout kind.", _hardware_svg(ok)),
    ]


def _hardware_svg(ok: pd.DataFrame) -> str:
    with style():
        fig = new_figure(7.0, 3.0, Margins(left_in=0.8, bottom_in=0.5))
        ax = fig.subplots()
        kinds = ("mixed", "single", "colocated")
        for i, kind in enumerate(kinds):
            part = ok[ok.kind == kind]
            if not part.empty:
                ax.scatter(part.cost_per_hour, part.requests_per_dollar, s=18, color=COLORS[i], label=kind)
        ax.set_xlabel("cost ($ per hour)")
        ax.set_ylabel("requests per $ at goodput")
        ax.legend(loc="lower right")
    return to_svg(fig, "hardware-per-dollar")


# --- cluster policies over a day ----------------------------------------------------------------
def _policies(run: RunData) -> list[Item]:
    path = run.path / MINUTES_FILE
    if not path.is_file():
        return []
    minutes = pd.read_csv(path)
    missing = [c for c in _MINUTE_NEEDS if c not in minutes.columns]
    if missing:
        raise ValueError(f"{MINUTES_FILE} lacks columns {missing}")
    meta: dict[str, Any] = {}
    if (run.path / FLEET_FILE).is_file():
        loaded = load_yaml(run.path / FLEET_FILE, FLEET_FILE)
        meta = loaded if isinstance(loaded, dict) else {}
    target = _target(meta)
    rows = []
    raw = meta.get("policies")
    policies: list[Any] = raw if isinstance(raw, list) else []
    static = next((p for p in policies if isinstance(p, dict) and p.get("policy") == "static"), None)
    for p in policies:
        if not isinstance(p, dict):
            continue
        saved = ""
        if (
            static
            and isinstance(static.get("gpu_hours"), (int, float))
            and isinstance(p.get("gpu_hours"), (int, float))
        ):
            saved = fmt_pct(1 - p["gpu_hours"] / static["gpu_hours"]) if static["gpu_hours"] else ""
        rows.append(
            (
                str(p.get("policy")),
                fmt_num(p.get("gpu_hours")),
                fmt_money(p.get("cost")),
                saved,
                fmt_pct(p.get("attainment")),
                fmt_pct(p.get("worst_hour_attainment")),
                fmt_num(p.get("changes")),
            )
        )
    items: list[Item] = [
        Paragraph(
            "Cluster policies over the day: SLO attainment per minute, instances per role, and GPU-hours "
            "used so far, for each policy on the same traffic."
        ),
        Figure("fleet-day", "Policies over the day.", _policies_svg(minutes, target)),
    ]
    if rows:
        items.append(
            Table(
                "Policies compared (saved: GPU-hours against the static plan).",
                ("policy", "GPU-hours", "cost", "saved", "day attainment", "worst hour", "changes"),
                tuple(rows),
            )
        )
    return items


def _target(meta: dict[str, Any]) -> float | None:
    description = meta.get("description")
    value = description.get("attainment") if isinstance(description, dict) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _policies_svg(minutes: pd.DataFrame, target: float | None) -> str:
    fig = _policies_figure(minutes, target)
    return to_svg(fig, "fleet-day")


def _policies_figure(minutes: pd.DataFrame, target: float | None) -> MplFigure:
    names = list(dict.fromkeys(minutes.policy.astype(str)))
    with style():
        fig = new_figure(7.5, 6.0, Margins(top_in=0.3, hspace=0.2))
        att, inst, gpuh = fig.subplots(3, 1, sharex=True)
        lowest = 1.0
        for i, name in enumerate(names):
            part = minutes[minutes.policy.astype(str) == name]
            hours = part.minute.to_numpy(dtype=float) / 60.0
            color = COLORS[i % len(COLORS)]
            hourly = part.attainment.to_numpy(dtype=float)
            smooth = pd.Series(hourly).rolling(15, min_periods=1).mean().to_numpy()
            att.plot(hours, smooth, color=color, linewidth=1.0, label=name)
            if np.isfinite(smooth).any():
                lowest = min(lowest, float(np.nanmin(smooth)))
            linestyle = ("-", "--", ":")[i % 3]
            inst.step(
                hours,
                part.prefill_instances,
                where="mid",
                color=ROLE_COLORS["prefill"],
                linestyle=linestyle,
                linewidth=1.0,
                label=f"{name} prefill",
            )
            inst.step(
                hours,
                part.decode_instances,
                where="mid",
                color=ROLE_COLORS["decode"],
                linestyle=linestyle,
                linewidth=1.0,
                label=f"{name} decode",
            )
            gpuh.plot(hours, part.gpu_hours, color=color, linewidth=1.2, label=name)
        if target is not None:
            att.axhline(
                target, color=SLO_COLOR, linestyle=":", linewidth=1.0, label=f"target {fmt_pct(target, 0)}"
            )
        att.set_ylim(max(0.0, lowest - 0.05), 1.01)
        att.set_ylabel("attainment\n(15-min mean)")
        att.legend(loc="lower left", ncol=4)
        inst.set_ylabel("instances")
        inst.legend(loc="upper left", ncol=3, fontsize=7)
        gpuh.set_ylabel("GPU-hours so far")
        gpuh.set_xlabel("hour of the day")
        gpuh.legend(loc="upper left")
    return fig

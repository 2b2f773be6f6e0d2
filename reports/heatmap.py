"""The Search section's heatmap: best goodput per GPU over (prefill, decode) instance counts, with
pruned cells (could not beat the best plan) and infeasible cells (cannot meet the SLO at all) told
apart, and the search's candidates counted by why they were set aside.

The heatmap is one image (``imshow``) whatever the budget: colour where a candidate is feasible,
diagonal hatching where every candidate of the cell was pruned, cross-hatching where every one was
infeasible. The hatching is painted into the image's pixels, so a 128-GPU search (~16k cells from
~170k candidates) costs one embedded bitmap instead of one SVG path per cell; values are written in
the cells only while the grid is small enough to read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdplan.reports.figure import SLO_COLOR, Margins, new_figure, style
from pdplan.reports.units import fmt_count

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

OK, PRUNED, INFEASIBLE, UNTRIED = 0, 1, 2, 3
PRUNED_RGB = (0.45, 0.45, 0.45)
INFEASIBLE_RGB = (0.80, 0.33, 0.0)  # the palette's vermilion
BACKGROUND_RGB = (1.0, 1.0, 1.0)  # untried cells stay blank
MAX_LABELLED_CELLS = 20  # per axis: beyond this, values are read from the colour bar
MAX_TICKS = 16  # per axis
IMAGE_PX = 720  # the heatmap image's longer side, in pixels (hatching included)

# (substring of a reason, what it means): the planner's reasons carry numbers and candidate ids,
# so candidates are counted by the kind of reason, not by its exact text.
_PRUNED_KINDS = (
    ("capacity bound", "by their capacity bound, below the best plan's goodput"),
    ("upper bound", "by their capacity bound, below the best plan's goodput"),
    ("rate needed to beat", "after one probe, missing the SLO at the rate needed to beat the best plan"),
    ("more gpus than", "using more GPUs than a plan that holds the target"),
)
_INFEASIBLE_KINDS = (
    ("does not fit", "do not fit in memory"),
    ("kv capacity", "KV capacity: the requests do not fit in an instance's KV cache"),
    ("ttft bound", "latency floor: TTFT above the SLO even on an idle cluster"),
    ("tpot bound", "latency floor: TPOT above the SLO even on an idle cluster"),
    ("e2e bound", "latency floor: E2E above the SLO even on an idle cluster"),
    ("at the target", "miss the SLO at the target rate"),
    ("every rate", "miss the SLO at every rate tried"),
)


def reason_kind(status: str, reason: str) -> str:
    """A candidate's reason reduced to its kind ('does not fit in memory', ...)."""
    text = reason.lower()
    for needle, kind in _PRUNED_KINDS if status == "pruned" else _INFEASIBLE_KINDS:
        if needle in text:
            return kind
    for needle, kind in _INFEASIBLE_KINDS if status == "pruned" else _PRUNED_KINDS:
        if needle in text:
            return kind
    head = re.split(r"[:(]", reason, maxsplit=1)[0]
    head = re.sub(r"\s+", " ", re.sub(r"[\d.,%]+", "N", head)).strip()
    return head or "no reason given"


def reason_kinds(candidates: pd.DataFrame) -> pd.Series:
    """``reason_kind`` of every candidate that is not ok (computed once per distinct reason: a
    128-GPU search has ~170k candidates but far fewer distinct reasons)."""
    rejected = candidates[candidates["status"] != "ok"]
    pairs = pd.DataFrame(
        {"status": rejected["status"].astype(str), "reason": rejected["reason"].fillna("").astype(str)}
    )
    codes, uniques = pd.MultiIndex.from_frame(pairs).factorize()
    kinds = np.array([reason_kind(status, reason) for status, reason in uniques], dtype=object)
    return pd.Series(kinds[codes] if len(codes) else [], index=rejected.index, dtype=object)


def pruning_sentence(candidates: pd.DataFrame, kinds: pd.Series | None = None) -> str:
    """How many candidates were simulated, pruned and infeasible, and why, in a few sentences
    (``kinds``: ``reason_kinds(candidates)`` when the caller has it already)."""
    status = candidates["status"].astype(str)
    kinds = reason_kinds(candidates) if kinds is None else kinds
    text = f"Of {fmt_count(len(candidates))} candidates, {fmt_count((status == 'ok').sum())} met the SLO."
    for name, meaning in (
        (
            "pruned",
            "were pruned: set aside because they could not beat the best plan, not because they fail the SLO",
        ),
        ("infeasible", "are infeasible: they cannot meet the SLO on this traffic"),
    ):
        mine = kinds[status.loc[kinds.index] == name]
        if mine.empty:
            continue
        counts = mine.value_counts()
        why = "; ".join(f"{fmt_count(n)} {kind}" for kind, n in counts.items())
        text += f" {fmt_count(len(mine))} {meaning} ({why})."
    return text


@dataclass(frozen=True)
class HeatmapGrid:
    """Disaggregated candidates per (prefill, decode) instance count; ``best[d, p]`` is the best
    goodput per GPU of the cell's feasible candidates (NaN where none), ``state[d, p]`` its kind."""

    prefill: list[int]
    decode: list[int]
    best: np.ndarray
    state: np.ndarray

    @property
    def tried(self) -> np.ndarray:
        return self.state != UNTRIED


def heatmap_grid(candidates: pd.DataFrame) -> HeatmapGrid:
    """The grid over disaggregated candidates, vectorised (a 128-GPU search has ~170k rows).

    A cell is OK with any feasible candidate; else PRUNED if any candidate was pruned (it might have
    been feasible, it could not win); else INFEASIBLE; UNTRIED where the search had no candidate.
    """
    disagg = candidates[candidates["mode"] == "disaggregated"]
    disagg = disagg[np.isfinite(disagg["prefill_instances"]) & np.isfinite(disagg["decode_instances"])]
    p_all = disagg["prefill_instances"].to_numpy(dtype=int)
    d_all = disagg["decode_instances"].to_numpy(dtype=int)
    prefill, decode = sorted({int(v) for v in p_all}), sorted({int(v) for v in d_all})
    shape = (len(decode), len(prefill))
    flat = np.searchsorted(decode, d_all) * len(prefill) + np.searchsorted(prefill, p_all)
    status = disagg["status"].to_numpy(dtype=str)
    value = disagg["goodput_rps_per_gpu"].to_numpy(dtype=float)
    good = (status == "ok") & np.isfinite(value)
    best = np.full(shape[0] * shape[1], np.nan)
    np.fmax.at(best, flat[good], value[good])
    size = shape[0] * shape[1]
    any_pruned = np.bincount(flat[status == "pruned"], minlength=size) > 0
    any_tried = np.bincount(flat, minlength=size) > 0
    state = np.full(size, UNTRIED)
    state[any_tried] = INFEASIBLE
    state[any_pruned] = PRUNED
    state[np.isfinite(best)] = OK
    return HeatmapGrid(prefill, decode, best.reshape(shape), state.reshape(shape))


def _hatch(rows: int, cols: int, cross: bool) -> np.ndarray:
    """Pixels on diagonal lines (and their mirror when ``cross``), continuous across cells."""
    y, x = np.mgrid[0:rows, 0:cols]
    period = 7
    mask = (x + y) % period < 2
    if cross:
        mask |= (x - y) % period < 2
    return mask


def heatmap_image(grid: HeatmapGrid, vmin: float, vmax: float) -> np.ndarray:
    """RGB pixels of the heatmap, ``px`` pixels per cell with the hatching painted in."""
    from matplotlib import colormaps

    rows, cols = grid.state.shape
    px = int(np.clip(IMAGE_PX // max(rows, cols, 1), 4, 48))
    cmap = colormaps["viridis"]
    span = vmax - vmin if vmax > vmin else 1.0
    colors = np.empty((rows, cols, 3))
    colors[:] = BACKGROUND_RGB
    ok = grid.state == OK
    colors[ok] = cmap(np.clip((grid.best[ok] - vmin) / span, 0, 1))[:, :3]
    image = np.repeat(np.repeat(colors, px, axis=0), px, axis=1)
    state = np.repeat(np.repeat(grid.state, px, axis=0), px, axis=1)
    for kind, rgb, cross in ((PRUNED, PRUNED_RGB, False), (INFEASIBLE, INFEASIBLE_RGB, True)):
        paint = (state == kind) & _hatch(state.shape[0], state.shape[1], cross=cross)
        image[paint] = rgb
    return image


def _ticks(values: list[int]) -> tuple[list[int], list[str]]:
    step = max(1, int(np.ceil(len(values) / MAX_TICKS)))
    idx = list(range(0, len(values), step))
    return idx, [str(values[i]) for i in idx]


def heatmap_figure(candidates: pd.DataFrame, chosen_id: str | None) -> MplFigure:
    """Goodput per GPU as one image; pruned cells hatched ``//``, infeasible ``xx``, the chosen
    plan's cell outlined."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.ticker import ScalarFormatter

    grid = heatmap_grid(candidates)
    rows, cols = grid.state.shape
    finite = grid.best[np.isfinite(grid.best)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin <= 1e-6 * max(abs(vmax), 1e-12):
        # one value (one feasible cell, or all equal): a ±5 % scale around it, not a colour bar
        # of offsets like "1e-10 + 1.83e-1"
        vmin, vmax = (0.95 * vmin, 1.05 * vmax) if vmax > 0 else (vmin - 1.0, vmax + 1.0)
    with style():
        fig = new_figure(
            min(7.5, 2.6 + 0.5 * cols),
            min(6.0, 2.0 + 0.35 * rows),
            Margins(top_in=0.45, right_in=0.1),
        )
        ax = fig.add_subplot()
        ax.imshow(
            heatmap_image(grid, vmin, vmax),
            origin="lower",
            extent=(-0.5, cols - 0.5, -0.5, rows - 0.5),
            aspect="auto",
            interpolation="none",
        )
        mappable = ScalarMappable(Normalize(vmin, vmax), "viridis")
        bar = fig.colorbar(mappable, ax=ax, label="best goodput per GPU (req/s)")
        bar.ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.set_xticks(*_ticks(grid.prefill))
        ax.set_yticks(*_ticks(grid.decode))
        ax.set_xlabel("prefill instances")
        ax.set_ylabel("decode instances")
        ax.grid(False)
        if rows <= MAX_LABELLED_CELLS and cols <= MAX_LABELLED_CELLS:
            for d, p in zip(*np.nonzero(grid.state == OK), strict=True):
                dark = (grid.best[d, p] - vmin) / (vmax - vmin) < 0.5  # viridis: dark low
                ax.text(
                    p,
                    d,
                    f"{grid.best[d, p]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
        handles = [  # only the kinds of cell the grid has
            Patch(facecolor="white", edgecolor=rgb, hatch=hatch, label=label)
            for kind, rgb, hatch, label in (
                (PRUNED, PRUNED_RGB, "///", "pruned: cannot beat the best"),
                (INFEASIBLE, INFEASIBLE_RGB, "xxx", "infeasible"),
            )
            if (grid.state == kind).any()
        ]
        row = candidates[candidates["candidate_id"] == chosen_id] if chosen_id is not None else None
        if row is not None and not row.empty and row.iloc[0]["mode"] == "disaggregated":
            p = grid.prefill.index(int(row.iloc[0]["prefill_instances"]))
            d = grid.decode.index(int(row.iloc[0]["decode_instances"]))
            outline = Rectangle((p - 0.5, d - 0.5), 1, 1, fill=False, edgecolor=SLO_COLOR, linewidth=2.5)
            ax.add_patch(outline)
            handles.append(Patch(facecolor="none", edgecolor=SLO_COLOR, linewidth=2.5, label="chosen plan"))
        if handles:
            ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=7)
    return fig

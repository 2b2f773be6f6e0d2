"""The search heatmap tells pruned cells (could not beat the best) from infeasible ones, says how
many candidates were set aside and why, and stays one small image at 128 GPUs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pdplan.reports.figure import SLO_COLOR, to_svg
from pdplan.reports.heatmap import (
    INFEASIBLE,
    OK,
    PRUNED,
    UNTRIED,
    heatmap_figure,
    heatmap_grid,
    pruning_sentence,
    reason_kind,
)
from pdplan.reports.rundir import RunData
from pdplan.reports.search import build_search

NAN = float("nan")
# reasons as the planner words them (planner/waves.py, screen.py, space.py, bounds.py)
CAP = "capacity bound (12.3 req/s at 90% of the bound) cannot beat c0001 (1P:2D (TP1), 0.8 req/s/GPU)"
PROBE = "misses the SLO at the rate needed to beat c0001 (1P:2D (TP1))"
MEM = "does not fit in memory: weights 16.1 GB > 15 GB (decode)"
FLOOR = "TTFT bound: only 41% of requests meet ttft≤1 s even alone on the cluster (target 90%)"
EVERY = "misses the SLO at every rate tried, down to 0.25 req/s (tpot)"


def _cands(rows: list[tuple]) -> pd.DataFrame:
    table = pd.DataFrame(
        rows,
        columns=[
            "candidate_id",
            "prefill_instances",
            "decode_instances",
            "gpus",
            "goodput_rps",
            "status",
            "reason",
        ],
    )
    table["mode"] = "disaggregated"
    table["prefill_tp"] = table["decode_tp"] = 1
    table["goodput_rps_per_gpu"] = table["goodput_rps"] / table["gpus"]
    for col in ("colocated_instances", "colocated_tp", "max_batch_size", "max_batch_tokens", "chunk_tokens"):
        table[col] = NAN
    table["policy"] = ""
    return table


def _small() -> pd.DataFrame:
    return _cands(
        [
            ("c0", 1, 1, 2, 1.0, "ok", ""),
            ("c1", 1, 2, 3, 2.4, "ok", ""),
            ("c2", 1, 2, 3, NAN, "pruned", PROBE),  # same cell as the feasible c1: the cell is ok
            ("c3", 2, 1, 3, NAN, "infeasible", MEM),
            ("c4", 2, 2, 4, NAN, "pruned", CAP),
            ("c5", 2, 2, 4, NAN, "infeasible", FLOOR),  # pruned + infeasible: pruned wins
            ("c6", 3, 1, 4, NAN, "infeasible", EVERY),
            ("c7", 3, 2, 5, NAN, "pruned", CAP),
        ]
    )


def test_cells_are_ok_pruned_infeasible_or_untried() -> None:
    grid = heatmap_grid(_small())
    assert grid.prefill == [1, 2, 3] and grid.decode == [1, 2]
    assert grid.state.tolist() == [[OK, INFEASIBLE, INFEASIBLE], [OK, PRUNED, PRUNED]]
    assert grid.best[1, 0] == pytest.approx(0.8) and np.isnan(grid.best[1, 1])
    partial = heatmap_grid(_small().iloc[:2])
    assert partial.decode == [1, 2] and partial.tried.all()
    sparse = heatmap_grid(_small().drop(index=[1, 2]))  # no candidate at 1 P + 2 D
    assert sparse.state[1, 0] == UNTRIED


def test_reasons_are_counted_by_kind_not_by_their_numbers() -> None:
    assert reason_kind("pruned", CAP) == "by their capacity bound, below the best plan's goodput"
    assert reason_kind("pruned", PROBE).startswith("after one probe")
    assert reason_kind("infeasible", MEM) == "do not fit in memory"
    assert reason_kind("infeasible", FLOOR).startswith("latency floor: TTFT")
    assert reason_kind("infeasible", EVERY) == "miss the SLO at every rate tried"
    assert reason_kind("infeasible", "odd thing: 12 of 14") == "odd thing"
    text = pruning_sentence(_small())
    assert text.startswith("Of 8 candidates, 2 met the SLO. 3 were pruned: set aside because they could not")
    assert "(2 by their capacity bound, below the best plan's goodput; 1 after one probe" in text
    assert "3 are infeasible" in text and "1 do not fit in memory" in text


def test_legend_tells_pruned_from_infeasible_and_outlines_the_chosen_plan() -> None:
    fig = heatmap_figure(_small(), "c1")
    ax = fig.axes[0]
    box = ax.get_legend()
    legend = {t.get_text(): h for t, h in zip(box.get_texts(), box.legend_handles, strict=True)}
    assert set(legend) == {"pruned: cannot beat the best", "infeasible", "chosen plan"}
    assert legend["pruned: cannot beat the best"].get_hatch() != legend["infeasible"].get_hatch()
    assert len(ax.images) == 1  # colour and hatching in one image, not one patch per cell
    image = ax.images[0].get_array()
    px = image.shape[0] // 2
    pruned_cell = image[px:, px : 2 * px].reshape(-1, 3)  # row D=2, column P=2
    infeasible_cell = image[:px, 2 * px :].reshape(-1, 3)  # row D=1, column P=3
    pruned_colors = {tuple(np.round(c, 2)) for c in pruned_cell}
    infeasible_colors = {tuple(np.round(c, 2)) for c in infeasible_cell}
    assert len(pruned_colors) == 2 and len(infeasible_colors) == 2 and pruned_colors != infeasible_colors
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.50", "0.80"]
    outlined = [
        p for p in ax.patches if p.get_edgecolor()[:3] == pytest.approx((0.835, 0.369, 0.0), abs=0.01)
    ]
    assert len(outlined) == 1 and outlined[0].get_xy() == (-0.5, 0.5)  # column P=1, row D=2
    assert SLO_COLOR == "#D55E00"


def test_section_says_how_many_were_pruned_and_why(tmp_path) -> None:
    section = build_search([RunData(path=tmp_path / "s", candidates=_small())])
    texts = [getattr(i, "text", "") for i in section.items]
    assert any("3 were pruned" in t for t in texts)
    heatmap = next(i for i in section.items if i.kind == "figure")
    assert "Hatched //" in heatmap.caption and "cross-hatched" in heatmap.caption
    assert "none feasible" not in heatmap.caption
    reasons = next(i for i in section.items if i.kind == "table" and "by reason" in i.caption)
    assert (
        "pruned",
        "by their capacity bound, below the best plan's goodput",
        "2",
        f"c4: {CAP}",
    ) in reasons.rows


def _big_search(prefill_max: int = 127, per_cell: int = 10) -> pd.DataFrame:
    """~170k disaggregated candidates on a 128-GPU budget, like the real search's grid: most pruned."""
    rng = np.random.default_rng(0)
    p, d = np.meshgrid(np.arange(1, prefill_max + 1), np.arange(1, prefill_max + 1))
    keep = (p + d) <= 128
    p, d = np.repeat(p[keep], per_cell), np.repeat(d[keep], per_cell)
    n = p.size
    status = np.where(rng.random(n) < 0.9, "pruned", "infeasible").astype(object)
    ok = rng.random(n) < 0.002
    status[ok] = "ok"
    goodput = np.where(ok, rng.uniform(1, 20, n) * (p + d), NAN)
    reason = np.where(status == "pruned", CAP, np.where(status == "infeasible", EVERY, ""))
    return _cands(
        list(zip([f"c{i:06d}" for i in range(n)], p, d, p + d, goodput, status, reason, strict=True))
    )


def test_a_128_gpu_heatmap_is_one_bounded_image() -> None:
    cands = _big_search()
    assert len(cands) > 80_000
    fig = heatmap_figure(cands, None)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and not ax.texts  # no per-cell labels on a 127 × 127 grid
    assert len(ax.get_xticks()) <= 16 and len(ax.get_yticks()) <= 16
    svg = to_svg(fig, "heatmap")
    assert len(svg.encode()) < 400_000, len(svg.encode())
    assert len(re.findall(r"<image", svg)) == 2  # the heatmap and its colour bar
    assert len(re.findall(r"<path", svg)) < 300  # ticks and legend, not one per cell


def test_legend_names_only_the_kinds_of_cell_present() -> None:
    only_pruned = _small()
    only_pruned = only_pruned[only_pruned["status"] != "infeasible"]
    ax = heatmap_figure(only_pruned, None).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pruned: cannot beat the best"]
    feasible = _small().iloc[:2]
    assert heatmap_figure(feasible, None).axes[0].get_legend() is None


def test_one_feasible_cell_gets_a_readable_colour_scale() -> None:
    """A search with one feasible cell (the quick start's) drew a colour bar of offsets
    ("1e-10 + 1.83e-1", ticks 0-8): the scale now spans ±5 % around the one value."""
    one = _cands([("c0", 2, 2, 4, 0.7348, "ok", ""), ("c1", 1, 1, 2, NAN, "pruned", CAP)])
    fig = heatmap_figure(one, "c0")
    bar = fig.axes[1]
    low, high = bar.get_ylim()
    assert low == pytest.approx(0.95 * 0.7348 / 4) and high == pytest.approx(1.05 * 0.7348 / 4)
    fig.canvas.draw()
    assert bar.yaxis.get_offset_text().get_text() == ""
    labels = [float(t.get_text().replace("\u2212", "-")) for t in bar.get_yticklabels() if t.get_text()]
    assert len([v for v in labels if low <= v <= high]) >= 2  # plain values on the visible scale

"""SVG export and the numeric helpers behind the figures."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pdplan.reports.figure import (
    bin_series,
    downsample_sorted,
    log_axis,
    new_figure,
    pareto_front,
    style,
    to_svg,
)


def _figure(title: str):
    with style():
        fig = new_figure(3, 2)
        ax = fig.add_subplot()
        ax.plot([1, 2, 3], [3, 1, 2], marker="o")
        ax.set_title(title)
    return fig


def test_svg_is_inline_ready_and_url_free() -> None:
    svg = to_svg(_figure("a < b & c"), "fig-a")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "http" not in svg and "<?xml" not in svg and "DOCTYPE" not in svg
    assert "a &lt; b &amp; c" in svg  # text stays (escaped) text, fonttype none


def test_svg_ids_are_prefixed_and_references_follow() -> None:
    a, b = to_svg(_figure("x"), "fig-a"), to_svg(_figure("x"), "fig-b")
    ids_a = re.findall(r'\bid="([^"]+)"', a)
    ids_b = re.findall(r'\bid="([^"]+)"', b)
    assert ids_a and all(i.startswith("fig-a-") for i in ids_a)
    assert not set(ids_a) & set(ids_b), "two figures on one page must not share an id"
    refs = re.findall(r'(?:href="#|url\(#)([^")]+)', a)
    assert refs and set(refs) <= set(ids_a), "every reference points at an id of the same figure"


def test_svg_is_deterministic() -> None:
    assert to_svg(_figure("same"), "k") == to_svg(_figure("same"), "k")


def test_downsample_small_sample_is_the_exact_step_function() -> None:
    x, p = downsample_sorted(np.array([3.0, 1.0, 2.0, np.nan]), 100)
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert p.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_downsample_large_sample_passes_through_the_quantiles() -> None:
    values = np.random.default_rng(0).lognormal(5, 1, 20_000)
    x, p = downsample_sorted(values, 400)
    assert len(x) == 400 and p[0] == 0 and p[-1] == 1
    for q in (0.5, 0.9, 0.99):
        assert np.interp(q, p, x) == pytest.approx(np.quantile(values, q), rel=0.02)
    assert x[0] == values.min() and x[-1] == values.max()


def test_bin_series_means_mins_and_maxes() -> None:
    t = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    v = np.array([1.0, 3.0, 5.0, 7.0, 0.0, 10.0])
    centres, mean, lo, hi = bin_series(t, v, max_bins=3)
    assert mean.tolist() == [2.0, 6.0, 5.0]
    assert lo.tolist() == [1.0, 5.0, 0.0] and hi.tolist() == [3.0, 7.0, 10.0]
    assert len(centres) == 3 and np.all(np.diff(centres) > 0)
    centres, mean, _, _ = bin_series(np.arange(10_000.0), np.ones(10_000), max_bins=300)
    assert len(centres) == 300 and np.all(mean == 1)


def test_pareto_front_keeps_only_undominated_points() -> None:
    x = [1.0, 2.0, 3.0, 2.0, 0.5]
    y = [5.0, 4.0, 1.0, 3.0, 5.0]
    front = pareto_front(x, y)
    assert front.tolist() == [0, 1, 2]  # (2,3) is dominated by (2,4); (0.5,5) by (1,5)


def _log_labels(low: float, high: float) -> list[str]:
    with style():
        fig = new_figure(3, 2)
        ax = fig.add_subplot()
        ax.plot([low, high], [1, 2])
        log_axis(ax, "x")
        fig.canvas.draw()
        assert ax.get_xscale() == "log"
        return [t.get_text() for t in ax.get_xticklabels() if t.get_text()]


def test_log_axis_prints_plain_numbers_at_steps_that_fit_the_range() -> None:
    short = _log_labels(100, 2000)  # 1.3 decades: 1-2-5 steps
    assert {"100", "200", "500", "1000", "2000"} <= set(short) and not any("$" in s for s in short)
    medium = _log_labels(100, 20_000)  # 2.3 decades: 1-3 steps
    assert {"100", "300", "1000", "3000", "10k"} <= set(medium) and "200" not in medium
    wide = _log_labels(1, 1e5)  # decades only
    assert {"1", "10", "100", "1000", "10k", "100k"} <= set(wide) and "3" not in wide
    assert not any("e+" in s for s in wide)

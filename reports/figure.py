"""Matplotlib plumbing shared by the section modules: a figure factory, SVG export, downsampling.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot: no global figure registry,
no backend selection) and exported as SVG text that is safe to inline many times in one HTML page:
no XML prologue, no DOCTYPE, no namespace URLs, no metadata, and every ``id`` prefixed with the
figure's key so two figures never share an id. matplotlib is imported inside functions only, so
importing ``pdplan.reports`` (and ``pdplan --help``) stays fast.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import ArrayLike

from pdplan.reports.units import ms_tick, num_tick

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

#: One palette for every figure, so a role or a mode has the same colour everywhere (Okabe–Ito,
#: colour-blind safe: Okabe & Ito 2008, "Color Universal Design").
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
ROLE_COLORS = {"prefill": "#0072B2", "decode": "#E69F00", "colocated": "#009E73"}
MODE_COLORS = {"disaggregated": "#0072B2", "colocated": "#009E73"}
SLO_COLOR = "#D55E00"

_RC: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays text: smaller files, selectable and searchable
    "svg.hashsalt": "pdplan",  # deterministic ids, so a report is reproducible byte for byte
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
}
_SVG_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


@contextmanager
def style() -> Iterator[None]:
    """The report's matplotlib settings, scoped (rcParams are restored on exit)."""
    import matplotlib

    with matplotlib.rc_context(cast(Any, _RC)):  # stubs want literal keys
        yield


@dataclass(frozen=True)
class Margins:
    """Space around the axes grid in inches, and between axes as a fraction of an axes' size.

    Fixed margins instead of matplotlib's constrained layout: that engine lays every text out twice
    and cost 40 % of the report's drawing time (bench/report_speed.py); the figures here have
    known, short labels.
    """

    left_in: float = 0.7
    right_in: float = 0.15
    bottom_in: float = 0.5
    top_in: float = 0.3
    wspace: float = 0.3
    hspace: float = 0.25


def new_figure(width_in: float = 7.0, height_in: float = 3.2, margins: Margins = Margins()) -> Figure:
    """A blank figure with the report's margins; build it inside ``style()`` so fonts match."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in))
    fig.subplots_adjust(
        left=margins.left_in / width_in,
        right=1 - margins.right_in / width_in,
        bottom=margins.bottom_in / height_in,
        top=1 - margins.top_in / height_in,
        wspace=margins.wspace,
        hspace=margins.hspace,
    )
    return fig


def log_axis(ax: Axes, which: str) -> None:
    """Put ``which`` ('x', 'y' or 'both') of ``ax`` on a log scale with plain-number labels.

    matplotlib's default log axis draws eight labelled minor ticks per decade in mathtext, which
    overlap on short ranges and cost ~0.3 s of text layout per axis. Here the labels are plain
    numbers at 1-2-5 steps over ≤ 1.5 decades, 1-3 steps up to 3 decades, decades beyond; call it
    after plotting, since the steps follow the data's range.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    assert which in ("x", "y", "both"), f"which={which!r}"
    axes: list[tuple[Axis, np.ndarray]] = []
    if which in ("x", "both"):
        ax.set_xscale("log")
        axes.append((ax.xaxis, ax.dataLim.intervalx))
    if which in ("y", "both"):
        ax.set_yscale("log")
        axes.append((ax.yaxis, ax.dataLim.intervaly))
    for axis, (low, high) in axes:
        decades = float(np.log10(high / low)) if high > low > 0 else 1.0
        subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 3 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        axis.set_major_formatter(FuncFormatter(num_tick))
        axis.set_minor_locator(NullLocator())


def to_svg(fig: Figure, key: str) -> str:
    """The figure as inline-SVG text whose ids are all prefixed with ``key``.

    The XML prologue, DOCTYPE and ``xmlns`` attributes are dropped: inline ``<svg>`` in HTML needs
    none of them, and the report then contains no URL at all.
    """
    assert re.fullmatch(r"[a-z0-9-]+", key), f"figure key {key!r} must be [a-z0-9-]+"
    buf = io.StringIO()
    with style():
        fig.savefig(buf, format="svg", metadata=_SVG_METADATA)
    text = buf.getvalue()
    start = text.index("<svg")
    text = text[start:]
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)
    ids = set(re.findall(r'\bid="([^"]+)"', text))

    def prefix(match: re.Match[str]) -> str:
        lead, ident = match.group(1), match.group(2)
        return f"{lead}{key}-{ident}" if ident in ids else match.group(0)

    text = re.sub(r'(\bid="|href="#|url\(#)([^")]+)', prefix, text)
    return text.strip()


def downsample_sorted(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF of ``values`` as (x, probability) with at most ``max_points`` points.

    Small samples keep every point (step positions exact). Large ones are summarised by the
    quantiles at evenly spaced probabilities, so the curve passes through every quantile the reader
    can see (numpy's linear interpolation between order statistics).
    """
    data = np.sort(np.asarray(values, dtype=float))
    data = data[np.isfinite(data)]
    n = data.size
    if n == 0:
        return data, data
    if n <= max_points:
        return data, np.arange(1, n + 1) / n
    probs = np.linspace(0.0, 1.0, max_points)
    return np.quantile(data, probs), probs


def bin_series(
    time_s: np.ndarray, values: np.ndarray, max_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin a (time, value) cloud into at most ``max_bins`` equal time bins.

    Returns (bin centre, mean, min, max) over the samples in each non-empty bin, so a long run with
    many instances stays a few hundred points per line however many samples it has.
    """
    t = np.asarray(time_s, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if t.size == 0:
        empty = np.empty(0)
        return empty, empty, empty, empty
    lo, hi = float(t.min()), float(t.max())
    num_bins = max(1, min(max_bins, int(np.unique(t).size)))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, num_bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(idx, minlength=num_bins)
    sums = np.bincount(idx, weights=v, minlength=num_bins)
    mins = np.full(num_bins, np.inf)
    maxs = np.full(num_bins, -np.inf)
    np.minimum.at(mins, idx, v)
    np.maximum.at(maxs, idx, v)
    full = counts > 0
    centres = (edges[:-1] + edges[1:]) / 2
    return centres[full], sums[full] / counts[full], mins[full], maxs[full]


def pareto_front(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Indices of the points not dominated when both ``x`` and ``y`` are to be maximised,
    ordered by increasing ``x`` (so ``y`` decreases along the front)."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    order = np.lexsort((-ys, -xs))  # by x descending, ties: larger y first
    front: list[int] = []
    best_y = -np.inf
    for i in order:
        if np.isfinite(xs[i]) and np.isfinite(ys[i]) and ys[i] > best_y:
            front.append(int(i))
            best_y = ys[i]
    return np.asarray(front[::-1], dtype=int)


def ms_axis(axis: Axis) -> None:
    """Label a latency axis (data in ms) in ms below one second and s above, never ``1e+04``."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(ms_tick))


def num_axis(axis: Axis) -> None:
    """Label a linear axis of large numbers with k/M suffixes instead of an exponent offset."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(num_tick))

"""Tensor-parallel communication: all-reduce time by message size, group size and topology.

One all-reduce of ``b`` bytes over ``n`` GPUs::

    t = α(n) + (2(n−1)/n) · b / busbw(n)

the ring algorithm's traffic (Patarasuk & Yuan 2009; NCCL's "bus bandwidth") plus a small-message
floor α. For NVLink/NVSwitch parts both are fitted (weighted least squares on relative error) on
Vidur's NCCL measurements (``shared/data/measurements/vidur_profiling/network``: DGX A100, DGX H100,
single node, 2-8 GPUs, 4 KiB - 128 MiB); ``tests/profiles/test_comm.py`` refits and checks the
constants, ``bench/fidelity.py`` prints the error per topology and group size. The DGX fits are the
NVSwitch nodes TP runs on; the pairwise-NVLink tables (NVLink bridges between pairs, PCIe between
pairs) show what a PCIe hop costs.

PCIe-only parts (RTX 4090, L40S, RTX PRO 6000, H100 PCIe beyond a bridged pair) pay PCIe: busbw is
the catalog's PCIe link rate times :data:`PCIE_EFFICIENCY`, and α the 4-GPU pairwise-NVLink floor
(traffic crosses PCIe between the pairs there), both stated below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pdplan.profiles.hardware import Hardware


@dataclass(frozen=True)
class AllReduceFit:
    """α (µs) and bus bandwidth (GB/s) of one topology at one group size."""

    alpha_us: float
    busbw_gbps: float

    def seconds(self, num_workers: int, num_bytes: float) -> float:
        if num_workers <= 1:
            return 0.0
        return self.alpha_us * 1e-6 + 2 * (num_workers - 1) / num_workers * num_bytes / (
            self.busbw_gbps * 1e9
        )


#: Fitted on Vidur's single-node measurements (``fit_all_reduce``); keys (topology, num_workers).
FITS: dict[tuple[str, int], AllReduceFit] = {
    ("a100_dgx", 2): AllReduceFit(35.8, 317.0),
    ("a100_dgx", 4): AllReduceFit(28.7, 308.0),
    ("a100_dgx", 8): AllReduceFit(39.0, 304.0),
    ("h100_dgx", 2): AllReduceFit(16.6, 564.0),
    ("h100_dgx", 4): AllReduceFit(30.6, 759.0),
    ("h100_dgx", 8): AllReduceFit(28.6, 678.0),
    ("a100_pairwise_nvlink", 2): AllReduceFit(28.7, 379.0),
    ("a100_pairwise_nvlink", 4): AllReduceFit(55.2, 47.0),
    ("h100_pairwise_nvlink", 2): AllReduceFit(12.2, 373.0),
    ("h100_pairwise_nvlink", 4): AllReduceFit(23.8, 93.0),
}
#: Which topology a catalog GPU's TP group runs on (NVSwitch nodes: the DGX fits).
TOPOLOGY: dict[str, str] = {
    "a100-80g": "a100_dgx",
    "a100-40g": "a100_dgx",
    "h100-sxm": "h100_dgx",
    "h200": "h100_dgx",
    "b200": "h100_dgx",
    "mi300x": "h100_dgx",
    "h800": "h100_dgx",
    "h20": "h100_dgx",
    "gb200": "h100_dgx",
    "mi325x": "h100_dgx",
}
#: Achieved / nominal PCIe bandwidth of an NCCL ring over PCIe. Vidur's 4-GPU pairwise-NVLink
#: A100 node, whose ring crosses PCIe Gen4 between the pairs, reaches 47 GB/s bus bandwidth over
#: the fitted range; on PCIe-only consumer parts without P2P, traffic is staged through host memory,
#: which NCCL's own performance notes put at about half the link. We take 0.5 of the link rate.
PCIE_EFFICIENCY = 0.5
#: Small-message floor on PCIe, µs: the A100 pairwise-NVLink 4-GPU fit (55 µs), rounded.
PCIE_ALPHA_US = 55.0


def all_reduce_fit(hardware: Hardware, num_workers: int) -> AllReduceFit:
    """The all-reduce model of a ``num_workers`` TP group of ``hardware``.

    Group sizes between the measured ones take the next measured size up (8 for anything above 4).
    """
    topo = TOPOLOGY.get(hardware.name)
    if topo is None and hardware.intra_node_link == "nvlink":  # a --hardware file's switched part
        topo = f"{hardware.kernel_family}_dgx"
    if topo is None:
        return AllReduceFit(PCIE_ALPHA_US, hardware.link_bandwidth_gbps * PCIE_EFFICIENCY)
    sizes = sorted(n for t, n in FITS if t == topo)
    n = next((s for s in sizes if s >= num_workers), sizes[-1])
    fit = FITS[(topo, n)]
    # a faster (or slower) NVLink generation than the measured node scales the bandwidth term
    measured_link = 300.0 if topo.startswith("a100") else 450.0
    return AllReduceFit(fit.alpha_us, fit.busbw_gbps * hardware.link_bandwidth_gbps / measured_link)


def fit_all_reduce(rows: pd.DataFrame) -> dict[tuple[str, int], AllReduceFit]:
    """Fit α and busbw per (topology, num_workers) on ``vidur.read_all_reduce`` rows.

    Least squares on relative error: minimise Σ((α + c·b)/t − 1)² with c = 2(n−1)/n / busbw.
    """
    fits: dict[tuple[str, int], AllReduceFit] = {}
    for key, g in rows.groupby(["topology", "num_workers"]):
        topo, n = str(key[0]), int(g["num_workers"].iloc[0])
        b, t = g["bytes"].to_numpy(), g["time_ms"].to_numpy() * 1e-3
        design = np.c_[np.ones_like(b), b] / t[:, None]
        (alpha, c), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
        busbw = 2 * (n - 1) / n / c / 1e9
        fits[(topo, n)] = AllReduceFit(round(float(alpha) * 1e6, 1), round(float(busbw), 0))
    return fits


def errors(rows: pd.DataFrame, fits: dict[tuple[str, int], AllReduceFit] | None = None) -> pd.DataFrame:
    """``rows`` with ``pred_ms`` and ``error`` (predicted / measured − 1)."""
    fits = fits or FITS
    pred = [
        1e3 * fits[(t, int(n))].seconds(int(n), b)
        for t, n, b in zip(rows["topology"], rows["num_workers"], rows["bytes"], strict=True)
    ]
    return rows.assign(pred_ms=pred, error=np.asarray(pred) / rows["time_ms"].to_numpy() - 1)


def p2p_send_s(hardware: Hardware, num_bytes: float, across_nodes: bool) -> float:
    """One point-to-point send of ``num_bytes`` between pipeline stages (``pdplan.profiles.pipeline``).

    Inside a node: the 2-GPU all-reduce floor α of :func:`all_reduce_fit` (an NCCL kernel launch
    and handshake) plus the bytes at the intra-node link rate. Across nodes: that floor twice (a
    network hop on top of the NVLink one, as ``moe_cost.all_to_all_s`` takes it) plus the bytes at
    the per-GPU network rate (``inter_node_bandwidth_gbps``; one NIC per GPU, each TP rank of a
    stage sending to its peer of the next in parallel).
    """
    alpha = all_reduce_fit(hardware, 2).alpha_us * 1e-6
    if across_nodes:
        net = hardware.inter_node_bandwidth_gbps or hardware.link_bandwidth_gbps
        return 2 * alpha + num_bytes / (net * 1e9)
    return alpha + num_bytes / (hardware.link_bandwidth_gbps * 1e9)

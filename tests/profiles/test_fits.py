"""The shipped GEMM and all-reduce constants are what Vidur's measurements give, and fit them."""

from __future__ import annotations

import numpy as np
import pytest

from pdplan.profiles import comm, gemm, vidur
from pdplan.profiles.hardware import get_hardware


@pytest.fixture(scope="module")
def compute(shared_data):
    return vidur.read_compute(shared_data / "measurements/vidur_profiling/compute")


@pytest.fixture(scope="module")
def network(shared_data):
    return vidur.read_all_reduce(shared_data / "measurements/vidur_profiling/network")


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_gemm_constants_are_the_fit_and_meet_10_percent(compute, gpu):
    fit = gemm.fit_kernels(compute, gpu)
    assert fit == gemm.FITS[gpu]
    err = gemm.errors(compute[compute["gpu"] == gpu])
    g = err[err["kind"] == "gemm"]["error"].abs()
    assert np.median(g) < 0.10
    # per TP too: the floor keeps small shards honest
    for _, group in err[err["kind"] == "gemm"].groupby("tp"):
        assert np.median(group["error"].abs()) < 0.12


def test_gemm_leave_one_model_out_stays_under_10_percent(compute):
    a100 = compute[compute["gpu"] == "a100"]
    held = "Meta-Llama-3-70B"
    fit = gemm.fit_kernels(a100[a100["model"] != held], "a100")
    err = gemm.errors(a100[(a100["model"] == held) & (a100["kind"] == "gemm")], {"a100": fit})
    assert np.median(err["error"].abs()) < 0.10


def test_all_reduce_constants_are_the_fit(network):
    fits = comm.fit_all_reduce(network)
    assert fits == comm.FITS
    err = comm.errors(network)
    for (topo, n), group in err.groupby(["topology", "num_workers"]):
        assert np.median(group["error"].abs()) < 0.15, (topo, n)


def test_all_reduce_floor_and_pcie():
    h100 = get_hardware("h100-sxm")
    small = comm.all_reduce_fit(h100, 8).seconds(8, 16 * 1024)
    assert 25e-6 < small < 35e-6  # the measured small-message floor, not 2(n−1)/n·b/bw
    assert comm.all_reduce_fit(h100, 1).seconds(1, 1e9) == 0.0
    pcie = comm.all_reduce_fit(get_hardware("rtx-4090"), 2)
    assert pcie.alpha_us == comm.PCIE_ALPHA_US
    assert pcie.busbw_gbps == pytest.approx(
        get_hardware("rtx-4090").link_bandwidth_gbps * comm.PCIE_EFFICIENCY
    )
    # group sizes between measured ones take the next measured size up
    assert comm.all_reduce_fit(h100, 3) == comm.all_reduce_fit(h100, 4)

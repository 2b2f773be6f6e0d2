"""Kernel efficiency by shape: GEMM and elementwise times fitted on Vidur's measured op times.

One kernel of ``F`` FLOPs that moves ``B`` bytes on a GPU of peak ``P`` FLOP/s and bandwidth ``BW``::

    gemm        t = t0 + max(F / (P·mfu), B / (BW·mbu))
    elementwise t = t0_e + B / (BW·mbu_e)

``t0`` is the floor every kernel pays however small its shard (launch, tile scheduling, the tail
wave): it is what makes a TP8 shard of a 70B layer slower than an eighth of the TP1 time, and it
does not divide by TP. ``mfu``/``mbu`` are the achieved fractions of the datasheet peaks for the
shapes LLM serving runs. The constants below are fitted (``fit_kernels``, median absolute log
error, coordinate descent on a grid) on every GEMM and elementwise row of
``shared/data/measurements/vidur_profiling/compute`` (Llama-2-7B, Llama-3-8B, Llama-3-70B at
TP 1-8, 1-32768 tokens; A100-80GB SXM and H100 SXM). ``bench/fidelity.py`` prints the fit's error
per op, per TP, and leave-one-model-out; ``tests/profiles/test_gemm.py`` refits and checks that
these constants are what the data gives.

GPUs Vidur did not measure borrow the closest family (``Hardware.kernel_family``): Ampere and the L40S
take the A100 fit, Hopper/Blackwell and MI300X the H100 fit. AD102 parts whose tensor rate is
low for their power budget (RTX 4090: bf16 with fp32 accumulate at half rate, 165 TFLOP/s; L20)
run large GEMMs near their datasheet peak: cuBLAS reaches 105-115 of the L20's 119.5 TFLOP/s
(DefTruth/CUDA-Learn-Notes, hgemm/README.md) and cuBLASLt 175.1 TFLOP/s bf16 on an RTX 4090
(binbinsh/gpu-bench README, 8192³), so the ``ada`` fit takes MFU 0.92. Its bandwidth fractions are
transferred, not fitted: GDDR6X sustains a larger share of its datasheet rate than HBM does
(``STREAM_FRACTION``), and the fitted fractions of the two measured families, divided by their
own sustained fraction, average (geometric mean) to the ``ada`` part's sustained fraction times
that ratio (``transferred_fit``). Its floors are the A100 fit's. The L40S (362 TFLOP/s in 350 W)
is power-bound like the data-centre parts and keeps the A100 fit. All of this is an assumption
per part; ``pdplan calibrate`` corrects it with a run on the real part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class KernelFit:
    """Fitted kernel-efficiency constants of one GPU family."""

    gemm_t0_us: float
    mfu: float
    mbu: float
    elementwise_t0_us: float
    elementwise_mbu: float


#: Sustained DRAM bandwidth over the datasheet figure, from public STREAM-like micro-benchmarks:
#: A100-SXM4-40GB 1,379.7 of 1,555 GB/s (xytpai/nvbench README, float4 copy); H100 80GB HBM3
#: 2.97 of 3.35 TB/s (triad; samuel-bohman/AI-benchmarking-guide, Azure_Results/ND_H100_v5);
#: RTX 4090 921.9 GB/s (xytpai/nvbench) and 918.8 GB/s (binbinsh/gpu-bench, D2D copy) of 1,008.
#: The A100-80GB that Vidur measured is taken to sustain the 40GB part's fraction (same HBM2e
#: controller; an assumption).
STREAM_FRACTION: dict[str, float] = {
    "a100": 1379.7 / 1555.0,
    "h100": 2970.0 / 3350.0,
    "ada": (921.9 + 918.8) / 2 / 1008.0,
}


def transferred_fit(family: str, mfu: float, like: KernelFit, fitted: dict[str, KernelFit]) -> KernelFit:
    """A fit for a family Vidur did not measure: ``mfu`` from public GEMM figures, the floors of
    ``like``, and each bandwidth fraction as the family's sustained fraction times the geometric
    mean, over the measured families, of (fitted fraction / that family's sustained fraction)."""

    def transfer(attr: str) -> float:
        ratios = [getattr(f, attr) / STREAM_FRACTION[name] for name, f in fitted.items()]
        return round(STREAM_FRACTION[family] * float(np.exp(np.mean(np.log(ratios)))), 3)

    mbu, elementwise_mbu = transfer("mbu"), transfer("elementwise_mbu")
    return KernelFit(like.gemm_t0_us, mfu, mbu, like.elementwise_t0_us, elementwise_mbu)


#: Fitted on Vidur's A100 and H100 op times (see the module docstring; regenerate with
#: ``python bench/fidelity.py --refit``).
_FITTED: dict[str, KernelFit] = {
    "a100": KernelFit(gemm_t0_us=9.0, mfu=0.72, mbu=0.8, elementwise_t0_us=1.5, elementwise_mbu=0.4),
    "h100": KernelFit(gemm_t0_us=8.0, mfu=0.72, mbu=0.98, elementwise_t0_us=3.5, elementwise_mbu=0.56),
}
FITS: dict[str, KernelFit] = {
    **_FITTED,
    # not fitted: cuBLAS's MFU on AD102, bandwidth fractions transferred (see the module docstring)
    "ada": transferred_fit("ada", 0.92, _FITTED["a100"], _FITTED),
}
#: Peaks Vidur's GPUs were priced at (the catalog's datasheet figures: A100-80GB SXM, H100 SXM).
VIDUR_PEAKS: dict[str, tuple[float, float]] = {"a100": (312e12, 2039e9), "h100": (989.4e12, 3350e9)}


def fit_source(hardware_name: str, family: str) -> str:
    """Where a GPU's kernel constants (``family``'s) come from, for the profile's notes."""
    if family == "ada":
        return (
            "ada: MFU from published cuBLAS figures on AD102, bandwidth fractions transferred "
            "from the A100/H100 fits by sustained bandwidth; not fitted"
        )
    if hardware_name == {"a100": "a100-80g", "h100": "h100-sxm"}.get(family):
        return "fitted on Vidur op times"
    return f"borrowed: the {family} fit on Vidur op times"


def kernel_fit(name: str) -> KernelFit:
    """The fit of a family (``a100``/``h100``/``ada``: ``Hardware.kernel_family``) or of a catalog
    GPU (by its ``kernel_family``); the CPU and unknown parts get the A100 fit (an assumption)."""
    if name in FITS:
        return FITS[name]
    from pdplan.profiles.hardware import CATALOG

    hw = CATALOG.get(name)
    return FITS[hw.kernel_family if hw is not None else "a100"]


def gemm_s(fit: KernelFit, flops: float, num_bytes: float, peak_flops: float, bandwidth: float) -> float:
    """Seconds of one GEMM (see the module docstring)."""
    return fit.gemm_t0_us * 1e-6 + max(flops / (peak_flops * fit.mfu), num_bytes / (bandwidth * fit.mbu))


def elementwise_s(fit: KernelFit, num_bytes: float, bandwidth: float) -> float:
    """Seconds of one memory-bound elementwise kernel."""
    return fit.elementwise_t0_us * 1e-6 + num_bytes / (bandwidth * fit.elementwise_mbu)


def predict_ms(fit: KernelFit, rows: pd.DataFrame, peak_flops: float, bandwidth: float) -> np.ndarray:
    """Predicted ms of ``pdplan.profiles.vidur.read_compute`` rows (one GPU)."""
    flops, nbytes = rows["flops"].to_numpy(), rows["bytes"].to_numpy()
    gemm = fit.gemm_t0_us * 1e-6 + np.maximum(flops / (peak_flops * fit.mfu), nbytes / (bandwidth * fit.mbu))
    elem = fit.elementwise_t0_us * 1e-6 + nbytes / (bandwidth * fit.elementwise_mbu)
    return 1e3 * np.where(rows["kind"].to_numpy() == "gemm", gemm, elem)


def _descend(objective, start: list[float], grids: list[np.ndarray], rounds: int = 4) -> list[float]:
    x = list(start)
    for _ in range(rounds):
        for i, grid in enumerate(grids):
            scores = [objective([*x[:i], float(v), *x[i + 1 :]]) for v in grid]
            x[i] = float(grid[int(np.argmin(scores))])
    return x


def fit_kernels(rows: pd.DataFrame, gpu: str) -> KernelFit:
    """Fit one family's constants on ``read_compute`` rows of that GPU (median |log error|)."""
    peak, bw = VIDUR_PEAKS[gpu]
    g = rows[(rows["gpu"] == gpu) & (rows["kind"] == "gemm")]
    e = rows[(rows["gpu"] == gpu) & (rows["kind"] == "elementwise")]
    gf, gb, gt = g["flops"].to_numpy(), g["bytes"].to_numpy(), g["time_ms"].to_numpy() * 1e-3
    eb, et = e["bytes"].to_numpy(), e["time_ms"].to_numpy() * 1e-3

    def gemm_obj(x: list[float]) -> float:
        pred = x[0] * 1e-6 + np.maximum(gf / (peak * x[1]), gb / (bw * x[2]))
        return float(np.median(np.abs(np.log(pred / gt))))

    def elem_obj(x: list[float]) -> float:
        pred = x[0] * 1e-6 + eb / (bw * x[1])
        return float(np.median(np.abs(np.log(pred / et))))

    frac = np.round(np.arange(0.30, 1.0001, 0.02), 2)
    t0s, t0e = np.arange(0.0, 30.5, 1.0), np.arange(0.0, 10.25, 0.5)
    t0, mfu, mbu = _descend(gemm_obj, [10.0, 0.7, 0.8], [t0s, frac, frac])
    e0, embu = _descend(elem_obj, [2.0, 0.6], [t0e, frac])
    return KernelFit(t0, mfu, mbu, e0, embu)


def errors(rows: pd.DataFrame, fits: dict[str, KernelFit] | None = None) -> pd.DataFrame:
    """``rows`` with ``pred_ms`` and ``error`` (predicted / measured − 1) under ``fits``."""
    fits = fits or FITS
    out = []
    for gpu, g in rows.groupby("gpu"):
        peak, bw = VIDUR_PEAKS[str(gpu)]
        pred = predict_ms(fits[str(gpu)], g, peak, bw)
        out.append(g.assign(pred_ms=pred, error=pred / g["time_ms"].to_numpy() - 1))
    return pd.concat(out, ignore_index=True)

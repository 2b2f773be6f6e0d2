"""Detecting this machine's hardware: the host CPU (memory, derived FLOP/s, measured bandwidth)
and a CUDA/ROCm device mapped to its catalog entry (torch is imported inside ``detect_cuda`` only).
``pdplan.profiles.hardware`` re-exports ``detect_cpu``, ``detect_cuda`` and
``catalog_name_for_device``."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ProfileError
from pdplan.profiles.hardware import CATALOG, LINK_PRESETS, Hardware

log = logging.getLogger(__name__)


# --- cpu ----------------------------------------------------------------------------------------
def _cpu_memory_bytes() -> int:
    """Physical memory, capped by a cgroup v2 limit when one is set."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        text = Path("/proc/meminfo").read_text()
        match = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
        assert match, "/proc/meminfo has no MemTotal line"
        total = int(match.group(1)) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def _cpu_info() -> tuple[str, float, set[str]]:
    """Model name, clock (MHz) and feature flags from /proc/cpuinfo (defaults when absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown cpu", 2000.0, set()
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.MULTILINE)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    return (
        name.group(1).strip() if name else "unknown cpu",
        float(mhz.group(1)) if mhz else 2000.0,
        set(flags.group(1).split()) if flags else set(),
    )


def _fp32_flops_per_cycle(flags: set[str]) -> int:
    """Peak fp32 FLOPs per core per cycle: 2 FMA pipes × SIMD lanes × 2 (multiply + add).

    AVX-512: 16 lanes, AVX2+FMA: 8 lanes (Intel and AMD optimisation manuals: two 256-bit FMA
    units per core on Zen 2+/Skylake); no FMA: one SSE multiply and one add of 4 lanes.
    """
    if "avx512f" in flags:
        return 2 * 16 * 2
    if "fma" in flags and "avx2" in flags:
        return 2 * 8 * 2
    return 2 * 4


def _measure_copy_gbps(num_bytes: int = 64 << 20, repeats: int = 3) -> float:
    """Achieved DRAM bandwidth of a numpy copy (bytes read + written), best of ``repeats``."""
    import numpy as np

    src = np.ones(num_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def detect_cpu() -> Hardware:
    """This host as ``Hardware``: memory from sysconf/cgroup, peak FLOP/s *derived* from cores ×
    clock × SIMD FLOPs per cycle (fp32; CPUs have no faster bf16 path in PyTorch's default
    kernels), memory bandwidth *measured* (a 64 MiB numpy copy, ~50 ms). The link is the
    ``loopback`` preset: CPU workers exchange tensors through local sockets."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    model, mhz, flags = _cpu_info()
    tflops = cores * mhz * 1e6 * _fp32_flops_per_cycle(flags) / 1e12
    gbps = _measure_copy_gbps()
    loop = LINK_PRESETS["loopback"]
    log.debug(
        "cpu: %d cores of %s at %.0f MHz, %.2f TFLOP/s derived, %.1f GB/s measured",
        cores,
        model,
        mhz,
        tflops,
        gbps,
    )
    return Hardware(
        name="cpu",
        memory_bytes=_cpu_memory_bytes(),
        peak_bf16_tflops=tflops,
        mem_bandwidth_gbps=gbps,
        link_bandwidth_gbps=loop.bandwidth_gbps,
        link_latency_us=loop.latency_ms * 1000,
        description=f"{cores} cores of {model}",
        intra_node_link="pcie",
    )


# --- cuda ---------------------------------------------------------------------------------------
# Substrings of torch.cuda.get_device_name() → catalog name; first match wins, so the more
# specific names come first.
_CUDA_NAMES = (
    ("H100 PCIe", "h100-pcie"),
    ("H100", "h100-sxm"),
    ("H200", "h200"),
    ("H800", "h800"),
    ("H20", "h20"),
    ("GB200", "gb200"),
    ("B200", "b200"),
    ("RTX PRO 6000 Blackwell Server", "rtx-pro-6000-server"),
    ("RTX PRO 6000", "rtx-pro-6000"),
    ("A10G", "a10g"),
    ("L20", "l20"),
    ("A100-SXM4-40GB", "a100-40g"),
    ("A100-PCIE-40GB", "a100-40g"),
    ("A100", "a100-80g"),
    ("L40S", "l40s"),
    ("RTX 4090", "rtx-4090"),
    ("MI300X", "mi300x"),
    ("MI325X", "mi325x"),
)


def catalog_name_for_device(device_name: str) -> str | None:
    """The catalog name of a CUDA/ROCm device name (e.g. "NVIDIA H100 80GB HBM3" → h100-sxm),
    or None when it is not in the catalog."""
    for needle, name in _CUDA_NAMES:
        if needle.lower() in device_name.lower():
            return name
    return None


def detect_cuda(device: str = "cuda") -> dict[str, Any]:
    """The ``hardware`` section for a profile measured on ``device`` (``cuda`` or ``cuda:N``).

    Returns the catalog entry's numbers when the device is recognised (with the device's actual
    memory), else just the name ``cuda``; ``device`` holds the torch device name.

    Raises:
        ProfileError: torch is not installed, CUDA is unavailable, or the index does not exist.
    """
    try:
        import torch
    except ImportError:
        raise ProfileError(
            f"--device {device}: torch is not installed (pip install 'pdplan[torch]')"
        ) from None
    if not torch.cuda.is_available():
        raise ProfileError(
            f"--device {device}: no CUDA device is available "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ProfileError(f"--device {device}: no such device; {count} CUDA device(s) visible")
    props = torch.cuda.get_device_properties(index)
    catalog = catalog_name_for_device(props.name)
    info: dict[str, Any] = {"name": catalog or "cuda", "memory_bytes": int(props.total_memory)}
    if catalog:
        entry = replace(CATALOG[catalog], memory_bytes=int(props.total_memory))
        info = entry.to_dict()
    info["device"] = f"cuda:{index} {props.name}"
    return info

"""Hardware catalog: per-GPU memory, dense bf16 FLOP/s, memory bandwidth, intra-node link; KV links.

Every catalog number is the vendor's datasheet figure for one GPU, **dense** (NVIDIA and AMD quote
"with sparsity" figures at twice the dense rate; we halve those). Conventions:

- ``memory_bytes``: the datasheet capacity read as GiB (HBM and GDDR capacities are binary: five
  16 GiB stacks make the H100's "80GB"); the driver reserves a little (an H100 80GB HBM3 shows
  81,559 MiB in nvidia-smi, 0.4 % less), which the planner's memory-utilisation margin covers.
- ``mem_bandwidth_gbps``: peak DRAM bandwidth in GB/s (10⁹ bytes/s).
- ``link_bandwidth_gbps``: GPU-to-GPU bandwidth inside one node, GB/s **per direction** (NVLink
  figures are quoted bidirectional by NVIDIA, so 900 GB/s NVLink 4 is 450 GB/s each way).
- ``link_latency_us``: fixed cost of one small all-reduce on that link (see ``_NVLINK_LATENCY_US``).

``cpu`` is detected at run time: memory from ``os.sysconf`` (capped by the cgroup limit), peak
FLOP/s *derived* from the core count, clock and SIMD width, memory bandwidth *measured* with a
short numpy copy. ``detect_cuda`` maps a CUDA device name to its catalog entry (torch is imported
inside it only). ``link_preset`` gives the KV-transfer links a Plan's ``kv_transfer`` may name.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, ProfileError, choices_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or the host CPU) as the analytic model and the planner see it."""

    name: str
    memory_bytes: int
    peak_bf16_tflops: float
    mem_bandwidth_gbps: float
    link_bandwidth_gbps: float
    link_latency_us: float
    price_per_hour: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        for field in ("memory_bytes", "peak_bf16_tflops", "mem_bandwidth_gbps", "link_bandwidth_gbps"):
            value = getattr(self, field)
            if not value > 0:
                raise ConfigError(f"hardware {self.name!r}: {field}={value!r}; expected > 0")
        if self.link_latency_us < 0:
            raise ConfigError(
                f"hardware {self.name!r}: link_latency_us={self.link_latency_us!r}; expected ≥ 0"
            )

    def to_dict(self) -> dict[str, Any]:
        """The ``hardware`` section of ``profile.yaml`` (None fields omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


_GIB = 1 << 30

# Small all-reduce latency on NVLink, per all-reduce. Derived from gpt-fast's published
# tensor-parallel decode of Llama-2-7B at batch 1 on 8×A100-80GB NVLink (pytorch-labs/gpt-fast
# README): 104.9 tok/s at TP1 (1397 GB/s achieved) and 168.8 / 254.0 / 328.4 tok/s at TP2/4/8.
# Step time minus the weight-read time at the TP1 bandwidth, divided by 2 all-reduces × 32
# layers, leaves 17 / 24 / 29 µs per all-reduce. We use 20 µs for NVLink parts.
_NVLINK_LATENCY_US = 20.0
# PCIe-only parts (no NVSwitch; peer copies go over PCIe or are staged through host memory):
# assumed twice the NVLink figure. An assumption, not a measurement — override in a Plan if known.
_PCIE_LATENCY_US = 40.0
# PCI Express x16 per direction: Gen4 16 GT/s and Gen5 32 GT/s × 16 lanes × 128/130 encoding / 8
# bits = 31.5 and 63.0 GB/s (PCI-SIG base specifications 4.0 and 5.0).
_PCIE4_X16_GBPS = 31.5
_PCIE5_X16_GBPS = 63.0

CATALOG: dict[str, Hardware] = {
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 TFLOPS with sparsity → 989.4 dense;
    # 80 GB HBM3 at 3.35 TB/s; NVLink 900 GB/s (bidirectional) → 450 per direction.
    "h100-sxm": Hardware(
        "h100-sxm",
        80 * _GIB,
        989.4,
        3350.0,
        450.0,
        _NVLINK_LATENCY_US,
        description="NVIDIA H100 SXM5 80GB HBM3",
    ),
    # Same datasheet (PCIe): BF16 1,513 TFLOPS sparse → 756 dense; 80 GB HBM2e at 2.0 TB/s.
    # NVLink bridges pair only two cards, so TP beyond 2 runs over PCIe Gen5 x16.
    "h100-pcie": Hardware(
        "h100-pcie",
        80 * _GIB,
        756.0,
        2000.0,
        _PCIE5_X16_GBPS,
        _PCIE_LATENCY_US,
        description="NVIDIA H100 PCIe 80GB HBM2e",
    ),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 TFLOPS sparse → 989.4 dense;
    # 141 GB HBM3e at 4.8 TB/s; NVLink 900 GB/s → 450 per direction.
    "h200": Hardware(
        "h200",
        141 * _GIB,
        989.4,
        4800.0,
        450.0,
        _NVLINK_LATENCY_US,
        description="NVIDIA H200 SXM 141GB HBM3e",
    ),
    # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): BF16 312 TFLOPS dense (624 sparse);
    # HBM2e 2,039 GB/s; NVLink 600 GB/s → 300 per direction.
    "a100-80g": Hardware(
        "a100-80g", 80 * _GIB, 312.0, 2039.0, 300.0, _NVLINK_LATENCY_US, description="NVIDIA A100 SXM4 80GB"
    ),
    # Same datasheet (40GB SXM): BF16 312 dense; HBM2 1,555 GB/s; NVLink 600 GB/s.
    "a100-40g": Hardware(
        "a100-40g", 40 * _GIB, 312.0, 1555.0, 300.0, _NVLINK_LATENCY_US, description="NVIDIA A100 SXM4 40GB"
    ),
    # NVIDIA L40S datasheet: BF16 Tensor 733 TFLOPS with sparsity → 362.05 dense; 48 GB GDDR6
    # with ECC at 864 GB/s; no NVLink, PCIe Gen4 x16.
    "l40s": Hardware(
        "l40s",
        48 * _GIB,
        362.05,
        864.0,
        _PCIE4_X16_GBPS,
        _PCIE_LATENCY_US,
        description="NVIDIA L40S 48GB GDDR6",
    ),
    # NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090 column): peak BF16 Tensor
    # TFLOPS with FP32 accumulate 165.2 dense (330.4 sparse); 24 GB GDDR6X at 1,008 GB/s;
    # no NVLink, PCIe Gen4 x16.
    "rtx-4090": Hardware(
        "rtx-4090",
        24 * _GIB,
        165.2,
        1008.0,
        _PCIE4_X16_GBPS,
        _PCIE_LATENCY_US,
        description="NVIDIA GeForce RTX 4090 24GB GDDR6X",
    ),
    # NVIDIA HGX B200 datasheet (8 GPUs, 1000 W parts): FP16/BF16 36 PFLOPS with sparsity →
    # 2.25 PFLOPS dense per GPU; 1,440 GB HBM3e at 64 TB/s → 180 GB and 8 TB/s per GPU;
    # NVLink 5 1.8 TB/s (bidirectional) → 900 per direction.
    "b200": Hardware(
        "b200",
        180 * _GIB,
        2250.0,
        8000.0,
        900.0,
        _NVLINK_LATENCY_US,
        description="NVIDIA B200 (HGX) 180GB HBM3e",
    ),
    # AMD Instinct MI300X datasheet: peak BF16 2,614.9 TFLOPS with sparsity → 1,307.4 dense;
    # 192 GB HBM3 at 5.3 TB/s; Infinity Fabric 7 links × 128 GB/s bidirectional = 896 GB/s
    # aggregate peer bandwidth → 448 per direction (a ring all-reduce over all 7 links, as RCCL
    # does with several channels). All-reduce latency: the NVLink figure, for want of a
    # published MI300X small-message measurement.
    "mi300x": Hardware(
        "mi300x",
        192 * _GIB,
        1307.4,
        5300.0,
        448.0,
        _NVLINK_LATENCY_US,
        description="AMD Instinct MI300X 192GB HBM3",
    ),
}


@dataclass(frozen=True)
class LinkPreset:
    """A KV-transfer link: what a Plan's ``kv_transfer: {link: <label>}`` fills in."""

    label: str
    bandwidth_gbps: float
    latency_ms: float
    source: str


LINK_PRESETS: dict[str, LinkPreset] = {
    p.label: p
    for p in (
        LinkPreset(
            "nvlink",
            450.0,
            0.01,
            "NVLink 4 (H100/H200 datasheets): 900 GB/s bidirectional = 450 per direction; "
            "latency ≈ one CUDA peer-copy launch (~10 µs)",
        ),
        LinkPreset(
            "infiniband",
            50.0,
            0.01,
            "InfiniBand NDR 400 Gb/s (ConnectX-7, one NIC per GPU as in DGX H100) = 50 GB/s; "
            "RDMA write ≈ a few µs, 10 µs with transfer-engine bookkeeping",
        ),
        LinkPreset(
            "roce",
            25.0,
            0.02,
            "RoCE v2 over 200 GbE = 25 GB/s; latency assumed 2× InfiniBand (Ethernet "
            "switching, congestion control)",
        ),
        LinkPreset(
            "pcie",
            _PCIE5_X16_GBPS,
            0.01,
            "PCIe Gen5 x16 per direction: 32 GT/s × 16 × 128/130 / 8 = 63 GB/s "
            "(PCI-SIG 5.0); latency ≈ one DMA launch",
        ),
        LinkPreset(
            "tcp",
            3.125,
            0.05,
            "TCP over 25 GbE (a common cloud VM NIC) = 3.125 GB/s; ~50 µs one way through "
            "the kernel network stack",
        ),
        LinkPreset(
            "loopback",
            1.0,
            0.01,
            "TCP over 127.0.0.1 between Python processes, measured on the 2-core dev VM "
            "(sendall of 64 MiB buffers: 0.95-1.33 GB/s; 1-byte ping-pong: ~10 µs one way)",
        ),
    )
}


def hardware_names() -> list[str]:
    """Catalog names plus ``cpu`` (detected), sorted."""
    return sorted([*CATALOG, "cpu"])


def get_hardware(name: str) -> Hardware:
    """The catalog entry ``name``; ``cpu`` is detected on this machine.

    Raises:
        ConfigError: unknown name (the valid ones are listed).
    """
    if name == "cpu":
        return detect_cpu()
    if name not in CATALOG:
        raise choices_error("hardware", name, hardware_names())
    return CATALOG[name]


def link_preset(label: str) -> LinkPreset:
    """The KV link preset ``label`` (nvlink, infiniband, roce, pcie, tcp, loopback).

    Raises:
        ConfigError: unknown label (the valid ones are listed).
    """
    if label not in LINK_PRESETS:
        raise choices_error("kv_transfer link", label, LINK_PRESETS)
    return LINK_PRESETS[label]


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
    )


# --- cuda ---------------------------------------------------------------------------------------
# Substrings of torch.cuda.get_device_name() → catalog name; first match wins, so the more
# specific names come first.
_CUDA_NAMES = (
    ("H100 PCIe", "h100-pcie"),
    ("H100", "h100-sxm"),
    ("H200", "h200"),
    ("B200", "b200"),
    ("A100-SXM4-40GB", "a100-40g"),
    ("A100-PCIE-40GB", "a100-40g"),
    ("A100", "a100-80g"),
    ("L40S", "l40s"),
    ("RTX 4090", "rtx-4090"),
    ("MI300X", "mi300x"),
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

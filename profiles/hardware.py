"""Hardware catalog: per-GPU memory, dense bf16/fp8 FLOP/s, memory bandwidth, links; KV links.

Every catalog number is the vendor's datasheet figure for one GPU, **dense** (NVIDIA and AMD quote
"with sparsity" figures at twice the dense rate; we halve those). Conventions:

- ``memory_bytes``: the datasheet capacity read as GiB (HBM and GDDR capacities are binary: five
  16 GiB stacks make the H100's "80GB"); the driver reserves a little (an H100 80GB HBM3 shows
  81,559 MiB in nvidia-smi, 0.4 % less), which the planner's memory-utilisation margin covers.
- ``peak_bf16_tflops`` / ``peak_fp8_tflops``: dense tensor-core peaks (``None`` for fp8: no fp8
  tensor cores, so fp8 weights are upcast and computed at the bf16 rate, weight-only).
- ``mem_bandwidth_gbps``: peak DRAM bandwidth in GB/s (10⁹ bytes/s).
- ``link_bandwidth_gbps``: GPU-to-GPU bandwidth inside one node, GB/s **per direction** (NVLink
  figures are quoted bidirectional by NVIDIA, so 900 GB/s NVLink 4 is 450 GB/s each way);
  ``intra_node_link`` says whether that is an NVLink/Infinity Fabric switch (``nvlink``) or PCIe.
- ``link_latency_us``: fixed cost of one small all-reduce on that link (see ``_NVLINK_LATENCY_US``).
- ``inter_node_bandwidth_gbps``: the network between nodes, GB/s per GPU per direction (one NIC
  per GPU, as DGX/HGX reference designs have); ``gpus_per_node``: GPUs that share the intra-node
  link (8 in an HGX board, 72 in a GB200 NVL72 rack).
- ``kernel_family``: whose measured kernel efficiencies the analytic model borrows
  (``pdplan.profiles.gemm``: ``a100`` or ``h100``).

``--hardware FILE.yaml`` takes the same fields (:mod:`pdplan.profiles.hardware_file`); ``cpu`` is
detected at run time (:mod:`pdplan.profiles.detect`). ``link_preset`` gives the KV-transfer links a
Plan's ``kv_transfer`` may name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error

INTRA_NODE_LINKS = ("nvlink", "pcie")
KERNEL_FAMILIES = ("a100", "h100", "ada")


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
    peak_fp8_tflops: float | None = None
    inter_node_bandwidth_gbps: float | None = None
    gpus_per_node: int = 8
    intra_node_link: str = "nvlink"
    kernel_family: str = "a100"
    source: str = ""

    def __post_init__(self) -> None:
        where = f"hardware {self.name!r}"
        for field in ("memory_bytes", "peak_bf16_tflops", "mem_bandwidth_gbps", "link_bandwidth_gbps"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{where}: {field}={value!r}; expected > 0")
        for field in ("peak_fp8_tflops", "inter_node_bandwidth_gbps", "price_per_hour"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigError(f"{where}: {field}={value!r}; expected > 0 (or leave it out)")
        if self.link_latency_us < 0:
            raise ConfigError(f"{where}: link_latency_us={self.link_latency_us!r}; expected ≥ 0")
        if (
            isinstance(self.gpus_per_node, bool)
            or not isinstance(self.gpus_per_node, int)
            or self.gpus_per_node < 1
        ):
            raise ConfigError(f"{where}: gpus_per_node={self.gpus_per_node!r}; expected an integer ≥ 1")
        if self.intra_node_link not in INTRA_NODE_LINKS:
            raise choices_error(f"{where}: intra_node_link", self.intra_node_link, INTRA_NODE_LINKS)
        if self.kernel_family not in KERNEL_FAMILIES:
            raise choices_error(f"{where}: kernel_family", self.kernel_family, KERNEL_FAMILIES)

    def peak_tflops(self, dtype: str) -> float:
        """Dense tensor peak for weights in ``dtype``: fp8 (W8A8) runs at the fp8 peak where the
        part has one; every other dtype (int4 is weight-only) computes at the bf16 rate."""
        if dtype == "fp8" and self.peak_fp8_tflops is not None:
            return self.peak_fp8_tflops
        return self.peak_bf16_tflops

    def to_dict(self) -> dict[str, Any]:
        """The ``hardware`` section of ``profile.yaml`` (None and empty fields, and the datasheet
        ``source``, omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != "" and k != "source"}


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

#: Inter-node network per GPU: one 400 Gb/s NIC per GPU (ConnectX-7 NDR InfiniBand in DGX H100/H200
#: /B200 and HGX reference designs) = 50 GB/s per direction. DeepSeek-V3's report (§3.2.2) states
#: the same 50 GB/s IB per H800 it trained on. PCIe cards: one 200 Gb/s NIC (25 GB/s), an assumption.
_IB_NDR_GBPS = 50.0
_NIC_200G_GBPS = 25.0


def _gpu(name: str, memory_gib: float, bf16: float, fp8: float | None, dram: float, **kw: Any) -> Hardware:
    """A catalog entry; NVLink parts unless ``intra_node_link="pcie"`` (PCIe latency then)."""
    pcie = kw.get("intra_node_link") == "pcie"
    kw.setdefault("link_latency_us", _PCIE_LATENCY_US if pcie else _NVLINK_LATENCY_US)
    kw.setdefault("inter_node_bandwidth_gbps", _NIC_200G_GBPS if pcie else _IB_NDR_GBPS)
    return Hardware(
        name=name,
        memory_bytes=int(memory_gib * _GIB),
        peak_bf16_tflops=bf16,
        peak_fp8_tflops=fp8,
        mem_bandwidth_gbps=dram,
        **kw,
    )


CATALOG: dict[str, Hardware] = {
    h.name: h
    for h in (
        _gpu(
            "h100-sxm",
            80,
            989.4,
            1978.9,
            3350.0,
            link_bandwidth_gbps=450.0,
            kernel_family="h100",
            description="NVIDIA H100 SXM5 80GB HBM3",
            source="NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 1,979 / FP8 3,958 TFLOPS with "
            "sparsity (halved); 80 GB HBM3 at 3.35 TB/s; NVLink 900 GB/s bidirectional",
        ),
        _gpu(
            "h100-pcie",
            80,
            756.0,
            1513.0,
            2000.0,
            link_bandwidth_gbps=_PCIE5_X16_GBPS,
            intra_node_link="pcie",
            kernel_family="h100",
            description="NVIDIA H100 PCIe 80GB HBM2e",
            source="NVIDIA H100 datasheet (PCIe): BF16 1,513 / FP8 3,026 TFLOPS sparse (halved); 80 GB "
            "HBM2e at 2.0 TB/s; NVLink bridges pair two cards only, so TP > 2 runs over PCIe Gen5 x16",
        ),
        _gpu(
            "h200",
            141,
            989.4,
            1978.9,
            4800.0,
            link_bandwidth_gbps=450.0,
            kernel_family="h100",
            description="NVIDIA H200 SXM 141GB HBM3e",
            source="NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 1,979 / FP8 3,958 TFLOPS sparse "
            "(halved); 141 GB HBM3e at 4.8 TB/s; NVLink 900 GB/s bidirectional",
        ),
        _gpu(
            "h800",
            80,
            989.4,
            1978.9,
            3350.0,
            link_bandwidth_gbps=200.0,
            kernel_family="h100",
            description="NVIDIA H800 SXM5 80GB HBM3 (NVLink 400 GB/s)",
            source="NVIDIA H800 Tensor Core GPU datasheet (SXM): H100 SXM compute (BF16 1,979 / FP8 "
            "3,958 TFLOPS sparse, halved), 80 GB HBM3 at 3.35 TB/s, NVLink 400 GB/s bidirectional; "
            "DeepSeek-V3 report §3.2.2: 160 GB/s NVLink achieved, 50 GB/s InfiniBand per GPU",
        ),
        _gpu(
            "h20",
            96,
            148.0,
            296.0,
            4000.0,
            link_bandwidth_gbps=450.0,
            kernel_family="h100",
            description="NVIDIA H20 96GB HBM3 (HGX)",
            source="NVIDIA HGX H20 product brief (as reported; NVIDIA publishes no public datasheet): "
            "FP16/BF16 148 TFLOPS, FP8 296 TFLOPS dense, 96 GB HBM3 at 4.0 TB/s, NVLink 900 GB/s",
        ),
        _gpu(
            "a100-80g",
            80,
            312.0,
            None,
            2039.0,
            link_bandwidth_gbps=300.0,
            description="NVIDIA A100 SXM4 80GB",
            source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): BF16 312 TFLOPS dense (624 "
            "sparse), no FP8; HBM2e 2,039 GB/s; NVLink 600 GB/s bidirectional; DGX A100: 200 Gb/s HDR "
            "InfiniBand per GPU",
            inter_node_bandwidth_gbps=_NIC_200G_GBPS,
        ),
        _gpu(
            "a100-40g",
            40,
            312.0,
            None,
            1555.0,
            link_bandwidth_gbps=300.0,
            description="NVIDIA A100 SXM4 40GB",
            source="NVIDIA A100 datasheet (40GB SXM): BF16 312 dense; HBM2 1,555 GB/s; NVLink 600 GB/s",
            inter_node_bandwidth_gbps=_NIC_200G_GBPS,
        ),
        _gpu(
            "a10g",
            24,
            70.0,
            None,
            600.0,
            link_bandwidth_gbps=_PCIE4_X16_GBPS,
            intra_node_link="pcie",
            description="NVIDIA A10G 24GB GDDR6 (AWS G5)",
            source="AWS publishes no A10G datasheet: 24 GB GDDR6 at 600 GB/s as the A10 (NVIDIA A10 "
            "datasheet); tensor BF16 ~70 TFLOPS dense vs the A10's 125 (Baseten, 'NVIDIA A10 vs A10G "
            "for ML model inference'); PCIe Gen4 x16, no NVLink",
        ),
        _gpu(
            "l40s",
            48,
            362.05,
            733.0,
            864.0,
            link_bandwidth_gbps=_PCIE4_X16_GBPS,
            intra_node_link="pcie",
            description="NVIDIA L40S 48GB GDDR6",
            source="NVIDIA L40S datasheet: BF16 733 / FP8 1,466 TFLOPS with sparsity (halved); 48 GB "
            "GDDR6 with ECC at 864 GB/s; no NVLink, PCIe Gen4 x16",
        ),
        _gpu(
            "l20",
            48,
            119.5,
            239.0,
            864.0,
            link_bandwidth_gbps=_PCIE4_X16_GBPS,
            intra_node_link="pcie",
            kernel_family="ada",
            description="NVIDIA L20 48GB GDDR6",
            source="NVIDIA L20 (China market, AD102) product brief as reported: FP16/BF16 119.5, FP8 "
            "239 TFLOPS dense (about a third of the L40S), 48 GB GDDR6 at 864 GB/s, PCIe Gen4 x16",
        ),
        _gpu(
            "rtx-4090",
            24,
            165.2,
            330.3,
            1008.0,
            link_bandwidth_gbps=_PCIE4_X16_GBPS,
            intra_node_link="pcie",
            kernel_family="ada",
            description="NVIDIA GeForce RTX 4090 24GB GDDR6X",
            source="NVIDIA Ada Lovelace architecture whitepaper (RTX 4090): BF16 165.2 and FP8 330.3 "
            "TFLOPS dense with FP32 accumulate; 24 GB GDDR6X at 1,008 GB/s; PCIe Gen4 x16",
        ),
        _gpu(
            "rtx-pro-6000",
            96,
            503.8,
            1007.6,
            1792.0,
            link_bandwidth_gbps=_PCIE5_X16_GBPS,
            intra_node_link="pcie",
            description="NVIDIA RTX PRO 6000 Blackwell Workstation Edition 96GB GDDR7",
            source="NVIDIA RTX PRO 6000 Blackwell datasheet: 4,000 AI TOPS (FP4, sparse) → FP8 "
            "1,007.6 and BF16 503.8 TFLOPS dense; 96 GB GDDR7 ECC, 512-bit at 28 Gbps = 1,792 GB/s; "
            "PCIe Gen5 x16, no NVLink; 600 W",
        ),
        _gpu(
            "rtx-pro-6000-server",
            96,
            503.8,
            1007.6,
            1792.0,
            link_bandwidth_gbps=_PCIE5_X16_GBPS,
            intra_node_link="pcie",
            description="NVIDIA RTX PRO 6000 Blackwell Server Edition 96GB GDDR7",
            source="NVIDIA RTX PRO 6000 Blackwell Server Edition datasheet: the Workstation Edition's "
            "GB202 (188 SMs), 96 GB GDDR7 at 1,792 GB/s, PCIe Gen5 x16, passive, up to 600 W",
        ),
        _gpu(
            "b200",
            180,
            2250.0,
            4500.0,
            8000.0,
            link_bandwidth_gbps=900.0,
            kernel_family="h100",
            description="NVIDIA B200 (HGX) 180GB HBM3e",
            source="NVIDIA HGX B200 datasheet (8 GPUs): FP16/BF16 36 and FP8 72 PFLOPS with sparsity "
            "→ 2.25 / 4.5 PFLOPS dense per GPU; 1,440 GB HBM3e at 64 TB/s; NVLink 5 1.8 TB/s bidirectional",
        ),
        _gpu(
            "gb200",
            186,
            2500.0,
            5000.0,
            8000.0,
            link_bandwidth_gbps=900.0,
            kernel_family="h100",
            gpus_per_node=72,
            description="NVIDIA GB200 NVL72 (per Blackwell GPU) 186GB HBM3e",
            source="NVIDIA GB200 NVL72 datasheet (72 GPUs): FP16/BF16 360 and FP8 720 PFLOPS with "
            "sparsity → 2.5 / 5 PFLOPS dense per GPU; 13.4 TB HBM3e at 576 TB/s → 186 GB and 8 TB/s "
            "per GPU; one 72-GPU NVLink 5 domain at 1.8 TB/s bidirectional per GPU",
        ),
        _gpu(
            "mi300x",
            192,
            1307.4,
            2614.9,
            5300.0,
            link_bandwidth_gbps=448.0,
            kernel_family="h100",
            description="AMD Instinct MI300X 192GB HBM3",
            source="AMD Instinct MI300X datasheet: BF16 2,614.9 / FP8 5,229.8 TFLOPS with sparsity "
            "(halved); 192 GB HBM3 at 5.3 TB/s; Infinity Fabric 7 × 128 GB/s bidirectional = 896 "
            "aggregate → 448 per direction (RCCL rings over all 7 links); all-reduce latency: the "
            "NVLink figure, for want of a published small-message measurement",
        ),
        _gpu(
            "mi325x",
            256,
            1307.4,
            2614.9,
            6000.0,
            link_bandwidth_gbps=448.0,
            kernel_family="h100",
            description="AMD Instinct MI325X 256GB HBM3E",
            source="AMD Instinct MI325X datasheet: MI300X compute (BF16 2,614.9 / FP8 5,229.8 TFLOPS "
            "sparse, halved); 256 GB HBM3E at 6.0 TB/s; Infinity Fabric as the MI300X",
        ),
    )
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


def is_hardware_file(name: str) -> bool:
    """Whether a ``--hardware`` value names a YAML file rather than a catalog entry."""
    return name.endswith((".yaml", ".yml")) or (
        name not in CATALOG and name != "cpu" and Path(name).is_file()
    )


def get_hardware(name: str) -> Hardware:
    """The catalog entry ``name``, a hardware YAML file (``--hardware my-gpu.yaml``, see
    :mod:`pdplan.profiles.hardware_file`), or ``cpu`` detected on this machine.

    Raises:
        ConfigError: unknown name (the valid ones are listed), or a bad hardware file (the field,
            the value and what was expected).
    """
    if name == "cpu":
        return detect_cpu()
    if is_hardware_file(name):
        from pdplan.profiles.hardware_file import load_hardware_file

        return load_hardware_file(Path(name))
    if name not in CATALOG:
        err = choices_error("hardware", name, hardware_names())
        raise ConfigError(f"{err} (or a hardware .yaml file: see `pdplan hardware show h100-sxm`)")
    return CATALOG[name]


def detect_cpu() -> Hardware:
    """This host as ``Hardware`` (:func:`pdplan.profiles.detect.detect_cpu`)."""
    from pdplan.profiles.detect import detect_cpu as detect

    return detect()


def detect_cuda(device: str = "cuda") -> dict[str, Any]:
    """The ``hardware`` section of a profile measured on ``device``
    (:func:`pdplan.profiles.detect.detect_cuda`)."""
    from pdplan.profiles.detect import detect_cuda as detect

    return detect(device)


def catalog_name_for_device(device_name: str) -> str | None:
    """The catalog name of a CUDA/ROCm device name, or None
    (:func:`pdplan.profiles.detect.catalog_name_for_device`)."""
    from pdplan.profiles.detect import catalog_name_for_device as lookup

    return lookup(device_name)


def link_preset(label: str) -> LinkPreset:
    """The KV link preset ``label`` (nvlink, infiniband, roce, pcie, tcp, loopback).

    Raises:
        ConfigError: unknown label (the valid ones are listed).
    """
    if label not in LINK_PRESETS:
        raise choices_error("kv_transfer link", label, LINK_PRESETS)
    return LINK_PRESETS[label]

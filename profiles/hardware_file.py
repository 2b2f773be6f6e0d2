"""``--hardware FILE.yaml``: a GPU the catalog lacks, described as data.

Anywhere a catalog name is accepted, a YAML file with the catalog's fields is too::

    name: h800-cluster-a        # what plans and reports call it
    memory_gib: 80              # or memory_bytes
    peak_bf16_tflops: 989.4     # dense (half the "with sparsity" figure)
    peak_fp8_tflops: 1978.9     # optional: no fp8 tensor cores when absent
    mem_bandwidth_gbps: 3350    # DRAM, GB/s
    link_bandwidth_gbps: 200    # inside a node, GB/s per direction
    intra_node_link: nvlink     # nvlink (switched) | pcie
    link_latency_us: 20         # optional: 20 on nvlink, 40 on pcie
    inter_node_bandwidth_gbps: 50   # optional: between nodes, GB/s per GPU per direction
    gpus_per_node: 8            # optional
    kernel_family: h100         # optional: whose measured kernel efficiencies to borrow (a100 | h100 | ada)
    price_per_hour: 2.1         # optional, per GPU
    description: ...            # optional
    source: ...                 # optional: where the numbers come from

Strict: unknown keys are an error that lists the valid ones; every number is checked for type and
range (``Hardware.__post_init__`` and the bounds below), and the error names the file and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.hardware import _NVLINK_LATENCY_US, _PCIE_LATENCY_US, Hardware
from pdplan.profiles.validate import integer, load_yaml, mapping, number

_GIB = 1 << 30
REQUIRED = ("name", "peak_bf16_tflops", "mem_bandwidth_gbps", "link_bandwidth_gbps")
OPTIONAL = (
    "memory_gib",
    "memory_bytes",
    "peak_fp8_tflops",
    "intra_node_link",
    "link_latency_us",
    "inter_node_bandwidth_gbps",
    "gpus_per_node",
    "kernel_family",
    "price_per_hour",
    "description",
    "source",
)
#: Physical bounds (well beyond any part announced by 2026): GiB, TFLOP/s, GB/s, µs, GPUs, $/h.
_BOUNDS = {
    "memory_gib": 16384.0,
    "peak_bf16_tflops": 1e6,
    "peak_fp8_tflops": 1e6,
    "mem_bandwidth_gbps": 1e6,
    "link_bandwidth_gbps": 1e5,
    "inter_node_bandwidth_gbps": 1e5,
    "link_latency_us": 1e6,
    "price_per_hour": 1e5,
}


def load_hardware_file(path: Path) -> Hardware:
    """The ``Hardware`` a YAML file describes (see the module docstring).

    Raises:
        ConfigError: unreadable file, unknown or missing keys, a value of the wrong type or out of
            range (named with the file and the field).
    """
    where = f"hardware file {str(path)!r}"
    data = dict(mapping(where, load_yaml(path, "hardware file")))
    unknown = sorted(set(data) - {*REQUIRED, *OPTIONAL})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {sorted({*REQUIRED, *OPTIONAL})}")
    missing = [k for k in REQUIRED if k not in data]
    if ("memory_gib" in data) == ("memory_bytes" in data):
        missing.append("memory_gib (or memory_bytes, not both)")
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    name = data["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ConfigError(f"{where}: name={name!r}; expected a non-empty string of at most 100 characters")
    values: dict[str, Any] = {}
    for key, high in _BOUNDS.items():
        if data.get(key) is not None:
            values[key] = number(f"{where}: {key}", data[key], low=0, low_open=True, high=high)
    if "memory_bytes" in data:
        memory = integer(f"{where}: memory_bytes", data["memory_bytes"], low=1, high=16384 * _GIB)
    else:
        memory = int(values.pop("memory_gib") * _GIB)
    link = data.get("intra_node_link", "nvlink")
    kw: dict[str, Any] = {
        "intra_node_link": link,
        "link_latency_us": values.pop(
            "link_latency_us", _PCIE_LATENCY_US if link == "pcie" else _NVLINK_LATENCY_US
        ),
        "gpus_per_node": integer(
            f"{where}: gpus_per_node", data.get("gpus_per_node", 8), low=1, high=1 << 16
        ),
        "kernel_family": data.get("kernel_family", "h100"),
    }
    for key in ("description", "source"):
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"{where}: {key}={data[key]!r}; expected text")
            kw[key] = data[key]
    try:
        return Hardware(name=name, memory_bytes=memory, **values, **kw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None

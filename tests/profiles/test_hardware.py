"""Hardware catalog: names, datasheet sanity, cpu detection, CUDA name mapping, KV link presets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.hardware import (
    CATALOG,
    LINK_PRESETS,
    Hardware,
    catalog_name_for_device,
    get_hardware,
    hardware_names,
    link_preset,
)

GPUS = ["h100-sxm", "h100-pcie", "h200", "a100-80g", "a100-40g", "l40s", "rtx-4090", "b200", "mi300x"]
#: Added for the GPUs SGLang/vLLM users run (issue 13); H20 and L20 are compute-capped parts, so
#: the ridge-point check of the first list does not apply to them.
NEW_GPUS = ["h800", "h20", "l20", "rtx-pro-6000", "rtx-pro-6000-server", "a10g", "gb200", "mi325x"]


def test_names_cover_the_catalog_and_cpu() -> None:
    assert hardware_names() == sorted([*GPUS, *NEW_GPUS, "cpu"])
    assert sorted(CATALOG) == sorted(GPUS + NEW_GPUS)
    for name in GPUS + NEW_GPUS:
        hw = CATALOG[name]
        assert hw.source and hw.description, name  # every number cites its datasheet
        if hw.peak_fp8_tflops is not None:
            assert hw.peak_fp8_tflops == pytest.approx(2 * hw.peak_bf16_tflops, rel=0.02), name


def test_unknown_name_lists_every_valid_one() -> None:
    with pytest.raises(ConfigError) as err:
        get_hardware("h300")
    message = str(err.value)
    assert "'h300'" in message
    for name in hardware_names():
        assert name in message


def test_h100_matches_its_datasheet() -> None:
    h100 = get_hardware("h100-sxm")
    assert h100.peak_bf16_tflops == 989.4  # 1,979 "with sparsity" halved
    assert h100.mem_bandwidth_gbps == 3350.0
    assert h100.memory_bytes == 80 * 2**30
    assert h100.link_bandwidth_gbps == 450.0  # 900 GB/s NVLink, per direction


@pytest.mark.parametrize("name", GPUS)
def test_catalog_numbers_are_dense_and_in_consistent_units(name: str) -> None:
    hw = CATALOG[name]
    # FLOP per byte at the ridge point: dense bf16 GPUs of 2020-2025 sit between ~150 and ~420.
    # A sparsity figure, or TB/s typed as GB/s, lands far outside.
    ridge = hw.peak_bf16_tflops * 1e12 / (hw.mem_bandwidth_gbps * 1e9)
    assert 100 < ridge < 450, ridge
    assert 16 * 2**30 <= hw.memory_bytes <= 192 * 2**30
    assert hw.link_bandwidth_gbps < hw.mem_bandwidth_gbps
    assert 0 < hw.link_latency_us < 1000
    assert hw.to_dict()["name"] == name


def test_invalid_hardware_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match="mem_bandwidth_gbps=0"):
        Hardware("x", 1 << 30, 100.0, 0.0, 10.0, 1.0)
    with pytest.raises(ConfigError, match="link_latency_us"):
        Hardware("x", 1 << 30, 100.0, 10.0, 10.0, -1.0)


def test_cpu_is_detected_from_this_machine() -> None:
    cpu = get_hardware("cpu")
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE).group(1))
    assert 0 < cpu.memory_bytes <= total_kb * 1024 + 4096
    assert cpu.name == "cpu"
    assert 0.001 < cpu.peak_bf16_tflops < 100  # cores × GHz × SIMD FLOPs/cycle
    assert 0.1 < cpu.mem_bandwidth_gbps < 2000  # measured copy
    assert cpu.link_bandwidth_gbps == LINK_PRESETS["loopback"].bandwidth_gbps


@pytest.mark.parametrize(
    ("device_name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80g"),
        ("NVIDIA A100-SXM4-40GB", "a100-40g"),
        ("NVIDIA A100 80GB PCIe", "a100-80g"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA B200", "b200"),
        ("AMD Instinct MI300X", "mi300x"),
        ("NVIDIA H800", "h800"),
        ("NVIDIA H20", "h20"),
        ("NVIDIA GB200", "gb200"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtx-pro-6000-server"),
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "rtx-pro-6000"),
        ("NVIDIA A10G", "a10g"),
        ("AMD Instinct MI325X", "mi325x"),
        ("Tesla T4", None),
    ],
)
def test_cuda_device_names_map_to_catalog_entries(device_name: str, expected: str | None) -> None:
    assert catalog_name_for_device(device_name) == expected


def test_detect_cuda_without_a_gpu_is_a_profile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from pdplan.profiles.hardware import detect_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProfileError, match="--device cuda: no CUDA device is available"):
        detect_cuda("cuda")


def test_link_presets() -> None:
    assert link_preset("infiniband").bandwidth_gbps == 50.0  # 400 Gb/s NDR
    assert link_preset("nvlink").bandwidth_gbps == CATALOG["h100-sxm"].link_bandwidth_gbps
    assert sorted(LINK_PRESETS) == ["infiniband", "loopback", "nvlink", "pcie", "roce", "tcp"]
    for preset in LINK_PRESETS.values():
        assert preset.bandwidth_gbps > 0 and preset.latency_ms >= 0 and preset.source
    with pytest.raises(ConfigError, match="unknown kv_transfer link 'ethernet'; valid: infiniband"):
        link_preset("ethernet")

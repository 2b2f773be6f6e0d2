"""``--hardware FILE.yaml``: a GPU as data, validated field by field, usable wherever a name is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdplan.profiles.analytic import analytic_profile
from pdplan.profiles.errors import ConfigError
from pdplan.profiles.hardware import CATALOG, get_hardware
from pdplan.profiles.model_spec import load_model_spec

H800_LIKE = {
    "name": "my-h800",
    "memory_gib": 80,
    "peak_bf16_tflops": 989.4,
    "peak_fp8_tflops": 1978.9,
    "mem_bandwidth_gbps": 3350,
    "link_bandwidth_gbps": 200,
    "inter_node_bandwidth_gbps": 50,
    "kernel_family": "h100",
    "price_per_hour": 2.5,
}


def _write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_file_with_the_catalog_numbers_prices_like_the_catalog_entry(tmp_path: Path) -> None:
    hw = get_hardware(_write(tmp_path, H800_LIKE))
    assert hw.name == "my-h800" and hw.memory_bytes == 80 << 30 and hw.link_latency_us == 20.0
    spec = load_model_spec("qwen3-8b")
    mine = analytic_profile(spec, hw, tp=2)
    catalog = analytic_profile(spec, CATALOG["h800"], tp=2)
    assert mine.hardware["name"] == "my-h800"
    assert mine.decode["latency_ms"].tolist() == catalog.decode["latency_ms"].tolist()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peak_bf16_tflops": 0}, "peak_bf16_tflops=0"),
        ({"mem_bandwidth_gbps": "fast"}, "mem_bandwidth_gbps"),
        ({"gpus": 8}, r"unknown keys \['gpus'\]"),
        ({"memory_bytes": 1 << 30}, "memory_gib \\(or memory_bytes, not both\\)"),
        ({"intra_node_link": "infinity"}, "intra_node_link 'infinity'"),
        ({"kernel_family": "tpu"}, "kernel_family 'tpu'"),
        ({"gpus_per_node": 0}, "gpus_per_node"),
        ({"peak_fp8_tflops": -1}, "peak_fp8_tflops"),
    ],
)
def test_every_field_is_validated_and_named(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_hardware(_write(tmp_path, {**H800_LIKE, **change}))


def test_a_missing_field_and_a_missing_file_are_named(tmp_path: Path) -> None:
    data = {k: v for k, v in H800_LIKE.items() if k != "mem_bandwidth_gbps"}
    with pytest.raises(ConfigError, match="missing mem_bandwidth_gbps"):
        get_hardware(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="no such file"):
        get_hardware(str(tmp_path / "absent.yaml"))


def test_fp8_peak_applies_to_fp8_weights_only() -> None:
    h100, a100 = CATALOG["h100-sxm"], CATALOG["a100-80g"]
    assert h100.peak_tflops("fp8") == 1978.9 and h100.peak_tflops("int4") == 989.4
    assert a100.peak_tflops("fp8") == 312.0  # no fp8 tensor cores: weight-only, bf16 math


def test_a_hardware_file_states_its_own_price(tmp_path: Path) -> None:
    from pdplan.planner.pricing import parse_prices

    path = _write(tmp_path, H800_LIKE)
    # no price on the command line for this type: the file's price_per_hour is used
    assert parse_prices("h100-sxm=3").of(path) == 2.5
    unpriced = tmp_path / "unpriced"
    unpriced.mkdir()
    bare = _write(unpriced, {k: v for k, v in H800_LIKE.items() if k != "price_per_hour"})
    with pytest.raises(ConfigError, match="no price for"):
        parse_prices("h100-sxm=3").of(bare)

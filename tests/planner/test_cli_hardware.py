"""`pdplan hardware list|show` and `--hardware FILE.yaml` end to end: a GPU the catalog lacks,
described as data, profiled analytically and searched; a bad file is one line and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cli.app import app, main
from pdplan.profiles.profile import load_profile


def test_list_shows_the_new_gpus_with_fp8_peaks() -> None:
    result = CliRunner().invoke(app, ["hardware", "list"])
    assert result.exit_code == 0, result.output
    for name in ("h800", "h20", "l20", "rtx-pro-6000", "rtx-pro-6000-server", "a10g", "gb200", "mi325x"):
        assert name in result.output
    assert "1978.9" in result.output  # H100/H800 dense fp8


def test_show_round_trips_as_a_hardware_file_used_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["hardware", "show", "h800"])
    assert shown.exit_code == 0, shown.output
    entry = yaml.safe_load(shown.output)
    assert (
        entry["memory_gib"] == 80 and entry["link_bandwidth_gbps"] == 200 and "datasheet" in entry["source"]
    )
    # a site's own H800 variant: a larger NIC and a price, as a file
    mine = tmp_path / "my-h800.yaml"
    mine.write_text(
        yaml.safe_dump(
            {**entry, "name": "site-h800", "inter_node_bandwidth_gbps": 100, "price_per_hour": 2.2}
        )
    )
    out = tmp_path / "prof"
    result = runner.invoke(
        app,
        [
            *("profile", "--analytic", "--model", "qwen3-30b-a3b", "--hardware", str(mine)),
            *("--dtype", "fp8", "--kv-dtype", "fp8", "--out", str(out)),
        ],
    )
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert profile.hardware["name"] == "site-h800" and profile.hardware["inter_node_bandwidth_gbps"] == 100
    assert profile.dtype == "fp8" and profile.model.kv_dtype == "fp8"
    assert profile.kv_bytes_per_token == 2 * 48 * 4 * 128  # K and V × 48 layers × 4 KV heads × 128 × 1 byte


def test_a_bad_hardware_file_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "memory_gib": 80, "peak_bf16_tflops": -1}))
    monkeypatch.setattr(sys, "argv", ["pdplan", "hardware", "show", str(bad)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len([x for x in err.splitlines() if x.strip()]) == 1
    assert "missing mem_bandwidth_gbps, link_bandwidth_gbps" in err

"""``--executor ray`` (issue 17): the search's candidates as Ray tasks on a local Ray instance started
by the test give byte-identical run files to the local process pool. Skipped without Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pdplan.planner.cli.app import app, main

runner = CliRunner()
FILES = ("candidates.csv", "probes.csv", "plan.yaml", "requests.csv", "summary.yaml", "timeseries.csv")
SEARCH = [
    "simulate",
    "--slo",
    "ttft=1s,tpot=50ms",
    "--gpus",
    "3",
    "--mode",
    "disaggregated",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100-sxm",
    "--workers",
    "2",
]


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """400 requests over 100 s, replayed as recorded (one replay per probe, no seeds)."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "arrival_s": np.sort(rng.uniform(0, 100, 400)).round(3),
            "prompt_tokens": rng.integers(64, 2048, 400),
            "output_tokens": rng.integers(8, 256, 400),
        }
    )
    path = tmp_path / "trace.csv"
    frame.to_csv(path, index=False)
    return path


def test_bad_executor_exits_2(monkeypatch, capsys, tmp_path, trace):
    args = [*SEARCH, "--trace", str(trace), "--executor", "dask", "--out", str(tmp_path / "r")]
    monkeypatch.setattr(sys, "argv", ["pdplan", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "expected local, ray or ray://HOST:PORT" in capsys.readouterr().err


def test_ray_gives_the_local_pools_bytes(tmp_path: Path, monkeypatch, trace: Path) -> None:
    ray = pytest.importorskip("ray")
    from pdplan.planner.cli import search_cmd

    monkeypatch.setattr(search_cmd, "_report", lambda out: out / "report.html")
    local, remote = tmp_path / "local", tmp_path / "ray"
    search = [*SEARCH, "--trace", str(trace)]
    result = runner.invoke(app, [*search, "--out", str(local)])
    assert result.exit_code == 0, (result.output, result.exception)
    try:
        result = runner.invoke(app, [*search, "--executor", "ray", "--out", str(remote)])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert result.exit_code == 0, (result.output, result.exception)
    assert len((local / "probes.csv").read_text().splitlines()) > 5, "the case must simulate probes"
    for name in FILES:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name

"""The roofline knees are shown where the fit is shown: the report's model table, the summary that
``pdplan profile`` prints, and ``profile.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from pdplan.planner.cli.app import app
from pdplan.profiles.profile import load_profile
from pdplan.reports.profile_fit import build_profile
from pdplan.reports.rundir import RunData


def test_pdplan_profile_prints_and_writes_the_knees(tmp_path: Path) -> None:
    out = tmp_path / "p"
    args = ["profile", "--analytic", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    knee_tokens, knee_batch = profile.latency.prefill_knee_tokens, profile.latency.decode_knee_batch
    # H100 at MFU 0.6 / MBU 0.75: the GEMMs turn compute-bound near 0.6·989/(0.75·3.35) ≈ 236
    # tokens per weight read (2 FLOPs per 2-byte weight)
    assert 150 < knee_tokens < 350 and 150 < knee_batch < 350
    assert f"knee_tokens={knee_tokens:.4g}" in result.output
    assert f"knee_batch={knee_batch:.4g}" in result.output
    written = yaml.safe_load((out / "profile.yaml").read_text())["latency_model"]
    assert written["prefill"]["knee_tokens"] == knee_tokens
    assert written["decode"]["knee_batch"] == knee_batch
    section = build_profile([RunData(path=out, profile=profile)])
    table = next(item for item in section.items if item.kind == "table")
    assert table.header[-1] == "roofline knee"
    assert [row[-1] for row in table.rows] == [f"{knee_tokens:,.0f} tokens", f"{knee_batch:,.0f} seqs"]

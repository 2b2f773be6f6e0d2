"""``pdplan bench``, ``validate`` and ``calibrate`` end to end in-process, and their exit codes."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import plan_cases as pc
import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cli.app import app, main
from pdplan.profiles.profile import load_profile
from pdplan.sim import REQUEST_COLUMNS

VLLM_RUN = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "measurements"
    / "vllm_rtx4090_llama-3.1-8b"
)
runner = CliRunner()


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _exit_code(monkeypatch, capsys, args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pdplan", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code or 0), capsys.readouterr().err


def _run_dir(path: Path, ttft_s: np.ndarray, tpot_s: np.ndarray, output: int = 11) -> Path:
    """A hand-made run: arrivals 1 s apart, the given TTFT and TPOT per request."""
    n = ttft_s.size
    arrival = np.arange(n, dtype=float)
    first = arrival + ttft_s
    frame = pd.DataFrame(
        {
            "req_id": np.arange(n),
            "arrival_s": arrival,
            "prompt_tokens": 100,
            "output_tokens": output,
            "first_token_s": first,
            "finish_s": first + tpot_s * (output - 1),
            "prefill_start_s": np.nan,
            "prefill_end_s": np.nan,
            "decode_start_s": np.nan,
            "status": "ok",
        }
    )
    path.mkdir(parents=True)
    frame.to_csv(path / "requests.csv", index=False)
    return path


def test_validate_signs_and_values_on_hand_made_runs(tmp_path):
    ttft = np.linspace(0.1, 1.0, 20)
    tpot = np.full(20, 0.02)
    measured = _run_dir(tmp_path / "meas", ttft, tpot)
    predicted = _run_dir(tmp_path / "pred", 1.2 * ttft, 0.9 * tpot)  # TTFT 20 % slow, TPOT 10 % fast
    _ok(["validate", predicted, measured, "--out", tmp_path / "val", "--slo", "ttft=0.5s"])
    val = yaml.safe_load((tmp_path / "val" / "validation.yaml").read_text())
    rows = {r["metric"]: r for r in val["metrics"]}
    for stat in ("mean", "p50", "p90", "p99"):
        assert rows[f"ttft_{stat}_ms"]["error_pct"] == pytest.approx(20.0, abs=0.01)
        assert rows[f"tpot_{stat}_ms"]["error_pct"] == pytest.approx(-10.0, abs=0.01)
    # attainment: measured TTFT ≤ 0.5 s for 9 of 20, predicted (×1.2) for 7 of 20
    assert rows["attainment"]["measured"] == 0.45 and rows["attainment"]["predicted"] == 0.35
    assert all(w["ttft_error_pct"] == pytest.approx(20.0, abs=0.01) for w in val["over_time"])
    html = (tmp_path / "val" / "report.html").read_text()
    assert "Validation" in html and "+20.0%" in html
    assert (tmp_path / "val" / "predicted" / "requests.csv").is_file()


@pytest.mark.skipif(not VLLM_RUN.is_dir(), reason="shared vLLM measurement not available")
def test_vllm_log_converts_to_the_published_figures(tmp_path):
    from pdplan.planner.measured import read_run

    run = read_run(VLLM_RUN)
    frame = run.requests
    assert list(frame.columns[: len(REQUEST_COLUMNS)]) == list(REQUEST_COLUMNS)
    assert len(frame) == 300 and (frame["status"] == "ok").all()
    ttft = (frame["first_token_s"] - frame["arrival_s"]) * 1000
    tpot = (frame["finish_s"] - frame["first_token_s"]) / (frame["output_tokens"] - 1) * 1000
    # SOURCES.md: TTFT mean 65.5 s, p90 121.1 s; TPOT mean 32.4 ms, p50 30.8 ms, p90 38.1 ms
    assert ttft.mean() == pytest.approx(65_500, rel=0.001)
    assert np.percentile(ttft, 90) == pytest.approx(121_100, rel=0.001)
    assert tpot.mean() == pytest.approx(32.4, abs=0.05)
    assert np.percentile(tpot, 50) == pytest.approx(30.8, abs=0.05)


def test_calibrate_writes_a_profile_simulate_accepts(tmp_path):
    prof = pc.profile_dir(tmp_path, prefill_ms=40.0, decode_ms=8.0)
    plan = pc.write_yaml(tmp_path / "plan.yaml", pc.COLOCATED_PLAN)
    workload = pc.write_yaml(tmp_path / "wl.yaml", {**pc.WORKLOAD, "num_requests": 120})
    # "measured": the same plan on a profile whose steps cost 1.5× (compute) and 0.75× (decode)
    slow = pc.profile_dir(tmp_path / "truth", prefill_ms=60.0, decode_ms=6.0)
    _ok(
        [
            "simulate",
            "--plan",
            plan,
            "--profile",
            slow,
            "--workload",
            workload,
            "--warmup",
            "0",
            "--out",
            tmp_path / "meas",
        ]
    )
    out = tmp_path / "cal"
    args = ["calibrate", tmp_path / "meas", "--plan", plan, "--profile", prof, "--out", out]
    _ok([*args, "--fit", "compute_scale,bandwidth_scale", "--bootstrap", "2"])
    cal = load_profile(out)
    assert cal.method == "calibrated"
    params = cal.calibration["parameters"]
    assert params["compute_scale"] == pytest.approx(1.5, rel=0.05)
    assert params["bandwidth_scale"] == pytest.approx(0.75, rel=0.05)
    assert cal.latency.prefill_ms_sums(1, 100, 0) == pytest.approx(60.0, rel=0.05)
    held = cal.calibration["errors"][0]["held_out"]
    assert max(abs(v) for v in held["error_after_pct"].values()) < 5
    _ok(
        [
            "simulate",
            "--plan",
            out / "plan.yaml",
            "--profile",
            out,
            "--workload",
            workload,
            "--out",
            tmp_path / "again",
        ]
    )


def test_exit_codes(monkeypatch, capsys, tmp_path):
    code, err = _exit_code(
        monkeypatch, capsys, ["validate", tmp_path / "nope", tmp_path / "nope2", "--out", tmp_path / "v"]
    )
    assert code == 2 and "no such file" in err
    code, err = _exit_code(
        monkeypatch,
        capsys,
        [
            "bench",
            "--endpoint",
            "http://127.0.0.1:9",
            "--preset",
            "chat",
            "--rate",
            "1",
            "--concurrency",
            "2",
            "--out",
            tmp_path / "b",
        ],
    )
    assert code == 2 and "not both" in err
    args = ["bench", "--endpoint", "http://127.0.0.1:9", "--preset", "chat", "--wait-s", "0.3"]
    code, err = _exit_code(monkeypatch, capsys, [*args, "--out", tmp_path / "b"])
    assert code == 2 and "nothing answered" in err
    assert not (tmp_path / "b").exists()  # nothing written
    code, err = _exit_code(
        monkeypatch, capsys, ["bench", "--endpoint", "ftp://x", "--preset", "chat", "--out", tmp_path / "b"]
    )
    assert code == 2 and "http://" in err
    code, err = _exit_code(
        monkeypatch,
        capsys,
        ["calibrate", tmp_path, "--plan", tmp_path / "p.yaml", "--split", "odd", "--out", tmp_path / "c"],
    )
    assert code == 2 and "--split" in err


def test_bench_cli_with_prediction(tmp_path):
    pytest.importorskip("aiohttp")
    from aiohttp import web

    from pdplan.realrun.token_server import make_app

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    def serve():
        asyncio.set_event_loop(loop)
        box["runner"] = web.AppRunner(make_app(0.01, 0.002), shutdown_timeout=0.1)
        loop.run_until_complete(box["runner"].setup())
        site = web.TCPSite(box["runner"], "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = box["runner"].addresses[0][1]
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        plan = pc.write_yaml(tmp_path / "plan.yaml", pc.COLOCATED_PLAN)
        prof = pc.profile_dir(tmp_path)
        wl = pc.write_yaml(
            tmp_path / "wl.yaml",
            {**pc.WORKLOAD, "num_requests": 12, "arrival": {"process": "closed", "concurrency": 3}},
        )
        out = tmp_path / "bench"
        _ok(
            [
                "bench",
                "--endpoint",
                f"http://127.0.0.1:{box['port']}",
                "--workload",
                wl,
                "--plan",
                plan,
                "--profile",
                prof,
                "--slo",
                "ttft=1s",
                "--out",
                out,
            ]
        )
        frame = pd.read_csv(out / "requests.csv")
        assert (frame["status"] == "ok").all() and len(frame) == 12
        summary = yaml.safe_load((out / "summary.yaml").read_text())
        assert summary["bench"]["loop"] == "closed" and summary["bench"]["concurrency"] == 3
        itl = pd.read_csv(out / "itl.csv")
        assert len(itl) == frame["output_tokens"].sum()  # one chunk per token from this server
        assert summary["itl_ms"]["mean"] > 0
        assert (out / "predicted" / "requests.csv").is_file()
        assert "Prediction (bench/predicted)" in (out / "report.html").read_text()
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

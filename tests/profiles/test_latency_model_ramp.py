"""The small-batch ramp r·(1 − q^B) of a CPU profile's decode fit: exact recovery, kept only where
the data has it, only for CPU profiles, priced alike by the simulator and by calibration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdplan.planner.calibrate import Params, scaled_model
from pdplan.profiles.latency_model import RAMP_RATES, LatencyModel
from pdplan.profiles.profile import load_profile
from pdplan.sim.costs import StepCoef

PREFILL = ([1, 1, 2, 4, 1], [64, 256, 128, 64, 1024], [40.0, 150.0, 160.0, 170.0, 700.0])
DECODE_GRID = [(b, c) for b in (1, 2, 4, 8, 16, 32) for c in (16, 512)] + [(1, 1024), (4, 1024)]
E, F, G, R, Q = 2.0, 1.5, 0.003, 40.0, RAMP_RATES[3]
CPU_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "data" / "cpu" / "tiny-llama" / "tp1"


def _ramp(b: int, c: int) -> float:
    return E + F * b + G * b * c + R * (1.0 - Q**b)


def _decode(fn):
    return [b for b, _ in DECODE_GRID], [c for _, c in DECODE_GRID], [fn(b, c) for b, c in DECODE_GRID]


def test_a_ramp_is_recovered_exactly_and_only_when_asked() -> None:
    model = LatencyModel.fit(PREFILL, _decode(_ramp), small_batch=True)
    assert model.decode_coef == pytest.approx((E, F, G), rel=1e-6)
    assert (model.decode_ramp_ms, model.decode_ramp_rate) == pytest.approx((R, Q), rel=1e-6)
    assert model.decode_loo is not None and model.decode_loo.max < 1e-6  # LOO refits the ramp too
    for b, c in DECODE_GRID:
        assert model.decode_ms(b, b * c) == pytest.approx(_ramp(b, c), rel=1e-9)
    # A one-row step is far cheaper than the line through the larger batches says.
    assert model.decode_ms(1, 512) < 0.7 * (E + F * 4 + G * 4 * 512 + R) - 3 * F
    plain = LatencyModel.fit(PREFILL, _decode(_ramp))
    assert plain.decode_ramp_ms == 0 and plain.decode_ramp_rate == 0
    assert plain.decode_loo is not None and plain.decode_loo.median > 0.05
    assert "small_batch_ramp_ms" in model.to_dict()["decode"]  # type: ignore[operator]
    assert "small_batch_ramp_ms" not in plain.to_dict()["decode"]  # type: ignore[operator]


def test_a_linear_table_takes_no_ramp() -> None:
    linear = LatencyModel.fit(PREFILL, _decode(lambda b, c: E + F * b + G * b * c), small_batch=True)
    assert linear.decode_ramp_ms == 0 and linear.decode_ramp_rate == 0
    assert linear.decode_coef == pytest.approx((E, F, G), rel=1e-6)
    constant = LatencyModel.fit(PREFILL, _decode(lambda b, c: 7.0), small_batch=True)
    assert constant.decode_ramp_ms == 0 and constant.decode_coef == pytest.approx((7.0, 0.0, 0.0))


def test_the_simulator_and_calibration_price_the_ramp_alike() -> None:
    model = LatencyModel.fit(PREFILL, _decode(_ramp), small_batch=True)
    coef = StepCoef.of(model)
    for batch in (1, 2, 3, 7, 64):
        assert coef.decode_s(batch, batch * 300) == pytest.approx(model.decode_ms(batch, batch * 300) / 1000)
    assert model.decode_steps_ms(2, 600, 5) == pytest.approx(
        sum(model.decode_ms(2, 600 + 2 * k) for k in range(5))
    )
    scaled = scaled_model(model, Params(bandwidth_scale=0.5))
    assert scaled.decode_ramp_ms == pytest.approx(R / 2) and scaled.decode_ramp_rate == Q
    assert scaled.decode_ms(1, 100) == pytest.approx(model.decode_ms(1, 100) / 2)


def test_only_a_cpu_profile_fits_the_ramp() -> None:
    if not CPU_PROFILE.is_dir():
        pytest.skip("shipped CPU profile absent")
    shipped = load_profile(CPU_PROFILE)
    assert "cpu_threads" in shipped.hardware
    b, c, y = _decode(_ramp)
    table = pd.DataFrame({"batch_size": b, "context_len": c, "latency_ms": y})
    cpu = replace(shipped, decode=table)
    assert cpu.latency.decode_ramp_ms == pytest.approx(R, rel=1e-6)
    gpu_like = replace(cpu, hardware={k: v for k, v in cpu.hardware.items() if k != "cpu_threads"})
    assert gpu_like.latency.decode_ramp_ms == 0
    assert np.isclose(gpu_like.latency.decode_ms(4, 400), cpu.latency.decode_ms(4, 400), rtol=0.5)


def test_the_report_shows_the_ramp_it_prices(tmp_path: Path) -> None:
    if not CPU_PROFILE.is_dir():
        pytest.skip("shipped CPU profile absent")
    from pdplan.profiles.profile import save_profile
    from pdplan.reports.profile_fit import build_profile
    from pdplan.reports.rundir import RunData

    b, c, y = _decode(_ramp)
    cpu = replace(
        load_profile(CPU_PROFILE), decode=pd.DataFrame({"batch_size": b, "context_len": c, "latency_ms": y})
    )
    out = save_profile(cpu, tmp_path / "p")
    section = build_profile([RunData(path=out, profile=load_profile(out))])
    table = next(item for item in section.items if item.kind == "table")
    decode_row = next(row for row in table.rows if row[0] == "decode")
    assert f"(1 − {Q:g}^seqs)" in decode_row[1]

"""Calibration recovers known engine parameters from runs the simulator itself "measured"."""

from __future__ import annotations

import numpy as np
import pytest

from pdplan.planner.calibrate import (
    MeasuredRun,
    Params,
    apply,
    calibrate,
    fit_range,
    latencies,
    range_notes,
    scaled_model,
)
from pdplan.profiles.errors import ConfigError
from pdplan.profiles.latency_model import LatencyModel
from pdplan.sim import ColocatedCluster, ColocatedPool, InstanceCost, SimOptions, simulate
from pdplan.sim.workload import Arrival, Lengths, Workload, draw_requests

MODEL = LatencyModel((5.0, 0.0, 0.05, 0.0), (10.0, 2.0, 1e-4))  # a batch term that varies with load
TRUTH = Params(step_overhead_ms=3.0, compute_scale=1.4, bandwidth_scale=0.8)


def _cluster() -> ColocatedCluster:
    pool = ColocatedPool(1, policy="chunked", max_batch_size=32, chunk_tokens=512)
    return ColocatedCluster(pool, InstanceCost(MODEL, 200_000))


def _measured(rate: float, seed: int, half: bool = True) -> MeasuredRun:
    wl = Workload(
        Arrival("poisson", rate),
        Lengths("uniform", min=64, max=1024),
        Lengths("uniform", min=8, max=64),
        num_requests=160,
        seed=seed,
    )
    reqs = draw_requests(wl)
    rec = simulate(reqs, apply(_cluster(), TRUTH), SimOptions()).records
    ttft, tpot = latencies(
        rec.arrival_s, rec.first_token_s, rec.finish_s, rec.output_tokens, rec.status_code == 0
    )
    mask = np.ones(len(reqs), dtype=bool)
    if half:
        mask[len(reqs) // 2 :] = False
    return MeasuredRun(f"rate{rate}", reqs, ttft, tpot, mask, _cluster())


def test_scaled_model_is_the_stated_transform():
    m = scaled_model(MODEL, TRUTH)
    assert m.prefill_ms_sums(2, 300, 0) == pytest.approx(1.4 * MODEL.prefill_ms_sums(2, 300, 0) + 3.0)
    assert m.decode_ms(8, 4000) == pytest.approx(0.8 * MODEL.decode_ms(8, 4000) + 3.0)


def test_recovers_known_parameters_and_generalises():
    runs = [_measured(2.0, 1), _measured(12.0, 2)]
    result = calibrate(runs, fit=("step_overhead_ms", "compute_scale", "bandwidth_scale"), bootstrap=2)
    p = result.params
    assert p.step_overhead_ms == pytest.approx(3.0, abs=0.1)
    assert p.compute_scale == pytest.approx(1.4, rel=0.01)
    assert p.bandwidth_scale == pytest.approx(0.8, rel=0.01)
    assert result.objective_after < 1e-3 * result.objective_before
    for run in result.runs:  # the second half of each run was not used
        assert max(abs(e) for e in run["held_out"]["error_after_pct"].values()) < 1.0
    assert max(abs(e) for e in result.runs[0]["held_out"]["error_before_pct"].values()) > 10.0
    assert result.not_fitted["tp_comm_scale"].startswith("all runs are at TP 1")
    assert set(result.uncertainty) == {"step_overhead_ms", "compute_scale", "bandwidth_scale"}


def test_extrapolation_is_named():
    runs = [_measured(4.0, 1, half=False)]
    fitted = fit_range(runs)
    assert range_notes(fitted, runs[0].requests, "same") == []
    faster = runs[0].requests.at_rate(40.0)
    (note,) = range_notes(fitted, faster, "fast")
    assert "rate 40 req/s is outside the calibrated" in note


def test_unknown_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown parameters"):
        calibrate([_measured(4.0, 1)], fit=("magic",))

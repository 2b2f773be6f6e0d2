"""The decode experts term of the latency model (a MoE's expert weight reads, m·X(B)): exact
recovery, dense models untouched, constants stay constant, the analytic MoE grid fitted, and the
closed forms and calibration that carry it."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplan.planner.calibrate import Params, scaled_model
from pdplan.profiles.analytic import analytic_profile
from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.moe_cost import ExpertReads, expected_distinct_experts

PREFILL = ([1, 2, 4, 8], [256, 256, 512, 512], [10.0, 20.0, 40.0, 80.0])
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTEXTS = (128, 1024, 4096)
#: 128 experts, top-8, 0.45 GB of one expert's weights on the GPU (Qwen3-30B-A3B in bf16 at TP1)
QWEN3_MOE = ExpertReads(128, 8, 0.45)


def _decode_table(fn):
    rows = [(b, c) for b in BATCHES for c in CONTEXTS]
    return [b for b, _ in rows], [c for _, c in rows], [fn(b, c) for b, c in rows]


def test_expert_reads_are_the_touched_experts_of_the_shard() -> None:
    spec = load_model_spec("qwen3-30b-a3b")
    reads = ExpertReads.of(spec, 2, "bfloat16")
    assert reads is not None and (reads.num_experts, reads.top_k) == (128, 8)
    # 48 MoE layers × 3·2048·768 weights × 2 bytes, half on each of 2 GPUs
    assert reads.gb_per_expert == pytest.approx(48 * 3 * 2048 * 768 * 2 / 2 / 1e9)
    assert reads.gb(1) == pytest.approx(8 * reads.gb_per_expert)  # batch 1: its top-8
    assert reads.gb(256) == pytest.approx(expected_distinct_experts(256, 8, 128) * reads.gb_per_expert)
    fp8 = ExpertReads.of(spec, 1, "fp8")  # half the TP, half the bytes per weight
    assert fp8 is not None and fp8.gb_per_expert == pytest.approx(reads.gb_per_expert)
    assert ExpertReads.of(load_model_spec("llama-3.1-8b"), 1, "bfloat16") is None


def test_known_coefficients_with_the_experts_term_are_recovered_exactly() -> None:
    e, f, g, m = 4.0, 0.006, 3e-5, 0.3
    dec = _decode_table(lambda b, c: e + f * b + g * b * c + m * QWEN3_MOE.gb(b))
    model = LatencyModel.fit(PREFILL, dec, experts=QWEN3_MOE)
    assert model.decode_coef == pytest.approx((e, f, g), rel=1e-6)
    assert model.decode_expert_coef == pytest.approx(m, rel=1e-6)
    assert model.decode_knee_batch == 0.0
    assert model.decode_loo is not None and model.decode_loo.max < 1e-6
    assert model.decode_ms(3, 300) == pytest.approx(e + 3 * f + 300 * g + m * QWEN3_MOE.gb(3))
    # the same table without the term: a line through a saturating curve, far off at small batches
    plain = LatencyModel.fit(PREFILL, dec)
    assert plain.decode_loo is not None and plain.decode_loo.max > 0.2
    written = model.to_dict()
    assert written["decode"]["per_expert_gb_ms"] == pytest.approx(m, rel=1e-6)  # type: ignore[index]
    assert written["experts"] == {"num_experts": 128, "top_k": 8, "gb_per_expert": 0.45}


def test_a_constant_moe_table_stays_constant() -> None:
    # DESIGN.md: constant latencies yield constant predictions, MoE or not (ties go to fewer terms)
    model = LatencyModel.fit(PREFILL, _decode_table(lambda b, c: 7.0), experts=QWEN3_MOE)
    assert model.decode_expert_coef == 0.0 and model.decode_coef[1:] == (0.0, 0.0)
    assert model.decode_ms(1, 1) == model.decode_ms(512, 10**6) == pytest.approx(7.0)


def test_dense_profiles_fit_the_plain_model_bit_for_bit() -> None:
    profile = analytic_profile(load_model_spec("llama-3.1-8b"), "h100-sxm")
    pre, dec = profile.prefill, profile.decode
    plain = LatencyModel.fit(
        (pre["num_seqs"], pre["seq_len"], pre["latency_ms"]),
        (dec["batch_size"], dec["context_len"], dec["latency_ms"]),
    )
    assert profile.latency.experts is None and profile.latency == plain
    assert "per_expert_gb_ms" not in profile.latency.to_dict()["decode"]  # type: ignore[operator]


def test_the_analytic_moe_grid_is_fitted_within_a_few_percent() -> None:
    # bench/moe_models.py: Qwen3-30B-A3B on one H100, LOO median/max 24.8 %/133 % without the term
    profile = analytic_profile(load_model_spec("qwen3-30b-a3b"), "h100-sxm")
    model = profile.latency
    assert model.experts == ExpertReads.of(profile.model, 1, "bfloat16")
    assert model.decode_loo is not None
    assert model.decode_loo.median < 0.01 and model.decode_loo.max < 0.05
    # m is the reciprocal of the bandwidth the analytic model reads experts at: H100's 3.35 TB/s
    # at the H100 kernel fit's memory-bandwidth utilisation 0.98 (pdplan.profiles.gemm)
    assert model.decode_expert_coef == pytest.approx(1 / (3.35 * 0.98), rel=0.03)
    dec = profile.decode
    batch1 = dec[dec["batch_size"] == 1]
    predicted = np.array([model.decode_ms(1, int(c)) for c in batch1["context_len"]])
    assert np.all(np.abs(predicted / batch1["latency_ms"].to_numpy() - 1) < 0.03)


@settings(max_examples=60, deadline=None)
@given(
    coef=st.tuples(st.floats(0.01, 10), st.floats(0, 1), st.floats(0, 1e-3), st.floats(0, 5)),
    knee=st.floats(0, 64),
    experts=st.integers(2, 256).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))),
    batch=st.integers(1, 512),
    context=st.integers(0, 10**5),
    steps=st.integers(0, 300),
)
def test_closed_forms_carry_the_experts_term(coef, knee, experts, batch, context, steps) -> None:
    e, f, g, m = coef
    reads = ExpertReads(experts[0], experts[1], 0.1)
    model = LatencyModel((0.0,) * 4, (e, f, g), decode_knee_batch=knee, experts=reads, decode_expert_coef=m)
    assert model.decode_ms(batch, context) == pytest.approx(
        e + f * max(batch, knee) + g * context + m * reads.gb(batch), rel=1e-12
    )
    one_by_one = sum(model.decode_ms(batch, context + batch * i) for i in range(steps))
    assert model.decode_steps_ms(batch, context, steps) == pytest.approx(one_by_one, rel=1e-9, abs=1e-9)
    budget = model.decode_steps_ms(batch, context, steps)
    k = model.decode_steps_within(batch, context, budget)
    assert model.decode_steps_ms(batch, context, k) <= budget < model.decode_steps_ms(batch, context, k + 1)


def test_calibration_scales_the_experts_term_with_bandwidth() -> None:
    model = LatencyModel((5.0, 0.0, 0.05, 0.0), (10.0, 2.0, 1e-4), experts=QWEN3_MOE, decode_expert_coef=0.3)
    scaled = scaled_model(model, Params(step_overhead_ms=1.0, bandwidth_scale=1.5))
    assert scaled.experts == QWEN3_MOE
    assert scaled.decode_expert_coef == pytest.approx(0.45)
    assert scaled.decode_ms(4, 400) == pytest.approx(1.0 + 1.5 * model.decode_ms(4, 400))


def test_pdplan_profile_of_a_moe_prints_and_writes_the_term(tmp_path) -> None:
    from typer.testing import CliRunner

    from pdplan.planner.cli.app import app
    from pdplan.profiles.profile import load_profile

    out = tmp_path / "q3moe"
    args = ["profile", "--analytic", "--model", "qwen3-30b-a3b", "--hardware", "h100-sxm", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "per_expert_gb_ms=" in result.output
    written = yaml.safe_load((out / "profile.yaml").read_text())["latency_model"]
    assert written["experts"]["num_experts"] == 128 and written["decode"]["per_expert_gb_ms"] > 0
    loaded = load_profile(out)
    assert loaded.latency.experts == ExpertReads.of(loaded.model, 1, "bfloat16")
    assert loaded.latency.decode_ms(8, 8000) == pytest.approx(written_decode_ms(written, 8, 8000))


def written_decode_ms(written: dict, batch: int, context: int) -> float:
    """A decode step from the coefficients profile.yaml states (the term read back by hand)."""
    d = written["decode"]
    reads = ExpertReads(**written["experts"])
    knee = max(batch, d["knee_batch"])
    return (
        d["base_ms"]
        + d["per_seq_ms"] * knee
        + d["per_context_token_ms"] * context
        + d["per_expert_gb_ms"] * reads.gb(batch)
    )


def test_the_report_states_the_experts_term(tmp_path) -> None:
    from pdplan.reports.profile_fit import build_profile
    from pdplan.reports.rundir import RunData

    profile = analytic_profile(load_model_spec("qwen3-30b-a3b"), "h100-sxm")
    table = next(
        i for i in build_profile([RunData(path=tmp_path, profile=profile)]).items if i.kind == "table"
    )
    decode = next(row[1] for row in table.rows if row[0] == "decode")
    assert decode.endswith(" + 307.1 µs per GB of experts read"), decode  # m ≈ 1 / 3.28 TB/s


def test_a_calibrated_moe_profile_refits_to_the_scaled_model() -> None:
    from pdplan.planner.calibrate import calibrated_profile

    profile = analytic_profile(load_model_spec("qwen3-30b-a3b"), "h100-sxm")
    params = Params(step_overhead_ms=1.0, bandwidth_scale=1.2)
    refit = calibrated_profile(profile, params, {"params": params.to_dict()}).latency
    scaled = scaled_model(profile.latency, params)
    assert refit.experts == profile.latency.experts
    assert refit.decode_expert_coef == pytest.approx(1.2 * profile.latency.decode_expert_coef, rel=0.02)
    for batch, context in ((1, 128), (8, 2048), (64, 1024), (256, 4096)):
        expected = scaled.decode_ms(batch, batch * context)
        assert refit.decode_ms(batch, batch * context) == pytest.approx(expected, rel=0.02)

"""Analytic costs of MoE, MLA, quantised weights and parallel layouts (EP, DP attention)."""

from __future__ import annotations

import pytest

from pdplan.profiles.analytic import analytic_profile, roofline
from pdplan.profiles.errors import ConfigError
from pdplan.profiles.hardware import CATALOG
from pdplan.profiles.model_spec import load_model_spec, with_dtypes
from pdplan.profiles.moe_cost import Layout, all_to_all_s, expected_distinct_experts

H100 = CATALOG["h100-sxm"]
QWEN3_MOE = load_model_spec("qwen3-30b-a3b")


def test_distinct_experts_touched_by_a_batch() -> None:
    assert expected_distinct_experts(1, 8, 128) == pytest.approx(8.0)
    # two tokens: 8 + 8 · (1 − 8/128) expected distinct experts
    assert expected_distinct_experts(2, 8, 128) == pytest.approx(8 + 8 * 120 / 128)
    assert expected_distinct_experts(256, 8, 128) == pytest.approx(128 * (1 - (120 / 128) ** 256))
    assert 127.9 < expected_distinct_experts(256, 8, 128) < 128
    assert expected_distinct_experts(1000, 2, 8) == pytest.approx(8.0)


def test_moe_decode_reads_active_weights_at_batch_1_and_all_experts_at_256() -> None:
    roof = roofline(QWEN3_MOE, H100, Layout(tp=1), "bfloat16")
    one, full = roof.decode(1, 1024), roof.decode(256, 1024)
    bandwidth = H100.mem_bandwidth_gbps * 1e9 * 0.98  # the H100 fit's achieved fraction (gemm.FITS)
    active_ms = 2 * QWEN3_MOE.active_matmul_params / bandwidth * 1e3
    all_ms = 2 * QWEN3_MOE.matmul_params / bandwidth * 1e3
    # batch 1 reads ~3.3B parameters (plus per-kernel floors), far from the 30.5B of all experts
    assert active_ms < one.gemm_ms < active_ms + 2.5
    assert one.gemm_ms < all_ms / 4
    # batch 256 touches 127.9 of 128 experts: every weight is read once per step
    assert full.gemm_ms == pytest.approx(all_ms, rel=0.2)
    # the step-time growth from 1 to 256 is the inactive experts' weights, within 10 %
    grown = full.gemm_ms - one.gemm_ms
    assert grown == pytest.approx(
        2 * (QWEN3_MOE.matmul_params - QWEN3_MOE.active_matmul_params) / bandwidth * 1e3, rel=0.1
    )


def test_dense_models_price_as_before_moe_support() -> None:
    # Llama-3.1-8B on H100: step costs of the analytic model before MoE support (commit ba1d05e)
    spec = load_model_spec("llama-3.1-8b")
    decode = roofline(spec, H100, Layout(tp=1), "bfloat16").decode(64, 1024)
    assert decode.total_ms == pytest.approx(
        5.695865547365214 + 2.885265194029851 + 1.377690814498934, rel=1e-9
    )
    prefill = roofline(spec, H100, Layout(tp=2), "bfloat16").prefill(4, 1024)
    before = 41.32214765983637 + 1.3683765611481706 + 10.615891309168443 + 4.869995120567376
    assert prefill.total_ms == pytest.approx(before, rel=1e-9)


def test_fp8_weights_halve_decode_weight_reads_and_int4_quarter_them() -> None:
    spec = load_model_spec("qwen3-8b")
    gemm = {d: roofline(spec, H100, Layout(), d).decode(1, 128).gemm_ms for d in ("bfloat16", "fp8", "int4")}
    # per-kernel floors (36 layers × 4 GEMMs × 8 µs) and the bf16 LM head do not shrink
    fixed = 36 * 4 * 8e-3 + 2 * spec.embedding_params / (H100.mem_bandwidth_gbps * 1e9 * 0.98) * 1e3
    layers = {d: ms - fixed for d, ms in gemm.items()}
    assert layers["fp8"] == pytest.approx(layers["bfloat16"] / 2, rel=0.05)
    assert layers["int4"] == pytest.approx(layers["bfloat16"] / 4, rel=0.1)
    # compute-bound prefill: fp8 runs at twice the H100's bf16 peak, int4 computes at bf16
    pre = {d: roofline(spec, H100, Layout(), d).prefill(8, 4096).gemm_ms for d in ("bfloat16", "fp8", "int4")}
    assert pre["fp8"] == pytest.approx(pre["bfloat16"] / 2, rel=0.1)
    assert pre["int4"] == pytest.approx(pre["bfloat16"], rel=0.05)


def test_fp8_kv_halves_the_kv_read_and_doubles_capacity() -> None:
    spec = load_model_spec("qwen3-8b")
    base = analytic_profile(spec, H100, tp=1)
    fp8 = analytic_profile(with_dtypes(spec, kv_dtype="fp8"), H100, tp=1)
    assert fp8.kv_bytes_per_token * 2 == base.kv_bytes_per_token
    long = Layout()
    a = roofline(spec, H100, long, "bfloat16").decode(64, 8192).attention_ms
    b = roofline(with_dtypes(spec, kv_dtype="fp8"), H100, long, "bfloat16").decode(64, 8192).attention_ms
    assert b == pytest.approx(a / 2, rel=0.1)


def test_mla_with_dp_attention_reads_one_share_of_the_latent() -> None:
    ds, h800 = load_model_spec("deepseek-v3"), CATALOG["h800"]
    tp_attn = roofline(ds, h800, Layout(tp=16, ep=16), "fp8", "sglang").decode(256, 2048)
    dp_attn = roofline(ds, h800, Layout(tp=16, ep=16, attention_dp=16), "fp8", "sglang").decode(256, 2048)
    # TP attention: every GPU reads the whole latent of all 256 sequences; DP: a sixteenth
    assert dp_attn.attention_ms < tp_attn.attention_ms / 5
    assert ds.kv_bytes_per_token_per_rank(16, "fp8", attention_dp=16) == -(-70_272 // 16)


def test_all_to_all_crosses_the_network_beyond_a_node() -> None:
    h800 = CATALOG["h800"]
    inside = all_to_all_s(h800, 8, 64e6)
    across = all_to_all_s(h800, 16, 64e6)
    # 8 of 16 ranks' shares cross 50 GB/s InfiniBand instead of 200 GB/s NVLink
    assert across > 2 * inside
    assert across == pytest.approx(64e6 * 8 / 16 / 50e9, rel=0.1)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (Layout(tp=8, ep=3), "--ep 3 and --attention-dp 1 must divide --tp 8"),
        (Layout(tp=4, ep=4), "has no experts"),
    ],
)
def test_bad_layouts_are_named(layout: Layout, message: str) -> None:
    spec = QWEN3_MOE if layout.ep == 3 else load_model_spec("qwen3-8b")
    with pytest.raises(ConfigError, match=message):
        roofline(spec, H100, layout, "bfloat16")

"""Analytic roofline profiles: hand-checked step costs, memory fit, grid, and the shipped profiles."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from pdplan.profiles import analytic
from pdplan.profiles.analytic import (
    Roofline,
    analytic_profile,
    analytic_tables,
    kv_budget_bytes,
)
from pdplan.profiles.comm import all_reduce_fit
from pdplan.profiles.engine import get_engine
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.gemm import kernel_fit
from pdplan.profiles.hardware import CATALOG, get_hardware
from pdplan.profiles.model_spec import ModelSpec, load_model_spec, shard_spec
from pdplan.profiles.profile import load_profile
from pdplan.profiles.shipped import (
    data_dir,
    find_shipped_profile,
    shipped_label,
    shipped_profile_dirs,
)

H100 = CATALOG["h100-sxm"]
LLAMA8 = load_model_spec("llama-3.1-8b")


def test_decode_at_batch_one_streams_the_weights() -> None:
    step = Roofline(LLAMA8, H100, 1, "bfloat16").decode(1, 128)
    fit = kernel_fit("h100-sxm")
    bw = H100.mem_bandwidth_gbps * 1e9
    # memory-bound: each of the 4 GEMMs per layer (and the LM head) reads its weights at the fitted
    # MBU, plus the per-kernel floor t0; activations (one token) add a few bytes
    layer_bytes = 2 * LLAMA8.num_layers * LLAMA8.params_per_layer
    head_bytes = 2 * LLAMA8.embedding_params
    floor_ms = (4 * LLAMA8.num_layers + 1) * fit.gemm_t0_us * 1e-3
    expected = (layer_bytes + head_bytes) / (bw * fit.mbu) * 1e3 + floor_ms
    assert step.gemm_ms == pytest.approx(expected, rel=1e-3)
    assert step.other_ms > get_engine("vllm").step_overhead_ms
    assert step.allreduce_ms == 0
    assert 5.0 < step.total_ms < 7.5  # 16 GB at ~3.3 TB/s ≈ 4.9 ms + kernel floors


def test_prefill_of_2048_tokens_is_compute_bound() -> None:
    roof = Roofline(LLAMA8, H100, 1, "bfloat16")
    step = roof.prefill(1, 2048)
    fit = kernel_fit("h100-sxm")
    layer_params = LLAMA8.num_layers * LLAMA8.params_per_layer
    flops = 2 * 2048 * layer_params + 2 * LLAMA8.embedding_params  # logits for the last token only
    compute_ms = flops / (H100.peak_bf16_tflops * 1e12 * fit.mfu) * 1e3
    assert step.gemm_ms == pytest.approx(compute_ms, rel=0.05)
    # causal attention over 2048 tokens is a few % of the GEMMs at this length
    assert 0 < step.attention_ms < 0.1 * step.gemm_ms
    assert 35 < step.total_ms < 60  # 2048 × 15 GFLOP at 712 TFLOP/s ≈ 44 ms


def test_tensor_parallel_adds_the_fitted_all_reduce_per_half_layer() -> None:
    tp1 = Roofline(LLAMA8, H100, 1, "bfloat16").decode(64, 1024)
    tp2 = Roofline(shard_spec(LLAMA8, 2), H100, 2, "bfloat16").decode(64, 1024)
    message = 64 * 4096 * 2
    fit = all_reduce_fit(H100, 2)
    expected = 2 * 32 * (fit.alpha_us * 1e-6 + message / (fit.busbw_gbps * 1e9)) * 1e3
    assert tp2.allreduce_ms == pytest.approx(expected)
    assert tp1.total_ms / 2 < tp2.total_ms < tp1.total_ms


def test_tp8_decode_does_not_scale_linearly() -> None:
    """Per-kernel floors and all-reduce latency do not divide by TP (issue 12)."""
    spec = load_model_spec("llama-3.1-70b")
    steps = {
        tp: Roofline(shard_spec(spec, tp), H100, tp, "bfloat16").decode(8, 1024).total_ms for tp in (4, 8)
    }
    assert steps[8] > 0.6 * steps[4]


def test_a_model_that_does_not_fit_says_needed_and_available() -> None:
    with pytest.raises(ProfileError) as err:
        analytic_profile(load_model_spec("llama-3.1-70b"), "h100-sxm", tp=1)
    message = str(err.value)
    assert "needs 133.5 GiB per GPU" in message and "131.4 GiB weights" in message
    assert "has 71.6 GiB" in message
    assert analytic_profile(load_model_spec("llama-3.1-70b"), "h100-sxm", tp=2).tp == 2


def test_bad_tp_dtype_and_hardware_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--tp 8 does not divide num_attention_heads=28"):
        analytic_profile(load_model_spec("qwen2.5-7b"), "h100-sxm", tp=8)
    with pytest.raises(ConfigError, match="float32 on h100-sxm"):
        analytic_profile(LLAMA8, "h100-sxm", dtype="float32")
    with pytest.raises(ConfigError, match="unknown dtype 'int3'"):
        analytic_profile(LLAMA8, "h100-sxm", dtype="int3")
    with pytest.raises(ConfigError, match="unknown hardware 'tpu'"):
        analytic_profile(LLAMA8, "tpu")


def test_float32_checkpoints_serve_in_float16_on_gpus() -> None:
    profile = analytic_profile(load_model_spec("tiny-llama"), "a100-40g")
    assert profile.dtype == "float16"
    assert profile.method == "analytic"
    assert profile.hardware["name"] == "a100-40g"


def test_grid_stays_within_memory_and_context() -> None:
    spec = load_model_spec("qwen2.5-32b")
    hw = get_hardware("h100-sxm")
    prefill, decode, ops = analytic_tables(spec, hw, tp=1)
    kv_token = spec.kv_bytes_per_token()
    budget = kv_budget_bytes(spec, hw, 1, "bfloat16")
    assert (decode.batch_size * (decode.context_len + 1) * kv_token <= budget).all()
    assert (prefill.num_seqs * prefill.seq_len <= analytic.MAX_PREFILL_TOKENS).all()
    # each context runs up to the largest batch whose KV fits (or the grid's 512)
    for context, group in decode.groupby("context_len"):
        top = group.batch_size.max()
        assert top == 512 or 2 * top * (context + 1) * kv_token > budget, (context, top)
    assert decode.context_len.max() == 32768
    assert len(ops) == 4 * (len(prefill) + len(decode))


@pytest.mark.parametrize(
    ("model", "hw", "tp"),
    [
        ("llama-3.1-8b", "h100-sxm", 1),
        ("llama-3.1-70b", "h200", 4),
        ("qwen2.5-7b", "a100-80g", 2),
    ],
)
def test_tables_are_monotone_and_ops_add_up(model: str, hw: str, tp: int) -> None:
    prefill, decode, ops = analytic_tables(load_model_spec(model), get_hardware(hw), tp=tp)
    for table, a, b in ((prefill, "num_seqs", "seq_len"), (decode, "batch_size", "context_len")):
        for key, other in ((a, b), (b, a)):
            for _, group in table.groupby(other):
                lat = group.sort_values(key).latency_ms.to_numpy()
                assert np.all(np.diff(lat) > 0), (model, key)
    summed = ops.groupby(
        ["phase", "num_seqs", "seq_len", "batch_size", "context_len"], dropna=False
    ).latency_ms.sum()
    assert np.allclose(
        np.sort(summed.to_numpy()), np.sort(np.concatenate([prefill.latency_ms, decode.latency_ms]))
    )


# --- shipped profiles -------------------------------------------------------------------------
SHIPPED_MODELS = ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "qwen2.5-32b", "mistral-7b")
SHIPPED_HARDWARE = ("h100-sxm", "h200", "a100-80g")


def _expected_analytic() -> list[str]:
    labels = []
    for hw in SHIPPED_HARDWARE:
        for model in SHIPPED_MODELS:
            for tp in (1, 2, 4, 8):
                try:
                    analytic_tables(load_model_spec(model), get_hardware(hw), tp=tp)
                except (ConfigError, ProfileError):
                    continue
                labels.append(f"{hw}/{model}/tp{tp}")
    return labels


def _meta(path) -> dict:
    return yaml.safe_load((path / "profile.yaml").read_text())


def test_shipped_analytic_profiles_are_complete_and_current() -> None:
    shipped = {shipped_label(p): p for p in shipped_profile_dirs()}
    expected = _expected_analytic()
    assert len(expected) == 54
    assert sorted(label for label, p in shipped.items() if _meta(p)["method"] == "analytic") == sorted(
        expected
    )
    for label in expected:
        meta = _meta(shipped[label])
        hw, model, tp = label.split("/")
        assert (meta["hardware"]["name"], meta["model"]["name"], f"tp{meta['tp']}") == (hw, model, tp)
        spec = ModelSpec.from_dict(meta["model"])
        prefill, decode, _ = analytic_tables(spec, get_hardware(hw), tp=meta["tp"])
        # regenerate with profiles/data/regenerate.sh when this fails after a model change
        for name, table in (("prefill", prefill), ("decode", decode)):
            shipped_table = pd.read_csv(shipped[label] / f"{name}.csv")
            assert np.allclose(shipped_table.latency_ms, table.latency_ms, rtol=1e-9), label


def test_every_shipped_profile_matches_its_path() -> None:
    dirs = shipped_profile_dirs()
    assert dirs
    for path in dirs:
        meta = _meta(path)
        parts = shipped_label(path).split("/")
        assert parts[:2] == [meta["hardware"]["name"], meta["model"]["name"]]
        assert parts[2:] == [f"tp{meta['tp']}"] or (parts[2:] == [] and meta["tp"] == 1)
    # a sample loads through the strict loader with a usable latency model
    for label in ("h100-sxm/llama-3.1-8b/tp1", "h200/llama-3.1-70b/tp8", "a100-80g/qwen2.5-7b/tp2"):
        profile = load_profile(data_dir() / label)
        assert profile.latency.decode_ms(1, 128) > 0 and profile.latency.prefill_loo is not None


def test_find_shipped_profile() -> None:
    path = find_shipped_profile("llama-3.1-8b", "h100-sxm", 2)
    assert load_profile(path).tp == 2
    expected = (
        "no shipped profile for model 'llama-3.1-70b' on hardware 'h100-sxm' at tp=1; "
        "shipped: a100-80g/llama-3.1-70b/tp2"
    )
    with pytest.raises(ProfileError, match=re.escape(expected)):
        find_shipped_profile("llama-3.1-70b", "h100-sxm", 1)

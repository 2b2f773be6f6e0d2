"""KV capacity the way each engine computes it, against published start-ups."""

from __future__ import annotations

import json

import pytest

from pdplan.profiles.analytic import analytic_profile
from pdplan.profiles.engine import (
    get_engine,
    kv_pool_bytes,
    kv_tokens,
    sglang_mem_fraction_static,
)
from pdplan.profiles.errors import ConfigError
from pdplan.profiles.model_spec import load_model_spec
from pdplan.sim.costs import kv_capacity_tokens

LLAMA8 = load_model_spec("llama-3.1-8b")
GIB = 1 << 30


def test_rtx4090_vllm_run_kv_capacity_within_3_percent(shared_data):
    """The shared vLLM 0.19 run: Llama-3.1-8B bf16 on one RTX 4090, 2048 batched tokens, 256 seqs."""
    meta = json.loads((shared_data / "measurements/vllm_rtx4090_llama-3.1-8b/meta.json").read_text())
    measured = meta["kv_cache"]["num_kv_tokens"]
    assert measured == 41_408
    kw = meta["engine_kwargs"]
    profile = analytic_profile(LLAMA8, "rtx-4090", engine="vllm")
    got = kv_capacity_tokens(
        profile, max_step_tokens=kw["max_num_batched_tokens"], max_batch_size=kw["max_num_seqs"]
    )
    assert got % 16 == 0  # whole vLLM blocks
    assert abs(got / measured - 1) < 0.03, got


def test_h100_vllm_startup_kv_bytes_within_3_percent():
    """A public vLLM 0.11 start-up log: Llama-3.1-8B on an H100 (default 8192 tokens / 1024 seqs)
    left 51.38 GiB for KV."""
    pool, terms = kv_pool_bytes(
        "vllm",
        LLAMA8,
        hardware_name="h100-sxm",
        memory_bytes=80 * GIB,
        tp=1,
        dtype="bfloat16",
        max_step_tokens=8192,
        max_batch_size=1024,
    )
    assert abs(pool / GIB / 51.38 - 1) < 0.03
    assert terms["weights"] == LLAMA8.weight_bytes("bfloat16")


def test_sglang_takes_its_static_fraction_minus_weights():
    pool, terms = kv_pool_bytes(
        "sglang",
        LLAMA8,
        hardware_name="h100-sxm",
        memory_bytes=80 * GIB,
        tp=1,
        dtype="bfloat16",
        max_step_tokens=8192,
        max_batch_size=1024,
    )
    assert pool == int(terms["total"] * 0.88) - LLAMA8.weight_bytes("bfloat16")
    assert [sglang_mem_fraction_static(tp) for tp in (1, 2, 4, 8, 16)] == [0.88, 0.87, 0.85, 0.81, 0.79]
    assert kv_tokens("sglang", pool, 131072) == pool // 131072  # pages of one token


def test_more_batched_tokens_leave_less_kv():
    small = kv_pool_bytes(
        "vllm",
        LLAMA8,
        hardware_name="h100-sxm",
        memory_bytes=80 * GIB,
        tp=1,
        dtype="bfloat16",
        max_step_tokens=2048,
        max_batch_size=256,
    )[0]
    large = kv_pool_bytes(
        "vllm",
        LLAMA8,
        hardware_name="h100-sxm",
        memory_bytes=80 * GIB,
        tp=1,
        dtype="bfloat16",
        max_step_tokens=16384,
        max_batch_size=256,
    )[0]
    assert small - large == 14336 * (2 * 4096 + 3 * 14336) * 2


def test_engine_overhead_is_in_the_profile_and_unknown_engines_fail():
    vllm = analytic_profile(LLAMA8, "h100-sxm", engine="vllm")
    trt = analytic_profile(LLAMA8, "h100-sxm", engine="trtllm")
    diff = vllm.decode.latency_ms.to_numpy() - trt.decode.latency_ms.to_numpy()
    expected = get_engine("vllm").step_overhead_ms - get_engine("trtllm").step_overhead_ms
    assert diff == pytest.approx([expected] * len(diff))
    assert vllm.engine == "vllm" and trt.engine == "trtllm"
    with pytest.raises(ConfigError, match="engine 'tgi'"):
        analytic_profile(LLAMA8, "h100-sxm", engine="tgi")

"""MoE, MLA and new-model figures: counts against the releases, analytic weight reads by batch,
measured CPU decode steps of the tiny MoE executor, DeepSeek-V3 layouts on H800.

Prints four tables and writes them to ``bench/results/moe_models.json``::

    python bench/moe_models.py            # ~1 min on 2 cores (the CPU measurement dominates)

1. total and active parameters of each catalog model against the release's figure, KV bytes per
   token (bf16 and fp8 KV);
2. the analytic decode step of Qwen3-30B-A3B on one H100 by batch: expected experts touched per
   MoE layer, GEMM time, and the weight bytes per step that implies;
3. measured on this CPU (the executor, random float32 weights, one thread; the minimum and the
   median of 9 repeats — the minimum is the figure to read on a shared machine): decode steps of
   ``tiny-qwen3-moe`` (16 experts, top-4) and the dense ``tiny-qwen3`` by batch, beside the
   analytic model of this CPU (detected peak and bandwidth, the A100 kernel fit: an assumption)
   and its error, predicted / measured − 1;
4. DeepSeek-V3 decode on 16 H800s under each layout pdplan considers (TP, +EP, +DP attention);
5. DeepSeek-V3 decode on H100s under EP + DP attention at 256 sequences per GPU and 2,000-token
   contexts, against SGLang's published 22.3k output tokens/s per 8-GPU node (LMSYS blog
   "Deploying DeepSeek with PD Disaggregation and Large-scale Expert Parallelism on 96 H100
   GPUs", 2025-05-05: decode on 9 nodes, EP72, DeepEP, two-batch overlap, EPLB; 2,000-token
   inputs): predicted / published − 1. pdplan's instances are TP16-64 (EP = TP), so the layouts
   differ; it is a sanity check of magnitude, not a validation.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "moe_models.json"

RELEASES = {  # (total, active) as the model cards / reports state them
    "qwen3-8b": (8.2e9, 8.2e9),
    "qwen3-30b-a3b": (30.5e9, 3.3e9),
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "qwen2-57b-a14b": (57e9, 14e9),
    "deepseek-v3": (671e9, 37e9),
}


def counts() -> list[dict]:
    from pdplan.profiles.model_spec import load_model_spec, with_dtypes

    rows = []
    for name, (total, active) in RELEASES.items():
        spec = load_model_spec(name)
        rows.append(
            {
                "model": name,
                "params_b": round(spec.num_params / 1e9, 3),
                "release_params_b": total / 1e9,
                "active_b": round(spec.num_active_params / 1e9, 3),
                "release_active_b": active / 1e9,
                "kv_bytes_per_token": spec.kv_bytes_per_token(),
                "kv_bytes_per_token_fp8": with_dtypes(spec, kv_dtype="fp8").kv_bytes_per_token(),
            }
        )
    return rows


def analytic_batches() -> list[dict]:
    from pdplan.profiles.analytic import roofline
    from pdplan.profiles.hardware import CATALOG
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.profiles.moe_cost import Layout, expected_distinct_experts

    spec, h100 = load_model_spec("qwen3-30b-a3b"), CATALOG["h100-sxm"]
    roof = roofline(spec, h100, Layout(tp=1), "bfloat16")
    rows = []
    for batch in (1, 2, 8, 32, 64, 128, 256, 512):
        cost = roof.decode(batch, 1024)
        experts = expected_distinct_experts(batch, spec.num_experts_per_tok, spec.num_experts)
        weights = (
            spec.layer_params(active=True)
            - spec.num_moe_layers * spec.num_experts_per_tok * spec.expert_params
        )
        weights += spec.num_moe_layers * experts * spec.expert_params + spec.embedding_params
        rows.append(
            {
                "batch": batch,
                "experts_touched": round(experts, 2),
                "weight_gb_read": round(2 * weights / 1e9, 2),
                "gemm_ms": round(cost.gemm_ms, 3),
                "step_ms": round(cost.total_ms, 3),
            }
        )
    return rows


def measured_cpu() -> list[dict]:
    import torch

    from pdplan.profiles.analytic import roofline
    from pdplan.profiles.executor import Executor
    from pdplan.profiles.hardware import get_hardware
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.profiles.moe_cost import Layout, expected_distinct_experts

    cpu = get_hardware("cpu")
    torch.set_num_threads(1)  # as bench/profile.py: 2 threads on a shared 2-core machine spin-wait
    rows = []
    for name in ("tiny-qwen3", "tiny-qwen3-moe"):
        spec = load_model_spec(name)
        ex = Executor(spec, device="cpu", dtype="float32", seed=0)
        gen = torch.Generator().manual_seed(0)
        for batch in (1, 4, 16):
            caches = ex.filled_caches(batch, 128, generator=gen)
            tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen).tolist()
            times = []
            for _ in range(9):
                for c in caches:
                    c.length = 128
                start = time.perf_counter()
                ex.decode(tokens, caches)
                times.append((time.perf_counter() - start) * 1e3)
            experts = (
                expected_distinct_experts(batch, spec.num_experts_per_tok, spec.num_experts)
                if spec.is_moe
                else None
            )
            measured = min(times[1:])
            predicted = roofline(spec, cpu, Layout(), "float32").decode(batch, 128).total_ms
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "experts_touched": None if experts is None else round(experts, 2),
                    "analytic_cpu_ms": round(predicted, 2),
                    "error": f"{predicted / measured - 1:+.0%}",
                    "decode_ms_min": round(measured, 2),
                    "decode_ms_median": round(statistics.median(times[1:]), 2),
                }
            )
    return rows


def deepseek_layouts() -> list[dict]:
    from pdplan.profiles.hardware import CATALOG
    from pdplan.profiles.layouts import candidate_layouts, decode_tokens_per_s, describe
    from pdplan.profiles.model_spec import load_model_spec

    spec, h800 = load_model_spec("deepseek-v3"), CATALOG["h800"]
    rows = []
    for layout in candidate_layouts(spec, 16):
        rate, batch = decode_tokens_per_s(spec, h800, layout, "fp8", "sglang")
        per_rank = spec.kv_bytes_per_token_per_rank(16, "fp8", layout.attention_dp)
        rows.append(
            {
                "layout": describe(layout),
                "kv_bytes_per_token_per_gpu": per_rank,
                "batch": batch,
                "decode_tok_s": round(rate),
            }
        )
    return rows


#: SGLang's published decode throughput per H100 (22.3k output tok/s per 8-GPU node)
SGLANG_DECODE_TOK_S_PER_GPU = 22_300 / 8


def deepseek_vs_sglang() -> list[dict]:
    from pdplan.profiles.analytic import roofline
    from pdplan.profiles.hardware import CATALOG
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.profiles.moe_cost import Layout

    spec, h100 = load_model_spec("deepseek-v3"), CATALOG["h100-sxm"]
    rows = []
    for tp in (16, 32, 64):
        batch = 256 * tp
        cost = roofline(spec, h100, Layout(tp, tp, tp), "fp8", "sglang").decode(batch, 2000)
        per_gpu = batch / cost.total_ms * 1e3 / tp
        rows.append(
            {
                "layout": f"TP{tp} + EP{tp} + DP-attention {tp}",
                "step_ms": round(cost.total_ms, 1),
                "comm_ms": round(cost.allreduce_ms, 1),
                "decode_tok_s_per_gpu": round(per_gpu),
                "sglang_published": round(SGLANG_DECODE_TOK_S_PER_GPU),
                "error": f"{per_gpu / SGLANG_DECODE_TOK_S_PER_GPU - 1:+.0%}",
            }
        )
    return rows


def _print(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print("  ".join(keys))
    for row in rows:
        print("  ".join(str(row[k]) for k in keys))


def main() -> int:
    started = time.perf_counter()
    results = {
        "counts": counts(),
        "analytic_qwen3_30b_a3b_h100_decode_ctx1024": analytic_batches(),
        "deepseek_v3_h800_tp16_layouts": deepseek_layouts(),
        "deepseek_v3_h100_decode_vs_sglang_blog": deepseek_vs_sglang(),
        "measured_cpu_decode_ctx128": measured_cpu(),
    }
    for title, rows in results.items():
        _print(title, rows)
    results["wall_s"] = round(time.perf_counter() - started, 1)  # type: ignore[assignment]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten to {OUT.relative_to(ROOT)} in {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

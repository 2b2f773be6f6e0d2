"""MoE, MLA and new-model figures: counts against the releases, analytic weight reads by batch,
measured CPU decode steps of the tiny MoE executor, DeepSeek-V3 layouts on H800.

Prints eight tables and writes them to ``bench/results/moe_models.json``::

    python bench/moe_models.py            # ~1-2 min on 2 cores (the CPU measurements dominate)

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
   differ; it is a sanity check of magnitude, not a validation;
6. the simulator's latency model fitted on analytic profiles of each MoE layout (and dense
   Llama-3.1-8B): leave-one-out error of the decode fit without and with the experts term
   (``pdplan.profiles.latency_model``: m·X(B), the expert weights the batch touches), and the
   fit's error at batch 1 and 512 (context 1024), predicted / analytic − 1;
7. the simulator's chunked-prefill mixed step (``StepCoef.mixed_s``) against the analytic model's
   own price of that step (``Roofline.mixed``: one prompt's chunk of 16-2048 tokens beside 1-128
   decodes at context 1024): predicted / analytic − 1, median |error| and the signed extremes,
   for the model without the experts term, with it (the max of the sum and the decode step with
   the experts all the step's tokens touch), and with X(B + Σn) simply added to the sum;
8. measured on this CPU: the quick profile of ``tiny-qwen3-moe`` (``pdplan profile --model
   tiny-qwen3-moe --quick``, one thread) and its decode fit's leave-one-out error without and
   with the experts term (a shared machine: the figures move by a few points run to run).
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


#: (model, hardware, tp, ep, attention_dp, weight dtype or None for the config's, engine)
FIT_LAYOUTS = (
    ("qwen3-30b-a3b", "h100-sxm", 1, 1, 1, None, "vllm"),
    ("qwen3-30b-a3b", "h100-sxm", 1, 1, 1, "fp8", "vllm"),
    ("mixtral-8x7b", "h100-sxm", 2, 1, 1, None, "vllm"),
    ("mixtral-8x7b", "h100-sxm", 8, 8, 1, None, "sglang"),
    ("deepseek-v3", "h800", 16, 1, 1, "fp8", "sglang"),
    ("deepseek-v3", "h800", 16, 16, 1, "fp8", "sglang"),
    ("deepseek-v3", "h800", 16, 16, 16, "fp8", "sglang"),
    ("llama-3.1-8b", "h100-sxm", 1, 1, 1, None, "vllm"),
)


def _fits(layout: tuple) -> tuple:
    """(name, profile, Roofline, the model fitted without the experts term, the profile's model)."""
    from pdplan.profiles.analytic import analytic_profile, roofline
    from pdplan.profiles.hardware import get_hardware
    from pdplan.profiles.latency_model import LatencyModel
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.profiles.moe_cost import Layout

    model, hardware, tp, ep, dp, dtype, engine = layout
    spec, hw = load_model_spec(model), get_hardware(hardware)
    profile = analytic_profile(spec, hw, tp=tp, ep=ep, attention_dp=dp, dtype=dtype, engine=engine)
    roof = roofline(spec, hw, Layout(tp, ep, dp), profile.dtype, engine)
    pre, dec = profile.prefill, profile.decode
    plain = LatencyModel.fit(
        (pre["num_seqs"], pre["seq_len"], pre["latency_ms"]),
        (dec["batch_size"], dec["context_len"], dec["latency_ms"]),
    )
    name = f"{model} {profile.dtype} TP{tp}" + (f"+EP{ep}" if ep > 1 else "") + (f"+DP{dp}" if dp > 1 else "")
    return name, profile, roof, plain, profile.latency


def decode_fit_errors() -> list[dict]:
    rows = []
    for layout in FIT_LAYOUTS:
        name, _, roof, plain, fitted = _fits(layout)
        row: dict = {"layout": name}
        for label, model in (("without", plain), ("with", fitted)):
            assert model.decode_loo is not None
            row[f"loo_median_{label}"] = f"{model.decode_loo.median:.2%}"
            row[f"loo_max_{label}"] = f"{model.decode_loo.max:.2%}"
        for batch in (1, 512):
            truth = roof.decode(batch, 1024).total_ms
            for label, model in (("without", plain), ("with", fitted)):
                row[f"b{batch}_err_{label}"] = f"{model.decode_ms(batch, batch * 1024) / truth - 1:+.1%}"
        row["experts_ms_per_gb"] = round(fitted.decode_expert_coef, 4) if fitted.experts else None
        rows.append(row)
    return rows


def mixed_step_errors() -> list[dict]:
    import dataclasses

    from pdplan.sim.costs import StepCoef

    rows = []
    for layout in FIT_LAYOUTS:
        name, _, roof, plain, fitted = _fits(layout)
        without, with_ = StepCoef.of(plain), StepCoef.of(fitted)
        summed = dataclasses.replace(with_, xs=0.0)  # the sum's terms, then + X(B + Σn) below
        errors: dict[str, list[float]] = {"without": [], "with": [], "sum": []}
        for n in (16, 128, 512, 2048):
            for batch in (1, 8, 32, 128):
                truth = roof.mixed(n, batch, 1024).total_ms / 1e3
                args = (1, n, n * n, batch, batch * 1024)
                errors["without"].append(without.mixed_s(*args) / truth - 1)
                errors["with"].append(with_.mixed_s(*args) / truth - 1)
                errors["sum"].append((summed.mixed_s(*args) + with_.expert_s(batch + n)) / truth - 1)
        row: dict = {"layout": name}
        for label, errs in errors.items():
            row[f"{label}_median_abs"] = f"{statistics.median(abs(x) for x in errs):.1%}"
            row[f"{label}_range"] = f"{min(errs):+.1%}..{max(errs):+.1%}"
        rows.append(row)
    return rows


def measured_profile_fit() -> list[dict]:
    import torch

    from pdplan.profiles.detect import detect_cpu
    from pdplan.profiles.latency_model import LatencyModel
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.profiles.profiler import measure_profile

    torch.manual_seed(0)
    hardware = detect_cpu().to_dict()  # as `pdplan profile --device cpu` builds it
    hardware["device"] = "cpu"
    started = time.perf_counter()
    profile = measure_profile(load_model_spec("tiny-qwen3-moe"), hardware=hardware, quick=True, threads=1)
    wall_s = time.perf_counter() - started
    pre, dec = profile.prefill, profile.decode
    plain = LatencyModel.fit(
        (pre["num_seqs"], pre["seq_len"], pre["latency_ms"]),
        (dec["batch_size"], dec["context_len"], dec["latency_ms"]),
    )
    rows = []
    for label, model in (("without", plain), ("with", profile.latency)):
        assert model.decode_loo is not None
        rows.append(
            {
                "experts_term": label,
                "decode_points": model.decode_loo.num_points,
                "loo_median": f"{model.decode_loo.median:.1%}",
                "loo_max": f"{model.decode_loo.max:.1%}",
                "per_expert_gb_ms": round(model.decode_expert_coef, 1) if model.experts else None,
                "profile_wall_s": round(wall_s, 1),
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
        "decode_fit_loo_without_vs_with_experts_term": decode_fit_errors(),
        "mixed_step_vs_analytic_ctx1024": mixed_step_errors(),
        "measured_cpu_tiny_qwen3_moe_decode_fit": measured_profile_fit(),
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

"""Pipeline parallelism figures: what a multi-node instance's TP / TP × PP splits hold and cost.

Prints one table and writes it to ``bench/results/pipeline.json``::

    python bench/pipeline.py            # ~30 s on 2 cores

For models one 8-GPU node cannot hold (Llama-3.1-405B bf16 on H100 and H20, DeepSeek-V3 fp8 on
H800), every split of a 16- and 32-GPU instance that ``pdplan.profiles.layouts`` considers (TP
across the nodes, with EP + DP attention for DeepSeek; one TP group per node × pp stages), from the
analytic model (``pdplan.profiles.pipeline``): weights per GPU (the heaviest stage), KV tokens per
instance at vLLM's default limits (2,048-token steps, 256 sequences), decode tokens/s and the round
(TPOT) at 256 sequences × 2,048-token contexts, one 8,192-token prompt's prefill latency and how
long it holds stage 1 (the prefill throughput limit). Model figures, not measurements: no
multi-node run backs them here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "pipeline.json"
CASES = (("llama-3.1-405b", "h100-sxm"), ("llama-3.1-405b", "h20"), ("deepseek-v3", "h800"))
WIDTHS = (16, 32)


def splits() -> list[dict]:
    from pdplan.profiles.errors import ConfigError, ProfileError
    from pdplan.profiles.hardware import get_hardware
    from pdplan.profiles.layouts import (
        CHOICE_CONTEXT,
        choose_layout,
        decode_tokens_per_s,
        describe,
        pipeline_splits,
    )
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.sim.costs import kv_capacity_tokens

    rows = []
    for model, gpu in CASES:
        spec, hw = load_model_spec(model), get_hardware(gpu)
        for width in WIDTHS:
            for tp, pp in pipeline_splits(hw, width):
                try:
                    choice = choose_layout(spec, hw, tp, pp=pp)
                except (ConfigError, ProfileError) as err:
                    rows.append(
                        {
                            "model": model,
                            "gpu": gpu,
                            "gpus": width,
                            "layout": f"TP{tp}×PP{pp}",
                            "error": str(err),
                        }
                    )
                    continue
                prof = choice.profile
                rate, batch = decode_tokens_per_s(spec, hw, choice.layout, prof.dtype, "vllm")
                prefill_ms = float(prof.latency.prefill_ms([8192]))  # the fitted model the simulator uses
                send_ms = prof.pp_send.ms(8192) if prof.pp_send else 0.0
                stage1 = (prefill_ms - send_ms) / pp  # what pdplan.sim.prefill holds stage 1 for
                rows.append(
                    {
                        "model": model,
                        "gpu": gpu,
                        "gpus": width,
                        "layout": describe(choice.layout).split(" (")[0],
                        "weights_gib_per_gpu": round(prof.weight_bytes / (1 << 30), 1),
                        "kv_tokens_per_instance": kv_capacity_tokens(
                            prof, max_step_tokens=2048, max_batch_size=256
                        ),
                        "decode_batch": batch,
                        "decode_tok_s": round(rate),
                        "tpot_ms": round(batch / rate * 1e3, 2),
                        "decode_context": CHOICE_CONTEXT,
                        "prefill_8k_ms": round(prefill_ms, 1),
                        "prefill_8k_stage1_ms": round(stage1, 1),
                    }
                )
    return rows


def main() -> int:
    started = time.perf_counter()
    rows = splits()
    keys = list(rows[0])
    print("  ".join(keys))
    for row in rows:
        print("  ".join(str(row.get(k, "")) for k in keys) + (f"  {row['error']}" if "error" in row else ""))
    results = {"splits": rows, "wall_s": round(time.perf_counter() - started, 1)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwritten to {OUT.relative_to(ROOT)} in {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the measured profiler and the executor on this machine's CPU (tiny-llama).

(a) wall seconds of ``measure_profile`` with the default and the quick grid (model build included);
(b) the leave-one-out error of the latency model fitted on each profile;
(c) one decode step of the executor vs transformers' own ``LlamaForCausalLM`` (same config, random
    weights, fp32, SDPA attention, a ``DynamicCache`` holding the context) for a few batch sizes and
    contexts — the ratio executor / transformers (≤ 1 means the executor is no slower).

Prints a table and writes ``bench/results/profile.json`` and ``bench/results/profile_decode.csv``.
The machine's load average is recorded at start and end: figures from a busy machine are noisy.

    .venv/bin/python bench/profile.py [--threads N] [--skip-default]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# This script's name shadows the standard library's ``profile`` (which transformers imports through
# cProfile): take bench/ off the import path before importing anything that might need it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from pdplan.profiles.atomic import write_file  # noqa: E402
from pdplan.profiles.executor import Executor  # noqa: E402
from pdplan.profiles.hardware import detect_cpu  # noqa: E402
from pdplan.profiles.model_spec import load_model_spec, read_config  # noqa: E402
from pdplan.profiles.profiler import measure_profile  # noqa: E402
from pdplan.profiles.timing import time_call  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "tiny-llama"
# (batch_size, context_len) of the executor-vs-transformers decode comparison.
DECODE_CASES = [(1, 128), (8, 512), (16, 1024), (32, 256), (32, 2048)]
TARGETS = {"default_wall_s": 90.0, "quick_wall_s": 20.0, "loo_median": 0.05, "loo_max": 0.15}


def profile_run(quick: bool, threads: int) -> dict[str, Any]:
    """Time one ``measure_profile`` run and collect its fit errors."""
    spec = load_model_spec(MODEL)
    hardware = detect_cpu().to_dict()  # as `pdplan profile --device cpu` builds it
    hardware["device"] = "cpu"
    t0 = time.perf_counter()
    profile = measure_profile(spec, hardware=hardware, quick=quick, threads=threads)
    wall = time.perf_counter() - t0
    lm = profile.latency
    assert lm.prefill_loo is not None and lm.decode_loo is not None
    return {
        "grid": "quick" if quick else "default",
        "wall_s": round(wall, 2),
        "prefill_points": len(profile.prefill),
        "decode_points": len(profile.decode),
        "loo": {"prefill": lm.prefill_loo.to_dict(), "decode": lm.decode_loo.to_dict()},
        "coefficients": lm.to_dict(),
        "prefill": profile.prefill.round(4).to_dict(orient="records"),
        "decode": profile.decode.round(4).to_dict(orient="records"),
    }


def _hf_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = {k: v for k, v in read_config(MODEL).items() if not k.startswith("_")}
    config.pop("torch_dtype", None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).eval()
    return model.to(torch.float32)


def decode_compare(repeats: int) -> list[dict[str, Any]]:
    """Median ms of one decode step, executor vs transformers, on identical shapes."""
    from transformers import DynamicCache

    spec = load_model_spec(MODEL)
    ex = Executor(spec, dtype="float32", seed=0)
    hf = _hf_model()
    s = ex.spec
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch, context in DECODE_CASES:
        caches = ex.filled_caches(batch, context, generator=gen)
        k, v = caches[0].to_tensors()  # the same keys and values go into transformers' cache
        tokens = torch.randint(0, spec.vocab_size, (batch,), generator=gen)
        token_ids = tokens.tolist()
        ours = time_call(
            lambda caches=caches, token_ids=token_ids: ex.decode(token_ids, caches),
            ex.device,
            warmup=2,
            repeats=repeats,
            before=lambda caches=caches, context=context: [c.truncate(context) for c in caches],
        )

        dyn = DynamicCache(config=hf.config)
        for layer in range(s.num_layers):
            dyn.update(
                k[layer].expand(batch, -1, -1, -1).contiguous(),
                v[layer].expand(batch, -1, -1, -1).contiguous(),
                layer,
            )
        ids = tokens[:, None]

        def hf_step(dyn=dyn, ids=ids) -> None:
            with torch.no_grad():
                hf(input_ids=ids, past_key_values=dyn, use_cache=True)
            dyn.crop(-1)  # back to `context` tokens for the next repeat (a view, no copy)

        theirs = time_call(hf_step, ex.device, warmup=2, repeats=repeats)
        ours_ms, theirs_ms = statistics.median(ours), statistics.median(theirs)
        rows.append(
            {
                "batch_size": batch,
                "context_len": context,
                "executor_ms": round(ours_ms, 3),
                "transformers_ms": round(theirs_ms, 3),
                "ratio": round(ours_ms / theirs_ms, 3),
            }
        )
        print(
            f"  decode b={batch:<3} ctx={context:<5} executor {ours_ms:8.2f} ms   "
            f"transformers {theirs_ms:8.2f} ms   ratio {ours_ms / theirs_ms:.2f}",
            flush=True,
        )
        del caches, dyn
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meets(runs: list[dict[str, Any]]) -> dict[str, bool]:
    """Each run against the targets: wall time, and LOO median and max of both tables."""
    return {
        run["grid"]: run["wall_s"] <= TARGETS[f"{run['grid']}_wall_s"]
        and all(run["loo"][phase]["median"] <= TARGETS["loo_median"] for phase in ("prefill", "decode"))
        and all(run["loo"][phase]["max"] <= TARGETS["loo_max"] for phase in ("prefill", "decode"))
        for run in runs
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: the profiler default on the CPU)"
    )
    parser.add_argument("--repeats", type=int, default=15, help="repeats per decode comparison case")
    parser.add_argument("--skip-default", action="store_true", help="only the quick profile (faster)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = os.getloadavg()[0]
    print(f"pdplan bench/profile.py: {MODEL} on CPU, {args.threads} threads, load {started:.2f}", flush=True)

    runs = []
    for quick in [True] if args.skip_default else [False, True]:
        run = profile_run(quick, args.threads)
        loo = run["loo"]
        print(
            f"  measure_profile {run['grid']:<7}: {run['wall_s']:6.1f} s wall, "
            f"{run['prefill_points']} prefill + {run['decode_points']} decode points; LOO error "
            f"prefill median {loo['prefill']['median']:.1%} max {loo['prefill']['max']:.1%}, "
            f"decode median {loo['decode']['median']:.1%} max {loo['decode']['max']:.1%}",
            flush=True,
        )
        runs.append(run)
    compare = decode_compare(args.repeats)

    meets = _meets(runs)
    print(f"  targets (wall ≤ 90 s / 20 s, LOO median ≤ 5 %, max ≤ 15 %) met: {meets}")
    result = {
        "benchmark": "profile",
        "model": MODEL,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average_start": round(started, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
        },
        "versions": {"torch": str(torch.__version__), "python": platform.python_version()},
        "targets": TARGETS,
        "meets_targets": meets,
        "profiles": runs,
        "decode_vs_transformers": compare,
        "command": " ".join([".venv/bin/python", "bench/profile.py", *sys.argv[1:]]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_file(RESULTS / "profile.json", json.dumps(result, indent=2) + "\n")
    lines = ["batch_size,context_len,executor_ms,transformers_ms,ratio"]
    lines += [
        ",".join(str(r[k]) for k in ("batch_size", "context_len", "executor_ms", "transformers_ms", "ratio"))
        for r in compare
    ]
    write_file(RESULTS / "profile_decode.csv", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'profile.json'} and profile_decode.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

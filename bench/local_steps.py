"""Why the local runtime's predictions miss (issue 11): direct measurements of the steps a local
worker runs, against the CPU profile's latency model.

1. **Small batches.** One decode step of tiny-llama (one torch thread, thread CPU time, median of
   interleaved repeats) at batch 1-16, next to the decode model fitted on a quick CPU profile's
   grid with and without batches below 4 (the grid before and after issue 11). A local worker at
   low load runs batch 1-3 most of the time.
2. **The kernel behind it.** The LM head alone (32,000 × 512 float32 = 65.5 MB) as one GEMM of
   M = 1, 2, 4, 8 rows: at one row BLAS runs a matrix-vector product (each weight read once), from
   two rows a packed GEMM (the weight panels are copied first).
3. **Long prompts.** One prefill of a 256 … 1,536-token prompt (one thread, thread CPU time,
   interleaved repeats), next to the prefill model fitted on the quick profile's whole grid (now to
   1,536 tokens) and on its rows up to 512 tokens (the quick grid before, less its 384-token point):
   a grid that ends at 512 extrapolates the quadratic pair term up to 9× for these prompts.
4. **Co-tenancy.** A 1P1D deployment on 2 cores puts a prefill worker and a decode worker on
   neighbouring cores; the profile times each alone. The decode step (core 1) is timed alone and
   beside another process running prefills on core 0, in alternating rounds, by thread CPU time
   (which leaves out time the OS gave to others: what remains is the shared cache and memory
   bandwidth), and likewise a prefill beside decode steps.

Prints a table and writes ``bench/results/local_steps.json``. About three minutes; the machine may
be shared (its load is recorded).

    .venv/bin/python bench/local_steps.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "local_steps.json"
BATCHES = (1, 2, 3, 4, 6, 8, 16)
CONTEXT = 256
PROMPTS = (256, 512, 768, 1024, 1536)
OLD_QUICK_MAX_PROMPT = 512  # the quick CPU grid's longest prompt before issue 11's long-prompt fix
NEIGHBOUR = r"""
import os, sys, torch
torch.set_num_threads(1)
os.sched_setaffinity(0, {int(sys.argv[1])})
from pdplan.profiles.executor import Executor
from pdplan.profiles.model_spec import load_model_spec
ex = Executor(load_model_spec("tiny-llama"), device="cpu")
caches = ex.filled_caches(8, 256, generator=torch.Generator().manual_seed(1))
print("ready", flush=True)
while True:
    if sys.argv[2] == "prefill":
        ex.prefill([[1] * 512])
    else:
        for c in caches:
            c.truncate(256)
        ex.decode([1] * 8, caches)
"""


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _executor() -> Any:
    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec

    return Executor(load_model_spec("tiny-llama"), device="cpu")


def _cpu_ms(fn: Any) -> float:
    t0 = time.thread_time()
    fn()
    return (time.thread_time() - t0) * 1e3


def small_batches(ex: Any, rounds: int = 14) -> dict[int, float]:
    gen = torch.Generator().manual_seed(0)
    caches = {b: ex.filled_caches(b, CONTEXT, generator=gen) for b in BATCHES}
    times: dict[int, list[float]] = {b: [] for b in BATCHES}

    def step(b: int) -> None:
        for cache in caches[b]:
            cache.truncate(CONTEXT)
        ex.decode([1] * b, caches[b])

    for r in range(rounds):
        for b in BATCHES:
            ms = _cpu_ms(lambda b=b: step(b))
            if r >= 2:  # the first rounds warm the caches up
                times[b].append(ms)
    return {b: round(statistics.median(v), 2) for b, v in times.items()}


def lm_head(repeats: int = 20) -> dict[int, float]:
    weight = torch.randn(32000, 512)
    out = {}
    for rows in (1, 2, 4, 8):
        x = torch.randn(rows, 512)
        times = [_cpu_ms(lambda x=x: torch.nn.functional.linear(x, weight)) for _ in range(repeats)]
        out[rows] = round(statistics.median(times[2:]), 2)
    return out


def fitted_models(profile_dir: Path) -> dict[str, Any]:
    """The models of a quick profile: fitted on its whole grid (``after``: decode batches 1-32 with
    the ramp, prefill to 1,536 tokens), on its decode rows from batch 4 (``before``: the decode grid
    before issue 11, the plain form) and on its prefill rows up to 512 tokens (``short_prefill``:
    the quick prefill grid before)."""
    from dataclasses import replace

    from pdplan.profiles.latency_model import LatencyModel
    from pdplan.profiles.profile import load_profile

    profile = load_profile(profile_dir)
    dec, pre = profile.decode, profile.prefill
    old = dec[dec["batch_size"] >= 4]
    before = LatencyModel.fit(
        (pre["num_seqs"], pre["seq_len"], pre["latency_ms"]),
        (old["batch_size"], old["context_len"], old["latency_ms"]),
    )
    short = pre[pre["num_seqs"] * pre["seq_len"] <= OLD_QUICK_MAX_PROMPT].reset_index(drop=True)
    return {
        "before": before,
        "after": profile.latency,
        "short_prefill": replace(profile, prefill=short).latency,
        "prefill_points": [[int(a), int(b)] for a, b in zip(pre["num_seqs"], pre["seq_len"], strict=True)],
    }


def long_prompts(ex: Any, rounds: int = 5) -> dict[int, float]:
    """Median thread CPU ms of one prefill of each of :data:`PROMPTS` tokens, in interleaved rounds."""
    times: dict[int, list[float]] = {n: [] for n in PROMPTS}
    ex.prefill([[1] * 64])
    for r in range(rounds):
        for n in PROMPTS:
            ms = _cpu_ms(lambda n=n, r=r: ex.prefill([[1 + r] * n]))
            if r >= 1:  # the first round warms the allocator up for each length
                times[n].append(ms)
    return {n: round(statistics.median(v), 1) for n, v in times.items()}


def co_tenancy(ex: Any, rounds: int = 4, per_round: int = 8) -> dict[str, dict[str, float]]:
    """Median thread CPU ms of a decode step (batch 8) and of a 512-token prefill on core 1, alone and
    beside a neighbour process on core 0 running the other role's forwards."""
    os.sched_setaffinity(0, {1})
    caches = ex.filled_caches(8, CONTEXT, generator=torch.Generator().manual_seed(0))

    def decode() -> None:
        for cache in caches:
            cache.truncate(CONTEXT)
        ex.decode([1] * 8, caches)

    cases = {"decode b8": (decode, "prefill"), "prefill 512": (lambda: ex.prefill([[1] * 512]), "decode")}
    out: dict[str, dict[str, float]] = {}
    for name, (fn, other) in cases.items():
        alone: list[float] = []
        beside: list[float] = []
        fn()
        for _ in range(rounds):
            alone += [_cpu_ms(fn) for _ in range(per_round)]
            neighbour = subprocess.Popen(
                [sys.executable, "-c", NEIGHBOUR, "0", other], stdout=subprocess.PIPE, text=True
            )
            try:
                assert neighbour.stdout is not None
                neighbour.stdout.readline()
                time.sleep(0.3)
                beside += [_cpu_ms(fn) for _ in range(per_round)]
            finally:
                neighbour.kill()
                neighbour.wait()
        a, b = statistics.median(alone), statistics.median(beside)
        out[name] = {"alone_ms": round(a, 2), "beside_ms": round(b, 2), "slowdown": round(b / a, 3)}
    return out


def main() -> None:
    torch.set_num_threads(1)
    out: dict[str, Any] = {"load_before": _load(), "cores": os.cpu_count(), "context": CONTEXT}
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "profile"
        pdplan = Path(sys.executable).parent / "pdplan"
        started = time.perf_counter()
        subprocess.run(
            [
                str(pdplan),
                "profile",
                "--model",
                "tiny-llama",
                "--device",
                "cpu",
                "--quick",
                "--out",
                str(profile),
            ],
            check=True,
            capture_output=True,
        )
        out["profile_s"] = round(time.perf_counter() - started, 1)
        models = fitted_models(profile)
    out["prefill_grid"] = models.pop("prefill_points")
    ex = _executor()
    prompts = long_prompts(ex)
    out["prefill_cpu_ms"] = prompts
    for name in ("short_prefill", "after"):
        model = models[name]
        pred = {n: model.prefill_ms([n]) for n in PROMPTS}
        out[f"prefill_model_{name}_ms"] = {n: round(v, 1) for n, v in pred.items()}
        out[f"prefill_model_{name}_error_pct"] = {
            n: round(100 * (pred[n] / prompts[n] - 1), 1) for n in PROMPTS
        }
    short_prefill = models.pop("short_prefill")
    out["prefill_model_short_prefill_loo"] = (
        short_prefill.prefill_loo.to_dict() if short_prefill.prefill_loo else None
    )
    measured = small_batches(ex)
    out["decode_cpu_ms"] = measured
    for name, model in models.items():
        out[f"model_{name}_ms"] = {b: round(model.decode_ms(b, b * CONTEXT), 2) for b in BATCHES}
        out[f"model_{name}_error_pct"] = {
            b: round(100 * (model.decode_ms(b, b * CONTEXT) / measured[b] - 1), 1) for b in BATCHES
        }
        out[f"model_{name}_loo"] = model.decode_loo.to_dict() if model.decode_loo else None
    after = models["after"]
    out["ramp"] = {"r_ms": round(after.decode_ramp_ms, 3), "q": after.decode_ramp_rate}
    out["lm_head_cpu_ms"] = lm_head()
    out["co_tenancy"] = co_tenancy(ex) if (os.cpu_count() or 1) >= 2 else "needs 2 cores"
    out["load_after"] = _load()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"decode step, tiny-llama, 1 thread, {CONTEXT}-token contexts "
        "(thread CPU ms; error = model / measured - 1)"
    )
    print("batch | measured | grid from 4, plain | grid from 1, ramp")
    for b in BATCHES:
        print(
            f"{b:5d} | {measured[b]:8.1f} | {out['model_before_ms'][b]:6.1f} "
            f"({out['model_before_error_pct'][b]:+.0f}%) | {out['model_after_ms'][b]:6.1f} "
            f"({out['model_after_error_pct'][b]:+.0f}%)"
        )
    print(f"ramp {out['ramp']}; LOO plain {out['model_before_loo']}, ramp {out['model_after_loo']}")
    print(f"LM head GEMM by rows: {out['lm_head_cpu_ms']} ms")
    print("prefill of one prompt (thread CPU ms; error = model / measured - 1)")
    print("tokens | measured | quick grid to 512 | quick grid to 1536")
    for n in PROMPTS:
        print(
            f"{n:6d} | {prompts[n]:8.1f} | {out['prefill_model_short_prefill_ms'][n]:7.1f} "
            f"({out['prefill_model_short_prefill_error_pct'][n]:+.0f}%) | "
            f"{out['prefill_model_after_ms'][n]:7.1f} ({out['prefill_model_after_error_pct'][n]:+.0f}%)"
        )
    print(f"co-tenancy: {out['co_tenancy']}")
    print(
        f"(load {out['load_before']} -> {out['load_after']} on {out['cores']} cores); "
        f"wrote {RESULTS.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()

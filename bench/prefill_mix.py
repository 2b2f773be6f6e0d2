"""Why the local runtime's chat prefill forwards cost more than the quick CPU profile's price
(issue 11, fifth pass): batches of several prompts of different lengths, timed directly.

The runtime's prefill worker packs several waiting prompts into one forward (up to 8 prompts and
2,048 tokens in the 1P1D plan of ``bench/local_runtime.py``; chat prompts 32-1,024 tokens). This
script times, with the real executor (one torch thread, the thread's CPU time, as ``pdplan
profile`` does), in interleaved rounds so that load drifts land on every shape alike:

- the quick CPU grid's prefill rows, before this pass (:data:`OLD_QUICK_ROWS`) and now
  (``CPU_QUICK_GRID``);
- 1,024 tokens cut into 1, 2, 4, 8 and 16 equal prompts, and 1,536 into 1, 2, 4 and 8 (same
  tokens, pairs Σn² down 8-16×): what separates the per-token cost from the per-pair cost;
- held-out batches drawn like the runtime's: 3-8 chat prompts (the chat workload's lognormal
  lengths), at most 2,048 tokens.

It fits the latency model on the old and the new grid rows of the same measurement and prices the
held-out batches with both (model / measured, and the ratio of sums as ``bench/local_ttft.py``'s
``step_prices`` reports it), next to a reference fit on every equal-length row measured here.
Prints a table and writes ``bench/results/prefill_mix.json``; about three minutes, the load is
recorded.

    nice .venv/bin/python bench/prefill_mix.py [--rounds 4] [--batches 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdplan.profiles.grids import CPU_QUICK_GRID

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "prefill_mix.json"
#: ``CPU_QUICK_GRID.prefill`` before this pass: multi-prompt rows only up to 256 tokens in all.
OLD_QUICK_ROWS = tuple(row for row in CPU_QUICK_GRID.prefill if row != (8, 192))
SPLITS_OF_1024 = ((1, 1024), (2, 512), (4, 256), (8, 128), (16, 64))
SPLITS_OF_1536 = ((1, 1536), (2, 768), (4, 384), (8, 192))
MAX_BATCH_TOKENS, MAX_BATCH_SIZE = 2048, 8  # the 1P1D plan's prefill limits (bench/local_runtime.py)


def chat_batches(count: int, seed: int) -> list[list[int]]:
    """``count`` batches of 3-8 prompt lengths from the chat workload's distribution (lognormal,
    mean 256, cv 0.6, clipped to 32-1,024), each at most 2,048 tokens."""
    rng = np.random.default_rng(seed)
    sigma2 = np.log(1 + 0.6**2)
    mu = np.log(256) - sigma2 / 2
    out = []
    while len(out) < count:
        k = int(rng.integers(3, MAX_BATCH_SIZE + 1))
        lens = [int(np.clip(rng.lognormal(mu, np.sqrt(sigma2)), 32, 1024)) for _ in range(k)]
        while sum(lens) > MAX_BATCH_TOKENS:
            lens.pop()
        if len(lens) >= 3:
            out.append(lens)
    return out


def time_shapes(
    shapes: list[list[int]], rounds: int
) -> tuple[list[list[float]], list[list[tuple[int, float]]]]:
    """Thread-CPU milliseconds of one prefill forward of each shape (prompt lengths), ``rounds``
    times, interleaved (a warm-up round first), and each call's minor page faults and kernel ms."""
    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec

    torch.set_num_threads(1)
    spec = load_model_spec("tiny-llama")
    ex = Executor(spec, device="cpu")
    rng = np.random.default_rng(0)
    prompts = [[rng.integers(0, spec.vocab_size, size=n).tolist() for n in lens] for lens in shapes]
    times: list[list[float]] = [[] for _ in shapes]
    kernel: list[list[tuple[int, float]]] = [[] for _ in shapes]
    for round_ in range(1 + rounds):
        for i, batch in enumerate(prompts):
            r0, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
            ex.prefill(batch)
            t1, r1 = time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD)
            if round_:
                times[i].append((t1 - t0) * 1e3)
                kernel[i].append((r1.ru_minflt - r0.ru_minflt, (r1.ru_stime - r0.ru_stime) * 1e3))
    return times, kernel


def fit(rows: list[tuple[int, int]], measured: dict[tuple[int, ...], float]) -> Any:
    """The latency model fitted on equal-length ``rows`` (num_seqs, seq_len) of this measurement,
    with a dummy decode table (only the prefill side is judged)."""
    from pdplan.profiles.latency_model import LatencyModel

    ms = [measured[(n,) * s] for s, n in rows]
    return LatencyModel.fit(
        ([s for s, _ in rows], [n for _, n in rows], ms), ([1, 2, 4], [16, 16, 16], [1.0, 2.0, 4.0])
    )


def run(rounds: int, num_batches: int) -> dict[str, Any]:
    new_rows = list(CPU_QUICK_GRID.prefill)
    equal = list(dict.fromkeys([*OLD_QUICK_ROWS, *new_rows, *SPLITS_OF_1024, *SPLITS_OF_1536]))
    held = chat_batches(num_batches, seed=5)
    shapes = [[n] * s for s, n in equal] + held
    load = os.getloadavg()[0]
    started = time.time()
    times, kernel = time_shapes(shapes, rounds)
    medians = {tuple(lens): float(np.median(t)) for lens, t in zip(shapes, times, strict=True)}
    faults = {tuple(lens): np.median(np.asarray(k), axis=0) for lens, k in zip(shapes, kernel, strict=True)}
    models = {"old_grid": fit(list(OLD_QUICK_ROWS), medians), "new_grid": fit(new_rows, medians)}
    models["all_equal_rows"] = fit(equal, medians)

    def priced(lens: list[int]) -> dict[str, Any]:
        ms = medians[tuple(lens)]
        row: dict[str, Any] = {"lens": lens, "tokens": sum(lens), "measured_ms": round(ms, 1)}
        row["minor_faults"], row["kernel_ms"] = (
            int(faults[tuple(lens)][0]),
            round(float(faults[tuple(lens)][1]), 1),
        )
        for name, model in models.items():
            row[f"{name}_over_measured"] = round(model.prefill_ms(lens) / ms, 3)
        return row

    def measured_over_model(batches: list[list[int]]) -> dict[str, float]:
        total = sum(medians[tuple(b)] for b in batches)
        return {name: round(total / sum(m.prefill_ms(b) for b in batches), 3) for name, m in models.items()}

    splits = [[n] * s for s, n in SPLITS_OF_1024]
    splits_1536 = [[n] * s for s, n in SPLITS_OF_1536]
    return {
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "wall_s": round(time.time() - started, 1),
        "rounds": rounds,
        "clock": "thread CPU time, one torch thread, tiny-llama float32",
        "coefficients": {name: m.to_dict()["prefill"] for name, m in models.items()},
        "splits_of_1024": [priced(s) for s in splits],
        "splits_of_1536": [priced(s) for s in splits_1536],
        "held_out_batches": [priced(b) for b in held],
        "held_out_measured_over_model": measured_over_model(held),
        "grid_rows": [priced([n] * s) for s, n in equal],
    }


def report(r: dict[str, Any]) -> None:
    names = ("old_grid", "new_grid", "all_equal_rows")
    print(
        f"== prefill batches, model / measured (thread CPU; load {r['load_before']} -> {r['load_after']}) =="
    )
    for name in names:
        c = r["coefficients"][name]
        print(
            f"  {name:<15} base {c['base_ms']:.1f} ms, per seq {c['per_seq_ms']:.2f} ms, per token "
            f"{c['per_token_ms']:.3f} ms, per pair {c['per_pair_ms'] * 1e6:.0f} ns, "
            f"knee {c['knee_tokens']:.0f}"
        )
    print(f"  {'prompts':<44}{'ms':>8}  " + "  ".join(f"{n:>14}" for n in names))
    for title, key in (
        ("1,024 tokens split", "splits_of_1024"),
        ("1,536 tokens split", "splits_of_1536"),
        ("held-out chat batches", "held_out_batches"),
    ):
        print(f" {title}:")
        for row in r[key]:
            lens = ",".join(map(str, row["lens"]))
            cells = "  ".join(f"{row[f'{n}_over_measured']:>14.3f}" for n in names)
            print(
                f"  {lens:<44}{row['measured_ms']:>8.0f}  {cells}  "
                f"faults {row['minor_faults']}, kernel {row['kernel_ms']} ms"
            )
    ratio = r["held_out_measured_over_model"]
    print("  held-out batches, sum measured / sum model: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    print(f"  ({r['wall_s']} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="timed repeats of each shape (interleaved)")
    parser.add_argument("--batches", type=int, default=8, help="held-out chat batches")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.rounds, args.batches)
    report(result)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

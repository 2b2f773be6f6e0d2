"""What a colocated worker's mixed step costs (issue 11, sixth pass): a prompt slice and the running
decodes in one forward (``pdplan.realrun.chunked.mixed_forward``, the worker's step under
``--schedule chunked`` since this pass) against the same slice and decode step as two forwards
(the worker's step before it), and both against the profile's prices (``StepCoef.prefill_s``,
``decode_s``, ``mixed_s`` — the last is what the simulator charges a colocated chunked step).

Timed with the real executor, one torch thread and the thread's CPU time (as ``pdplan profile``
does), every shape once a round over interleaved rounds after a warm-up round, the median kept.
Shapes: slices of 128 / 256 / 496 new tokens (no prefix) with 1 / 4 / 12 decodes of 300 context
tokens each, and what the decodes add to the slice's forward (measured, and as ``mixed_s`` prices
it). Prints a table and writes ``bench/results/mixed_step.json``; about a minute.

    nice .venv/bin/python bench/mixed_step.py [--profile DIR] [--rounds 4]

``--profile`` (default: the shipped CPU profile ``profiles/data/cpu/tiny-llama/tp1``) prices the
shapes; measure one just before (``pdplan profile --model tiny-llama --device cpu --quick``) to
judge the price rather than the drift between machines' loads.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "mixed_step.json"
SLICES = (128, 256, 496)
DECODES = (1, 4, 12)
CONTEXT = 300


def measure(profile_dir: Path, rounds: int) -> dict[str, Any]:
    import torch

    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec
    from pdplan.profiles.profile import load_profile
    from pdplan.realrun.chunked import mixed_forward, prefill_chunks
    from pdplan.sim.costs import StepCoef

    torch.set_num_threads(1)
    coef = StepCoef.of(load_profile(profile_dir).latency)
    spec = load_model_spec("tiny-llama")
    ex = Executor(spec, device="cpu")
    rng = np.random.default_rng(0)
    slices = {n: rng.integers(0, spec.vocab_size, size=n).tolist() for n in SLICES}
    # decode caches holding CONTEXT tokens each (reset to that length after every timed call)
    _, caches = ex.prefill(
        [rng.integers(0, spec.vocab_size, size=CONTEXT).tolist()] * max(DECODES), reserve_tokens=64
    )
    shapes = [(n, b) for n in SLICES for b in DECODES]
    cpu: dict[tuple[str, int, int], list[float]] = {}
    for round_ in range(1 + rounds):
        for n, b in shapes:
            riders = list(zip([7] * b, caches[:b], strict=True))
            calls = {
                "slice": ([(slices[n], ex.new_cache(n + 1))], []),
                "decode": None,
                "mixed": ([(slices[n], ex.new_cache(n + 1))], riders),
            }
            for kind, args in calls.items():
                t0 = time.thread_time()
                if args is None:
                    ex.decode([t for t, _ in riders], [c for _, c in riders])
                else:
                    mixed_forward(ex, *args) if args[1] else prefill_chunks(ex, args[0])
                if round_:
                    cpu.setdefault((kind, n, b), []).append((time.thread_time() - t0) * 1e3)
                for c in caches:
                    c.length = CONTEXT
    rows = []
    for n, b in shapes:
        s, d, m = (float(np.median(cpu[(k, n, b)])) for k in ("slice", "decode", "mixed"))
        price_s = coef.prefill_s(1, n, n * n) * 1e3
        price_d = coef.decode_s(b, b * CONTEXT) * 1e3
        price_m = coef.mixed_s(1, n, n * n, b, b * CONTEXT) * 1e3
        rows.append(
            {
                "slice_tokens": n,
                "decodes": b,
                "cpu_ms": {"slice": round(s, 1), "decode": round(d, 1), "mixed": round(m, 1)},
                "price_ms": {
                    "slice": round(price_s, 1),
                    "decode": round(price_d, 1),
                    "mixed": round(price_m, 1),
                },
                # what the decodes add to the slice's forward, measured and as mixed_s prices it
                "decodes_add_ms": {"cpu": round(m - s, 1), "price": round(price_m - price_s, 1)},
                "mixed_over_two_forwards": round(m / (s + d), 3),
                "mixed_over_price": round(m / price_m, 3),
                "two_forwards_over_price": round((s + d) / price_m, 3),
            }
        )
    return {
        "load": f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        "profile": str(profile_dir),
        "rounds": rounds,
        "context_tokens_per_decode": CONTEXT,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", type=Path, default=ROOT / "profiles" / "data" / "cpu" / "tiny-llama" / "tp1"
    )
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    result = measure(args.profile, args.rounds)
    print(
        f"== mixed step vs a slice + a decode step (thread CPU ms, median of {args.rounds}; {result['load']})"
    )
    head = (
        "slice",
        "dec",
        "slice",
        "decode",
        "mixed",
        "mixed/2fw",
        "mixed/price",
        "2fw/price",
        "+dec cpu/price",
    )
    print("{:>6} {:>4} | {:>7} {:>7} {:>7} | {:>9} {:>11} {:>9} | {:>14}".format(*head))
    for r in result["rows"]:
        c = r["cpu_ms"]
        print(
            f"{r['slice_tokens']:>6} {r['decodes']:>4} | {c['slice']:>7} {c['decode']:>7} {c['mixed']:>7} | "
            f"{r['mixed_over_two_forwards']:>9} {r['mixed_over_price']:>11} "
            f"{r['two_forwards_over_price']:>9} | "
            f"{r['decodes_add_ms']['cpu']:>6} / {r['decodes_add_ms']['price']:<6}"
        )
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

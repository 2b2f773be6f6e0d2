"""What a busy neighbour core costs a worker's steps (issue 11, sixth pass): the same decode steps
and prefill forward timed on core 0 while core 1 is idle, runs decode steps, or runs prefill
forwards of the same model — the two workers of a colocated (or 1P1D) tiny-llama plan on this
2-core machine, which share the last-level cache and the memory bandwidth (``pdplan profile``
measured this VM's at ~14 GB/s; a tiny-llama decode step reads its 153 MB of float32 weights).

``pdplan profile`` measures a step with the other core idle; a deployment whose workers are busy
at once pays what this measures. One torch thread each, the thread's CPU time (what the profile
clocks) and the wall time; the neighbour is a second process pinned to core 1 looping on its kind
of step; conditions are interleaved over rounds, the median kept. Other jobs on the machine land
on the wall time first; run it on a quiet machine. Prints a table and writes
``bench/results/cotenancy.json``; about a minute.

    nice .venv/bin/python bench/cotenancy.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "cotenancy.json"
CONDITIONS = ("idle", "decode", "prefill")
SHAPES = ("decode 1", "decode 4", "decode 8", "prefill 256")
CONTEXT = 300


def _executor() -> tuple[Any, list[Any], list[int]]:
    import torch

    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec

    torch.set_num_threads(1)
    spec = load_model_spec("tiny-llama")
    ex = Executor(spec, device="cpu")
    rng = np.random.default_rng(0)
    _, caches = ex.prefill([rng.integers(0, spec.vocab_size, CONTEXT).tolist()] * 8, reserve_tokens=64)
    return ex, caches, rng.integers(0, spec.vocab_size, 256).tolist()


def _step(ex: Any, caches: list[Any], prompt: list[int], shape: str) -> None:
    kind, size = shape.split()
    if kind == "prefill":
        ex.prefill([prompt[: int(size)]])
        return
    ex.decode([7] * int(size), caches[: int(size)])
    for c in caches:
        c.length = CONTEXT


def neighbour(kind: str) -> None:
    """Loop on ``kind`` steps until killed (the busy core)."""
    ex, caches, prompt = _executor()
    shape = "decode 8" if kind == "decode" else "prefill 256"
    while True:
        _step(ex, caches, prompt, shape)


def measure(rounds: int) -> dict[str, Any]:
    os.sched_setaffinity(0, {0})
    ex, caches, prompt = _executor()
    for shape in SHAPES:  # warm-up
        _step(ex, caches, prompt, shape)
    got: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for cond in CONDITIONS:
            proc = None
            if cond != "idle":
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--neighbour", cond],
                    preexec_fn=lambda: os.sched_setaffinity(0, {1}),
                )
                time.sleep(4.0)  # its model built and its loop running
            try:
                for shape in SHAPES:
                    for _ in range(3 if shape.startswith("prefill") else 8):
                        c0, w0 = time.thread_time(), time.perf_counter()
                        _step(ex, caches, prompt, shape)
                        got.setdefault((cond, shape), []).append(
                            ((time.thread_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3)
                        )
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    rows = {}
    for shape in SHAPES:
        idle_cpu = float(np.median([c for c, _ in got[("idle", shape)]]))
        rows[shape] = {
            cond: {
                "cpu_ms": round(float(np.median([c for c, _ in got[(cond, shape)]])), 2),
                "wall_ms": round(float(np.median([w for _, w in got[(cond, shape)]])), 2),
                "cpu_over_idle": round(float(np.median([c for c, _ in got[(cond, shape)]])) / idle_cpu, 3),
            }
            for cond in CONDITIONS
        }
    return {
        "load": f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        "rounds": rounds,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbour", choices=("decode", "prefill"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.neighbour:
        neighbour(args.neighbour)
        return
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench/cotenancy.py needs two cores")
    load0 = os.getloadavg()[0]
    result = measure(args.rounds)
    result["load_before"] = round(load0, 2)
    print(f"== a step on core 0, core 1 idle / decoding / prefilling (median, {result['load']}) ==")
    for shape, row in result["rows"].items():
        cells = "  ".join(
            f"{c}: cpu {v['cpu_ms']} ms (x{v['cpu_over_idle']}), wall {v['wall_ms']}" for c, v in row.items()
        )
        print(f"{shape:<12} {cells}")
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""How long the standard SLO search takes (issue 4: ≤ 60 s wall on the 2-core dev machine, aim ≤ 20 s).

The standard search: llama-3.1-8b, analytic profiles on h100-sxm (TP 1/2/4/8), the Azure
conversation trace, ``ttft=1s,tpot=50ms`` at 90 % attainment, at most 16 GPUs, disaggregated and
colocated. Each run is the real command in a fresh process, so imports, profile building, trace
reading, the run directory and the HTML report all count, as they do for a user::

    pdplan search --slo ttft=1s,tpot=50ms --gpus 16 --model llama-3.1-8b --hardware h100-sxm \\
        --trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv --workers W --out DIR

It runs with one worker and with the default (one per core), checks that both wrote the same
candidates.csv and probes.csv, prints a table and writes bench/results/search_speed.json. Other
processes on a shared machine slow it down; the load average is recorded next to the times.

    .venv/bin/python bench/search_speed.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
LIMIT_S, AIM_S = 60.0, 20.0
ARGS = [
    "--slo",
    "ttft=1s,tpot=50ms",
    "--attainment",
    "0.9",
    "--gpus",
    "16",
    "--mode",
    "both",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100-sxm",
    "--trace",
    str(TRACE),
]


def run(workers: int | None, out: Path) -> dict[str, object]:
    """One search in a fresh ``pdplan`` process; its figures from the run directory."""
    script = Path(sys.executable).parent / "pdplan"
    command = [str(script), "simulate", *ARGS, "--out", str(out)]
    if workers is not None:
        command += ["--workers", str(workers)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"search failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    searched = re.search(r"probes in ([\d.]+) s", done.stdout)
    verdict = re.search(r"verdict: (.*?) plan: ", " ".join(done.stdout.split()))
    candidates = pd.read_csv(out / "candidates.csv")
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    ok = candidates[candidates["status"] == "ok"]
    best = {
        mode: ok[ok["mode"] == mode]["goodput_rps_per_gpu"].max() for mode in ("disaggregated", "colocated")
    }
    other = "colocated" if plan["mode"] == "disaggregated" else "disaggregated"
    return {
        "workers": workers or len(os.sched_getaffinity(0)),
        "wall_s": round(wall, 2),
        "search_s": float(searched.group(1)) if searched else None,
        "load_average_at_start": round(load, 2),
        "candidates": len(candidates),
        "simulated_to_goodput": int((candidates["status"] == "ok").sum()),
        "pruned": int((candidates["status"] == "pruned").sum()),
        "infeasible": int((candidates["status"] == "infeasible").sum()),
        "probes": len(pd.read_csv(out / "probes.csv")),
        "chosen": _describe(plan),
        "gpus": plan["gpus"],
        "goodput_rps": plan["predicted"]["goodput_rps"],
        "goodput_rps_per_gpu": plan["predicted"]["goodput_rps_per_gpu"],
        "best_per_gpu": {mode: round(float(v), 4) for mode, v in best.items()},
        "vs_other_mode": round(best[plan["mode"]] / best[other], 4) if best[other] > 0 else None,
        "verdict": verdict.group(1) if verdict else "",
    }


def _describe(plan: dict) -> str:
    if plan["mode"] == "colocated":
        c = plan["colocated"]
        step = c["chunk_tokens"] if c["policy"] == "chunked" else c["max_batch_tokens"]
        return f"colocated {c['instances']}× (TP{c['tp']}) {c['policy']} {step}, batch ≤{c['max_batch_size']}"
    p, d = plan["prefill"], plan["decode"]
    return (
        f"disaggregated {p['instances']}P (TP{p['tp']}) : {d['instances']}D (TP{d['tp']}), "
        f"P {p['max_batch_tokens']} tok, D batch ≤{d['max_batch_size']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Keep the run directories here.")
    args = parser.parse_args()
    if not TRACE.is_file():
        raise SystemExit(f"the Azure conversation trace is not at {TRACE}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="pdplan-search-speed-"))
    runs = [run(1, root / "workers-1"), run(None, root / "workers-default")]
    same = all(
        pd.read_csv(root / "workers-1" / name).equals(pd.read_csv(root / "workers-default" / name))
        for name in ("candidates.csv", "probes.csv")
    )
    columns = ("workers", "wall s", "search s", "load", "cands", "ok", "pruned", "infeas", "probes")
    header = " ".join(f"{c:>8}" for c in columns) + "  chosen"
    print(header)
    for r in runs:
        cells = (
            f"{r['workers']}",
            f"{r['wall_s']:.1f}",
            f"{r['search_s'] or float('nan'):.1f}",
            f"{r['load_average_at_start']:.1f}",
            *(f"{r[k]}" for k in ("candidates", "simulated_to_goodput", "pruned", "infeasible", "probes")),
        )
        print(" ".join(f"{c:>8}" for c in cells) + f"  {r['chosen']}")
    first = runs[0]
    print(
        f"goodput {first['goodput_rps']:.1f} req/s on {first['gpus']} GPUs = "
        f"{first['goodput_rps_per_gpu']:.2f} per GPU; best per GPU by mode {first['best_per_gpu']}; "
        f"×{first['vs_other_mode']} the other mode"
    )
    print(f"identical across worker counts: {same}; limit {LIMIT_S:.0f} s, aim {AIM_S:.0f} s")
    print(f"verdict: {first['verdict']}")
    results = {
        "command": "pdplan search "
        + " ".join(ARGS).replace(str(TRACE), "../shared/data/traces/" + TRACE.name),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "limit_s": LIMIT_S,
        "aim_s": AIM_S,
        "runs": runs,
        "identical_across_workers": same,
    }
    out = ROOT / "bench" / "results" / "search_speed.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

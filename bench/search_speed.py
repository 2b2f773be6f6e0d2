"""How long the standard SLO search takes, and whether its promise holds when a user replays it.

The standard search: llama-3.1-8b, analytic profiles on h100-sxm (TP 1/2/4/8), the Azure
conversation trace, ``ttft=1s,tpot=50ms`` at 90 % attainment, at most 16 GPUs, disaggregated and
colocated. Each run is the real command in a fresh process, so imports, profile building, trace
reading, the run directory and the HTML report all count, as they do for a user::

    pdplan search --slo ttft=1s,tpot=50ms --gpus 16 --model llama-3.1-8b --hardware h100-sxm \\
        --trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv --workers W --out DIR

Targets (issue 9): ≤ 20 s with 2 workers at 16 GPUs, ≤ 60 s at 64, ≤ 120 s at 128. It runs each
budget of ``--gpus`` with the default workers (one per core) — and with one worker too when
``--compare-workers`` is given, checking both wrote the same candidates.csv and probes.csv — then
replays the chosen plan as a user checks it (``pdplan simulate --plan ... --rate R --seed 11`` on
the same trace, at the promised goodput and at 1.15×) and reads whether the promise lasts on the
trace repeated (plan.yaml's ``sustained:``, where the replay once is under a minute), prints a
table and writes bench/results/search_speed.json. The previous file's figures for the same budgets
are kept in it (``previous``) and printed side by side. Other processes on a shared machine slow it down; the
load average is recorded next to the times.

    .venv/bin/python bench/search_speed.py [--gpus 16 64 128] [--compare-workers] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
TARGET_S = {16: 20.0, 64: 60.0, 128: 120.0}
ARGS = [
    "--slo",
    "ttft=1s,tpot=50ms",
    "--attainment",
    "0.9",
    "--mode",
    "both",
    "--model",
    "llama-3.1-8b",
    "--hardware",
    "h100-sxm",
    "--trace",
    str(TRACE),
]


def run(workers: int | None, out: Path, gpus: int = 16, python_simulator: bool = False) -> dict[str, object]:
    """One search in a fresh ``pdplan`` process; its figures from the run directory."""
    script = Path(sys.executable).parent / "pdplan"
    command = [str(script), "simulate", *ARGS, "--gpus", str(gpus), "--out", str(out)]
    if workers is not None:
        command += ["--workers", str(workers)]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "COLUMNS": "160"}
    if python_simulator:
        env["PDPLAN_SIM_COMPILED"] = "0"
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the search and its workers (children reaped by it count): less load-sensitive than wall
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"search failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    searched = re.search(r"probes in ([\d.]+) s", done.stdout)
    verdict = re.search(r"verdict: (.*?) plan: ", " ".join(done.stdout.split()))
    candidates = pd.read_csv(out / "candidates.csv", low_memory=False)  # policy: empty for disaggregated
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    ok = candidates[candidates["status"] == "ok"]
    best = {
        mode: ok[ok["mode"] == mode]["goodput_rps_per_gpu"].max() for mode in ("disaggregated", "colocated")
    }
    other = "colocated" if plan["mode"] == "disaggregated" else "disaggregated"
    return {
        "budget_gpus": gpus,
        "workers": workers or len(os.sched_getaffinity(0)),
        # compiled (mypyc) or python: pdplan.sim.compiled, as the search's run.yaml records it
        "simulator": yaml.safe_load((out / "run.yaml").read_text())["versions"].get("simulator", "python"),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
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
        # the chosen plan on the trace repeated when its replay once is short (planner/sustained.py)
        "sustained": plan.get("sustained"),
    }


def replay(out: Path, factor: float, seed: int = 11) -> dict[str, object]:
    """``pdplan simulate --plan`` of the chosen plan on the same trace at ``factor`` × its goodput."""
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    rate = plan["predicted"]["goodput_rps"] * factor
    script = Path(sys.executable).parent / "pdplan"
    target = out.parent / f"{out.name}-replay-{factor:g}"
    command = [str(script), "simulate", "--plan", str(out / "plan.yaml"), "--trace", str(TRACE)]
    command += ["--rate", repr(rate), "--seed", str(seed), "--out", str(target)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"replay failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = yaml.safe_load((target / "summary.yaml").read_text())
    return {"factor": factor, "rate_rps": round(rate, 4), "attainment": summary["attainment"],
            "meets_slo": summary["meets_slo"]}  # fmt: skip


def _previous(path: Path) -> list[dict]:
    """The runs of the last recorded file (what this run is compared with)."""
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text()).get("runs", []) if "wall_s" in r]


def _key_figures(run: dict) -> dict:
    keys = ("budget_gpus", "workers", "wall_s", "cpu_s", "load_average_at_start", "simulated_to_goodput")
    return {k: run.get(k) for k in (*keys, "pruned", "probes", "chosen", "goodput_rps")}


def _before(previous: list[dict], run: dict) -> str:
    """The previous wall time for the same budget and workers, or ``-``."""
    for p in previous:
        if (p.get("budget_gpus"), p.get("workers")) == (run["budget_gpus"], run["workers"]):
            return f"{p['wall_s']:.1f}"
    return "-"


def _lasts(note: dict | None) -> str:
    """The sustained check in words: ``; once 5.3 s, ×12: 0.043 (does not last)``, or nothing."""
    if not note:
        return ""
    if not note.get("checked", True):
        return f"; once {note['replay_once_s']:.3g} s, not repeated ({note['why']})"
    word = "lasts" if note["holds"] else "does not last"
    return f"; once {note['replay_once_s']:.3g} s, ×{note['copies']}: {note['attainment']:.3f} ({word})"


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
    parser.add_argument("--gpus", type=int, nargs="+", default=[16], help="GPU budgets to search.")
    parser.add_argument("--compare-workers", action="store_true", help="Also run one worker; compare.")
    parser.add_argument(
        "--python-simulator", action="store_true", help="The pure-Python simulator (PDPLAN_SIM_COMPILED=0)."
    )
    args = parser.parse_args()
    if not TRACE.is_file():
        raise SystemExit(f"the Azure conversation trace is not at {TRACE}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="pdplan-search-speed-"))
    results_path = ROOT / "bench" / "results" / "search_speed.json"
    previous = _previous(results_path)
    runs, same = [], None
    for gpus in args.gpus:
        out = root / f"gpus-{gpus}"
        result = run(None, out, gpus, args.python_simulator)
        result["replays"] = [replay(out, 1.0), replay(out, 1.15)]
        runs.append(result)
        if args.compare_workers and gpus == args.gpus[0]:
            runs.append(run(1, root / f"gpus-{gpus}-workers-1", gpus, args.python_simulator))
            same = all(
                pd.read_csv(out / name).equals(pd.read_csv(root / f"gpus-{gpus}-workers-1" / name))
                for name in ("candidates.csv", "probes.csv")
            )
    columns = ("GPUs", "workers", "wall s", "before", "target", "cpu s", "load", "cands", "ok", "pruned")
    columns += ("probes", "sim")
    print(" ".join(f"{c:>8}" for c in columns) + "  chosen → replay at 1× / 1.15× (seed 11)")
    for r in runs:
        cells = (
            f"{r['budget_gpus']}",
            f"{r['workers']}",
            f"{r['wall_s']:.1f}",
            _before(previous, r),
            f"{TARGET_S.get(int(r['budget_gpus']), float('nan')):.0f}",  # type: ignore[call-overload]
            f"{r['cpu_s']:.1f}",
            f"{r['load_average_at_start']:.1f}",
            *(f"{r[k]}" for k in ("candidates", "simulated_to_goodput", "pruned", "probes")),
            "mypyc" if str(r.get("simulator", "")).startswith("compiled") else "python",
        )
        replays = r.get("replays") or []
        held = " / ".join(
            f"{p['attainment']:.3f} ({'holds' if p['meets_slo'] else 'misses'})" for p in replays
        )
        chosen = f"{r['chosen']}, {r['goodput_rps']:.1f} req/s → {held}{_lasts(r.get('sustained'))}"
        print(" ".join(f"{c:>8}" for c in cells) + f"  {chosen}")
    if same is not None:
        print(f"identical across worker counts: {same}")
    print(f"verdict ({runs[0]['budget_gpus']} GPUs): {runs[0]['verdict']}")
    results = {
        "command": "pdplan simulate "
        + " ".join(ARGS).replace(str(TRACE), "../shared/data/traces/" + TRACE.name)
        + " --gpus N",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "targets_s": TARGET_S,
        "runs": runs,
        "identical_across_workers": same,
        "previous": [_key_figures(r) for r in previous],
    }
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {results_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

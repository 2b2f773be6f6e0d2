"""Mixed hardware at equal cost: H100 prefill + A100 decode against single-type plans on the Azure
conversation trace.

The hardware search (``pdplan.planner.hardware_search``) on llama-3.1-8b (analytic profiles,
TP1 on both types), ``ttft=1s,tpot=50ms`` at 90 %, the whole trace replayed as recorded, a RoCE
KV link between the pools (``roce`` preset: 25 GB/s, 20 µs), within one budget in dollars per
hour. Assumed prices (not measured; change with ``--prices``): $2.50 per H100-SXM GPU-hour and
$1.30 per A100-80GB GPU-hour, about what on-demand cloud GPUs were listed at in 2024.

It reports goodput per dollar (requests served per dollar at the goodput) of the best mixed layout
(prefill on one type, decode on the other), the best disaggregated layout on each type alone and the
best colocated one, and the ratio mixed / single-type — whichever wins. Prints a table and writes
bench/results/hardware_mix.json. This is the same search as::

    pdplan simulate --slo ttft=1s,tpot=50ms --model llama-3.1-8b --hardware h100-sxm,a100-80g \\
        --price-per-gpu-hour h100-sxm=2.5,a100-80g=1.3 --budget-per-hour 20 \\
        --trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv --out DIR

    .venv/bin/python bench/hardware_mix.py [--budget 20] [--prices h100-sxm=2.5,a100-80g=1.3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="$ per hour")
    parser.add_argument("--prices", default="h100-sxm=2.5,a100-80g=1.3")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--slo", default="ttft=1s,tpot=50ms")
    args = parser.parse_args()
    if not TRACE.is_file():
        print(f"skipped: {TRACE} is not present")
        return 0
    from pdplan.planner.cli.hardware_search_cmd import parse_offers
    from pdplan.planner.hardware_search import HardwareSpec, run_hardware_search
    from pdplan.planner.inputs import read_trace
    from pdplan.planner.pricing import parse_prices
    from pdplan.planner.probe import SloTargets
    from pdplan.planner.slo import parse_slo
    from pdplan.planner.traffic import as_recorded
    from pdplan.profiles.hardware import link_preset
    from pdplan.sim.cluster import KvLink

    prices = parse_prices(args.prices)
    names = ",".join(prices.by_name)
    preset = link_preset("roce")
    spec = HardwareSpec(
        model=args.model,
        offers=parse_offers(names, prices),
        traffic=as_recorded(read_trace(TRACE)),
        slo=SloTargets(parse_slo(args.slo), 0.9),
        link=KvLink(preset.bandwidth_gbps, preset.latency_ms, link="roce"),
        budget_per_hour=args.budget,
    )
    started = time.perf_counter()
    result = run_hardware_search(spec)
    wall = time.perf_counter() - started
    best = {"overall": result.chosen, "mixed": result.best_mixed()}
    for kind in ("single", "colocated"):
        for name, r in result.best_single(kind).items():
            best[f"{kind} {name}"] = r
    print(f"{'plan':22} {'layout':42} {'$/h':>6} {'req/s':>7} {'req/$':>8}")
    rows = {}
    for label, r in best.items():
        if r is None:
            print(f"{label:22} none meets the SLO")
            continue
        print(
            f"{label:22} {r.layout.label:42} {r.layout.cost_per_hour:6.2f} {r.goodput_rps:7.2f} "
            f"{r.requests_per_dollar:8.0f}"
        )
        rows[label] = {
            "layout": r.layout.label,
            "cost_per_hour": round(r.layout.cost_per_hour, 6),
            "goodput_rps": round(r.goodput_rps or 0.0, 6),
            "requests_per_dollar": round(r.requests_per_dollar or 0.0, 3),
            "cost_per_million_output_tokens": None
            if r.cost_per_million_output_tokens is None
            else round(r.cost_per_million_output_tokens, 4),
            "probes": len(r.probes),
        }
    mixed = best["mixed"]
    ratios = {}
    if mixed is not None and mixed.requests_per_dollar:
        for label, r in best.items():
            if label.startswith(("single", "colocated")) and r is not None and r.requests_per_dollar:
                ratios[f"mixed / {label}"] = round(mixed.requests_per_dollar / r.requests_per_dollar, 4)
    for label, ratio in ratios.items():
        print(f"goodput per dollar, {label}: {ratio:.3f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    counts = {
        s: sum(1 for r in result.results if r.status == s) for s in ("ok", "pruned", "below_need", "never")
    }
    payload = {
        "command": " ".join(["bench/hardware_mix.py", *sys.argv[1:]]),
        "trace": TRACE.name,
        "model": args.model,
        "slo": args.slo,
        "attainment": 0.9,
        "kv_link": "roce",
        "budget_per_hour": args.budget,
        "assumed_prices_per_gpu_hour": prices.describe(),
        "tp": dict(result.tps),
        "best": rows,
        "ratios": ratios,
        "layouts": len(result.results),
        "status_counts": counts,
        "probes": sum(len(r.probes) for r in result.results),
        "wall_s": round(wall, 1),
        "load_average_1m": load,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hardware_mix.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(
        f"{len(result.results)} layouts {counts} in {wall:.0f} s (load {load}); "
        "bench/results/hardware_mix.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

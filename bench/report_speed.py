"""How long a report takes and how big it gets, for a 16-GPU search (issue 5: ≤ 10 s, ≤ 3 MB) and
a 128-GPU-shaped search (issue 9: its heatmap took 14 s / 2.5 MB).

Builds, with the tests' run-directory factory (tests/reports/rundir_factory.py), a 16-GPU search
run (~100 candidates, ~1000 probes, 10k requests, 0.5 s time series of every instance), a profile
run, and a 10k-request bench run with its predicted/ twin; then renders, each in a fresh
``pdplan report`` process (so imports count, as they do for a user):

- ``search``: the search run alone (what ``pdplan simulate`` writes at its end),
- ``every section``: profile + search + bench combined, so all six sections have content,
- ``128-GPU search``: a search run shaped like a real 128-GPU search (~170k candidates, almost all
  pruned; 20k requests), alone.

Prints a table and writes bench/results/report_speed.json.

    .venv/bin/python bench/report_speed.py [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reports"))
from rundir_factory import (  # noqa: E402
    SIXTEEN_GPUS,
    write_bench_run,
    write_large_search_run,
    write_profile_run,
    write_search_run,
)

LIMIT_S = 10.0
LIMIT_BYTES = 3 * 10**6


def build_runs(root: Path) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    profile = write_profile_run(root / "profile", rng)
    write_search_run(root / "search", rng, SIXTEEN_GPUS, profile=profile)
    write_bench_run(root / "bench", rng, profile, num_requests=SIXTEEN_GPUS.num_requests)
    write_large_search_run(root / "search128", rng, gpus=128, profile=profile)
    return {
        "search": [root / "search"],
        "every section": [root / "profile", root / "search", root / "bench"],
        "128-GPU search": [root / "search128"],
    }


def input_stats(root: Path) -> dict[str, int]:
    def rows(path: Path) -> int:
        with open(path) as fh:
            return sum(1 for _ in fh) - 1

    return {
        "candidates": rows(root / "search" / "candidates.csv"),
        "probes": rows(root / "search" / "probes.csv"),
        "requests": rows(root / "search" / "requests.csv"),
        "timeseries_rows": rows(root / "search" / "timeseries.csv"),
        "bench_requests": rows(root / "bench" / "requests.csv"),
        "candidates_128_gpus": rows(root / "search128" / "candidates.csv"),
    }


def render_once(dirs: list[Path], out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``pdplan report`` process. CPU time is what the process itself
    used, so it holds steady when other work shares the machine; wall time is what a user waits."""
    cli = ROOT / ".venv" / "bin" / "pdplan"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([str(cli), "report", *map(str, dirs), "--out", str(out)], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def figure_sizes(html: str) -> dict[str, int]:
    """Bytes of each inline figure, by its data-figure key."""
    sizes = {}
    for match in re.finditer(r'<figure data-figure="([a-z0-9-]+)">(.*?)</figure>', html, re.S):
        sizes[match.group(1)] = len(match.group(2).encode())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdplan-report-speed-") as tmp:
        root = args.keep or Path(tmp)
        cases = build_runs(root)
        results = {}
        for name, dirs in cases.items():
            out = root / f"report-{name.replace(' ', '-')}.html"
            runs = [render_once(dirs, out) for _ in range(args.repeats)]
            times = [wall for wall, _ in runs]
            cpus = [cpu for _, cpu in runs]
            html = out.read_text()
            sections = re.findall(r'<section id="([a-z]+)" data-section="[a-z]+"( data-absent="true")?', html)
            results[name] = {
                "seconds": [round(t, 3) for t in times],
                "median_s": round(statistics.median(times), 3),
                "max_s": round(max(times), 3),
                "cpu_seconds": [round(c, 3) for c in cpus],
                "median_cpu_s": round(statistics.median(cpus), 3),
                "bytes": out.stat().st_size,
                "sections_present": [key for key, absent in sections if not absent],
                "figure_bytes": figure_sizes(html),
            }
        stats = input_stats(root)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "inputs": stats,
        "limits": {"seconds": LIMIT_S, "bytes": LIMIT_BYTES},
        "results": results,
    }
    print(f"inputs: {stats}")
    print(
        f"load average at start: {report['machine']['load_average_1min_at_start']} on {os.cpu_count()} CPUs"
    )
    print(f"{'report':<16}{'median s':>10}{'max s':>8}{'CPU s':>8}{'MB':>7}  sections  ok")
    for name, res in results.items():
        ok = res["max_s"] <= LIMIT_S and res["bytes"] <= LIMIT_BYTES
        print(
            f"{name:<16}{res['median_s']:>10.2f}{res['max_s']:>8.2f}{res['median_cpu_s']:>8.2f}"
            f"{res['bytes'] / 1e6:>7.2f}"
            f"  {len(res['sections_present'])}/6       {'yes' if ok else 'NO'}"
        )
        biggest = sorted(res["figure_bytes"].items(), key=lambda kv: -kv[1])[:3]
        print("    largest figures: " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in biggest))
    out_json = ROOT / "bench" / "results" / "report_speed.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_json.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

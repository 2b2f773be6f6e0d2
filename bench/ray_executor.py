"""The standard search on the local process pool and on Ray: the same files, byte for byte.

The standard search (as ``bench/search_speed.py``): llama-3.1-8b on h100-sxm (analytic, TP 1/2/4/8),
the Azure conversation trace, ``ttft=1s,tpot=50ms`` at 90 %, at most 16 GPUs, both modes. It runs
once with ``--workers 2`` (local processes) and once with ``--executor ray --workers 2`` (a local
Ray instance with 2 CPUs, started by the command), each in a fresh ``pdplan`` process, and compares
every file both wrote except ``run.yaml`` (it holds the command and the time) and ``report.html``
(it names the run's directory). Needs Ray (``pip install 'pdplan[ray]'``). Prints a table and
writes bench/results/ray_executor.json.

    .venv/bin/python bench/ray_executor.py [--gpus 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
SKIP = ("run.yaml", "report.html")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=16)
    args = parser.parse_args()
    if not TRACE.is_file():
        print(f"skipped: {TRACE} is not present")
        return 0
    try:
        import ray  # noqa: F401
    except ImportError:
        print("skipped: Ray is not installed (pip install 'pdplan[ray]')")
        return 0
    script = Path(sys.executable).parent / "pdplan"
    base = [
        str(script),
        "simulate",
        "--slo",
        "ttft=1s,tpot=50ms",
        "--attainment",
        "0.9",
        "--gpus",
        str(args.gpus),
    ]
    base += ["--model", "llama-3.1-8b", "--hardware", "h100-sxm", "--trace", str(TRACE), "--workers", "2"]
    root = Path(tempfile.mkdtemp(prefix="pdplan-ray-"))
    runs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray"])):
        out = root / name
        load = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run([*base, *extra, "--out", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return 1
        files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in SKIP)
        runs[name] = {
            "wall_s": round(wall, 1),
            "load_average_at_start": round(load, 2),
            "files": {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in files},
        }
        print(f"{name:6} {wall:7.1f} s (load {load:.1f}), {len(files)} files")
    same = runs["local"]["files"] == runs["ray"]["files"]
    print(f"identical files (sha256 of {', '.join(runs['local']['files'])}): {same}")
    out = ROOT / "bench" / "results" / "ray_executor.json"
    command = " ".join(base[1:]).replace(str(TRACE), "../shared/data/traces/" + TRACE.name)
    payload = {"command": f"pdplan {command} [--executor ray]", "runs": runs, "identical": same}
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

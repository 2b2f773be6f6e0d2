#!/usr/bin/env bash
# pdplan quick start: set everything up, then run the main job on this machine's CPU —
#   profile tiny-llama (measured) -> search layouts against an SLO -> one HTML report.
# Results land in runs/quickstart/ (report: runs/quickstart/report.html).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
out=runs/quickstart
pdplan=.venv/bin/pdplan
mkdir -p "$out"
echo "== 1/3 profile: tiny-llama on this CPU (quick grid)"
$pdplan profile --model tiny-llama --device cpu --quick --out "$out/profile"
echo "== 2/3 simulate: search P:D, TP and batch limits on a 4-'GPU' budget (here: CPU instances)"
$pdplan simulate --slo "ttft=8s,tpot=200ms" --attainment 0.9 --gpus 4 \
  --profile "$out/profile" --preset chat --out "$out/plan"
echo "== 3/3 report: profile + search in one page"
$pdplan report "$out/profile" "$out/plan" --out "$out/report.html" --title "pdplan quick start"
echo "done: plan $out/plan/plan.yaml, report $out/report.html"

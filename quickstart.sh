#!/usr/bin/env bash
# pdplan quick start: set everything up, then run the main job on this machine's CPU —
#   profile tiny-llama (measured) -> search layouts against an SLO -> deploy the plan briefly,
#   bench it and validate the prediction -> one HTML report.
# Results land in runs/quickstart/ (report: runs/quickstart/report.html).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install.sh
out=runs/quickstart
pdplan=.venv/bin/pdplan
mkdir -p "$out"
echo "== 1/5 profile: tiny-llama on this CPU (quick grid)"
$pdplan profile --model tiny-llama --device cpu --quick --out "$out/profile"
# One CPU instance per core: the profile measures one instance on a core of its own, so a plan with
# more instances than cores would share cores and run slower than predicted. 2 to 4 instances.
budget=$(.venv/bin/python -c "import os; print(min(4, max(2, len(os.sched_getaffinity(0)))))")
echo "== 2/5 simulate: search P:D, TP and batch limits on a ${budget}-'GPU' budget (here: one CPU core per instance)"
$pdplan simulate --slo "ttft=8s,tpot=200ms" --attainment 0.9 --gpus "$budget" \
  --profile "$out/profile" --preset chat --out "$out/plan"
echo "== 3/5 deploy the plan on this CPU (real workers + sglang-router), in the background"
port=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
rm -rf "$out/deploy"
$pdplan deploy "$out/plan/plan.yaml" --port "$port" --out "$out/deploy" >"$out/deploy.log" 2>&1 &
trap '$pdplan deploy --stop "$out/deploy" >/dev/null 2>&1 || true' EXIT
echo "== 4/5 bench it: 40 small requests, open loop, and the prediction on the same requests"
cat >"$out/bench-workload.yaml" <<'YAML'
num_requests: 40
seed: 1
arrival: {process: poisson, rate_rps: 1.0}
prompt_tokens: {dist: uniform, min: 32, max: 512}
output_tokens: {dist: uniform, min: 8, max: 48}
YAML
$pdplan bench --endpoint "http://127.0.0.1:$port" --workload "$out/bench-workload.yaml" \
  --plan "$out/plan/plan.yaml" --profile "$out/profile" --out "$out/bench"
$pdplan deploy --stop "$out/deploy" >/dev/null
echo "== 5/5 validate + report: profile, search and the measured run in one page"
$pdplan validate "$out/bench/predicted" "$out/bench" --out "$out/validate" >/dev/null
$pdplan report "$out/profile" "$out/plan" "$out/bench" --out "$out/report.html" --title "pdplan quick start"
echo "done: plan $out/plan/plan.yaml, measured $out/bench, report $out/report.html"

#!/usr/bin/env bash
# Install the core package alone (no extras: no torch, no transformers) into a fresh
# venv, then run what pyproject promises works without them: `pdplan --help`, an analytic profile
# and a small simulation. Fails on any setuptools BuildBackendWarning too.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/pdplan-core.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check . 2>&1 | tee "$work/install.log" \
  | grep -v "^WARNING: Location" || true
if grep -q "BuildBackendWarning" "$work/install.log"; then
  echo "core install: setuptools printed BuildBackendWarning" >&2
  exit 1
fi
pdplan="$work/venv/bin/pdplan"
for absent in torch transformers; do
  if "$work/venv/bin/python" -c "import $absent" 2>/dev/null; then
    echo "core install: $absent is installed, so this check proves nothing about it" >&2
    exit 1
  fi
done
"$pdplan" --help >/dev/null
# the CLI must not need click (typer >= 0.29 carries its own copy), nor load torch for --help
"$work/venv/bin/python" -c "
import sys, pdplan.planner.cli.app
loaded = [m for m in ('click', 'torch', 'transformers') if m in sys.modules]
assert not loaded, f'pdplan.planner.cli.app imports {loaded}'
"
cd "$work"
"$pdplan" profile --analytic --model llama-3.1-8b --hardware h100-sxm --out profile >/dev/null
cat > plan.yaml <<'YAML'
mode: disaggregated
prefill: {instances: 1, tp: 1, max_batch_tokens: 8192}
decode: {instances: 1, tp: 1, max_batch_size: 64}
kv_transfer: {link: nvlink}
YAML
cat > workload.yaml <<'YAML'
num_requests: 200
seed: 0
arrival: {process: poisson, rate_rps: 2.0}
prompt_tokens: {dist: uniform, min: 64, max: 512}
output_tokens: {dist: fixed, value: 32}
YAML
"$pdplan" simulate --plan plan.yaml --profile profile --workload workload.yaml --out run >/dev/null
test -s run/summary.yaml && test -s run/requests.csv && test -s profile/profile.yaml
# a usage error is one line and exit 2 (click is not installed here)
set +e
"$pdplan" simulate --gpus abc --out x 2>"$work/err.txt"
rc=$?
set -e
if [ "$rc" != 2 ] || [ "$(wc -l <"$work/err.txt")" != 1 ]; then
  echo "core install: a usage error gave exit $rc and:" >&2
  cat "$work/err.txt" >&2
  exit 1
fi
echo "core install: pdplan --help, an analytic profile and a 200-request simulation ran without torch"

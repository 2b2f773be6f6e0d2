#!/usr/bin/env bash
# Regenerate the shipped analytic profiles, profiles/data/<hardware>/<model>/tp<N>/, with the CLI
# itself (pdplan profile --analytic). Combinations that do not fit in memory, or whose TP does not
# divide the heads, are skipped with the CLI's one-line reason. Usage, from anywhere:
#     profiles/data/regenerate.sh            # PDPLAN=/path/to/pdplan to use another install
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pdplan="${PDPLAN:-$here/../../.venv/bin/pdplan}"
err="$(mktemp)"
trap 'rm -f "$err"' EXIT
for hw in h100-sxm h200 a100-80g; do
  for model in llama-3.1-8b llama-3.1-70b qwen2.5-7b qwen2.5-32b mistral-7b; do
    for tp in 1 2 4 8; do
      out="$here/$hw/$model/tp$tp"
      rc=0
      "$pdplan" profile --analytic --model "$model" --hardware "$hw" --tp "$tp" --out "$out" \
        >/dev/null 2>"$err" || rc=$?
      if [ "$rc" -eq 0 ]; then
        # keep only the profile files: the report and run.yaml belong to interactive runs
        rm -f "$out/report.html" "$out/run.yaml"
        echo "wrote $hw/$model/tp$tp"
      elif [ "$rc" -eq 2 ]; then
        rm -rf "$out"
        echo "skip  $hw/$model/tp$tp: $(tr -s ' \n' ' ' <"$err")"
      else
        cat "$err" >&2
        exit "$rc"
      fi
    done
  done
done

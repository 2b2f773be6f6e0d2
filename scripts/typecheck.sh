#!/usr/bin/env bash
# mypy cannot see through the editable-install hook, so give it a shim of symlinks (DESIGN.md):
# .typecheck/pdplan/<pkg> -> ../../<folder>; errors are reported against the real files.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .typecheck/pdplan
pkgs=()
for folder in profiles sim realrun planner reports; do
  ln -sfn "../../$folder" ".typecheck/pdplan/$folder"
  pkgs+=(-p "pdplan.$folder")
done
MYPYPATH=.typecheck .venv/bin/mypy --namespace-packages --explicit-package-bases "${pkgs[@]}"

#!/usr/bin/env bash
# Create .venv and install pdplan with everything the tests need, from scratch.
# torch goes in first, pinned to the CPU build: an unpinned torch requirement on a machine without
# torch pulls several GB of CUDA packages. Set PDPLAN_TORCH to choose another torch spec.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "${PDPLAN_TORCH:-torch==2.13.0}"
fi
"${pip[@]}" -e ".[torch,serve,dev]"
echo "pdplan installed in .venv ($(.venv/bin/pdplan --version 2>/dev/null || echo ok))"

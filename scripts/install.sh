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
# The simulator's hot modules compiled with mypyc (~4-5 min on 2 cores; about 1.8x faster, the same
# results to the bit). Optional: without it the simulator runs as pure Python. PDPLAN_SIM_BUILD=0 skips it.
if [ "${PDPLAN_SIM_BUILD:-1}" != 0 ]; then
  .venv/bin/python scripts/build_sim.py || echo "install: the compiled simulator was not built; it runs as pure Python (slower, same results)"
fi
echo "pdplan installed in .venv ($(.venv/bin/pdplan --version 2>/dev/null || echo ok))"

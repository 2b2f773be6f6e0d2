#!/usr/bin/env bash
# Written by pdplan deploy --target sglang; engine versions: sglang 0.5.9, sglang-router 0.3.2.
# Node 1 of 2 (${NODE1}): decode-2. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# decode-2
python3 -m sglang.launch_server \
    --model-path meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE1}" \
    --port 30000 \
    --tp-size 2 \
    --mem-fraction-static 0.85 \
    --max-running-requests 128 \
    --max-total-tokens 200000 \
    --base-gpu-id 0 \
    --disaggregation-mode decode \
    --disaggregation-transfer-backend nixl \
    --enable-metrics \
    > logs/decode-2.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

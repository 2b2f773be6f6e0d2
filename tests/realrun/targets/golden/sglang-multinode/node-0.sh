#!/usr/bin/env bash
# Written by pdplan deploy --target sglang; engine versions: sglang 0.5.9, sglang-router 0.3.2.
# Node 0 of 6 (${NODE0}): prefill-0. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
: "${NODE2:?set NODE2 in hosts.env to the address of node 2}"
: "${NODE3:?set NODE3 in hosts.env to the address of node 3}"
: "${NODE4:?set NODE4 in hosts.env to the address of node 4}"
: "${NODE5:?set NODE5 in hosts.env to the address of node 5}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# prefill-0
python3 -m sglang.launch_server \
    --model-path deepseek-ai/DeepSeek-V3 \
    --host "${NODE0}" \
    --port 30000 \
    --tp-size 16 \
    --dp-size 16 \
    --enable-dp-attention \
    --ep-size 16 \
    --mem-fraction-static 0.8 \
    --max-running-requests 64 \
    --max-prefill-tokens 16384 \
    --chunked-prefill-size 8192 \
    --base-gpu-id 0 \
    --disaggregation-mode prefill \
    --disaggregation-transfer-backend mooncake \
    --disaggregation-bootstrap-port 8998 \
    --dist-init-addr "${NODE0}:5000" \
    --nnodes 2 \
    --node-rank 0 \
    --enable-metrics \
    > logs/prefill-0.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

#!/usr/bin/env bash
# Written by pdplan deploy --target sglang; engine versions: sglang 0.5.9, sglang-router 0.3.2.
# Node 0 of 2 (${NODE0}): prefill-0, prefill-1, decode-0, decode-1. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# prefill-0
python3 -m sglang.launch_server \
    --model-path meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30000 \
    --tp-size 2 \
    --mem-fraction-static 0.85 \
    --max-running-requests 16 \
    --max-prefill-tokens 8192 \
    --chunked-prefill-size -1 \
    --base-gpu-id 0 \
    --disaggregation-mode prefill \
    --disaggregation-transfer-backend nixl \
    --disaggregation-bootstrap-port 8998 \
    --enable-metrics \
    > logs/prefill-0.log 2>&1 &

# prefill-1
python3 -m sglang.launch_server \
    --model-path meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30001 \
    --tp-size 2 \
    --mem-fraction-static 0.85 \
    --max-running-requests 16 \
    --max-prefill-tokens 8192 \
    --chunked-prefill-size -1 \
    --base-gpu-id 2 \
    --disaggregation-mode prefill \
    --disaggregation-transfer-backend nixl \
    --disaggregation-bootstrap-port 8999 \
    --enable-metrics \
    > logs/prefill-1.log 2>&1 &

# decode-0
python3 -m sglang.launch_server \
    --model-path meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30002 \
    --tp-size 2 \
    --mem-fraction-static 0.85 \
    --max-running-requests 128 \
    --max-total-tokens 200000 \
    --base-gpu-id 4 \
    --disaggregation-mode decode \
    --disaggregation-transfer-backend nixl \
    --enable-metrics \
    > logs/decode-0.log 2>&1 &

# decode-1
python3 -m sglang.launch_server \
    --model-path meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30003 \
    --tp-size 2 \
    --mem-fraction-static 0.85 \
    --max-running-requests 128 \
    --max-total-tokens 200000 \
    --base-gpu-id 6 \
    --disaggregation-mode decode \
    --disaggregation-transfer-backend nixl \
    --enable-metrics \
    > logs/decode-1.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

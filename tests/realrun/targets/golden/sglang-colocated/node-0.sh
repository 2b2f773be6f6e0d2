#!/usr/bin/env bash
# Written by pdplan deploy --target sglang; engine versions: sglang 0.5.9, sglang-router 0.3.2.
# Node 0 of 1 (${NODE0}): colocated-0, colocated-1, colocated-2, colocated-3. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# colocated-0
python3 -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30000 \
    --tp-size 1 \
    --mem-fraction-static 0.88 \
    --max-running-requests 64 \
    --max-prefill-tokens 8192 \
    --chunked-prefill-size 2048 \
    --max-total-tokens 150000 \
    --base-gpu-id 0 \
    --enable-metrics \
    > logs/colocated-0.log 2>&1 &

# colocated-1
python3 -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30001 \
    --tp-size 1 \
    --mem-fraction-static 0.88 \
    --max-running-requests 64 \
    --max-prefill-tokens 8192 \
    --chunked-prefill-size 2048 \
    --max-total-tokens 150000 \
    --base-gpu-id 1 \
    --enable-metrics \
    > logs/colocated-1.log 2>&1 &

# colocated-2
python3 -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30002 \
    --tp-size 1 \
    --mem-fraction-static 0.88 \
    --max-running-requests 64 \
    --max-prefill-tokens 8192 \
    --chunked-prefill-size 2048 \
    --max-total-tokens 150000 \
    --base-gpu-id 2 \
    --enable-metrics \
    > logs/colocated-2.log 2>&1 &

# colocated-3
python3 -m sglang.launch_server \
    --model-path Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30003 \
    --tp-size 1 \
    --mem-fraction-static 0.88 \
    --max-running-requests 64 \
    --max-prefill-tokens 8192 \
    --chunked-prefill-size 2048 \
    --max-total-tokens 150000 \
    --base-gpu-id 3 \
    --enable-metrics \
    > logs/colocated-3.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

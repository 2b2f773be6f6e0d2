#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0.
# Node 1 of 2 (${NODE1}): decode-2. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# decode-2
CUDA_VISIBLE_DEVICES=0,1 VLLM_NIXL_SIDE_CHANNEL_HOST="${NODE1}" VLLM_NIXL_SIDE_CHANNEL_PORT=5600 vllm serve meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE1}" \
    --port 30000 \
    --tensor-parallel-size 2 \
    --max-num-seqs 128 \
    --gpu-memory-utilization 0.85 \
    --block-size 16 \
    --num-gpu-blocks-override 12500 \
    --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}' \
    > logs/decode-2.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

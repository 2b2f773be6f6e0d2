#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0.
# Node 0 of 2 (${NODE0}): prefill-0, prefill-1, decode-0, decode-1. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# prefill-0
CUDA_VISIBLE_DEVICES=0,1 VLLM_NIXL_SIDE_CHANNEL_HOST="${NODE0}" VLLM_NIXL_SIDE_CHANNEL_PORT=5600 vllm serve meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30000 \
    --tensor-parallel-size 2 \
    --max-num-seqs 16 \
    --gpu-memory-utilization 0.85 \
    --no-enable-chunked-prefill \
    --max-num-batched-tokens 8192 \
    --max-model-len 8192 \
    --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}' \
    > logs/prefill-0.log 2>&1 &

# prefill-1
CUDA_VISIBLE_DEVICES=2,3 VLLM_NIXL_SIDE_CHANNEL_HOST="${NODE0}" VLLM_NIXL_SIDE_CHANNEL_PORT=5700 vllm serve meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30001 \
    --tensor-parallel-size 2 \
    --max-num-seqs 16 \
    --gpu-memory-utilization 0.85 \
    --no-enable-chunked-prefill \
    --max-num-batched-tokens 8192 \
    --max-model-len 8192 \
    --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}' \
    > logs/prefill-1.log 2>&1 &

# decode-0
CUDA_VISIBLE_DEVICES=4,5 VLLM_NIXL_SIDE_CHANNEL_HOST="${NODE0}" VLLM_NIXL_SIDE_CHANNEL_PORT=5800 vllm serve meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30002 \
    --tensor-parallel-size 2 \
    --max-num-seqs 128 \
    --gpu-memory-utilization 0.85 \
    --block-size 16 \
    --num-gpu-blocks-override 12500 \
    --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}' \
    > logs/decode-0.log 2>&1 &

# decode-1
CUDA_VISIBLE_DEVICES=6,7 VLLM_NIXL_SIDE_CHANNEL_HOST="${NODE0}" VLLM_NIXL_SIDE_CHANNEL_PORT=5900 vllm serve meta-llama/Llama-3.1-8B-Instruct \
    --host "${NODE0}" \
    --port 30003 \
    --tensor-parallel-size 2 \
    --max-num-seqs 128 \
    --gpu-memory-utilization 0.85 \
    --block-size 16 \
    --num-gpu-blocks-override 12500 \
    --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}' \
    > logs/decode-1.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

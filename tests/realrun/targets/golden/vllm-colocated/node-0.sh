#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0, sglang-router 0.3.2.
# Node 0 of 1 (${NODE0}): colocated-0, colocated-1, colocated-2, colocated-3. Run it on that node.
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
mkdir -p logs
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# colocated-0
CUDA_VISIBLE_DEVICES=0 vllm serve Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30000 \
    --tensor-parallel-size 1 \
    --max-num-seqs 64 \
    --gpu-memory-utilization 0.9 \
    --enable-chunked-prefill \
    --max-num-batched-tokens 2048 \
    --block-size 16 \
    --num-gpu-blocks-override 9375 \
    > logs/colocated-0.log 2>&1 &

# colocated-1
CUDA_VISIBLE_DEVICES=1 vllm serve Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30001 \
    --tensor-parallel-size 1 \
    --max-num-seqs 64 \
    --gpu-memory-utilization 0.9 \
    --enable-chunked-prefill \
    --max-num-batched-tokens 2048 \
    --block-size 16 \
    --num-gpu-blocks-override 9375 \
    > logs/colocated-1.log 2>&1 &

# colocated-2
CUDA_VISIBLE_DEVICES=2 vllm serve Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30002 \
    --tensor-parallel-size 1 \
    --max-num-seqs 64 \
    --gpu-memory-utilization 0.9 \
    --enable-chunked-prefill \
    --max-num-batched-tokens 2048 \
    --block-size 16 \
    --num-gpu-blocks-override 9375 \
    > logs/colocated-2.log 2>&1 &

# colocated-3
CUDA_VISIBLE_DEVICES=3 vllm serve Qwen/Qwen2.5-7B-Instruct \
    --host "${NODE0}" \
    --port 30003 \
    --tensor-parallel-size 1 \
    --max-num-seqs 64 \
    --gpu-memory-utilization 0.9 \
    --enable-chunked-prefill \
    --max-num-batched-tokens 2048 \
    --block-size 16 \
    --num-gpu-blocks-override 9375 \
    > logs/colocated-3.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

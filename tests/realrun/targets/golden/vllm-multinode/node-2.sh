#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0.
# Node 2 of 6 (${NODE2}): decode-0. Run it on that node.
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

# decode-0
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 vllm serve deepseek-ai/DeepSeek-V3 \
    --host "${NODE2}" \
    --port 30000 \
    --tensor-parallel-size 1 \
    --data-parallel-size 16 \
    --data-parallel-size-local 8 \
    --data-parallel-address "${NODE2}" \
    --data-parallel-rpc-port 5000 \
    --enable-expert-parallel \
    --max-num-seqs 256 \
    --gpu-memory-utilization 0.8 \
    --block-size 16 \
    --num-gpu-blocks-override 31250 \
    --kv-transfer-config '{"kv_connector":"MooncakeConnector","kv_role":"kv_consumer"}' \
    > logs/decode-0.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

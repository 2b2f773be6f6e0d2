#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0.
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
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 VLLM_MOONCAKE_BOOTSTRAP_PORT=8998 vllm serve deepseek-ai/DeepSeek-V3 \
    --host "${NODE0}" \
    --port 30000 \
    --tensor-parallel-size 1 \
    --data-parallel-size 16 \
    --data-parallel-size-local 8 \
    --data-parallel-address "${NODE0}" \
    --data-parallel-rpc-port 5000 \
    --enable-expert-parallel \
    --max-num-seqs 64 \
    --gpu-memory-utilization 0.8 \
    --enable-chunked-prefill \
    --max-num-batched-tokens 8192 \
    --kv-transfer-config '{"kv_connector":"MooncakeConnector","kv_role":"kv_producer"}' \
    > logs/prefill-0.log 2>&1 &

# The first engine to exit stops the others on this node (see logs/).
wait -n

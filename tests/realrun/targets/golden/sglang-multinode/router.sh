#!/usr/bin/env bash
# Written by pdplan deploy --target sglang; engine versions: sglang 0.5.9, sglang-router 0.3.2.
# The router, on node 0, once the engines answer /health (see the node scripts' logs).
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
: "${NODE2:?set NODE2 in hosts.env to the address of node 2}"
: "${NODE3:?set NODE3 in hosts.env to the address of node 3}"
: "${NODE4:?set NODE4 in hosts.env to the address of node 4}"
: "${NODE5:?set NODE5 in hosts.env to the address of node 5}"
exec python3 -m sglang_router.launch_router \
    --pd-disaggregation \
    --prefill "http://${NODE0}:30000" 8998 \
    --decode "http://${NODE2}:30000" \
    --decode "http://${NODE4}:30000" \
    --policy round_robin \
    --host "${NODE0}" \
    --port 8000

#!/usr/bin/env bash
# Written by pdplan deploy --target sglang; engine versions: sglang 0.5.9, sglang-router 0.3.2.
# The router, on node 0, once the engines answer /health (see the node scripts' logs).
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
exec python3 -m sglang_router.launch_router \
    --worker-urls "http://${NODE0}:30000" "http://${NODE0}:30001" "http://${NODE0}:30002" "http://${NODE0}:30003" \
    --policy round_robin \
    --host "${NODE0}" \
    --port 8000

#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0.
# The proxy, on node 0, once the engines answer /health (see the node scripts' logs).
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
: "${NODE2:?set NODE2 in hosts.env to the address of node 2}"
: "${NODE3:?set NODE3 in hosts.env to the address of node 3}"
: "${NODE4:?set NODE4 in hosts.env to the address of node 4}"
: "${NODE5:?set NODE5 in hosts.env to the address of node 5}"
exec python3 "${VLLM_SRC}/tests/v1/kv_connector/nixl_integration/toy_proxy_server.py" \
    --host "${NODE0}" \
    --port 8000 \
    --prefiller-hosts "${NODE0}" \
    --prefiller-ports 30000 \
    --decoder-hosts "${NODE2}" "${NODE4}" \
    --decoder-ports 30000 30000

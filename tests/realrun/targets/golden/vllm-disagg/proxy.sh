#!/usr/bin/env bash
# Written by pdplan deploy --target vllm; engine versions: vllm 0.11.0.
# The proxy, on node 0, once the engines answer /health (see the node scripts' logs).
set -euo pipefail
cd "$(dirname "$0")"
source ./hosts.env
: "${NODE0:?set NODE0 in hosts.env to the address of node 0}"
: "${NODE1:?set NODE1 in hosts.env to the address of node 1}"
exec python3 "${VLLM_SRC}/tests/v1/kv_connector/nixl_integration/toy_proxy_server.py" \
    --host "${NODE0}" \
    --port 8000 \
    --prefiller-hosts "${NODE0}" "${NODE0}" \
    --prefiller-ports 30000 30001 \
    --decoder-hosts "${NODE0}" "${NODE0}" "${NODE1}" \
    --decoder-ports 30002 30003 30000

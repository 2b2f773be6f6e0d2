"""The text of a launch bundle: ``hosts.env``, one script per node, the router/proxy script, README.

Scripts are plain bash: ``set -euo pipefail``, addresses from ``hosts.env``, one background process
per engine with its log under ``logs/``; the first engine to exit stops the others on that node (so a
crash is seen, not hidden behind a half-running node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pdplan.realrun.targets.layout import Placement, TargetPlan, node_var

_HEADER = "#!/usr/bin/env bash\n# Written by pdplan deploy --target {target}; engine versions: {versions}.\n"


def _versions(versions: Mapping[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def hosts_env(num_nodes: int) -> str:
    """Node addresses. One node: 127.0.0.1 (nothing listens beyond this host). More: to be filled."""
    lines = ["# Address of each node; every script sources this file. Values from the environment win."]
    for node in range(num_nodes):
        default = "127.0.0.1" if num_nodes == 1 else ""
        lines.append(f'{node_var(node)}="${{{node_var(node)}:-{default}}}"')
    return "\n".join(lines) + "\n"


def _require_hosts(num_nodes: int) -> str:
    return "".join(
        f': "${{{node_var(n)}:?set {node_var(n)} in hosts.env to the address of node {n}}}"\n'
        for n in range(num_nodes)
    )


def node_script(
    target: str, node: int, num_nodes: int, commands: Sequence[tuple[str, str]], versions: Mapping[str, str]
) -> str:
    """Start ``commands`` (name, rendered command) in the background on node ``node``; wait."""
    names = ", ".join(name for name, _ in commands) or "nothing"
    out = [
        _HEADER.format(target=target, versions=_versions(versions)),
        f"# Node {node} of {num_nodes} (${{{node_var(node)}}}): {names}. Run it on that node.\n",
        'set -euo pipefail\ncd "$(dirname "$0")"\nsource ./hosts.env\n',
        _require_hosts(num_nodes),
        "mkdir -p logs\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n",
    ]
    for name, command in commands:
        out.append(f"\n# {name}\n{command} \\\n    > logs/{name}.log 2>&1 &\n")
    out.append("\n# The first engine to exit stops the others on this node (see logs/).\nwait -n\n")
    return "".join(out)


def router_script(
    target: str, command: str, versions: Mapping[str, str], num_nodes: int, what: str = "router"
) -> str:
    return "".join(
        [
            _HEADER.format(target=target, versions=_versions(versions)),
            f"# The {what}, on node 0, once the engines answer /health (see the node scripts' logs).\n",
            'set -euo pipefail\ncd "$(dirname "$0")"\nsource ./hosts.env\n',
            _require_hosts(num_nodes),
            f"exec {command}\n",
        ]
    )


def readme(
    target: str,
    plan: TargetPlan,
    placements: Sequence[Placement],
    num_nodes: int,
    notes: Sequence[str],
    versions: Mapping[str, str],
    front: str = "router.sh",
) -> str:
    """What was generated, where each instance runs, how to start it, what differs from the plan."""
    lines = [
        f"# {plan.mode} deployment of {plan.model_path} on {target}",
        "",
        f"Written by `pdplan deploy --target {target}` for {_versions(versions)} (flags checked against "
        "pdplan's per-version table, `pdplan.realrun.targets.flags`).",
        "",
        f"{len(placements)} instances on {num_nodes} node(s) of {plan.settings.gpus_per_node} GPUs"
        + (f" ({plan.hardware})" if plan.hardware else "")
        + ":",
        "",
        "| instance | nodes | GPUs | port | bootstrap |",
        "|---|---|---|---|---|",
    ]
    for p in placements:
        nodes = ",".join(str(n) for n in p.nodes)
        gpus = f"{p.base_gpu}..{p.base_gpu + p.gpus_per_node - 1}" + (" on each" if len(p.nodes) > 1 else "")
        boot = str(p.bootstrap_port) if p.role == "prefill" else "-"
        lines.append(f"| {p.name} | {nodes} | {gpus} | {p.port} | {boot} |")
    lines += [
        "",
        "## Run",
        "",
        "1. Fill in `hosts.env` (one address per node; a one-node plan defaults to 127.0.0.1).",
        "2. On node k: `bash node-k.sh` (logs under `logs/`).",
        f"3. On node 0: `bash {front}`; the endpoint is `http://$NODE0:{plan.ports.router}`.",
        "",
    ]
    if notes:
        lines += ["## Where the launch differs from the plan", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)

"""A local deployment as the Summary shows it: the endpoint, how long it took to become ready, and
every process with its role, port, device and log (read from ``deploy.json``, which
``pdplan deploy --target local`` keeps current: see ``pdplan.realrun.supervisor``).

The report is written once the deployment is ready, so ``status`` is what it was then; the
processes' exit codes say which had already stopped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pdplan.reports.rundir import RunData
from pdplan.reports.section import Item, Paragraph, Table
from pdplan.reports.units import MISSING, fmt_s

ROLE_ORDER = ("router", "prefill", "decode", "colocated")
HEADER = (
    "process",
    "role",
    "PID",
    "URL",
    "port",
    "bootstrap port",
    "device",
    "threads",
    "CPUs",
    "state",
    "log",
)


def _text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return MISSING
    if isinstance(value, list):
        return _cpus(value)
    return str(value)


def _cpus(values: list[Any]) -> str:
    """CPU ids as ranges: [0, 1, 2, 5] → '0-2, 5'."""
    try:
        ids = sorted({int(v) for v in values})
    except (TypeError, ValueError):
        return ", ".join(str(v) for v in values)
    ranges: list[str] = []
    start = prev = ids[0]
    for cpu in [*ids[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ", ".join(ranges)


def _ident(value: Any) -> str:
    """A PID, port or thread count: the exact whole number (never '21.6k')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING
    return str(int(value))


def _state(proc: dict[str, Any]) -> str:
    code = proc.get("exit_code")
    if code is None:
        return "running"
    return "exited 0" if code == 0 else f"exited {code}"


def deploy_sentence(run: RunData) -> str:
    """'Deployment running: 3 processes (1 router, 1 prefill, 1 decode); endpoint …; ready in 4.2 s.'"""
    deploy = run.deploy or {}
    procs = [p for p in deploy.get("processes") or [] if isinstance(p, dict)]
    roles = Counter(str(p.get("role") or "?") for p in procs)
    order = [r for r in ROLE_ORDER if r in roles] + sorted(set(roles) - set(ROLE_ORDER))
    parts = ", ".join(f"{roles[r]} {r}" for r in order)
    status = deploy.get("status") or "unknown"
    text = f"Deployment {status}"
    if deploy.get("mode"):
        text += f" ({deploy['mode']})"
    text += f": {len(procs)} process{'es' if len(procs) != 1 else ''}" + (f" ({parts})" if parts else "")
    text += f"; endpoint {deploy['endpoint']}" if deploy.get("endpoint") else "; no endpoint recorded"
    ready = deploy.get("ready_s")
    if isinstance(ready, (int, float)) and not isinstance(ready, bool):
        text += f"; ready in {fmt_s(ready)} (first process started → router reports every worker healthy)"
    else:
        text += "; not ready when this report was written"
    if deploy.get("updated_at"):
        text += f"; recorded at {deploy['updated_at']}"
    text += "."
    if deploy.get("cpu_split"):
        text += f" CPUs: {deploy['cpu_split']}."
    text += f" Stop it with: pdplan deploy --stop {run.path}"
    return text


def process_table(deploy: dict[str, Any]) -> Table:
    procs = [p for p in deploy.get("processes") or [] if isinstance(p, dict)]
    rows = tuple(
        (
            _text(p.get("name")),
            _text(p.get("role")),
            _ident(p.get("pid")),
            _text(p.get("url")),
            _ident(p.get("port")),
            _ident(p.get("bootstrap_port")),
            _text(p.get("device")),
            _ident(p.get("threads")),
            _text(p.get("cpus")),
            _state(p),
            _text(p.get("log")),
        )
        for p in procs
    )
    return Table(
        "The deployment's processes (deploy.json); logs are under the run directory's logs/.",
        HEADER,
        rows,
    )


def deploy_items(run: RunData) -> list[Item]:
    """The deployment paragraph and its process table; nothing when the run has no deploy.json."""
    if run.deploy is None:
        return []
    items: list[Item] = [Paragraph(deploy_sentence(run))]
    if run.deploy.get("processes"):
        items.append(process_table(run.deploy))
    return items

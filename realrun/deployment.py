"""From a plan's instance counts to the processes of a local deployment (``pdplan deploy --target local``).

``DeploymentSpec`` is the part of a plan a deployment needs (the CLI converts ``plan.yaml`` into it,
so this package does not depend on the planner). :func:`build_launch` maps every instance to one
worker process on one device — CPU cores split between the workers, or GPUs round-robin — allocates
ports, and writes the command lines of the workers and of the production ``sglang-router``:

- disaggregated: ``python -m sglang_router.launch_router --pd-disaggregation --prefill URL
  BOOTSTRAP_PORT ... --decode URL ...``;
- colocated: the router's regular mode, ``--worker-urls URL ...``.

Router flags chosen here, and why: ``--policy`` is the router policy closest to the plan's (see
:func:`router_policy`; ``least_loaded`` → ``cache_aware`` set to route by load alone for colocated
workers, ``power_of_two`` for a PD role); ``--max-payload-size`` 16 MiB so huge
bodies get 413 at the router, before any worker reads them;
``--health-check-interval-secs 2 --health-failure-threshold 2`` so a dead worker leaves the rotation
within about four seconds; ``--disable-circuit-breaker`` because sglang-router 0.3.2 charges a
decode worker's 503 to its prefill partner too, so a burst of ten overload answers would take the
only prefill worker out for 60 s; its retries (default five, with backoff) stay on, which moves a
request off a worker that died before answering.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field, replace

from pdplan.profiles.errors import DeployError

ROUTER_MODULE = "sglang_router.launch_router"


@dataclass(frozen=True)
class InstanceGroup:
    """``instances`` identical workers of one role (``prefill``, ``decode`` or ``colocated``)."""

    role: str
    instances: int
    tp: int = 1
    max_batch_size: int = 32
    max_batch_tokens: int = 2048
    max_kv_tokens: int | None = None
    policy: str | None = None
    chunk_tokens: int | None = None  # prefill slices (chunked prefill); None: whole prompts


@dataclass(frozen=True)
class DeploymentSpec:
    """What to run: ``model`` (catalog name, config.json or HF directory), ``mode``, the groups."""

    model: str
    mode: str
    groups: tuple[InstanceGroup, ...]
    weights: str | None = None
    tokenizer: str = "bytes"
    seed: int = 0
    router_policy: str = "least_loaded"  # the plan's (simulator's) policy name
    #: the plan's ``cache:`` L1 as each prefill / colocated worker's prefix cache (page size in
    #: tokens; ``None``: no cache). L2/L3 tiers are not run locally (``prefix_cache_page_tokens``).
    prefix_cache_page_tokens: int | None = None

    def __post_init__(self) -> None:
        roles = [g.role for g in self.groups]
        want = ["prefill", "decode"] if self.mode == "disaggregated" else ["colocated"]
        if self.mode not in ("disaggregated", "colocated") or sorted(roles) != sorted(want):
            raise DeployError(f"plan mode {self.mode!r} with roles {roles}; expected roles {want}")
        for group in self.groups:
            if group.instances < 1:
                raise DeployError(f"{group.role}.instances={group.instances}; expected at least 1")
            if group.tp != 1:
                raise DeployError(
                    f"{group.role}.tp={group.tp}: the local target runs each instance as one process on "
                    "one device (tp=1); tensor parallelism needs an engine target (sglang or vllm)"
                )


@dataclass(frozen=True)
class LaunchOptions:
    devices: tuple[str, ...] = ("cpu",)
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 128
    kv_timeout_s: float = 60.0
    bootstrap_timeout_s: float = 3.0
    default_kv_tokens: int = 65536
    python: str = sys.executable


@dataclass(frozen=True)
class ProcessSpec:
    """One process to start: its command line, where it listens, what it was given."""

    name: str
    role: str
    argv: tuple[str, ...]
    url: str
    port: int
    bootstrap_port: int | None = None
    device: str = "cpu"
    threads: int = 0
    cpus: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_name(self) -> str:
        return f"logs/{self.name}.log"


@dataclass(frozen=True)
class LaunchPlan:
    """Workers, the router (on an internal port) and the gateway in front of it (the public port)."""

    workers: tuple[ProcessSpec, ...]
    router: ProcessSpec
    mode: str
    cpu_note: str
    gateway: ProcessSpec | None = None

    @property
    def endpoint(self) -> str:
        return (self.gateway or self.router).url

    @property
    def processes(self) -> tuple[ProcessSpec, ...]:
        return (*self.workers, self.router, *((self.gateway,) if self.gateway else ()))


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class _Ports:
    """Sequential free ports after the router's, skipping any in use (readable and predictable)."""

    def __init__(self, host: str, after: int) -> None:
        self.host, self.next = host, after + 1

    def take(self) -> int:
        while self.next <= 65535:
            port, self.next = self.next, self.next + 1
            if _port_free(self.host, port):
                return port
        raise DeployError("no free TCP port left above --port")


def _cpu_split(num_workers: int) -> tuple[list[tuple[int, ...]], str]:
    """Cores per worker (contiguous blocks; the remainder goes to the first workers)."""
    cores = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if num_workers > len(cores):
        # Oversubscribed: pinning would tie two workers to one core while another idles, so leave
        # placement to the OS scheduler and give each worker one torch thread.
        note = f"{num_workers} workers share {len(cores)} cores (oversubscribed): 1 thread each, not pinned"
        return [() for _ in range(num_workers)], note
    base, extra = divmod(len(cores), num_workers)
    sets, start = [], 0
    for i in range(num_workers):
        size = base + (1 if i < extra else 0)
        sets.append(tuple(cores[start : start + size]))
        start += size
    note = f"{len(cores)} cores split over {num_workers} workers ({base}{'+' if extra else ''} each)"
    return sets, note


def _worker_argv(
    spec: DeploymentSpec, group: InstanceGroup, proc: ProcessSpec, opts: LaunchOptions, peers: list[str]
) -> list[str]:
    argv = [
        opts.python, "-m", "pdplan.realrun.worker",
        "--role", group.role, "--model", spec.model, "--name", proc.name,
        "--host", opts.host, "--port", str(proc.port),
        "--device", proc.device, "--threads", str(proc.threads),
        "--seed", str(spec.seed), "--tokenizer", spec.tokenizer,
        "--max-batch-size", str(group.max_batch_size), "--max-batch-tokens", str(group.max_batch_tokens),
        "--max-kv-tokens", str(group.max_kv_tokens or opts.default_kv_tokens),
        "--max-queue", str(opts.max_queue),
        "--kv-timeout-s", f"{opts.kv_timeout_s:g}", "--bootstrap-timeout-s", f"{opts.bootstrap_timeout_s:g}",
    ]  # fmt: skip
    if group.chunk_tokens:
        argv += ["--chunk-tokens", str(group.chunk_tokens)]
        if group.role == "colocated" and group.policy == "chunked":
            argv += ["--schedule", "chunked"]
    if proc.cpus:
        argv += ["--cpus", ",".join(str(c) for c in proc.cpus)]
    if proc.bootstrap_port is not None:
        argv += ["--bootstrap-port", str(proc.bootstrap_port)]
    if spec.weights:
        argv += ["--weights", spec.weights]
    if group.role == "decode":
        argv += ["--prefill-peers", ",".join(peers)]
    elif spec.prefix_cache_page_tokens is not None:  # the cache lives on prefill / colocated workers
        argv += ["--prefix-cache", "--prefix-cache-page-tokens", str(spec.prefix_cache_page_tokens)]
    return argv


def parse_devices(text: str) -> tuple[str, ...]:
    """``--devices`` as ``--help`` writes it: ``cpu``, ``cuda`` (GPU 0), ``cuda:0,1`` (GPUs 0 and 1;
    ``cuda:0,cuda:1`` and ``0,1`` mean the same).

    Raises:
        DeployError: empty, mixed with cpu, repeated, or not a GPU index.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["cpu"]:
        return ("cpu",)
    if not parts:
        raise DeployError("--devices is empty; expected cpu or cuda:0,1,...")
    devices: list[str] = []
    for part in parts:
        index = part.removeprefix("cuda").removeprefix(":") if part.startswith("cuda") else part
        index = index or "0"
        if not index.isdigit() or len(index) > 3:
            raise DeployError(f"--devices {text!r}: {part!r} is not a GPU; expected cpu, or cuda:0,1,...")
        devices.append(f"cuda:{int(index)}")
    if len(set(devices)) != len(devices):
        raise DeployError(f"--devices {text!r}: a GPU is listed twice")
    return tuple(devices)


def build_launch(spec: DeploymentSpec, opts: LaunchOptions) -> LaunchPlan:
    """Processes and command lines for ``spec`` (nothing is started).

    Raises:
        DeployError: no devices, an unknown device string, or no free ports.
    """
    if not opts.devices:
        raise DeployError("--devices is empty; expected cpu or cuda:0,1,...")
    on_cpu = opts.devices == ("cpu",)
    if not on_cpu and any(not d.startswith("cuda:") or not d[5:].isdigit() for d in opts.devices):
        raise DeployError(f"--devices {','.join(opts.devices)}: expected cpu, or a list of cuda:N")
    order = [g for role in ("prefill", "decode", "colocated") for g in spec.groups if g.role == role]
    total = sum(g.instances for g in order)
    cpu_sets, note = _cpu_split(total)
    ports = _Ports(opts.host, opts.port)
    workers: list[ProcessSpec] = []
    for group in order:
        for i in range(group.instances):
            n = len(workers)
            port = ports.take()
            threads = max(1, len(cpu_sets[n]))
            proc = ProcessSpec(
                name=f"{group.role}-{i}",
                role=group.role,
                argv=(),
                url=f"http://{opts.host}:{port}",
                port=port,
                bootstrap_port=ports.take() if group.role == "prefill" else None,
                device="cpu" if on_cpu else opts.devices[n % len(opts.devices)],
                threads=threads,
                cpus=cpu_sets[n] if on_cpu else (),
                env={"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"},
            )
            peers = [f"{opts.host}:{w.bootstrap_port}" for w in workers if w.role == "prefill"]
            workers.append(replace(proc, argv=tuple(_worker_argv(spec, group, proc, opts, peers))))
    if not _port_free(opts.host, opts.port):
        raise DeployError(f"--port {opts.port} is already in use on {opts.host}")
    router = _router(spec.mode, workers, opts, ports.take(), ports.take(), spec.router_policy)
    gateway = _gateway(spec, workers, router, opts)
    if not on_cpu:
        note = f"{total} workers on {len(opts.devices)} GPU(s) round-robin; " + note
    return LaunchPlan(tuple(workers), router, spec.mode, note, gateway)


def gateway_capacity(spec: DeploymentSpec, max_queue: int) -> int:
    """Requests the deployment can hold at once: running batches plus waiting queues (the decode or
    colocated workers'; in PD mode also no more than the prefill queues can hold plus what decodes)."""
    batch = sum(g.instances * g.max_batch_size for g in spec.groups if g.role in ("decode", "colocated"))
    hold = batch + sum(g.instances * max_queue for g in spec.groups if g.role in ("decode", "colocated"))
    prefill = [g for g in spec.groups if g.role == "prefill"]
    if prefill:
        hold = min(hold, batch + sum(g.instances * max_queue for g in prefill))
    return max(1, hold)


def _gateway(
    spec: DeploymentSpec, workers: list[ProcessSpec], router: ProcessSpec, opts: LaunchOptions
) -> ProcessSpec:
    name = spec.model
    if "/" in name or name.endswith(".json"):
        path = name.rstrip("/")
        name = path.rsplit("/", 1)[-1].removesuffix(".json")
        if name == "config":  # a config.json: the directory names the model
            name = path.rsplit("/", 2)[-2] if path.count("/") >= 1 else name
    metrics_port = router.argv[router.argv.index("--prometheus-port") + 1]
    argv = [
        opts.python, "-m", "pdplan.realrun.gateway", "--host", opts.host, "--port", str(opts.port),
        "--router", router.url, "--router-metrics", f"http://{opts.host}:{metrics_port}/metrics",
        "--model-name", name, "--max-inflight", str(gateway_capacity(spec, opts.max_queue)),
        "--max-body-bytes", str(MAX_PAYLOAD_BYTES), "--worker-urls", *(w.url for w in workers),
    ]  # fmt: skip
    return ProcessSpec("gateway", "gateway", tuple(argv), f"http://{opts.host}:{opts.port}", opts.port)


#: sglang-router's ``cache_aware`` flags that make it a least-loaded router (:func:`router_policy`).
LEAST_LOADED_FLAGS = (
    "--balance-abs-threshold",
    "0",
    "--balance-rel-threshold",
    "1.0",
    "--cache-threshold",
    "1.0",
)


def router_policy(plan_policy: str, instances: int, mode: str = "disaggregated") -> str:
    """The sglang-router 0.3.2 policy closest to the plan's router policy (the simulator's), for a
    role with ``instances`` workers, in a ``disaggregated`` or ``colocated`` deployment.

    The router offers ``random``, ``round_robin``, ``cache_aware``, ``power_of_two`` and ``manual``
    (``--help``; in PD mode per role with ``--prefill-policy`` / ``--decode-policy``).
    ``least_loaded`` (the simulator's default: the instance with the least outstanding work) maps,
    for colocated workers, to ``cache_aware`` with :data:`LEAST_LOADED_FLAGS`: that policy is the
    only one whose load is the router's own count of requests in flight, raised when it sends one
    and lowered when it ends (``load_incremented`` in sgl-router's ``routers/http/router.rs``), and
    its ``select_worker`` (``policies/cache_aware.rs``) sends a request to the worker with the
    fewest when ``max - min > abs`` and ``max > min × rel`` — with 0 and 1.0 whenever they differ —
    and, when they are equal, to the longest prefix match above ``--cache-threshold`` (1.0: never)
    or else again the least loaded. ``power_of_two`` (the mapping before issue 11's sixth pass)
    compares loads the router polls from ``/get_load`` every ``--worker-startup-check-interval``
    (1 s here, its smallest): between two polls every request saw the same loads, and in a measured
    colocated run 9 of 40 requests went to the worker with more requests in flight. A PD role keeps
    ``power_of_two`` (one set of balance flags serves both roles there; not measured). With two
    workers ``power_of_two`` draws both. The router refuses ``power_of_two`` for a role with one
    worker ("requires at least 2 workers"), where every policy is the same, so that role gets
    ``round_robin``. ``round_robin`` and ``random`` keep their names.
    """
    if instances < 2:
        return "round_robin"
    if plan_policy == "least_loaded" and mode == "colocated":
        return "cache_aware"  # with LEAST_LOADED_FLAGS
    names = {"least_loaded": "power_of_two", "round_robin": "round_robin", "random": "random"}
    names["cache_aware"] = "cache_aware"  # the simulator's is sglang-router's (pdplan.sim.cache_router)
    return names.get(plan_policy, "power_of_two")


#: Largest request body the router accepts (``--max-payload-size``); larger ones get 413 there.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024


def _router(
    mode: str, workers: list[ProcessSpec], opts: LaunchOptions, port: int, metrics_port: int, plan_policy: str
) -> ProcessSpec:
    argv = [opts.python, "-m", ROUTER_MODULE]
    count = {role: sum(w.role == role for w in workers) for role in ("prefill", "decode", "colocated")}
    if mode == "disaggregated":
        argv.append("--pd-disaggregation")
        for w in workers:
            if w.role == "prefill":
                argv += ["--prefill", w.url, str(w.bootstrap_port)]
        for w in workers:
            if w.role == "decode":
                argv += ["--decode", w.url]
        argv += [
            "--prefill-policy", router_policy(plan_policy, count["prefill"]),
            "--decode-policy", router_policy(plan_policy, count["decode"]),
        ]  # fmt: skip
    else:
        argv += ["--worker-urls", *(w.url for w in workers)]
        policy = router_policy(plan_policy, count["colocated"], "colocated")
        argv += ["--policy", policy]
        if policy == "cache_aware" and plan_policy == "least_loaded":
            argv += LEAST_LOADED_FLAGS
    argv += [
        "--host", opts.host, "--port", str(port),
        "--max-payload-size", str(MAX_PAYLOAD_BYTES),
        "--prometheus-host", opts.host, "--prometheus-port", str(metrics_port),
        "--worker-startup-check-interval", "1",
        "--health-check-interval-secs", "2", "--health-failure-threshold", "2",
        "--disable-circuit-breaker", "--log-level", "warn",
    ]  # fmt: skip
    return ProcessSpec("router", "router", tuple(argv), f"http://{opts.host}:{port}", port)


def check_cpu_memory(spec: DeploymentSpec, opts: LaunchOptions) -> str:
    """On CPU, refuse a deployment whose weights alone do not fit the memory available now; return a
    one-line memory summary (weights + the most KV the workers may hold; float32 on CPU).

    Raises:
        DeployError: the workers' weights exceed ``MemAvailable``.
    """
    from pdplan.profiles.model_spec import load_model_spec

    model = load_model_spec(spec.model)
    num_workers = sum(g.instances for g in spec.groups)
    weights = model.weight_bytes("float32") * num_workers
    kv = sum(
        (g.max_kv_tokens or opts.default_kv_tokens) * g.instances * model.kv_bytes_per_token("float32")
        for g in spec.groups
    )
    available = _mem_available_bytes()
    gib = 1 << 30
    summary = f"memory: weights {weights / gib:.2f} GiB + KV up to {kv / gib:.2f} GiB"
    if available is None:
        return summary
    if weights > available:
        raise DeployError(
            f"{num_workers} workers of {model.name} need {weights / gib:.1f} GiB for weights alone "
            f"(float32 on CPU); {available / gib:.1f} GiB is available"
        )
    return f"{summary} of {available / gib:.1f} GiB available"


def _mem_available_bytes() -> int | None:
    from pathlib import Path

    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None

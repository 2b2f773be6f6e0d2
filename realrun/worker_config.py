"""``WorkerConfig``: everything one worker process is started with (the flags of ``realrun.worker``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error

# A worker's roles; defined here, not in the torch-importing engine, so that `pdplan deploy`
# checks a plan without importing torch (4 s of start-up for a one-line error).
ROLES = ("prefill", "decode", "colocated")

KV_TRANSPORTS = ("auto", "tcp")


#: Longest hand-off or bootstrap wait a worker accepts (an hour: anything longer is a mistake).
MAX_TIMEOUT_S = 3600.0


def check_timeout(flag: str, value: float) -> float:
    """A finite, positive number of seconds, at most :data:`MAX_TIMEOUT_S` (``nan`` and ``inf``
    would remove the limit altogether).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{flag} {value!r}: expected a finite number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise ConfigError(f"{flag} {value!r}: expected seconds in (0, {MAX_TIMEOUT_S:g}]")
    return float(value)


def check_max_queue(value: int) -> int:
    """``--max-queue``: waiting requests before 503, 0 … 100000.

    Raises:
        ConfigError: a negative or absurd value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
        raise ConfigError(f"--max-queue {value!r}: expected an integer in [0, 100000]")
    return value


def parse_peer(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) → ``(host, port)``.

    Raises:
        ConfigError: not of that form.
    """
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--prefill-peers {text!r}: expected host:port")
    return host, int(port)


@dataclass(frozen=True)
class WorkerConfig:
    """One worker. ``model`` is a catalog name, a config.json or an HF directory; ``weights`` an HF
    directory with safetensors (``None``: seeded random weights); ``tokenizer`` a directory or
    ``bytes``. ``max_kv_tokens`` is the KV the worker may hold (prefill: computed KV waiting to be
    taken). ``threads`` is torch's intra-op thread count; ``cpus`` the cores the process is pinned to."""

    role: str
    model: str
    name: str = "worker"
    host: str = "127.0.0.1"
    port: int = 30000
    bootstrap_port: int | None = None
    device: str = "cpu"
    dtype: str | None = None
    seed: int = 0
    weights: str | None = None
    tokenizer: str = "bytes"
    threads: int = 1
    cpus: tuple[int, ...] = ()
    max_batch_size: int = 32
    max_batch_tokens: int = 2048
    max_kv_tokens: int = 65536
    max_queue: int = 128
    kv_timeout_s: float = 60.0
    bootstrap_timeout_s: float = 3.0
    kv_transport: str = "auto"
    parent_pid: int | None = None
    max_connections: int = 512
    chunk_tokens: int | None = None
    schedule: str = "prefill-first"
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    #: A decode worker's prefill bootstrap addresses ``host:port`` (the only peers it connects to).
    prefill_peers: tuple[str, ...] = ()
    #: Keep a prefix cache (prefill and colocated roles; ``realrun.prefix_cache``) of pages this size.
    prefix_cache: bool = False
    prefix_cache_page_tokens: int = 16

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise choices_error("--role", self.role, ROLES)
        if self.kv_transport not in KV_TRANSPORTS:
            raise choices_error("--kv-transport", self.kv_transport, KV_TRANSPORTS)
        for field in (
            "port",
            "threads",
            "max_batch_size",
            "max_batch_tokens",
            "max_kv_tokens",
            "max_connections",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{field.replace('_', '-')} {value!r}: expected a positive integer")
        if self.port > 65535:
            raise ConfigError(f"--port {self.port}: expected at most 65535")
        check_max_queue(self.max_queue)
        for name in ("kv_timeout_s", "bootstrap_timeout_s", "header_timeout_s", "body_timeout_s"):
            check_timeout(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.chunk_tokens is not None and (isinstance(self.chunk_tokens, bool) or self.chunk_tokens < 1):
            raise ConfigError(f"--chunk-tokens {self.chunk_tokens!r}: expected a positive integer")
        if self.schedule not in ("prefill-first", "chunked"):
            raise choices_error("--schedule", self.schedule, ("prefill-first", "chunked"))
        if self.schedule == "chunked" and self.chunk_tokens is None:
            raise ConfigError("--schedule chunked needs --chunk-tokens")
        page = self.prefix_cache_page_tokens
        if isinstance(page, bool) or not isinstance(page, int) or not 1 <= page <= self.max_kv_tokens:
            raise ConfigError(
                f"--prefix-cache-page-tokens {page!r}: expected an integer in [1, --max-kv-tokens]"
            )
        if self.prefix_cache and self.role == "decode":
            raise ConfigError(
                "--prefix-cache: a decode worker keeps no prefix cache (the cache lives on the "
                "prefill workers, as SGLang's PD decode servers run without the radix cache)"
            )
        for peer in self.prefill_peers:
            parse_peer(peer)
        if self.role == "decode" and not self.prefill_peers:
            raise ConfigError(
                "--prefill-peers: a decode worker needs the bootstrap addresses (host:port) of its "
                "deployment's prefill workers; it connects to no other"
            )
        if self.role == "prefill":
            if self.bootstrap_port is None or not 1 <= self.bootstrap_port <= 65535:
                raise ConfigError(f"--bootstrap-port {self.bootstrap_port!r}: a prefill worker needs one")
            if self.bootstrap_port == self.port:
                raise ConfigError(f"--bootstrap-port {self.bootstrap_port} equals --port")

    @property
    def disaggregation_mode(self) -> str:
        """SGLang's name for the role (``null`` for a colocated server)."""
        return "null" if self.role == "colocated" else self.role

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpus"] = list(self.cpus)
        data["prefill_peers"] = list(self.prefill_peers)
        return data

"""``WorkerConfig``: everything one worker process is started with (the flags of ``realrun.worker``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.realrun.engine import ROLES

KV_TRANSPORTS = ("auto", "tcp")


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

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise choices_error("--role", self.role, ROLES)
        if self.kv_transport not in KV_TRANSPORTS:
            raise choices_error("--kv-transport", self.kv_transport, KV_TRANSPORTS)
        for field in ("port", "threads", "max_batch_size", "max_batch_tokens", "max_kv_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{field.replace('_', '-')} {value!r}: expected a positive integer")
        if self.port > 65535:
            raise ConfigError(f"--port {self.port}: expected at most 65535")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue {self.max_queue}: expected ≥ 0")
        if self.kv_timeout_s <= 0 or self.bootstrap_timeout_s <= 0:
            raise ConfigError(
                f"--kv-timeout-s {self.kv_timeout_s} / --bootstrap-timeout-s {self.bootstrap_timeout_s}: "
                "expected positive seconds"
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
        return data

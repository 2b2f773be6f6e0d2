"""Per-request records (the ``requests.csv`` schema) and the result of one simulation.

During a run, ``Ledger`` keeps one flat ``array.array`` per field, indexed by ``req_id`` (8 bytes a
field, no object per request); ``Ledger.finish`` turns them into numpy arrays without copying.
Times are seconds relative to the first arrival; NaN where an event never happened (a rejected
request has no prefill, an unfinished one no finish).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pdplan.sim.prefix_cache import CacheStats

STATUS_NAMES = ("ok", "rejected", "failed", "unfinished")
OK, REJECTED, FAILED, UNFINISHED = range(4)
REQUEST_COLUMNS = (
    "req_id",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "first_token_s",
    "finish_s",
    "prefill_start_s",
    "prefill_end_s",
    "decode_start_s",
    "status",
)
_TIME_FIELDS = ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "decode_start_s")
#: Per-request internals kept for the time series: KV held on the decode (or colocated) instance
#: from ``kv_start_s``; KV leaves the prefill instance at ``transfer_end_s`` (disaggregated only).
_DETAIL_FIELDS = ("kv_start_s", "transfer_end_s")


@dataclass(frozen=True, eq=False)
class Records:
    """One row per request; ``status_code`` indexes ``STATUS_NAMES``."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prefill_start_s: np.ndarray
    prefill_end_s: np.ndarray
    decode_start_s: np.ndarray
    status_code: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def status(self) -> np.ndarray:
        """Status names (``ok`` | ``rejected`` | ``failed`` | ``unfinished``)."""
        return np.asarray(STATUS_NAMES)[self.status_code]

    def columns(self) -> dict[str, np.ndarray]:
        """The ``requests.csv`` columns by name (what ``summarize`` accepts, like a DataFrame)."""
        out = {
            "req_id": np.arange(len(self)),
            "arrival_s": self.arrival_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
        }
        out.update({name: getattr(self, name) for name in _TIME_FIELDS})
        out["status"] = self.status
        return {name: out[name] for name in REQUEST_COLUMNS}

    def to_frame(self) -> pd.DataFrame:
        """The ``requests.csv`` table."""
        return pd.DataFrame(self.columns())


@dataclass(frozen=True, eq=False)
class SimResult:
    """What ``simulate`` returns.

    ``instances``/``kv_capacity_tokens``/``busy_s`` are per role (``prefill``, ``decode`` or
    ``colocated``); ``busy_s`` sums, over the role's instances, the time a batch was running.
    ``instance`` maps a role to each request's instance index (−1 when not routed).
    """

    records: Records
    mode: str
    instances: dict[str, int]
    kv_capacity_tokens: dict[str, int]
    busy_s: dict[str, float]
    end_s: float
    instance: dict[str, np.ndarray]
    kv_start_s: np.ndarray
    transfer_end_s: np.ndarray
    events: int = 0
    notes: tuple[str, ...] = field(default=())
    #: requests evicted from a decode/colocated batch and recomputed (``admission: preempt``)
    preemptions: int = 0
    #: what the prefix cache did (``pdplan.sim.prefix_cache.CacheStats``); ``None`` without one
    cache: CacheStats | None = None

    @property
    def utilisation(self) -> dict[str, float]:
        """Busy fraction per role over the simulated time (0 when nothing ran)."""
        out = {}
        for role, busy in self.busy_s.items():
            span = self.instances[role] * self.end_s
            out[role] = float(busy / span) if span > 0 else 0.0
        return out


class Ledger:
    """Mutable per-request fields during a run (flat arrays indexed by ``req_id``)."""

    def __init__(self, num_requests: int) -> None:
        nan = array("d", [math.nan])
        self.first_token_s = nan * num_requests
        self.finish_s = nan * num_requests
        self.prefill_start_s = nan * num_requests
        self.prefill_end_s = nan * num_requests
        self.decode_start_s = nan * num_requests
        self.kv_start_s = nan * num_requests
        self.transfer_end_s = nan * num_requests
        self.rejected = array("b", bytes(num_requests))

    def finish(
        self, arrival_s: np.ndarray, prompt: np.ndarray, output: np.ndarray
    ) -> tuple[Records, np.ndarray, np.ndarray]:
        """Records plus the (kv_start_s, transfer_end_s) detail arrays."""
        times = {
            name: np.frombuffer(getattr(self, name), dtype=np.float64)
            for name in _TIME_FIELDS + _DETAIL_FIELDS
        }
        rejected = np.frombuffer(self.rejected, dtype=np.int8).astype(bool)
        status = np.where(np.isnan(times["finish_s"]), UNFINISHED, OK).astype(np.int8)
        status[rejected] = REJECTED
        records = Records(
            arrival_s=arrival_s,
            prompt_tokens=prompt,
            output_tokens=output,
            status_code=status,
            **{name: times[name] for name in _TIME_FIELDS},
        )
        return records, times["kv_start_s"], times["transfer_end_s"]

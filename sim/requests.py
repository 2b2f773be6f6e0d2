"""``Requests``: the request list one run replays — arrival times and token counts.

The list is drawn (or read from a trace) *before* the run, so every candidate of a search and the
real benchmark see identical traffic (common random numbers). Arrays, not objects: a million
requests are three numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.prefix import PrefixBlocks


@dataclass(frozen=True, eq=False)
class Requests:
    """Arrival times (s, non-decreasing) and prompt/output token counts (≥ 1) of each request.

    ``req_id`` is the index into these arrays. Arrays are converted to float64/int64 and made
    read-only on construction. ``prefix`` (optional) names each prompt's prefix blocks
    (``pdplan.sim.prefix``): what a prefix cache can reuse; ``None`` means no prompt shares one.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix: PrefixBlocks | None = None

    def __post_init__(self) -> None:
        arrival = np.array(self.arrival_s, dtype=np.float64)
        columns: dict[str, np.ndarray] = {"arrival_s": arrival}
        for name in ("prompt_tokens", "output_tokens"):
            raw = np.asarray(getattr(self, name))
            if raw.size and not np.all(np.isfinite(raw.astype(np.float64))):
                raise ConfigError(f"requests: {name} has non-finite values; expected integers ≥ 1")
            values = np.array(raw, dtype=np.int64)
            if raw.size and np.any(values != raw):
                raise ConfigError(f"requests: {name} has non-integer values; expected integers ≥ 1")
            columns[name] = values
        sizes = {name: col.shape for name, col in columns.items()}
        if len(set(sizes.values())) != 1 or arrival.ndim != 1:
            raise ConfigError(f"requests: columns must be 1-D and of equal length; got {sizes}")
        if arrival.size and not np.all(np.isfinite(arrival)):
            raise ConfigError("requests: arrival_s has non-finite values")
        if arrival.size > 1 and np.any(np.diff(arrival) < 0):
            first = int(np.argmax(np.diff(arrival) < 0)) + 1
            raise ConfigError(
                f"requests: arrival_s must be non-decreasing; request {first} arrives at "
                f"{arrival[first]!r} s, before request {first - 1} at {arrival[first - 1]!r} s"
            )
        for name in ("prompt_tokens", "output_tokens"):
            col = columns[name]
            if col.size and col.min() < 1:
                bad = int(np.argmin(col))
                raise ConfigError(f"requests: {name}[{bad}]={int(col[bad])}; expected ≥ 1")
        for name, col in columns.items():
            col.setflags(write=False)
            object.__setattr__(self, name, col)
        if self.prefix is not None:
            self.prefix.check_prompts(columns["prompt_tokens"])

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def span_s(self) -> float:
        """Time from the first to the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def mean_rate_rps(self) -> float:
        """(n − 1) / span: the rate whose mean inter-arrival gap matches this list's.

        Raises:
            ConfigError: fewer than two requests, or all arriving at the same instant.
        """
        if len(self) < 2 or self.span_s <= 0:
            raise ConfigError(
                f"requests: a mean rate needs ≥ 2 requests spread in time; got {len(self)} "
                f"spanning {self.span_s} s"
            )
        return (len(self) - 1) / self.span_s

    def scaled(self, time_scale: float) -> Requests:
        """Arrival times (relative to the first) multiplied by ``time_scale`` (2 = half the rate).

        Raises:
            ConfigError: ``time_scale`` not positive and finite.
        """
        if not (np.isfinite(time_scale) and time_scale > 0):
            raise ConfigError(f"time_scale={time_scale!r}; expected a positive number")
        start = self.arrival_s[0] if len(self) else 0.0
        return Requests(
            (self.arrival_s - start) * time_scale, self.prompt_tokens, self.output_tokens, self.prefix
        )

    def at_rate(self, rate_rps: float) -> Requests:
        """Arrival times rescaled so that :attr:`mean_rate_rps` equals ``rate_rps``.

        Raises:
            ConfigError: ``rate_rps`` not positive and finite, or no rate to rescale from.
        """
        if not (np.isfinite(rate_rps) and rate_rps > 0):
            raise ConfigError(f"rate={rate_rps!r} req/s; expected a positive number")
        return self.scaled(self.mean_rate_rps / rate_rps)

    def head(self, num_requests: int) -> Requests:
        """The first ``num_requests`` requests."""
        n = max(0, int(num_requests))
        prefix = None if self.prefix is None else self.prefix.head(n)
        return Requests(self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n], prefix)

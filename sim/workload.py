"""Synthetic workloads: arrival processes and length distributions, drawn into ``Requests``.

A ``Workload`` is what the ``arrival`` / ``prompt_tokens`` / ``output_tokens`` keys of a workload
YAML describe (DESIGN.md); ``workload_from_dict`` reads that mapping strictly. Trace replay and
empirical lengths read files, so the CLI layer resolves them (``pdplan.planner.inputs``) and hands
this module plain values. Everything is drawn before the run from one seeded
``numpy.random.Generator``: arrivals first, then prompt lengths, then output lengths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.validate import MAX_RATE_RPS, MAX_REQUESTS, MAX_SPAN_S, MAX_TOKENS, integer, number
from pdplan.sim.closed_loop import ClosedLoop
from pdplan.sim.prefix_workload import PrefixSpec, apply_prefix, prefix_from_dict
from pdplan.sim.requests import Requests

ARRIVAL_PROCESSES = ("poisson", "gamma", "constant", "closed")
LENGTH_DISTS = ("fixed", "uniform", "lognormal", "empirical")
_ARRIVAL_KEYS = {
    "poisson": ("rate_rps",),
    "gamma": ("rate_rps", "cv"),
    "constant": ("rate_rps",),
    "closed": ("concurrency", "think_time_s"),
}
_LENGTH_KEYS = {
    "fixed": ("value",),
    "uniform": ("min", "max"),
    "lognormal": ("mean", "cv", "min", "max"),
    "empirical": ("values",),
}
_WORKLOAD_KEYS = (
    "num_requests",
    "duration_s",
    "seed",
    "arrival",
    "prompt_tokens",
    "output_tokens",
    "name",
    "prefix",
)


@dataclass(frozen=True)
class Arrival:
    """An arrival process: ``poisson``, ``gamma`` (inter-arrival CV ``cv``; > 1 is bursty) or
    ``constant`` (evenly spaced), all with mean rate ``rate_rps``."""

    process: str
    rate_rps: float
    cv: float = 1.0

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES[:3]:
            raise choices_error("arrival process", self.process, ARRIVAL_PROCESSES)
        number("arrival.rate_rps", self.rate_rps, low=0, low_open=True, high=MAX_RATE_RPS)
        # gamma's shape is 1/cv²: outside [1e-3, 1e3] it is 1e6 or 1e-6, beyond physical traffic
        number("arrival.cv", self.cv, low=1e-3, high=1e3)

    def with_rate(self, rate_rps: float) -> Arrival:
        return Arrival(self.process, rate_rps, self.cv)

    def gaps_s(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` inter-arrival gaps."""
        if self.process == "constant":
            return np.full(size, 1.0 / self.rate_rps)
        if self.process == "poisson":
            return rng.exponential(1.0 / self.rate_rps, size)
        # Gamma with shape k = 1/cv² and scale 1/(rate·k): mean 1/rate, CV cv (cv = 1 is Poisson).
        shape = 1.0 / (self.cv * self.cv)
        return rng.gamma(shape, 1.0 / (self.rate_rps * shape), size)


@dataclass(frozen=True)
class Lengths:
    """A token-count distribution; every draw is an integer ≥ 1.

    ``fixed`` (``value``), ``uniform`` (integers in [``min``, ``max``]), ``lognormal`` (``mean``
    and ``cv`` of the unclipped distribution, then rounded and clipped to [``min``, ``max``]),
    ``empirical`` (resampled with replacement from ``values``).
    """

    dist: str
    value: int | None = None
    mean: float | None = None
    cv: float | None = None
    min: int = 1
    max: int | None = None
    values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.dist not in LENGTH_DISTS:
            raise choices_error("length dist", self.dist, LENGTH_DISTS)
        if self.dist == "fixed":
            integer(f"{self.dist}.value", self.value, low=1, high=MAX_TOKENS)
        if self.dist in ("uniform", "lognormal"):
            integer(f"{self.dist}.min", self.min, low=1, high=MAX_TOKENS)
            if self.max is not None:
                integer(f"{self.dist}.max", self.max, low=self.min, high=MAX_TOKENS)
        if self.dist == "uniform" and self.max is None:
            raise ConfigError("uniform lengths need max (and min, default 1)")
        if self.dist == "lognormal":
            number("lognormal.mean", self.mean, low=0, low_open=True, high=MAX_TOKENS)
            number("lognormal.cv", self.cv, low=0, low_open=True, high=100)
        if self.dist == "empirical":
            if not self.values:
                raise ConfigError("empirical lengths need a non-empty list of values")
            if len(self.values) > MAX_REQUESTS:
                count = len(self.values)
                raise ConfigError(f"empirical lengths: {count} values; the limit is {MAX_REQUESTS}")
            if min(self.values) < 1 or max(self.values) > MAX_TOKENS:
                bad = min(self.values) if min(self.values) < 1 else max(self.values)
                raise ConfigError(f"empirical lengths: value {bad}; expected integers in [1, {MAX_TOKENS}]")

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` token counts (int64)."""
        if self.dist == "fixed":
            assert self.value is not None
            return np.full(size, self.value, dtype=np.int64)
        if self.dist == "uniform":
            assert self.max is not None
            return rng.integers(self.min, self.max, size, endpoint=True, dtype=np.int64)
        if self.dist == "empirical":
            return rng.choice(np.asarray(self.values, dtype=np.int64), size)
        assert self.mean is not None and self.cv is not None
        # Lognormal with mean m and CV c: σ² = ln(1 + c²), μ = ln m − σ²/2.
        sigma2 = math.log1p(self.cv * self.cv)
        raw = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), size)
        upper = self.max if self.max is not None else np.iinfo(np.int64).max // 2
        return np.clip(np.rint(raw), self.min, upper).astype(np.int64)


@dataclass(frozen=True)
class Workload:
    """A synthetic workload: ``num_requests`` (or every arrival within ``duration_s``), the arrival
    process and the two length distributions, drawn with ``seed``."""

    arrival: Arrival
    prompt_tokens: Lengths
    output_tokens: Lengths
    num_requests: int | None = None
    duration_s: float | None = None
    seed: int = 0
    name: str = ""
    #: closed-loop clients instead of timed arrivals (``arrival: {process: closed, ...}``); the
    #: ``arrival`` field is then unused and the drawn arrival times are all 0.
    closed_loop: ClosedLoop | None = None
    #: shared prefixes (``prefix: {kind: system_prompt | multi_turn, ...}``,
    #: ``pdplan.sim.prefix_workload``): prompts become prefix + drawn length, with block ids
    prefix: PrefixSpec | None = None

    def __post_init__(self) -> None:
        if self.closed_loop is not None and self.num_requests is None:
            raise ConfigError("workload: a closed-loop workload needs num_requests (not duration_s)")
        if (self.num_requests is None) == (self.duration_s is None):
            raise ConfigError(
                f"workload: set exactly one of num_requests and duration_s (got num_requests="
                f"{self.num_requests!r}, duration_s={self.duration_s!r})"
            )
        if self.num_requests is not None:
            integer("workload.num_requests", self.num_requests, low=1, high=MAX_REQUESTS)
        if self.duration_s is not None:
            number("workload.duration_s", self.duration_s, low=0, low_open=True, high=MAX_SPAN_S)
            expected = self.duration_s * self.arrival.rate_rps
            if expected > MAX_REQUESTS:
                raise ConfigError(
                    f"workload.duration_s={self.duration_s:g} at {self.arrival.rate_rps:g} req/s is "
                    f"about {expected:.3g} requests; the limit is {MAX_REQUESTS}"
                )
        integer("workload.seed", self.seed, low=0, high=2**63 - 1)

    def with_rate(self, rate_rps: float) -> Workload:
        """The same workload at mean arrival rate ``rate_rps``.

        Raises:
            ConfigError: a closed-loop workload (its rate follows from the latencies).
        """
        from dataclasses import replace

        if self.closed_loop is not None:
            raise ConfigError(
                "a closed-loop workload has no arrival rate to set; change arrival.concurrency instead"
            )

        return replace(self, arrival=self.arrival.with_rate(rate_rps))


def draw_requests(workload: Workload, rng: np.random.Generator | None = None) -> Requests:
    """Draw the request list; the first request arrives at 0.

    Args:
        workload: what to draw.
        rng: the generator to draw from; ``None`` means ``default_rng(workload.seed)``.
    """
    rng = np.random.default_rng(workload.seed) if rng is None else rng
    arrival = workload.arrival
    if workload.closed_loop is not None:
        assert workload.num_requests is not None
        n = workload.num_requests
        times = np.zeros(n)  # issued during the run (pdplan.sim.closed_loop)
    elif workload.num_requests is not None:
        n = workload.num_requests
        times = np.concatenate(([0.0], np.cumsum(arrival.gaps_s(rng, n - 1))))
    else:
        assert workload.duration_s is not None
        chunks, last, horizon = [np.zeros(1)], 0.0, workload.duration_s
        while last <= horizon:
            size = max(64, int(1.1 * (horizon - last) * arrival.rate_rps) + 64)
            block = last + np.cumsum(arrival.gaps_s(rng, size))
            chunks.append(block)
            last = float(block[-1])
        times = np.concatenate(chunks)
        times = times[times <= horizon]
        n = times.size
    prompt = workload.prompt_tokens.draw(rng, n)
    output = workload.output_tokens.draw(rng, n)
    if workload.prefix is not None:
        prompt, blocks = apply_prefix(workload.prefix, prompt, output, rng)
        return Requests(times, prompt, output, blocks)
    return Requests(times, prompt, output)


# --- strict reading of the YAML mapping ---------------------------------------------------------
def workload_from_dict(data: Mapping[str, Any]) -> Workload:
    """A ``Workload`` from the mapping a workload YAML holds (no ``trace`` key: see planner).

    Raises:
        ConfigError: unknown or missing keys (naming the valid ones), bad values.
    """
    _check_keys("workload", data, _WORKLOAD_KEYS)
    for key in ("arrival", "prompt_tokens", "output_tokens"):
        if key not in data:
            raise ConfigError(f"workload: missing key {key!r}")
    prefix = prefix_from_dict(data["prefix"]) if data.get("prefix") is not None else None
    arrival = _mapping("workload.arrival", data["arrival"])
    process = arrival.get("process")
    if process not in _ARRIVAL_KEYS:
        raise choices_error("workload.arrival.process", process, ARRIVAL_PROCESSES)
    _check_keys(f"workload.arrival ({process})", arrival, ("process", *_ARRIVAL_KEYS[process]))
    if process == "closed":
        if "concurrency" not in arrival:
            raise ConfigError("workload.arrival (closed): missing key 'concurrency'")
        return Workload(
            arrival=Arrival("constant", 1.0),
            prompt_tokens=lengths_from_dict("prompt_tokens", data["prompt_tokens"]),
            output_tokens=lengths_from_dict("output_tokens", data["output_tokens"]),
            num_requests=data.get("num_requests"),
            duration_s=None if data.get("duration_s") is None else _number("duration_s", data["duration_s"]),
            seed=data.get("seed", 0),
            name=str(data.get("name") or ""),
            closed_loop=ClosedLoop(arrival["concurrency"], arrival.get("think_time_s", 0.0)),
            prefix=prefix,
        )
    if "rate_rps" not in arrival:
        raise ConfigError("workload.arrival: missing key 'rate_rps'")
    return Workload(
        arrival=Arrival(
            str(process),
            _number("arrival.rate_rps", arrival["rate_rps"]),
            _number("arrival.cv", arrival.get("cv", 1.0)),
        ),
        prompt_tokens=lengths_from_dict("prompt_tokens", data["prompt_tokens"]),
        output_tokens=lengths_from_dict("output_tokens", data["output_tokens"]),
        num_requests=data.get("num_requests"),
        duration_s=None if data.get("duration_s") is None else _number("duration_s", data["duration_s"]),
        seed=data.get("seed", 0),
        name=str(data.get("name") or ""),
        prefix=prefix,
    )


def lengths_from_dict(field: str, raw: Any) -> Lengths:
    """A ``Lengths`` from ``{dist: ..., ...}`` (strict keys per distribution)."""
    spec = _mapping(f"workload.{field}", raw)
    dist = spec.get("dist")
    if dist not in _LENGTH_KEYS:
        raise choices_error(f"workload.{field}.dist", dist, LENGTH_DISTS)
    _check_keys(f"workload.{field} ({dist})", spec, ("dist", *_LENGTH_KEYS[dist]))
    kwargs: dict[str, Any] = {k: v for k, v in spec.items() if k != "dist"}
    for key in ("mean", "cv"):
        if key in kwargs:
            kwargs[key] = _number(f"{field}.{key}", kwargs[key])
    if "values" in kwargs:
        values = kwargs["values"]
        if not isinstance(values, (list, tuple)) or not all(_is_int(v) for v in values):
            raise ConfigError(f"workload.{field}.values: expected a list of integers")
        kwargs["values"] = tuple(int(v) for v in values)
    try:
        return Lengths(str(dist), **kwargs)
    except ConfigError as err:
        raise ConfigError(f"workload.{field}: {err}") from None


def _check_keys(where: str, data: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {list(valid)}")


def _mapping(where: str, raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ConfigError(f"{field}={value!r}; expected a number")
    return float(value)

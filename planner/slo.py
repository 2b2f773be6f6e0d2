"""SLOs: ``--slo "ttft=1s,tpot=50ms,ttft_p99=2s"`` parsed into a frozen ``SLO``.

Vocabulary (DESIGN.md): a bare metric (``ttft``, ``tpot``, ``e2e``) is a *per-request* threshold —
a request attains the SLO when it meets all of them, and ``--attainment`` (default 0.9) is the
fraction of requests that must. ``<metric>_p<q>`` constrains the q-th percentile instead. Values
need a unit, ``s`` or ``ms``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.summary import SLO_METRICS, percentile_key

DEFAULT_ATTAINMENT = 0.9
_KEY = re.compile(r"^(?P<metric>[a-z0-9]+?)(?:_p(?P<q>\d+(?:\.\d+)?))?$")
_VALUE = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[-+]?\d+))?(?P<unit>ms|s)$")
_HUGE, _HUGE_SEEN = 1e300, 1e200  # stand-in for +inf inside np.percentile, and what reads as inf
MAX_SLO_MS = 7 * 86_400_000.0  # a week: a threshold beyond it is a typo, not an SLO
_FORMAT = "expected comma-separated metric=value pairs such as ttft=1s,tpot=50ms,ttft_p99=2s"


@dataclass(frozen=True)
class SLO:
    """Per-request thresholds (ms by metric) and percentile thresholds ``(metric, q, ms)``."""

    per_request_ms: Mapping[str, float] = field(default_factory=dict)
    percentile_ms: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.per_request_ms and not self.percentile_ms:
            raise ConfigError(f"slo: no thresholds; {_FORMAT}")
        for metric, limit in self.per_request_ms.items():
            _check(metric, limit)
        for metric, q, limit in self.percentile_ms:
            _check(metric, limit)
            if not 0 < q < 100:
                raise ConfigError(f"slo: {metric}_p{q:g}; expected a percentile strictly between 0 and 100")
        object.__setattr__(self, "per_request_ms", dict(self.per_request_ms))

    @property
    def spec(self) -> str:
        """The canonical string form (ms units), e.g. ``ttft=1000ms,tpot=50ms,ttft_p99=2000ms``."""
        parts = [f"{m}={v:g}ms" for m, v in self.per_request_ms.items()]
        parts += [f"{m}_p{q:g}={v:g}ms" for m, q, v in self.percentile_ms]
        return ",".join(parts)

    @property
    def percentiles(self) -> tuple[float, ...]:
        """Percentiles a summary must report to judge this SLO (with the usual 50/90/99)."""
        return tuple(sorted({50.0, 90.0, 99.0, *(q for _, q, _ in self.percentile_ms)}))

    def violations(
        self,
        summary: Mapping[str, Any],
        attainment: float = DEFAULT_ATTAINMENT,
        table: Mapping[str, Any] | None = None,
        warmup_fraction: float = 0.0,
    ) -> list[str]:
        """What the run misses; empty when the SLO holds.

        ``summary`` is ``pdplan.sim.summarize`` with ``slo_ms=self.per_request_ms`` (its
        ``attainment`` counts every measured request; one that is not ``ok`` never attains).
        Percentile thresholds are judged on ``table`` (the requests table) when given, with every
        measured request that is not ``ok`` counted as infinitely slow — as the SLO search does, so
        rejecting requests cannot make a percentile look better; without it, on the summary's
        percentiles (``ok`` requests only, ``percentiles=self.percentiles``).
        """
        out = []
        if self.per_request_ms:
            got = summary.get("attainment")
            if got is None or got < attainment:
                out.append(f"attainment {got if got is not None else 'n/a'} < {attainment:g}")
        latencies = _latencies_ms(table, warmup_fraction) if table is not None else None
        for metric, q, limit in self.percentile_ms:
            if latencies is not None:
                value = _percentile_with_inf(latencies[metric], q)
            else:
                value = (summary.get(f"{metric}_ms") or {}).get(percentile_key(q))
            if value is None or not value <= limit:
                shown = "n/a" if value is None else f"{value:g}"
                out.append(f"{metric}_p{q:g} {shown} ms > {limit:g} ms")
        return out


def _percentile_with_inf(values: np.ndarray, q: float) -> float | None:
    """np.percentile (linear) where +inf entries stay infinite (numpy's lerp turns inf into nan)."""
    if values.size == 0:
        return None
    value = float(np.percentile(np.where(np.isinf(values), _HUGE, values), q))
    return math.inf if value > _HUGE_SEEN else value


def _latencies_ms(table: Mapping[str, Any], warmup_fraction: float) -> dict[str, np.ndarray]:
    """TTFT, TPOT (requests with > 1 output token) and E2E in ms of the measured requests;
    +inf for a request that is not ``ok``."""
    arrival = np.asarray(table["arrival_s"], dtype=np.float64)
    first = np.asarray(table["first_token_s"], dtype=np.float64)
    finish = np.asarray(table["finish_s"], dtype=np.float64)
    outputs = np.asarray(table["output_tokens"], dtype=np.int64)
    ok = np.asarray(table["status"]).astype(str) == "ok"
    keep = np.ones(arrival.size, dtype=bool)
    excluded = math.floor(warmup_fraction * arrival.size)
    if excluded:
        keep[np.argsort(arrival, kind="stable")[:excluded]] = False
    with np.errstate(invalid="ignore"):
        ttft = np.where(ok, (first - arrival) * 1000.0, np.inf)
        e2e = np.where(ok, (finish - arrival) * 1000.0, np.inf)
        tpot = np.where(ok, (finish - first) / np.maximum(outputs - 1, 1) * 1000.0, np.inf)
    return {"ttft": ttft[keep], "e2e": e2e[keep], "tpot": tpot[keep & (outputs > 1)]}


def parse_slo(text: str) -> SLO:
    """Parse ``"ttft=1s,tpot=50ms,ttft_p99=2s"``.

    Raises:
        ConfigError: an empty string, a part that is not ``key=value``, an unknown metric, a value
            without a unit (``s`` or ``ms``), a non-positive value, a key given twice.
    """
    per_request: dict[str, float] = {}
    percentiles: list[tuple[str, float, float]] = []
    seen: set[str] = set()
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--slo {text!r}: {_FORMAT}")
    for part in parts:
        key, sep, raw = (x.strip() for x in part.partition("="))
        key = key.lower()
        match = _KEY.match(key)
        if not sep or match is None:
            raise ConfigError(f"--slo {text!r}: cannot read {part!r}; {_FORMAT}")
        metric = match.group("metric")
        if metric not in SLO_METRICS:
            raise ConfigError(
                f"--slo {text!r}: unknown metric {metric!r}; valid: {', '.join(SLO_METRICS)} "
                f"(optionally with a percentile, e.g. ttft_p99)"
            )
        if key in seen:
            raise ConfigError(f"--slo {text!r}: {key} is given twice")
        seen.add(key)
        value_ms = _value_ms(text, key, raw)
        if match.group("q") is None:
            per_request[metric] = value_ms
        else:
            percentiles.append((metric, float(match.group("q")), value_ms))
    return SLO(per_request, tuple(percentiles))


def _value_ms(text: str, key: str, raw: str) -> float:
    match = _VALUE.match(raw.replace(" ", "").lower())
    if match is None:
        raise ConfigError(
            f"--slo {text!r}: {key}={raw!r}; expected a positive number with a unit, s or ms (e.g. 500ms)"
        )
    exponent = match.group("exp") or "0"
    value = float(f"{match.group('number')}e{exponent}")  # 1e400 reads as inf, not OverflowError
    value_ms = value * (1000.0 if match.group("unit") == "s" else 1.0)
    if not (math.isfinite(value_ms) and value_ms <= MAX_SLO_MS):  # 0 is judged by SLO itself
        raise ConfigError(
            f"--slo {text!r}: {key}={raw!r}; expected a positive time of at most {MAX_SLO_MS / 86_400_000:g} "
            "days"
        )
    return value_ms


def _check(metric: str, limit: float) -> None:
    if metric not in SLO_METRICS:
        raise ConfigError(f"slo: unknown metric {metric!r}; valid: {', '.join(SLO_METRICS)}")
    if not (isinstance(limit, (int, float)) and math.isfinite(limit) and 0 < limit <= MAX_SLO_MS):
        raise ConfigError(f"slo: {metric} threshold {limit!r} ms; expected a positive number")

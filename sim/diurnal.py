"""A day of traffic from a short trace: repeat it, then stretch time to a stated diurnal profile.

The profile is a cosine over the day: rate(t) = mean · (1 + a·cos(2π(t − peak)/day)) with
a = (r − 1)/(r + 1) for a peak-to-trough ratio r, so the day's mean is ``mean_rate_rps``, the peak
is mean·(1 + a) at ``peak_hour`` and the trough mean·(1 − a) twelve hours away. (A single daily
harmonic is the usual first-order model of diurnal load; the Azure traces themselves cover one
hour, so the shape is an assumption stated with its numbers, not a measurement.)

Construction: the trace is repeated back to back (each copy shifted by the trace's span plus one
mean gap) until it holds the day's requests, time-scaled to the day's mean rate, and then each
arrival t is mapped to T with Λ(T) = mean·t, where Λ is the profile's cumulative rate. The map is
monotone, so the order of requests, their prompt and output lengths and the trace's own burstiness
(locally rescaled) are kept; only the slow rate follows the profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.sim.requests import Requests

DAY_S = 86_400.0


@dataclass(frozen=True)
class DiurnalProfile:
    """A cosine day: ``mean_rate_rps``, ``peak_to_trough`` ratio, ``peak_hour`` (0-24), and the
    length of the day (``duration_s``, 24 h by default)."""

    mean_rate_rps: float
    peak_to_trough: float = 3.0
    peak_hour: float = 14.0
    duration_s: float = DAY_S

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_rate_rps) and self.mean_rate_rps > 0):
            raise ConfigError(f"diurnal mean_rate_rps={self.mean_rate_rps!r}; expected > 0")
        if not (math.isfinite(self.peak_to_trough) and self.peak_to_trough >= 1):
            raise ConfigError(f"diurnal peak_to_trough={self.peak_to_trough!r}; expected ≥ 1")
        if not 0 <= self.peak_hour < 24:
            raise ConfigError(f"diurnal peak_hour={self.peak_hour!r}; expected in [0, 24)")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"diurnal duration_s={self.duration_s!r}; expected > 0")

    @property
    def amplitude(self) -> float:
        return (self.peak_to_trough - 1.0) / (self.peak_to_trough + 1.0)

    def rate_rps(self, t_s: np.ndarray | float) -> np.ndarray:
        """The profile's rate at ``t_s`` seconds into the day."""
        phase = 2.0 * np.pi * (np.asarray(t_s, dtype=np.float64) / DAY_S - self.peak_hour / 24.0)
        return self.mean_rate_rps * (1.0 + self.amplitude * np.cos(phase))

    def cumulative(self, t_s: np.ndarray) -> np.ndarray:
        """Λ(t) = ∫₀ᵗ rate: mean·(t + a·day/2π·(sin(2π(t/day − peak)) − sin(−2π·peak)))."""
        t = np.asarray(t_s, dtype=np.float64)
        k = 2.0 * np.pi / DAY_S
        shift = 2.0 * np.pi * self.peak_hour / 24.0
        return self.mean_rate_rps * (t + self.amplitude / k * (np.sin(k * t - shift) - np.sin(-shift)))


def diurnal_day(trace: Requests, profile: DiurnalProfile) -> Requests:
    """``trace`` repeated and stretched to ``profile`` (see the module docstring).

    Raises:
        ConfigError: a trace of fewer than two requests or with no time span.
    """
    n = len(trace)
    if n < 2 or trace.span_s <= 0:
        raise ConfigError(f"a diurnal day needs a trace of ≥ 2 requests over some time; got {n}")
    want = round(profile.mean_rate_rps * profile.duration_s)
    gap = trace.span_s / (n - 1)
    period = trace.span_s + gap
    copies = -(-want // n)
    base = trace.arrival_s - trace.arrival_s[0]
    arrival = (base[None, :] + period * np.arange(copies)[:, None]).ravel()[:want]
    prompt = np.tile(trace.prompt_tokens, copies)[:want]
    output = np.tile(trace.output_tokens, copies)[:want]
    # the repeated trace runs at n / period req/s; at the day's mean rate request i would arrive at
    # about i / mean, where the profile's cumulative rate is arrival · n / period
    target = arrival * (n / period)  # Λ(T) for each request
    grid = np.linspace(0.0, profile.duration_s, int(profile.duration_s) + 1)
    stretched = np.interp(target, profile.cumulative(grid), grid)
    return Requests(stretched, prompt.astype(np.int64), output.astype(np.int64))

"""The latency model: physically shaped cost formulas fitted on a Profile's tables.

Prefill of a batch of sequences, sequence i with ``n_i`` new tokens after ``p_i`` tokens already in
KV (``p_i = 0`` for a plain prefill, > 0 for a chunk of a chunked prefill)::

    prefill_ms = a + b·num_seqs + c·Σ n_i + d·Σ (n_i² + 2·n_i·p_i)

The last term counts query-key pairs (×2): causal self-attention over the new tokens is ≈ n²/2
pairs, attention of the new tokens to the cached prefix n·p pairs. A decode step of ``B``
sequences holding ``C`` context tokens in total::

    decode_ms = e + f·B + g·C

All coefficients are fitted by non-negative least squares on *relative* error, so every prediction
is ≥ 0 and monotone in each term; a profile with constant latencies yields exactly that constant.
Because a decode step adds one token per sequence, k consecutive steps of an unchanged batch cost
k·(e + f·B + g·C) + g·B·k(k−1)/2 — the closed form the simulator uses to advance many steps in
one event.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from pdplan.profiles.errors import ProfileError

PREFILL_TERMS = ("base_ms", "per_seq_ms", "per_token_ms", "per_pair_ms")
DECODE_TERMS = ("base_ms", "per_seq_ms", "per_context_token_ms")


@dataclass(frozen=True)
class FitError:
    """Leave-one-out relative error of a fit, over the points it was fitted on (fractions)."""

    median: float
    max: float
    num_points: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median": round(self.median, 5), "max": round(self.max, 5), "num_points": self.num_points}


@dataclass(frozen=True)
class LatencyModel:
    """Fitted prefill and decode cost; all times in milliseconds."""

    prefill_coef: tuple[float, float, float, float]
    decode_coef: tuple[float, float, float]
    prefill_loo: FitError | None = None
    decode_loo: FitError | None = None

    def __post_init__(self) -> None:
        assert all(c >= 0 for c in self.prefill_coef + self.decode_coef), "coefficients must be ≥ 0"

    # --- prefill ------------------------------------------------------------------------------
    def prefill_ms_sums(self, num_seqs: int, sum_tokens: int, sum_pairs: int) -> float:
        """Prefill time from the batch's sums (``sum_pairs`` = Σ n² + 2·n·p)."""
        a, b, c, d = self.prefill_coef
        return a + b * num_seqs + c * sum_tokens + d * sum_pairs

    def prefill_ms(self, new_tokens: Sequence[int], prior_tokens: Sequence[int] | None = None) -> float:
        """Time of one prefill forward over sequences with these new (and cached) token counts."""
        if prior_tokens is None:
            pairs = sum(n * n for n in new_tokens)
        else:
            pairs = sum(n * n + 2 * n * p for n, p in zip(new_tokens, prior_tokens, strict=True))
        return self.prefill_ms_sums(len(new_tokens), sum(new_tokens), pairs)

    # --- decode -------------------------------------------------------------------------------
    def decode_ms(self, batch_size: int, sum_context: int) -> float:
        """Time of one decode step of ``batch_size`` sequences with ``sum_context`` tokens in KV."""
        e, f, g = self.decode_coef
        return e + f * batch_size + g * sum_context

    def decode_steps_ms(self, batch_size: int, sum_context: int, num_steps: int) -> float:
        """Total time of ``num_steps`` consecutive steps of an unchanged batch (closed form)."""
        e, f, g = self.decode_coef
        k = num_steps
        return k * (e + f * batch_size + g * sum_context) + g * batch_size * k * (k - 1) / 2

    def decode_steps_within(self, batch_size: int, sum_context: int, budget_ms: float) -> int:
        """The largest k ≥ 0 whose ``decode_steps_ms`` is ≤ ``budget_ms`` (inverse of the closed form)."""
        if budget_ms <= 0:
            return 0
        e, f, g = self.decode_coef
        first = e + f * batch_size + g * sum_context
        q = g * batch_size / 2  # k²·q + k·(first − q) ≤ budget
        if q <= 0:
            return int(budget_ms // first) if first > 0 else 2**62
        lin = first - q
        k = int((-lin + math.sqrt(lin * lin + 4 * q * budget_ms)) / (2 * q))
        while k > 0 and self.decode_steps_ms(batch_size, sum_context, k) > budget_ms:
            k -= 1
        while self.decode_steps_ms(batch_size, sum_context, k + 1) <= budget_ms:
            k += 1
        return k

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def constant(cls, prefill_ms: float, decode_ms: float) -> LatencyModel:
        """A model whose every prefill takes ``prefill_ms`` and every decode step ``decode_ms``."""
        return cls((float(prefill_ms), 0.0, 0.0, 0.0), (float(decode_ms), 0.0, 0.0))

    @classmethod
    def fit(
        cls,
        prefill: tuple[ArrayLike, ArrayLike, ArrayLike],
        decode: tuple[ArrayLike, ArrayLike, ArrayLike],
    ) -> LatencyModel:
        """Fit from ``(num_seqs, seq_len, latency_ms)`` and ``(batch_size, context_len, latency_ms)``
        columns (each prefill row: ``num_seqs`` sequences of ``seq_len`` tokens; each decode row:
        ``batch_size`` sequences of ``context_len`` tokens in KV).

        Raises:
            ProfileError: a table with no rows, or a negative or non-finite latency.
        """
        px, py = _prefill_design(*prefill)
        dx, dy = _decode_design(*decode)
        p_coef = _nnls_relative(px, py)
        d_coef = _nnls_relative(dx, dy)
        return cls(
            prefill_coef=(p_coef[0], p_coef[1], p_coef[2], p_coef[3]),
            decode_coef=(d_coef[0], d_coef[1], d_coef[2]),
            prefill_loo=_leave_one_out(px, py),
            decode_loo=_leave_one_out(dx, dy),
        )

    def to_dict(self) -> dict[str, object]:
        """Coefficients and fit errors as written into ``profile.yaml`` under ``latency_model``."""
        out: dict[str, object] = {
            "prefill": {k: float(v) for k, v in zip(PREFILL_TERMS, self.prefill_coef, strict=True)},
            "decode": {k: float(v) for k, v in zip(DECODE_TERMS, self.decode_coef, strict=True)},
        }
        if self.prefill_loo and self.decode_loo:
            out["loo_error"] = {"prefill": self.prefill_loo.to_dict(), "decode": self.decode_loo.to_dict()}
        return out


def _check_latency(name: str, y: np.ndarray) -> None:
    if y.size == 0:
        raise ProfileError(f"{name} table has no rows; a profile needs at least one measured point")
    if not np.all(np.isfinite(y)) or np.any(y < 0):
        raise ProfileError(f"{name} table has negative or non-finite latency_ms values")


def _prefill_design(
    num_seqs: ArrayLike, seq_len: ArrayLike, latency_ms: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(num_seqs, dtype=float)
    n = np.asarray(seq_len, dtype=float)
    y = np.asarray(latency_ms, dtype=float)
    _check_latency("prefill", y)
    x = np.column_stack([np.ones_like(s), s, s * n, s * n * n])
    return x, y


def _decode_design(
    batch_size: ArrayLike, context_len: ArrayLike, latency_ms: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(batch_size, dtype=float)
    c = np.asarray(context_len, dtype=float)
    y = np.asarray(latency_ms, dtype=float)
    _check_latency("decode", y)
    x = np.column_stack([np.ones_like(b), b, b * c])
    return x, y


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative residuals, exact by enumerating active sets.

    With ≤ 4 terms there are ≤ 15 non-empty subsets; the best feasible subset solution is the NNLS
    optimum (the KKT point is an unconstrained optimum on its support). Ties go to fewer terms so a
    constant table gives a constant model.
    """
    w = 1.0 / np.maximum(y, 1e-9)
    xw, yw = x * w[:, None], y * w
    scale = np.maximum(np.abs(xw).max(axis=0), 1e-30)  # column scaling for conditioning
    best: tuple[float, int, np.ndarray] | None = None
    k = x.shape[1]
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            cols = list(support)
            sol, *_ = np.linalg.lstsq(xw[:, cols] / scale[cols], yw, rcond=None)
            if np.any(sol < 0):
                continue
            coef = np.zeros(k)
            coef[cols] = sol / scale[cols]
            resid = float(np.sum((xw @ coef - yw) ** 2))
            if best is None or resid < best[0] * (1 - 1e-9) - 1e-15:
                best = (resid, size, coef)
    if best is None:  # all-zero latencies
        return np.zeros(k)
    return best[2]


def _leave_one_out(x: np.ndarray, y: np.ndarray) -> FitError:
    n = len(y)
    if n < 2:
        return FitError(0.0, 0.0, n)
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        coef = _nnls_relative(x[keep], y[keep])
        pred = float(x[i] @ coef)
        errors.append(abs(pred - y[i]) / max(y[i], 1e-9))
    return FitError(float(np.median(errors)), float(np.max(errors)), n)

"""The latency model: physically shaped cost formulas fitted on a Profile's tables.

Prefill of a batch of sequences, sequence i with ``n_i`` new tokens after ``p_i`` tokens already in
KV (``p_i = 0`` for a plain prefill, > 0 for a chunk of a chunked prefill)::

    prefill_ms = a + b·num_seqs + c·max(Σ n_i, T0) + d·Σ (n_i² + 2·n_i·p_i)

The last term counts query-key pairs (×2): causal self-attention over the new tokens is ≈ n²/2
pairs, attention of the new tokens to the cached prefix n·p pairs. A decode step of ``B``
sequences holding ``C`` context tokens in total::

    decode_ms = e + f·max(B, B0) + g·C + m·X(B)

For a mixture of experts, ``X(B)`` is the GB of routed-expert weights one GPU reads in the step —
the experts its ``B`` tokens touch, E·(1 − (1 − k/E)^B) (:class:`pdplan.profiles.moe_cost.ExpertReads`),
× one expert's bytes on the GPU — and ``m`` (ms per GB, ≈ 1 / the achieved bandwidth) is fitted.
The reads grow with the batch like a saturating (concave) curve, which no term linear in B
follows: on the analytic grid the leave-one-out error of Qwen3-30B-A3B's decode fit falls from
25 % median / 133 % max without the term to < 0.1 % / 3 % with it (``bench/moe_models.py``). A
dense model has no such term (``experts`` None, ``m`` = 0): its fit and predictions are the
plain formula's, bit for bit.

A profile measured on a CPU may add a *small-batch ramp* to a dense model's decode step instead,
``r·(1 − q^B)`` (``r`` ms, ``0 < q < 1``; :data:`RAMP_RATES`): CPU BLAS runs a one-row GEMM as a
matrix-vector product that streams each weight once, and from two rows on as a packed GEMM that
first copies the weight panels, which roughly doubles the weight traffic (tiny-llama's 65 MB LM
head, one thread: 8.7 ms at 1 row, 17.4 ms at 2, 18.4 ms at 4). A step therefore costs much less at
B = 1-3 than the line through B ≥ 4 says (tiny-llama at 256-token contexts: 21 / 33 / 43 ms at
B = 1 / 2 / 3, 57-62 ms at B = 4-8), and the ramp saturates once the packing cost is paid. It is
kept only where Akaike's criterion prefers it (two more parameters), and it shares the
simulator's saturating-term slot with the experts term (``StepCoef.xs``/``miss``), so a MoE has
none.

``T0`` (tokens) and ``B0`` (sequences) are the roofline's *knee* (Williams et al., CACM 2009): below
it a step is bound by reading the weights, so its GEMM time does not grow with the tokens; above it
the GEMMs are compute-bound and grow linearly. ``T0 = B0 = 0`` is the plain linear model.

All coefficients are fitted by non-negative least squares on *relative* error, exactly (every
support set is solved; see ``_exact_nnls``), and the knee by an exact search (``_fit_phase``), so
every prediction is ≥ 0 and monotone in each term; a profile with constant latencies yields
exactly that constant, with zero knees. Because a decode step adds one token per sequence and
leaves ``B`` unchanged, k consecutive steps of an unchanged batch cost
k·(e + f·max(B, B0) + g·C + m·X(B)) + g·B·k(k−1)/2 — the closed form the simulator uses to advance many
steps in one event.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import ArrayLike

from pdplan.profiles.errors import ProfileError
from pdplan.profiles.moe_cost import ExpertReads

PREFILL_TERMS = ("base_ms", "per_seq_ms", "per_token_ms", "per_pair_ms")
DECODE_TERMS = ("base_ms", "per_seq_ms", "per_context_token_ms")
PREFILL_KNEE_COLUMN = 2  # the Σ n column of the prefill design
DECODE_KNEE_COLUMN = 1  # the B column of the decode design
#: Candidate rates q of the small-batch ramp r·(1 − q^B): the ramp is 1 − q of its height at B = 1
#: and ≥ 94 % of it by B = 4 (q = 0.5) … B = 13 (q = 0.8).
RAMP_RATES = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8)


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
    """Fitted prefill and decode cost; all times in milliseconds.

    ``prefill_knee_tokens`` (T0) and ``decode_knee_batch`` (B0) are the roofline knees of the
    module docstring; 0 means no knee. ``experts`` (a MoE's routed-expert reads X, None for a
    dense model) and ``decode_expert_coef`` (m, ms per GB) are the decode step's experts term;
    ``decode_ramp_ms`` (r) and ``decode_ramp_rate`` (q) the small-batch ramp r·(1 − q^B) of a CPU
    profile (r = 0: none).
    """

    prefill_coef: tuple[float, float, float, float]
    decode_coef: tuple[float, float, float]
    prefill_loo: FitError | None = None
    decode_loo: FitError | None = None
    prefill_knee_tokens: float = 0.0
    decode_knee_batch: float = 0.0
    experts: ExpertReads | None = None
    decode_expert_coef: float = 0.0
    decode_ramp_ms: float = 0.0
    decode_ramp_rate: float = 0.0

    def __post_init__(self) -> None:
        assert all(c >= 0 for c in self.prefill_coef + self.decode_coef), "coefficients must be ≥ 0"
        assert self.decode_expert_coef >= 0, "coefficients must be ≥ 0"
        assert self.experts is not None or self.decode_expert_coef == 0, "an experts term needs experts"
        assert self.decode_ramp_ms >= 0 and 0 <= self.decode_ramp_rate < 1, "ramp: r ≥ 0, 0 ≤ q < 1"
        assert self.experts is None or self.decode_ramp_ms == 0, "a MoE has no small-batch ramp"
        knees = (self.prefill_knee_tokens, self.decode_knee_batch)
        assert all(math.isfinite(k) and k >= 0 for k in knees), f"knees must be finite and ≥ 0: {knees}"

    # --- prefill ------------------------------------------------------------------------------
    def prefill_ms_sums(self, num_seqs: int, sum_tokens: int, sum_pairs: int) -> float:
        """Prefill time from the batch's sums (``sum_pairs`` = Σ n² + 2·n·p)."""
        a, b, c, d = self.prefill_coef
        return a + b * num_seqs + c * max(sum_tokens, self.prefill_knee_tokens) + d * sum_pairs

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
        step = e + f * max(batch_size, self.decode_knee_batch) + g * sum_context
        if self.decode_ramp_ms:
            step += self.decode_ramp_ms * (1.0 - self.decode_ramp_rate**batch_size)
        return step if self.experts is None else step + self.decode_expert_ms(batch_size)

    def decode_expert_ms(self, tokens: float) -> float:
        """The experts term m·X of a step of ``tokens`` tokens (0 for a dense model)."""
        return 0.0 if self.experts is None else self.decode_expert_coef * self.experts.gb(tokens)

    def decode_steps_ms(self, batch_size: int, sum_context: int, num_steps: int) -> float:
        """Total time of ``num_steps`` consecutive steps of an unchanged batch (closed form)."""
        g = self.decode_coef[2]
        k = num_steps
        return k * self.decode_ms(batch_size, sum_context) + g * batch_size * k * (k - 1) / 2

    def decode_steps_within(self, batch_size: int, sum_context: int, budget_ms: float) -> int:
        """The largest k ≥ 0 whose ``decode_steps_ms`` is ≤ ``budget_ms`` (inverse of the closed form)."""
        if budget_ms <= 0:
            return 0
        first = self.decode_ms(batch_size, sum_context)
        q = self.decode_coef[2] * batch_size / 2  # k²·q + k·(first − q) ≤ budget
        if q <= 0:
            if first <= 0:
                return 2**62
            k = int(budget_ms // first)  # may be one short (9.9 // 1.1 = 8): the walk below fixes it
        else:
            lin = first - q
            root = math.sqrt(lin * lin + 4 * q * budget_ms)
            # The positive root of q·k² + lin·k − budget; the second form avoids cancellation when
            # lin ≫ q·budget (tiny context cost), which made the walk below take millions of steps.
            k = int(2 * budget_ms / (lin + root)) if lin > 0 else int((root - lin) / (2 * q))
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
        *,
        knees: bool = True,
        experts: ExpertReads | None = None,
        small_batch: bool = False,
    ) -> LatencyModel:
        """Fit from ``(num_seqs, seq_len, latency_ms)`` and ``(batch_size, context_len, latency_ms)``
        columns (each prefill row: ``num_seqs`` sequences of ``seq_len`` tokens; each decode row:
        ``batch_size`` sequences of ``context_len`` tokens in KV). ``knees=False`` fixes
        T0 = B0 = 0 (the plain linear model). ``experts`` adds the decode experts term (a MoE;
        ``ExpertReads.of``). ``small_batch`` lets a dense model's decode fit take the small-batch
        ramp (a CPU profile; module docstring). The leave-one-out error refits everything, knee
        and ramp included, without each point.

        Raises:
            ProfileError: a table with no rows, or a negative or non-finite latency.
        """
        px, py = _prefill_design(*prefill)
        dx, dy = _decode_design(*decode, experts=experts)
        p_coef, p_knee, p_loo, _ = _fit_phase(px, py, PREFILL_KNEE_COLUMN, knees)
        ramp = small_batch and experts is None
        d_coef, d_knee, d_loo, d_rate = _fit_phase(dx, dy, DECODE_KNEE_COLUMN, knees, ramp)
        p, d = [float(c) for c in p_coef], [float(c) for c in d_coef]
        ramp_ms = d[3] if ramp and d_rate > 0 else 0.0
        return cls(
            prefill_coef=(p[0], p[1], p[2], p[3]),
            decode_coef=(d[0], d[1], d[2]),
            prefill_loo=p_loo,
            decode_loo=d_loo,
            prefill_knee_tokens=p_knee,
            decode_knee_batch=d_knee,
            experts=experts,
            decode_expert_coef=d[3] if experts is not None else 0.0,
            decode_ramp_ms=ramp_ms,
            decode_ramp_rate=d_rate if ramp_ms else 0.0,
        )

    def to_dict(self) -> dict[str, object]:
        """Coefficients, knees and fit errors as written into ``profile.yaml`` under ``latency_model``."""
        prefill = {k: float(v) for k, v in zip(PREFILL_TERMS, self.prefill_coef, strict=True)}
        decode = {k: float(v) for k, v in zip(DECODE_TERMS, self.decode_coef, strict=True)}
        if self.experts is not None:
            decode["per_expert_gb_ms"] = float(self.decode_expert_coef)
        if self.decode_ramp_ms:
            decode["small_batch_ramp_ms"] = float(self.decode_ramp_ms)
            decode["small_batch_ramp_rate"] = float(self.decode_ramp_rate)
        out: dict[str, object] = {
            "prefill": {**prefill, "knee_tokens": float(self.prefill_knee_tokens)},
            "decode": {**decode, "knee_batch": float(self.decode_knee_batch)},
        }
        if self.experts is not None:
            out["experts"] = self.experts.to_dict()  # what X(B) of the per_expert_gb_ms term reads
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
    batch_size: ArrayLike, context_len: ArrayLike, latency_ms: ArrayLike, experts: ExpertReads | None = None
) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(batch_size, dtype=float)
    c = np.asarray(context_len, dtype=float)
    y = np.asarray(latency_ms, dtype=float)
    _check_latency("decode", y)
    columns = [np.ones_like(b), b, b * c]
    if experts is not None:
        columns.append(np.array([experts.gb(v) for v in b]))
    return np.column_stack(columns), y


# --- the fit ----------------------------------------------------------------------------------------
_TIE = 1e-9  # a candidate must beat the best residual by this fraction (and 1e-15) to replace it


@dataclass
class _Best:
    """The best (residual, coefficients, knee) so far of each of F fits (the full table and the
    leave-one-out subtables), updated with the tie rule: a later candidate must be strictly better."""

    resid: np.ndarray
    coef: np.ndarray
    knee: np.ndarray

    def offer(self, coef: np.ndarray, resid: np.ndarray, knee: np.ndarray | float) -> None:
        better = resid < self.resid * (1 - _TIE) - 1e-15
        self.resid = np.where(better, resid, self.resid)
        self.coef = np.where(better[:, None], coef, self.coef)
        self.knee = np.where(better, knee, self.knee)


def _fit_phase(
    design: np.ndarray, y: np.ndarray, knee_col: int, with_knee: bool, with_ramp: bool = False
) -> tuple[np.ndarray, float, FitError, float]:
    """Coefficients, knee, leave-one-out error and ramp rate of ``y ≈ design·coef`` with
    ``design[:, knee_col]`` (x) replaced by max(x, knee), and with ``with_ramp`` one more column,
    the small-batch ramp 1 − q^x (its coefficient last; rate 0: no ramp, coefficient 0).

    The knee is one more parameter, so it is kept only when Akaike's criterion prefers it
    (Akaike, IEEE Trans. Autom. Control 1974): it must lower n·ln(RSS) by more than 2, i.e. cut the
    residual by a factor below exp(−2/n). A marginal gain would otherwise pin a knee just above
    the smallest measured point and extrapolate flat below it. The ramp (r and q: two more
    parameters than the plain fit) must cut the plain residual below exp(−4/n) and the knee fit's
    below exp(−2/n). Every leave-one-out fit repeats the whole search on its n − 1 rows (all fits
    are solved together, ``keep`` selects their rows).
    """
    n = len(y)
    keep = np.ones((1, n)) if n < 2 else np.vstack([np.ones(n), 1.0 - np.eye(n)])  # row masks
    rows = keep.sum(axis=1)
    w = 1.0 / np.maximum(y, 1e-9)
    coef, plain_resid = _exact_nnls(design, w, y * w, keep)
    resid = plain_resid
    knee = np.zeros(len(keep))
    if with_knee:
        best = _knee_search(design, w, y * w, keep, knee_col)
        worth = best.resid < plain_resid * np.exp(-2.0 / rows) - 1e-15  # 1e-15: rounding
        worth &= best.coef[:, knee_col] > 0  # without a slope the knee means nothing
        coef = np.where(worth[:, None], best.coef, coef)
        knee = np.where(worth, best.knee, 0.0)
        resid = np.where(worth, best.resid, plain_resid)
    rate = np.zeros(len(keep))
    x = design[:, knee_col]
    if with_ramp:
        coef, knee, rate = _ramp_search(design, w, y * w, keep, (coef, knee, resid, plain_resid), x)
        design = np.column_stack([design, np.zeros(n)])
    if n < 2:
        return coef[0], float(knee[0]), FitError(0.0, 0.0, n), float(rate[0])
    # leave-one-out: fit i + 1 left out row i; predict that row with it
    held = design.copy()
    held[:, knee_col] = np.maximum(x, knee[1:])
    if with_ramp:
        held[:, -1] = np.where(rate[1:] > 0, 1.0 - rate[1:] ** x, 0.0)
    errors = np.abs(np.einsum("ik,ik->i", held, coef[1:]) - y) / np.maximum(y, 1e-9)
    return coef[0], float(knee[0]), FitError(float(np.median(errors)), float(errors.max()), n), float(rate[0])


def _ramp_search(
    design: np.ndarray,
    w: np.ndarray,
    yw: np.ndarray,
    keep: np.ndarray,
    current: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The small-batch ramp r·(1 − q^x) against the fit so far (``current``: coefficients, knee,
    residual, and the plain fit's residual): for each q of :data:`RAMP_RATES` a plain NNLS with
    the ramp column; kept per fit where Akaike's criterion prefers it (``_fit_phase``). Returns
    coefficients (one more column, the ramp's r), knees (0 where the ramp is kept), rates."""
    coef, knee, resid, plain_resid = current
    k = design.shape[1]
    best = _Best(np.full(len(keep), np.inf), np.zeros((len(keep), k + 1)), np.zeros(len(keep)))
    for q in RAMP_RATES:
        best.offer(*_exact_nnls(np.column_stack([design, 1.0 - q**x]), w, yw, keep), q)
    rows = keep.sum(axis=1)
    worth = (best.resid < plain_resid * np.exp(-4.0 / rows) - 1e-15) & (best.coef[:, k] > 0)
    worth &= best.resid < resid * np.exp(-2.0 / rows) - 1e-15
    padded = np.column_stack([coef, np.zeros(len(keep))])
    return (
        np.where(worth[:, None], best.coef, padded),
        np.where(worth, 0.0, knee),
        np.where(worth, best.knee, 0.0),
    )


def _knee_search(design: np.ndarray, w: np.ndarray, yw: np.ndarray, keep: np.ndarray, knee_col: int) -> _Best:
    """The best knee > 0 of each fit, exactly. Let v_1 < … < v_m be the distinct values of x.

    A knee at v_i is a fixed design. A knee strictly between v_{i−1} and v_i splits the rows into
    *flat* (x ≤ v_{i−1}: c·knee) and *steep* (x ≥ v_i: c·x); with u = c·knee the model is linear
    again — a new column, 1 on flat rows, with coefficient u ≥ 0, and the x column zeroed on flat
    rows. If that NNLS optimum has v_{i−1} < u/c < v_i it is the optimum over the open interval;
    otherwise (a convex problem) the interval's optimum lies on its ends, which are candidates
    themselves. Candidates go in increasing knee order with the tie rule: an equally good smaller
    knee wins.
    """
    k = design.shape[1]
    x = design[:, knee_col]
    best = _Best(np.full(len(keep), np.inf), np.zeros((len(keep), k)), np.zeros(len(keep)))
    values = np.unique(x[x > 0])
    for i, v in enumerate(values):
        if i:
            lo = values[i - 1]
            flat = x <= lo
            split = np.column_stack([design, flat.astype(float)])
            split[flat, knee_col] = 0.0
            coef, resid = _exact_nnls(split, w, yw, keep)
            slope, lift = coef[:, knee_col], coef[:, k]
            knee = lift / np.where(slope > 0, slope, 1.0)
            inside = (slope > 0) & (knee > lo) & (knee < v)
            best.offer(coef[:, :k], np.where(inside, resid, np.inf), np.where(inside, knee, 0.0))
        fixed = design.copy()
        fixed[:, knee_col] = np.maximum(x, v)
        best.offer(*_exact_nnls(fixed, w, yw, keep), v)
    return best


@cache
def _supports(k: int) -> np.ndarray:
    """Every non-empty subset of k columns as a boolean mask, fewer columns first."""
    rows = [
        [j in s for j in range(k)] for size in range(1, k + 1) for s in itertools.combinations(range(k), size)
    ]
    return np.array(rows, dtype=bool)


def _exact_nnls(
    design: np.ndarray, w: np.ndarray, yw: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative least squares on relative residuals, exact, for F row subsets at once.

    ``keep`` (F × n, 0/1) selects the rows of each fit. With ≤ 5 terms there are ≤ 31 non-empty
    supports; the best support whose unconstrained solution is ≥ 0 is the NNLS optimum (the
    optimum has a support of independent columns on which it is the unconstrained least-squares
    solution: the KKT conditions). Each support is solved from the normal equations plus one step
    of refinement on the design itself (corrected semi-normal equations; Björck, Linear Algebra
    Appl. 88/89, 1987), all supports and fits in one batched solve. Ties go to
    fewer terms, so a constant table gives a constant model. Returns (coefficients F × k,
    residual sum of squares F).
    """
    a = design * w[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)  # column scaling for conditioning
    a = a / scale
    k = a.shape[1]
    supports = _supports(k)
    gram = np.einsum("fr,rk,rl->fkl", keep, a, a)
    rhs = keep @ (a * yw[:, None])
    system = np.where(supports[:, :, None] & supports[:, None, :], gram[:, None], np.eye(k))
    sol = _solve(system, np.where(supports, rhs[:, None], 0.0))
    err = yw - sol @ a.T  # (F, supports, rows)
    sol += _solve(system, np.where(supports, np.einsum("fr,fsr,rk->fsk", keep, err, a), 0.0))
    err = yw - sol @ a.T
    resid = np.einsum("fr,fsr->fs", keep, err * err)
    feasible = np.all(sol >= 0, axis=2)
    best_resid = np.full(len(keep), np.inf)
    pick = np.zeros(len(keep), dtype=int)
    for s in range(len(supports)):
        better = feasible[:, s] & (resid[:, s] < best_resid * (1 - _TIE) - 1e-15)
        best_resid = np.where(better, resid[:, s], best_resid)
        pick = np.where(better, s, pick)
    coef = sol[np.arange(len(keep)), pick] / scale
    return np.where(np.isfinite(best_resid)[:, None], coef, 0.0), best_resid


def _solve(system: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched ``system⁻¹·rhs``; a singular support (duplicate or zero columns) falls back to the
    pseudo-inverse, whose solution a smaller support matches anyway."""
    try:
        return np.linalg.solve(system, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("...kl,...l->...k", np.linalg.pinv(system, rcond=1e-13), rhs)

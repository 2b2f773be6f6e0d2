"""Calibration: fit a few named engine parameters so that simulating measured traffic reproduces
the measured latencies, and say how well that generalises.

The parameters act on top of a profile's latency model (``pdplan.profiles.latency_model``):

- ``step_overhead_ms`` — added to every forward step, prefill and decode (scheduler, sampling,
  HTTP/streaming and launch costs that do not scale with the batch);
- ``compute_scale`` — multiplies the prefill step (compute-bound: GEMM efficiency);
- ``bandwidth_scale`` — multiplies the decode step (memory-bound: weight and KV reads);
- ``kv_capacity_scale`` — multiplies each instance's KV capacity (the engine's real block budget
  and how it admits requests, vs pdplan's reservation of prompt + output);
- ``tp_comm_scale`` — multiplies the TP collective share of a step. It is identifiable only from
  runs at TP > 1 with an op breakdown, so it stays 1 and is reported as not fitted otherwise.

The fit minimises the squared log-ratio of predicted to measured TTFT and TPOT (mean, p10, p25, p50,
p75, p90, p99: the figures a prediction is judged by, and the body of the distribution that
separates a fixed cost from a per-token one) over the requests used for fitting, with a bounded
Nelder-Mead search on the transformed parameters (log scales, within ``SCALE_BOUNDS``), every
probe one simulation of the measured request list. Uncertainty
is the spread of refits on bootstrap resamples of those requests. Generalisation is the error on
requests (the second half of each run, or whole runs) that were not used.

Values in, values out: the CLI (``pdplan calibrate``) reads and writes files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.profile import Profile
from pdplan.sim.cluster import ColocatedCluster, DisaggregatedCluster, InstanceCost
from pdplan.sim.requests import Requests
from pdplan.sim.simulate import SimOptions, simulate

if TYPE_CHECKING:
    from pdplan.planner.plan import Plan

log = logging.getLogger(__name__)
Cluster = DisaggregatedCluster | ColocatedCluster
PARAMETERS = ("step_overhead_ms", "compute_scale", "bandwidth_scale", "kv_capacity_scale", "tp_comm_scale")
DEFAULT_FIT = ("step_overhead_ms", "compute_scale", "bandwidth_scale", "kv_capacity_scale")
QUANTILES = (10.0, 25.0, 50.0, 75.0, 90.0, 99.0)
#: A scale outside these says the profile is wrong, not miscalibrated (a decode step cannot beat the
#: memory roofline by 2×): the fit stays inside, and a value at a bound is reported as such.
SCALE_BOUNDS = {"compute_scale": (0.5, 2.0), "bandwidth_scale": (0.5, 2.0), "kv_capacity_scale": (0.5, 3.0)}
#: Metrics judged (DESIGN.md: TTFT = first token − arrival, TPOT = (finish − first)/(out − 1)).
JUDGED = tuple(f"{m}_{s}" for m in ("ttft", "tpot") for s in ("mean", "p50", "p90", "p99"))


@dataclass(frozen=True)
class Params:
    """The engine parameters; identity (0, 1, 1, 1, 1) leaves a cluster unchanged."""

    step_overhead_ms: float = 0.0
    compute_scale: float = 1.0
    bandwidth_scale: float = 1.0
    kv_capacity_scale: float = 1.0
    tp_comm_scale: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {name: round(float(getattr(self, name)), 6) for name in PARAMETERS}


def scaled_model(model: LatencyModel, p: Params) -> LatencyModel:
    """``model`` with prefill × compute_scale, decode × bandwidth_scale, + step_overhead_ms each.

    A MoE's decode experts term (expert weight reads) is a decode term: it scales with
    bandwidth_scale too. The overhead may be negative (the profile over-counts fixed costs) but
    never below the model's own fixed term, so no step gets cheaper than its token terms.
    """
    a, b, c, d = (float(x) * p.compute_scale for x in model.prefill_coef)
    e, f, g = (float(x) * p.bandwidth_scale for x in model.decode_coef)
    return LatencyModel(
        (max(a + p.step_overhead_ms, 0.0), b, c, d),
        (max(e + p.step_overhead_ms, 0.0), f, g),
        prefill_knee_tokens=model.prefill_knee_tokens,
        decode_knee_batch=model.decode_knee_batch,
        experts=model.experts,
        decode_expert_coef=float(model.decode_expert_coef) * p.bandwidth_scale,
        decode_ramp_ms=float(model.decode_ramp_ms) * p.bandwidth_scale,  # weight traffic, like m
        decode_ramp_rate=model.decode_ramp_rate,
    )


def apply(cluster: Cluster, p: Params) -> Cluster:
    """The cluster with calibrated step costs and the KV capacity of the instances that hold KV
    while decoding (decode or colocated) scaled."""

    def cost(c: InstanceCost) -> InstanceCost:
        capacity = max(1, round(c.kv_capacity_tokens * p.kv_capacity_scale))
        return InstanceCost(scaled_model(c.latency, p), capacity)

    if isinstance(cluster, DisaggregatedCluster):
        prefill = InstanceCost(
            scaled_model(cluster.prefill_cost.latency, p), cluster.prefill_cost.kv_capacity_tokens
        )
        return replace(cluster, prefill_cost=prefill, decode_cost=cost(cluster.decode_cost))
    return replace(cluster, cost=cost(cluster.cost))


@dataclass(frozen=True)
class MeasuredRun:
    """A measured run as calibration needs it: the request list (measured arrivals and token
    counts), its measured TTFT/TPOT per request (s; NaN where not ok), and ``fit_mask`` (requests
    used for fitting; the rest are held out)."""

    name: str
    requests: Requests
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    fit_mask: np.ndarray
    cluster: Cluster

    @property
    def rate_rps(self) -> float:
        return (
            self.requests.mean_rate_rps if len(self.requests) > 1 and self.requests.span_s > 0 else math.nan
        )


def latencies(arrival: np.ndarray, first: np.ndarray, finish: np.ndarray, output: np.ndarray, ok: np.ndarray):
    """Per-request TTFT and TPOT (s), NaN where not ok (TPOT also where output ≤ 1)."""
    ttft = np.where(ok, first - arrival, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (output > 1), (finish - first) / np.maximum(output - 1, 1), np.nan)
    return ttft, tpot


def metrics(ttft_s: np.ndarray, tpot_s: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``JUDGED`` metrics (ms) over the requests in ``mask``."""
    out: dict[str, float] = {}
    for name, values in (("ttft", ttft_s), ("tpot", tpot_s)):
        v = values[mask & np.isfinite(values)] * 1000.0
        if v.size == 0:
            continue
        out[f"{name}_mean"] = float(v.mean())
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = float(np.percentile(v, q))
    return out


def errors_pct(predicted: dict[str, float], measured: dict[str, float]) -> dict[str, float]:
    """Signed error (predicted / measured − 1) in percent, per metric both have."""
    return {
        k: round((predicted[k] / measured[k] - 1.0) * 100.0, 2)
        for k in JUDGED
        if k in predicted and k in measured and measured[k] > 0
    }


def predict(run: MeasuredRun, p: Params) -> tuple[np.ndarray, np.ndarray]:
    """Simulated per-request TTFT and TPOT of ``run``'s traffic under ``p``."""
    rec = simulate(run.requests, apply(run.cluster, p), SimOptions()).records
    ok = rec.status_code == 0
    return latencies(rec.arrival_s, rec.first_token_s, rec.finish_s, rec.output_tokens, ok)


def _residuals(run: MeasuredRun, pred: tuple[np.ndarray, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """log(predicted / measured) of the mean and the ``QUANTILES`` of TTFT and TPOT over ``mask``:
    the figures a user judges a prediction by, each counted once (relative, so TTFT's seconds and
    TPOT's milliseconds weigh alike)."""
    out = []
    for p_values, m_values in zip(pred, (run.ttft_s, run.tpot_s), strict=True):
        both = mask & np.isfinite(m_values)
        if both.sum() < 2:
            continue
        meas = m_values[both]
        pv = np.where(np.isfinite(p_values[both]), p_values[both], 1e9)  # unfinished: a huge miss
        sim = np.concatenate(([pv.mean()], np.percentile(pv, QUANTILES)))
        ref = np.concatenate(([meas.mean()], np.percentile(meas, QUANTILES)))
        out.append(np.log(np.maximum(sim, 1e-9) / np.maximum(ref, 1e-9)))
    return np.concatenate(out) if out else np.zeros(0)


@dataclass(frozen=True)
class _Space:
    """Which parameters are free and how a free vector maps to ``Params`` (scales in log space,
    the overhead in ms, all clipped to their bounds)."""

    names: tuple[str, ...]
    overhead_floor_ms: float

    def to_params(self, x: np.ndarray) -> Params:
        values: dict[str, float] = {}
        for name, v in zip(self.names, x, strict=True):
            if name == "step_overhead_ms":
                values[name] = float(max(v, self.overhead_floor_ms))
            else:
                values[name] = float(np.clip(math.exp(v), *SCALE_BOUNDS[name]))
        return Params(**values)

    def start(self) -> np.ndarray:
        return np.zeros(len(self.names))

    def steps(self, overhead_step_ms: float) -> np.ndarray:
        return np.array([overhead_step_ms if n == "step_overhead_ms" else 0.3 for n in self.names])


def nelder_mead(
    f: Callable[[np.ndarray], float], x0: np.ndarray, step: np.ndarray, iters: int = 120
) -> np.ndarray:
    """Minimise ``f`` from ``x0`` (standard Nelder-Mead: reflection 1, expansion 2, contraction
    ½, shrink ½); stops after ``iters`` iterations or when the simplex values agree to 1e-6."""
    n = x0.size
    simplex = [x0] + [x0 + np.eye(n)[i] * step[i] for i in range(n)]
    values = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(values)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        if values[-1] - values[0] < 1e-6:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        worst = simplex[-1]
        xr = centroid + (centroid - worst)
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2 * (centroid - worst)
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (worst - centroid)
            fc = f(xc)
            if fc < values[-1]:
                simplex[-1], values[-1] = xc, fc
            else:
                best = simplex[0]
                simplex = [best] + [best + 0.5 * (x - best) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
    return simplex[int(np.argmin(values))]


@dataclass
class Calibration:
    """The result: fitted ``params``, their bootstrap ``uncertainty`` (std), the per-run errors
    before and after on the fit and held-out requests, and what was not fitted and why."""

    params: Params
    fitted: tuple[str, ...]
    uncertainty: dict[str, float]
    runs: list[dict[str, Any]]
    not_fitted: dict[str, str] = field(default_factory=dict)
    objective_before: float = 0.0
    objective_after: float = 0.0
    overhead_floor_ms: float = -math.inf

    @property
    def at_bounds(self) -> dict[str, str]:
        """Fitted parameters that ended on a bound: the data asks for more than the parameter can
        give, so what is left of the error is not in these parameters (say so, do not hide it)."""
        out = {}
        for name in self.fitted:
            low, high = SCALE_BOUNDS.get(name, (self.overhead_floor_ms, math.inf))
            value = getattr(self.params, name)
            if math.isclose(value, low) or math.isclose(value, high):
                out[name] = f"{value:g} is the bound of [{low:g}, {high:g}]"
        return out


def calibrate(
    runs: Sequence[MeasuredRun],
    fit: Sequence[str] = DEFAULT_FIT,
    bootstrap: int = 8,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Fit ``fit`` (a subset of ``PARAMETERS``) on the ``fit_mask`` requests of ``runs``.

    Raises:
        ConfigError: unknown parameter names, or no run with requests to fit on.
    """
    unknown = [n for n in fit if n not in PARAMETERS]
    if unknown:
        raise ConfigError(f"--fit: unknown parameters {unknown}; valid: {list(PARAMETERS)}")
    if not runs or not any(int(r.fit_mask.sum()) >= 2 for r in runs):
        raise ConfigError("calibration needs at least one run with ≥ 2 completed requests to fit on")
    not_fitted: dict[str, str] = {}
    names = [n for n in fit if n != "tp_comm_scale"]
    tps = {_max_tp(r.cluster) for r in runs}
    not_fitted["tp_comm_scale"] = (
        "all runs are at TP 1: no collective to scale"
        if tps == {1}
        else "needs the TP collective share of a step (an op breakdown); kept at 1"
    )
    floor = -min(_fixed_ms(r.cluster) for r in runs)
    space = _Space(tuple(names), floor)
    median_step = float(np.median([_typical_step_ms(r.cluster) for r in runs]))

    def objective(x: np.ndarray, masks: Sequence[np.ndarray]) -> float:
        p = space.to_params(x)
        total = 0.0
        for run, mask in zip(runs, masks, strict=True):
            r = _residuals(run, predict(run, p), mask)
            total += float(np.sum(r * r))
        return total

    base_masks = [r.fit_mask for r in runs]
    before = objective(space.start(), base_masks)
    # start from the best point of a coarse grid (3 values a parameter): the objective has
    # several valleys (e.g. a KV capacity or a per-token cost can both set the throughput)
    grid = [space.start() + np.array(offset) * space.steps(median_step) for offset in _grid(len(names))]
    start = min(grid, key=partial(objective, masks=base_masks))
    f = partial(objective, masks=base_masks)
    x = nelder_mead(f, start, space.steps(0.5 * median_step))
    # restarts from the best point with a fresh simplex while they still help: a collapsed simplex
    # on this piecewise-smooth objective (batch membership changes) stops short in long valleys
    value = f(x)
    for _ in range(3):
        x_new = nelder_mead(f, x, space.steps(0.25 * median_step))
        new = f(x_new)
        if new >= value * (1 - 1e-3):
            break
        x, value = x_new, new
    params = space.to_params(x)
    after = objective(x, base_masks)
    if progress:
        progress(f"fit: objective {before:.4f} -> {after:.4f}")
    rng = np.random.default_rng(seed)
    samples = []
    for b in range(bootstrap):
        masks = [_resample(m, rng) for m in base_masks]
        xb = nelder_mead(partial(objective, masks=masks), x, space.steps(0.25 * median_step), iters=40)
        samples.append(space.to_params(xb).to_dict())
        if progress:
            progress(f"bootstrap {b + 1}/{bootstrap}")
    uncertainty = {
        n: round(float(np.std([s[n] for s in samples], ddof=1)), 6) if len(samples) > 1 else math.nan
        for n in names
    }
    report = [_run_report(run, params) for run in runs]
    return Calibration(params, tuple(names), uncertainty, report, not_fitted, before, after, floor)


def _run_report(run: MeasuredRun, params: Params) -> dict[str, Any]:
    held = ~run.fit_mask
    before = predict(run, Params())
    after = predict(run, params)
    out: dict[str, Any] = {"name": run.name, "requests": len(run.requests)}
    for label, mask in (("fit", run.fit_mask), ("held_out", held)):
        if int(mask.sum()) == 0:
            continue
        measured = metrics(run.ttft_s, run.tpot_s, mask)
        out[label] = {
            "requests": int(mask.sum()),
            "measured_ms": {k: round(v, 3) for k, v in measured.items()},
            "error_before_pct": errors_pct(metrics(*before, mask), measured),
            "error_after_pct": errors_pct(metrics(*after, mask), measured),
        }
    return out


def _grid(k: int) -> list[tuple[int, ...]]:
    """The 3**k offsets (−1, 0, 1 steps) of a coarse grid around the identity."""
    import itertools

    return list(itertools.product((-1, 0, 1), repeat=k))


def _resample(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bootstrap mask: the fit requests drawn with replacement (as a 0/1 mask it keeps ~63 %
    of them, which is what the quantiles see)."""
    idx = np.flatnonzero(mask)
    chosen = rng.choice(idx, size=idx.size, replace=True)
    out = np.zeros_like(mask)
    out[chosen] = True
    return out


def _costs(cluster: Cluster) -> list[InstanceCost]:
    if isinstance(cluster, DisaggregatedCluster):
        return [cluster.prefill_cost, cluster.decode_cost]
    return [cluster.cost]


def _fixed_ms(cluster: Cluster) -> float:
    return min(
        min(float(c.latency.prefill_coef[0]), float(c.latency.decode_coef[0])) for c in _costs(cluster)
    )


def _typical_step_ms(cluster: Cluster) -> float:
    return float(np.mean([c.latency.decode_ms(8, 8 * 512) for c in _costs(cluster)]))


def _max_tp(cluster: Cluster) -> int:
    if isinstance(cluster, DisaggregatedCluster):
        return max(cluster.prefill.tp, cluster.decode.tp)
    return cluster.pool.tp


# --- what calibration writes ------------------------------------------------------------------
def calibrated_profile(profile: Profile, p: Params, block: dict[str, Any]) -> Profile:
    """``profile`` with its tables adjusted by ``p`` (``method: calibrated``). The latency model is
    linear in the tables' latencies, so refitting them reproduces ``scaled_model``."""
    prefill = profile.prefill.copy()
    decode = profile.decode.copy()
    for table, scale in ((prefill, p.compute_scale), (decode, p.bandwidth_scale)):
        for column in [c for c in table.columns if c.startswith("latency_ms")]:
            shift = p.step_overhead_ms if column == "latency_ms" else 0.0
            table[column] = np.maximum(table[column] * scale + shift, 1e-6)
    return replace(
        profile,
        method="calibrated",
        prefill=prefill,
        decode=decode,
        ops=None,
        notes=f"calibrated from a {profile.method} profile ({profile.notes})".strip(),
        calibration=block,
    )


def calibrated_plan(plan: Plan, profiles: dict[str, Profile], p: Params) -> Plan:
    """``plan`` with the calibrated KV capacity written in (decode or colocated ``max_kv_tokens``)."""
    cluster = plan.cluster(profiles)
    if isinstance(cluster, DisaggregatedCluster):
        assert plan.decode is not None
        tokens = max(1, round(cluster.decode_cost.kv_capacity_tokens * p.kv_capacity_scale))
        return replace(plan, decode=replace(plan.decode, max_kv_tokens=tokens), predicted={})
    assert plan.colocated is not None
    tokens = max(1, round(cluster.cost.kv_capacity_tokens * p.kv_capacity_scale))
    return replace(plan, colocated=replace(plan.colocated, max_kv_tokens=tokens), predicted={})


def fit_range(runs: Sequence[MeasuredRun]) -> dict[str, list[float]]:
    """The traffic the fit saw: mean rate (req/s) and the 5th–95th percentile of prompt and output
    lengths over the fitted requests of all runs."""
    rates = [r.rate_rps for r in runs if r.fit_mask.any() and math.isfinite(r.rate_rps)]
    prompt = np.concatenate([r.requests.prompt_tokens[r.fit_mask] for r in runs])
    output = np.concatenate([r.requests.output_tokens[r.fit_mask] for r in runs])
    out: dict[str, list[float]] = {}
    if rates:
        out["rate_rps"] = [round(min(rates), 4), round(max(rates), 4)]
    if prompt.size:
        out["prompt_tokens"] = [float(np.percentile(prompt, 5)), float(np.percentile(prompt, 95))]
        out["output_tokens"] = [float(np.percentile(output, 5)), float(np.percentile(output, 95))]
    return out


def range_notes(fitted: dict[str, Any], requests: Requests, name: str) -> list[str]:
    """Where ``requests`` lie outside the fitted range (empty when inside): calibration must not
    extrapolate silently. Rates within ±10 % of the fitted range count as inside."""
    notes = []
    rate = requests.mean_rate_rps if len(requests) > 1 and requests.span_s > 0 else None
    low_high = fitted.get("rate_rps")
    if rate is not None and low_high and not (0.9 * low_high[0] <= rate <= 1.1 * low_high[1]):
        notes.append(
            f"{name}: rate {rate:.3g} req/s is outside the calibrated "
            f"{low_high[0]:.3g}–{low_high[1]:.3g} req/s"
        )
    for column in ("prompt_tokens", "output_tokens"):
        span = fitted.get(column)
        mean = float(np.mean(getattr(requests, column))) if len(requests) else None
        if span and mean is not None and not (span[0] <= mean <= span[1]):
            notes.append(
                f"{name}: mean {column} {mean:.0f} is outside the calibrated 5–95th percentile "
                f"{span[0]:.0f}–{span[1]:.0f}"
            )
    return notes

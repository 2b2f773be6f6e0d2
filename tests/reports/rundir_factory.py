"""Hand-made run directories in the RUNDIR.md layout, for the report tests and bench/report_speed.py.

Every table is internally consistent: requests are timed by a real ``LatencyModel`` fitted on a
real ``Profile``, ``summary.yaml`` is computed from ``requests.csv``, each candidate's goodput is the
highest probed rate that met the SLO, and the plan is the best candidate. Only the simulator itself
is replaced (by a simple load model), because these files are inputs to the report, not results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.profile import Profile, save_profile

SLO_TTFT_MS = 2000.0
SLO_TPOT_MS = 100.0
TARGET = 0.9
VERSIONS = {"pdplan": "0.1.0", "python": "3.11.2", "numpy": np.__version__, "simpy": "4.1.1"}


@dataclass(frozen=True)
class SearchSize:
    """How big a synthetic search is; the defaults are a small test, ``SIXTEEN_GPUS`` the bench."""

    gpus: int = 6
    max_candidates: int = 24
    probes_per_candidate: int = 6
    num_requests: int = 400
    duration_s: float = 120.0
    sample_interval_s: float = 1.0


SIXTEEN_GPUS = SearchSize(
    gpus=16,
    max_candidates=100,
    probes_per_candidate=12,
    num_requests=10_000,
    duration_s=900.0,
    sample_interval_s=0.5,
)


_CANDIDATE_COLUMNS = (
    "candidate_id",
    "mode",
    "prefill_instances",
    "prefill_tp",
    "prefill_pp",
    "decode_instances",
    "decode_tp",
    "decode_pp",
    "colocated_instances",
    "colocated_tp",
    "colocated_pp",
    "policy",
    "max_batch_size",
    "max_batch_tokens",
    "chunk_tokens",
    "gpus",
    "goodput_rps",
    "goodput_rps_per_gpu",
    "status",
    "reason",
)


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def write_run_yaml(folder: Path, kind: str, command: str) -> None:
    _dump(
        folder / "run.yaml",
        {
            "schema_version": 1,
            "kind": kind,
            "command": command,
            "created_at": "2025-11-21T03:00:00Z",
            "versions": VERSIONS,
        },
    )


def make_profile(rng: np.random.Generator, hardware: str = "h100-sxm", tp: int = 1) -> Profile:
    """A measured-looking llama-3.1-8b profile: roofline-shaped latencies with 3 % noise."""
    spec = load_model_spec("llama-3.1-8b")
    peak_flops, bandwidth = 700e12, 3.0e12  # achievable, below the H100 datasheet peaks
    weights = spec.weight_bytes() / tp
    kv = spec.kv_bytes_per_token() / tp
    rows = []
    for s in (1, 2, 4):
        for n in (128, 256, 512, 1024, 2048, 4096):
            flops = (s * n * spec.flops_per_token + s * n * n / 2 * spec.attention_flops(1, 1)) / tp
            ms = 1.5 + 1000 * max(flops / peak_flops, weights / bandwidth)
            rows.append((s, n, ms * rng.lognormal(0, 0.03)))
    prefill = pd.DataFrame(rows, columns=["num_seqs", "seq_len", "latency_ms"])
    rows = []
    for c in (512, 2048, 8192):
        for b in (1, 4, 16, 64, 128, 256):
            ms = 2.0 + 1000 * (weights + b * c * kv) / bandwidth + 0.01 * b
            rows.append((b, c, ms * rng.lognormal(0, 0.03)))
    decode = pd.DataFrame(rows, columns=["batch_size", "context_len", "latency_ms"])
    ops = []
    for s, n, ms in prefill.itertuples(index=False):
        attn = min(0.5, n / 16384)
        for op, share in (("gemm", 0.85 - attn), ("attention", attn), ("other", 0.15)):
            ops.append(("prefill", s, n, op, ms * share))
    for b, c, ms in decode.itertuples(index=False):
        attn = min(0.6, b * c / 2_000_000)
        for op, share in (("gemm", 0.9 - attn), ("attention", attn), ("other", 0.1)):
            ops.append(("decode", b, c, op, ms * share))
    ops_table = pd.DataFrame(ops, columns=["phase", "num_seqs", "seq_len", "op", "latency_ms"])
    return Profile(
        method="measured",
        model=spec,
        hardware={"name": hardware, "memory_bytes": 80 * 2**30, "device": "cuda:0 NVIDIA H100 80GB HBM3"},
        dtype="bfloat16",
        tp=tp,
        prefill=prefill,
        decode=decode,
        ops=ops_table,
        versions={"torch": "2.13.0", "pdplan": "0.1.0"},
        created_at="2025-11-21T02:00:00Z",
    )


def write_profile_run(folder: Path, rng: np.random.Generator, hardware: str = "h100-sxm") -> Profile:
    profile = make_profile(rng, hardware)
    save_profile(profile, folder)
    write_run_yaml(folder, "profile", f"pdplan profile --model llama-3.1-8b --out {folder.name}")
    return profile


def make_requests(
    profile: Profile, rng: np.random.Generator, num_requests: int, rate_rps: float, load: float
) -> pd.DataFrame:
    """Poisson arrivals, lognormal lengths; prefill/decode times from the fitted latency model,
    with queueing delays that grow with ``load`` (0..1) as in an M/M/1 queue (wait ∝ ρ/(1−ρ))."""
    arrival = np.cumsum(rng.exponential(1 / rate_rps, num_requests))
    arrival -= arrival[0]
    prompt = np.clip(rng.lognormal(math.log(900), 0.6, num_requests), 16, 8192).astype(int)
    output = np.clip(rng.lognormal(math.log(160), 0.7, num_requests), 1, 2048).astype(int)
    lat = profile.latency
    prefill_ms = np.array([lat.prefill_ms([int(p)]) for p in prompt])
    wait_s = rng.exponential(load / (1 - load) * prefill_ms / 1000)
    prefill_start = arrival + wait_s
    prefill_end = prefill_start + prefill_ms / 1000
    decode_start = prefill_end + 0.002 + prompt * profile.kv_bytes_per_token / 50e9
    batch = max(1, int(64 * load))
    step_ms = np.array([lat.decode_ms(batch, batch * int(p)) for p in prompt])
    first = decode_start + step_ms / 1000
    finish = first + (output - 1) * step_ms * rng.lognormal(0, 0.1, num_requests) / 1000
    status = np.where(rng.random(num_requests) < 0.005, "rejected", "ok").astype(object)
    status[-3:] = "unfinished"
    table = pd.DataFrame(
        {
            "req_id": [f"r{i:05d}" for i in range(num_requests)],
            "arrival_s": arrival.round(6),
            "prompt_tokens": prompt,
            "output_tokens": output,
            "first_token_s": first.round(6),
            "finish_s": finish.round(6),
            "prefill_start_s": prefill_start.round(6),
            "prefill_end_s": prefill_end.round(6),
            "decode_start_s": decode_start.round(6),
            "status": status,
        }
    )
    for col in ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "decode_start_s"):
        table[col] = table[col].where(table["status"] == "ok")
    table.loc[table["status"] == "unfinished", "prefill_start_s"] = prefill_start[-3:].round(6)
    return table


def summarise(requests: pd.DataFrame, utilisation: dict[str, float], slo: Any) -> dict[str, Any]:
    """summary.yaml computed from requests.csv (DESIGN.md definitions)."""
    ok = requests[requests["status"] == "ok"]
    ttft = (ok["first_token_s"] - ok["arrival_s"]) * 1000
    many = ok[ok["output_tokens"] > 1]
    tpot = (many["finish_s"] - many["first_token_s"]) / (many["output_tokens"] - 1) * 1000
    e2e = (ok["finish_s"] - ok["arrival_s"]) * 1000

    def stats(values: pd.Series) -> dict[str, float]:
        return {
            "mean": round(float(values.mean()), 3),
            **{f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)},
        }

    span = float(ok["finish_s"].max() - requests["arrival_s"].min())
    tpot_ok = pd.Series(True, index=ok.index)
    tpot_ok[many.index] = tpot <= SLO_TPOT_MS
    attained = (ttft <= SLO_TTFT_MS) & tpot_ok
    counts = {s: int((requests["status"] == s).sum()) for s in ("ok", "rejected", "failed", "unfinished")}
    return {
        "schema_version": 1,
        "counts": counts,
        "ttft_ms": stats(ttft),
        "tpot_ms": stats(tpot),
        "e2e_ms": stats(e2e),
        "attainment": round(float(attained.mean()), 4),
        "throughput_rps": round(len(ok) / span, 4),
        "output_tokens_per_s": round(float(ok["output_tokens"].sum()) / span, 2),
        "utilisation": utilisation,
        "warmup_excluded": 0,
        "slo": slo,
    }


def make_timeseries(
    rng: np.random.Generator, roles: dict[str, int], size: SearchSize, load: float
) -> pd.DataFrame:
    times = np.arange(0.0, size.duration_s, size.sample_interval_s)
    frames = []
    for role, count in roles.items():
        for inst in range(count):
            queue = (
                rng.poisson(3 * load / (1 - load), times.size)
                if role != "decode"
                else np.zeros(times.size, int)
            )
            batch = rng.binomial(256 if role != "prefill" else 8, load, times.size)
            capacity = 400_000
            used = np.minimum(capacity, batch * 1100 * rng.uniform(0.8, 1.2, times.size)).astype(int)
            frames.append(
                pd.DataFrame(
                    {
                        "time_s": times,
                        "role": role,
                        "instance": inst,
                        "queue_len": queue,
                        "batch_size": batch,
                        "kv_used_tokens": used,
                        "kv_capacity_tokens": capacity,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _shapes(gpus: int) -> list[dict[str, Any]]:
    """Every disaggregated and colocated shape that fits the GPU budget."""
    shapes: list[dict[str, Any]] = []
    for ptp in (1, 2):
        for dtp in (1, 2):
            for p in range(1, gpus):
                for d in range(1, gpus):
                    if p * ptp + d * dtp <= gpus:
                        shapes.append(
                            {
                                "mode": "disaggregated",
                                "prefill_instances": p,
                                "prefill_tp": ptp,
                                "prefill_pp": 1,
                                "decode_instances": d,
                                "decode_tp": dtp,
                                "decode_pp": 1,
                                "gpus": p * ptp + d * dtp,
                            }
                        )
    for tp in (1, 2, 4):
        for n in range(1, gpus // tp + 1):
            for policy in ("prefill-first", "chunked"):
                shapes.append(
                    {
                        "mode": "colocated",
                        "colocated_instances": n,
                        "colocated_tp": tp,
                        "colocated_pp": 1,
                        "policy": policy,
                        "gpus": n * tp,
                        "chunk_tokens": 2048 if policy == "chunked" else None,
                    }
                )
    return shapes


def _capacity_rps(shape: dict[str, Any]) -> float:
    """A goodput model with the known shape of the trade-off: prefill and decode capacities add up
    per instance (sub-linearly in TP), disaggregation avoids interference, colocation pays for it."""
    if shape["mode"] == "colocated":
        per = {"prefill-first": 0.3, "chunked": 0.38}[shape["policy"]]
        return per * shape["colocated_instances"] * shape["colocated_tp"] ** 0.8
    pre = 2.2 * shape["prefill_instances"] * shape["prefill_tp"] ** 0.85
    dec = 0.9 * shape["decode_instances"] * shape["decode_tp"] ** 0.75
    return min(pre, dec)


def make_search(rng: np.random.Generator, size: SearchSize) -> tuple[pd.DataFrame, pd.DataFrame]:
    """candidates.csv and probes.csv of a search: bisection on rate per feasible candidate."""
    shapes = _shapes(size.gpus)
    colo = [s for s in shapes if s["mode"] == "colocated"]
    disagg = [s for s in shapes if s["mode"] == "disaggregated"]
    keep = max(1, size.max_candidates - len(colo))
    picked = [disagg[i] for i in sorted(rng.choice(len(disagg), min(keep, len(disagg)), replace=False))]
    cand_rows, probe_rows = [], []
    for i, shape in enumerate(picked + colo):
        cid = f"c{i:03d}"
        row: dict[str, Any] = {
            "candidate_id": cid,
            "max_batch_size": 256,
            "max_batch_tokens": 8192,
            "chunk_tokens": None,
            "policy": None,
            **shape,
        }
        capacity = _capacity_rps(shape) * rng.uniform(0.9, 1.1)
        if shape["mode"] == "disaggregated" and shape["decode_tp"] == 1 and shape["decode_instances"] == 1:
            row.update(status="infeasible", reason="KV capacity: 1 decode instance holds < 1 request at p99")
        elif (
            shape["mode"] == "colocated" and shape["colocated_tp"] == 1 and shape["colocated_instances"] <= 2
        ):
            row.update(status="infeasible", reason="TTFT bound: prefill of p90 prompt exceeds SLO")
        elif rng.random() < 0.1:
            row.update(status="pruned", reason="upper bound below best goodput per GPU so far")
        else:
            low, high = 0.0, 2.0 * capacity
            for _ in range(size.probes_per_candidate):
                rate = (low + high) / 2 if low > 0 else high / 2
                attainment = float(np.clip(1 / (1 + math.exp(12 * (rate / capacity - 1.05))), 0, 1))
                load = min(0.98, rate / (1.2 * capacity))
                ttft50 = 180 * (1 + load / (1 - load))
                tpot50 = 25 + 40 * load
                meets = attainment >= TARGET
                probe_rows.append(
                    {
                        "candidate_id": cid,
                        "rate_rps": round(rate, 4),
                        "attainment": round(attainment, 4),
                        "ttft_p50_ms": ttft50,
                        "ttft_p90_ms": 2.3 * ttft50,
                        "ttft_p99_ms": 4.6 * ttft50,
                        "tpot_p50_ms": tpot50,
                        "tpot_p90_ms": 1.3 * tpot50,
                        "tpot_p99_ms": 1.8 * tpot50,
                        "output_tokens_per_s": rate * 180 * min(1.0, 1.1 - 0.1 * load),
                        "meets_slo": meets,
                    }
                )
                low, high = (rate, high) if meets else (low, rate)
            met = [p["rate_rps"] for p in probe_rows if p["candidate_id"] == cid and p["meets_slo"]]
            goodput = max(met) if met else 0.0
            row.update(
                status="ok" if met else "infeasible",
                reason="" if met else "TPOT bound at lowest rate",
                goodput_rps=goodput if met else None,
                goodput_rps_per_gpu=goodput / shape["gpus"] if met else None,
            )
        cand_rows.append(row)
    return pd.DataFrame(cand_rows).reindex(columns=list(_CANDIDATE_COLUMNS)), pd.DataFrame(probe_rows)


def _plan_from(best: pd.Series, slo: Any, probes: pd.DataFrame) -> dict[str, Any]:
    probe = probes[(probes["candidate_id"] == best["candidate_id"]) & probes["meets_slo"]]
    probe = probe.loc[probe["rate_rps"].idxmax()]
    plan: dict[str, Any] = {
        "schema_version": 1,
        "mode": best["mode"],
        "model": "llama-3.1-8b",
        "hardware": "h100-sxm",
        "gpus": int(best["gpus"]),
    }
    if best["mode"] == "colocated":
        plan["colocated"] = {
            "instances": int(best["colocated_instances"]),
            "tp": int(best["colocated_tp"]),
            "max_batch_size": 256,
            "chunk_tokens": 2048,
            "policy": best["policy"],
        }
    else:
        plan["prefill"] = {
            "instances": int(best["prefill_instances"]),
            "tp": int(best["prefill_tp"]),
            "max_batch_tokens": 8192,
            "max_batch_size": 16,
        }
        plan["decode"] = {
            "instances": int(best["decode_instances"]),
            "tp": int(best["decode_tp"]),
            "max_batch_size": 256,
            "max_kv_tokens": 400_000,
        }
        plan["kv_transfer"] = {"link": "nvlink", "bandwidth_gbps": 450.0, "latency_ms": 0.01}
    plan.update(
        slo=slo,
        attainment=TARGET,
        workload={
            "num_requests": 2000,
            "seed": 0,
            "arrival": {"process": "poisson", "rate_rps": 4.0},
            "prompt_tokens": {"dist": "lognormal", "mean": 1024, "cv": 0.6},
        },
        predicted={
            "goodput_rps": float(best["goodput_rps"]),
            "goodput_rps_per_gpu": float(best["goodput_rps_per_gpu"]),
            "rate_rps": float(probe["rate_rps"]),
            "attainment": float(probe["attainment"]),
            **{
                k: float(probe[k])
                for k in (
                    "ttft_p50_ms",
                    "ttft_p90_ms",
                    "ttft_p99_ms",
                    "tpot_p50_ms",
                    "tpot_p90_ms",
                    "tpot_p99_ms",
                )
            },
        },
    )
    return plan


def write_search_run(
    folder: Path, rng: np.random.Generator, size: SearchSize = SearchSize(), profile: Profile | None = None
) -> dict[str, Any]:
    """A complete search run directory; returns its plan."""
    profile = profile or make_profile(rng)
    candidates, probes = make_search(rng, size)
    ok = candidates[candidates["status"] == "ok"].sort_values("goodput_rps_per_gpu", ascending=False)
    slo = {"ttft_ms": SLO_TTFT_MS, "tpot_ms": SLO_TPOT_MS}
    plan = _plan_from(ok.iloc[0], slo, probes)
    folder.mkdir(parents=True, exist_ok=True)
    candidates.to_csv(folder / "candidates.csv", index=False)
    probes.to_csv(folder / "probes.csv", index=False)
    _dump(folder / "plan.yaml", plan)
    rate = plan["predicted"]["rate_rps"]
    requests = make_requests(profile, rng, size.num_requests, rate, load=0.7)
    requests.to_csv(folder / "requests.csv", index=False)
    roles = (
        {"colocated": plan["colocated"]["instances"]}
        if plan["mode"] == "colocated"
        else {"prefill": plan["prefill"]["instances"], "decode": plan["decode"]["instances"]}
    )
    util = {role: round(float(rng.uniform(0.5, 0.9)), 3) for role in roles}
    _dump(folder / "summary.yaml", summarise(requests, util, slo))
    make_timeseries(rng, roles, size, load=0.7).to_csv(folder / "timeseries.csv", index=False)
    write_run_yaml(
        folder,
        "search",
        f"pdplan simulate --profile prof --gpus {size.gpus} --slo ttft=2s,tpot=100ms --out {folder.name}",
    )
    return plan


def write_bench_run(
    folder: Path,
    rng: np.random.Generator,
    profile: Profile,
    num_requests: int = 300,
    with_predicted: bool = True,
) -> None:
    """A bench run (measured) and, optionally, its predicted/ twin on the same requests."""
    measured = make_requests(profile, rng, num_requests, rate_rps=3.0, load=0.6)
    slo = "ttft=2s,tpot=100ms"
    folder.mkdir(parents=True, exist_ok=True)
    measured.to_csv(folder / "requests.csv", index=False)
    _dump(folder / "summary.yaml", summarise(measured, {"prefill": 0.6, "decode": 0.7}, slo))
    write_run_yaml(folder, "bench", f"pdplan bench --plan plan.yaml --out {folder.name}")
    if with_predicted:
        pred = measured.copy()
        scale = rng.uniform(0.85, 1.0, len(pred))
        for col in ("first_token_s", "finish_s", "prefill_start_s", "prefill_end_s", "decode_start_s"):
            pred[col] = pred["arrival_s"] + (pred[col] - pred["arrival_s"]) * scale
        (folder / "predicted").mkdir()
        pred.to_csv(folder / "predicted" / "requests.csv", index=False)
        _dump(folder / "predicted" / "summary.yaml", summarise(pred, {"prefill": 0.6, "decode": 0.7}, slo))


def write_deploy_run(folder: Path, ready_s: float | None = 4.2, status: str = "ready") -> dict[str, Any]:
    """A ``pdplan deploy --target local`` run directory as the supervisor leaves it once ready
    (deploy.json in ``pdplan.realrun.supervisor``'s schema, the plan copy, run.yaml)."""
    procs = []
    for i, (name, role, port, bootstrap) in enumerate(
        (
            ("prefill-0", "prefill", 18732, 18733),
            ("decode-0", "decode", 18734, None),
            ("router", "router", 18731, None),
        )
    ):
        procs.append(
            {
                "name": name,
                "role": role,
                "pid": 21586 + i,
                "pgid": 21586 + i,
                "start_ticks": 129268 + i,
                "url": f"http://127.0.0.1:{port}",
                "port": port,
                "bootstrap_port": bootstrap,
                "device": "cpu",
                "threads": 0 if role == "router" else 1,
                "cpus": [] if role == "router" else [i],
                "log": f"logs/{name}.log",
                "command": f"python -m pdplan.realrun.worker --role {role} --port {port}",
                "exit_code": None,
            }
        )
    deploy = {
        "schema_version": 1,
        "status": status,
        "mode": "disaggregated",
        "endpoint": "http://127.0.0.1:18731",
        "cpu_split": "2 cores split over 2 workers (1 each)",
        "command": f"pdplan deploy plan.yaml --target local --devices cpu --port 18731 --out {folder.name}",
        "supervisor_pid": 21580,
        "supervisor_start_ticks": 129010,
        "ready_s": ready_s,
        "updated_at": "2025-11-21T03:00:13+00:00",
        "processes": procs,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deploy.json").write_text(json.dumps(deploy, indent=2) + "\n")
    _dump(
        folder / "plan.yaml",
        {
            "schema_version": 1,
            "mode": "disaggregated",
            "model": "tiny-llama",
            "hardware": "cpu",
            "gpus": 2,
            "prefill": {"instances": 1, "tp": 1, "max_batch_tokens": 2048, "max_batch_size": 8},
            "decode": {"instances": 1, "tp": 1, "max_batch_size": 32, "max_kv_tokens": 65536},
            "slo": "ttft=2s,tpot=200ms",
            "attainment": 0.9,
        },
    )
    write_run_yaml(folder, "deploy", deploy["command"])
    return deploy


def update_plan(folder: Path, **fields: Any) -> dict[str, Any]:
    """Add (or replace) top-level fields of a run's plan.yaml, e.g. the optional ``target``,
    ``budget``, ``cost``, ``traffic`` and ``tie``."""
    plan = yaml.safe_load((folder / "plan.yaml").read_text())
    plan.update(fields)
    _dump(folder / "plan.yaml", plan)
    return plan


def write_large_search_run(
    folder: Path, rng: np.random.Generator, gpus: int = 128, variants: int = 9, profile: Profile | None = None
) -> dict[str, Any]:
    """A search run shaped like a real 128-GPU search: every shape that fits × ``variants`` batch
    limits (~170k candidates at 128 GPUs), almost all pruned by their capacity bound or after one
    probe, some infeasible, ~0.2 % simulated to their goodput with probes (bench/report_speed.py)."""
    profile = profile or make_profile(rng)
    shapes = pd.DataFrame(_shapes(gpus))
    table = shapes.loc[shapes.index.repeat(variants)].reset_index(drop=True)
    n = len(table)
    table.insert(0, "candidate_id", [f"c{i:06d}" for i in range(n)])
    table["max_batch_size"] = np.tile(2 ** np.arange(4, 4 + variants), len(shapes))
    table["max_batch_tokens"] = 8192
    capacity = np.array([_capacity_rps(row) for row in shapes.to_dict("records")]).repeat(variants)
    capacity *= rng.uniform(0.9, 1.1, n)
    draw = rng.random(n)
    status = np.where(draw < 0.002, "ok", np.where(draw < 0.05, "infeasible", "pruned")).astype(object)
    first = {"disaggregated": True, "colocated": True}
    for i, mode in enumerate(table["mode"]):  # the best of each mode's first shape is simulated
        if first[mode]:
            status[i], first[mode] = "ok", False
    reasons = np.where(
        draw < 0.03,
        "misses the SLO at the rate needed to beat c000123 (3× (TP1))",
        "capacity bound (" + np.round(capacity, 1).astype(str) + " req/s) cannot beat c000123 (3× (TP1))",
    ).astype(object)
    reasons[status == "infeasible"] = "misses the SLO at every rate tried, down to 0.25 req/s (ttft)"
    reasons[status == "ok"] = ""
    goodput = np.where(status == "ok", np.round(capacity * rng.uniform(0.8, 0.95, n), 4), np.nan)
    table["goodput_rps"] = goodput
    table["goodput_rps_per_gpu"] = goodput / table["gpus"]
    table["status"], table["reason"] = status, reasons
    table = table.reindex(columns=list(_CANDIDATE_COLUMNS))
    probe_rows = []
    for cid, good in table.loc[table["status"] == "ok", ["candidate_id", "goodput_rps"]].itertuples(
        index=False
    ):
        for rate, meets in ((0.5 * good, True), (good, True), (1.15 * good, False)):
            load = min(0.98, rate / (1.2 * good))
            probe_rows.append(
                {
                    "candidate_id": cid,
                    "rate_rps": round(rate, 4),
                    "attainment": 0.97 if meets else 0.6,
                    **{
                        f"ttft_p{q}_ms": 180 * (1 + load / (1 - load)) * k
                        for q, k in ((50, 1), (90, 2.3), (99, 4.6))
                    },
                    **{f"tpot_p{q}_ms": (25 + 40 * load) * k for q, k in ((50, 1), (90, 1.3), (99, 1.8))},
                    "output_tokens_per_s": rate * 180,
                    "meets_slo": meets,
                }
            )
    probes = pd.DataFrame(probe_rows)
    ok = table[table["status"] == "ok"].sort_values("goodput_rps_per_gpu", ascending=False)
    slo = {"ttft_ms": SLO_TTFT_MS, "tpot_ms": SLO_TPOT_MS}
    plan = _plan_from(ok.iloc[0], slo, probes)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "candidates.csv", index=False)
    probes.to_csv(folder / "probes.csv", index=False)
    _dump(folder / "plan.yaml", plan)
    requests = make_requests(profile, rng, 20_000, plan["predicted"]["rate_rps"], load=0.7)
    requests.to_csv(folder / "requests.csv", index=False)
    roles = (
        {"colocated": plan["colocated"]["instances"]}
        if plan["mode"] == "colocated"
        else {"prefill": plan["prefill"]["instances"], "decode": plan["decode"]["instances"]}
    )
    _dump(folder / "summary.yaml", summarise(requests, {role: 0.9 for role in roles}, slo))
    size = SearchSize(gpus=gpus, duration_s=float(requests["arrival_s"].max()), sample_interval_s=1.0)
    make_timeseries(rng, roles, size, load=0.7).to_csv(folder / "timeseries.csv", index=False)
    write_run_yaml(
        folder, "search", f"pdplan simulate --gpus {gpus} --slo ttft=2s,tpot=100ms --out {folder.name}"
    )
    return plan

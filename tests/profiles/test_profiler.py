"""The measured profiler on a model smaller than tiny-llama: tables, files, breakdown, memory, TP."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pdplan.profiles.errors import ProfileError  # noqa: E402
from pdplan.profiles.grids import Grid  # noqa: E402
from pdplan.profiles.model_spec import load_model_spec  # noqa: E402
from pdplan.profiles.profile import load_profile, save_profile  # noqa: E402
from pdplan.profiles.profiler import measure_profile  # noqa: E402
from pdplan.profiles.timing import TimingBudget  # noqa: E402

MICRO = replace(
    load_model_spec("tiny-llama"),
    name="micro-llama",
    hidden_size=128,
    intermediate_size=352,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    vocab_size=2048,
    dtype="float32",
)
HARDWARE = {"name": "cpu", "memory_bytes": 8 << 30}
# One thread: a shared machine oversubscribed with OpenMP threads gives wildly noisy timings.
THREADS = 1
BUDGET = TimingBudget(point_budget_s=0.03, min_repeats=3, max_repeats=8, passes=1)
SMALL_GRID = Grid(
    prefill=((1, 16), (1, 64), (2, 64), (1, 256), (4, 128), (1, 512)),
    decode=((1, 16), (4, 16), (16, 16), (1, 512), (8, 256), (16, 512)),
    prefill_budget=BUDGET,
    decode_budget=BUDGET,
)


@pytest.fixture(scope="module")
def quick_profile():
    calls: list[tuple[int, int]] = []
    threads_before = torch.get_num_threads()
    profile = measure_profile(
        MICRO,
        hardware=HARDWARE,
        quick=True,
        threads=THREADS,
        progress=lambda done, total: calls.append((done, total)),
    )
    return profile, calls, threads_before


def test_quick_profile_is_complete_and_round_trips(quick_profile, tmp_path: Path) -> None:
    profile, calls, threads_before = quick_profile
    points, total = len(profile.prefill) + len(profile.decode), calls[0][1]
    assert calls[0] == (0, total) and calls[-1] == (total, total) and total % points == 0
    assert [done for done, _ in calls] == list(range(total + 1))  # shape-rounds, in order
    assert profile.method == "measured" and profile.tp == 1 and profile.dtype == "float32"
    assert profile.hardware["device"] == "cpu" and profile.hardware["name"] == "cpu"
    assert profile.hardware["cpu_threads"] == THREADS and torch.get_num_threads() == threads_before
    assert {"torch", "transformers", "pdplan"} <= set(profile.versions)
    assert profile.created_at.endswith("+00:00")
    for table in (profile.prefill, profile.decode):
        assert {"latency_ms", "p10_ms", "p90_ms", "repeats"} <= set(table.columns)
        assert (table["p10_ms"] <= table["latency_ms"] + 1e-9).all()
        assert (table["latency_ms"] <= table["p90_ms"] + 1e-9).all()
        assert (table["repeats"] >= 3).all() and (table["latency_ms"] > 0).all()
    assert profile.latency.prefill_loo is not None and profile.latency.decode_loo is not None

    loaded = load_profile(save_profile(profile, tmp_path / "p"))
    assert loaded.model == MICRO and loaded.hardware == profile.hardware
    assert loaded.versions == profile.versions and loaded.notes == profile.notes
    for name in ("prefill", "decode"):
        np.testing.assert_allclose(getattr(loaded, name).to_numpy(), getattr(profile, name).to_numpy())
    assert loaded.ops is not None and len(loaded.ops) == len(profile.ops)
    assert loaded.latency.prefill_coef == pytest.approx(profile.latency.prefill_coef)
    assert loaded.latency.decode_coef == pytest.approx(profile.latency.decode_coef)


def test_tables_grow_with_work(quick_profile) -> None:
    profile, _, _ = quick_profile
    pre = profile.prefill.set_index(["num_seqs", "seq_len"])["latency_ms"]
    # 8× the tokens costs clearly more (a loose bound: the machine may be shared).
    assert pre[(1, 512)] > 2 * pre[(1, 64)]
    assert pre[(1, 1536)] > 2 * pre[(1, 512)]  # the grid reaches long prompts (issue 11)
    dec = profile.decode.set_index(["batch_size", "context_len"])["latency_ms"]
    assert dec[(32, 16)] > 1.5 * dec[(4, 16)]
    assert dec[(32, 512)] > 1.5 * dec[(4, 16)]
    assert profile.latency.prefill_ms([512]) > profile.latency.prefill_ms([64])
    assert profile.latency.decode_ms(32, 32 * 512) > profile.latency.decode_ms(4, 4 * 16)


def test_op_breakdown_adds_up_to_the_step(quick_profile) -> None:
    profile, _, _ = quick_profile
    ops = profile.ops
    assert set(ops["op"]) == {"gemm", "attention", "other", "allreduce"}
    assert (ops.loc[ops["op"] == "allreduce", "latency_ms"] == 0).all()
    ratios = []
    for phase, table, keys in (
        ("prefill", profile.prefill, ["num_seqs", "seq_len"]),
        ("decode", profile.decode, ["batch_size", "context_len"]),
    ):
        sums = ops[ops["phase"] == phase].groupby(keys)["latency_ms"].sum()
        for row in table.itertuples():
            if phase == "decode" and row.batch_size < 4:
                # one- and two-row steps last a few ms, where the per-op timers' own cost is a
                # visible share of the step: the sum is no guide to the step there
                continue
            ratios.append(sums[tuple(getattr(row, k) for k in keys)] / row.latency_ms)
        gemm = ops[(ops["phase"] == phase) & (ops["op"] == "gemm")]["latency_ms"]
        assert (gemm > 0).all()
    # Instrumented and plain passes are separate samples: close, not equal.
    assert len(ratios) >= 8 and 0.75 < float(np.median(ratios)) < 1.3, ratios


def test_memory_check_names_bytes_needed_and_available() -> None:
    weights = MICRO.weight_bytes("float32")
    with pytest.raises(ProfileError, match=rf"needs at least \d+ bytes .*memory_bytes is {weights // 2}"):
        measure_profile(MICRO, hardware={"name": "small", "memory_bytes": weights // 2})
    with pytest.raises(ProfileError, match="link bandwidth"):
        measure_profile(MICRO, hardware=HARDWARE, tp=2, grid=SMALL_GRID)


def test_tp2_adds_the_ring_allreduce_cost() -> None:
    bandwidth_gbps, latency_us = 0.05, 50.0  # a slow link, so the all-reduce dominates big steps
    profile = measure_profile(
        MICRO, hardware=HARDWARE, tp=2, grid=SMALL_GRID, threads=THREADS,
        link_bandwidth_gbps=bandwidth_gbps, link_latency_us=latency_us,
    )  # fmt: skip
    assert profile.tp == 2 and profile.weight_bytes == MICRO.weight_bytes("float32") // 2
    assert "2·(tp−1)/tp" in profile.notes
    ops = profile.ops
    allreduce = ops[ops["op"] == "allreduce"]
    for row in allreduce.itertuples():
        tokens = row.num_seqs * row.seq_len if row.phase == "prefill" else row.batch_size
        one_s = latency_us * 1e-6 + 2 * (2 - 1) / 2 * tokens * 128 * 4 / (bandwidth_gbps * 1e9)
        assert row.latency_ms == pytest.approx(2 * MICRO.num_layers * one_s * 1e3, rel=1e-9)
    # The table's latency is the measured shard plus the modelled all-reduce.
    pre = profile.prefill.set_index(["num_seqs", "seq_len"])
    modelled = allreduce[allreduce["phase"] == "prefill"].set_index(["num_seqs", "seq_len"])["latency_ms"]
    big = modelled[(1, 512)]
    assert big > 10.0 and big < pre.loc[(1, 512), "latency_ms"] < big + 1000.0
    assert (pre["p10_ms"] >= modelled.reindex(pre.index)).all()

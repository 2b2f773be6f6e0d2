"""The search space: enumeration on a GPU budget and the memory-fit filter."""

from __future__ import annotations

import pytest

from pdplan.planner.evaluation import CANDIDATE_COLUMNS
from pdplan.planner.profileset import analytic_profile_set
from pdplan.planner.space import CostCache, SpaceGrid, enumerate_candidates, memory_fit
from pdplan.profiles.errors import ConfigError
from pdplan.sim.costs import kv_capacity_tokens

ONE_LIMIT = SpaceGrid(
    prefill_max_batch_tokens=(8192,),
    decode_max_batch_size=(256,),
    colocated_max_batch_size=(256,),
    colocated_chunk_tokens=(2048,),
    colocated_prefill_first_tokens=(8192,),
    tps=(1, 2),
)


def test_enumeration_counts_every_layout_on_the_budget() -> None:
    candidates = enumerate_candidates(4, grid=ONE_LIMIT)
    disagg = [c for c in candidates if c.mode == "disaggregated"]
    colo = [c for c in candidates if c.mode == "colocated"]
    # P·tp_p + D·tp_d ≤ 4: (1,1) P+D≤4 → 6; (1,2) P+2D≤4 → 2; (2,1) → 2; (2,2) P+D≤2 → 1
    assert len(disagg) == 11
    # n·tp ≤ 4: tp1 → 4, tp2 → 2; chunked and prefill-first each
    assert len(colo) == 12
    shapes = {(c.prefill.instances, c.prefill.tp, c.decode.instances, c.decode.tp) for c in disagg}
    assert (3, 1, 1, 1) in shapes and (2, 1, 1, 2) in shapes and (1, 2, 1, 2) in shapes
    assert (3, 1, 2, 1) not in shapes  # 5 GPUs
    assert all(1 <= c.gpus <= 4 for c in candidates)
    assert [c.candidate_id for c in candidates] == [f"c{i:04d}" for i in range(len(candidates))]


def test_enumeration_multiplies_by_the_limits_and_is_stable() -> None:
    grid = SpaceGrid(tps=(1,))
    first = enumerate_candidates(3, grid=grid, modes=("disaggregated",))
    # 3 shapes (1:1, 1:2, 2:1) × 2 prefill budgets × 3 decode batch caps
    assert len(first) == 3 * 2 * 3
    assert len({(c.prefill, c.decode) for c in first}) == len(first)
    assert first == enumerate_candidates(3, grid=grid, modes=("disaggregated",))
    assert all(c.prefill.chunk_tokens == c.prefill.max_batch_tokens for c in first)


def test_min_gpus_and_bad_arguments() -> None:
    assert all(c.gpus >= 3 for c in enumerate_candidates(4, grid=ONE_LIMIT, min_gpus=3))
    with pytest.raises(ConfigError, match="--gpus"):
        enumerate_candidates(0)
    with pytest.raises(ConfigError, match="--mode"):
        enumerate_candidates(2, modes=("split",))


def test_candidate_row_unit_and_labels() -> None:
    c = next(c for c in enumerate_candidates(4, grid=ONE_LIMIT) if c.gpus == 4 and c.mode == "disaggregated")
    assert tuple(c.row()) == CANDIDATE_COLUMNS[:16]
    assert c.row()["colocated_instances"] is None
    unit = c.unit()
    assert unit.instances == {"prefill": 1, "decode": 1} and unit.tps == c.tps
    assert c.label == f"disaggregated {c.shape}" and "D (TP" in c.shape
    colo = next(c for c in enumerate_candidates(4, grid=ONE_LIMIT) if c.mode == "colocated")
    assert colo.label == "colocated 1× (TP1)" and colo.row()["prefill_tp"] is None


def test_memory_fit_follows_tp_and_limits() -> None:
    """Llama-3.1-70B in bf16 (131 GiB) cannot run at TP1 on an 80 GB H100; at TP2 it fits with
    room for KV unless the activations of a huge prefill step eat that room."""
    profiles = analytic_profile_set("llama-3.1-70b", "h100-sxm", tps=(1, 2))
    assert profiles.tps == (2,) and "does not fit in memory" in profiles.unfit[1]
    cache = CostCache(profiles.profiles, profiles.unfit)
    grid = SpaceGrid(
        prefill_max_batch_tokens=(16384, 262144),
        decode_max_batch_size=(256,),
        colocated_chunk_tokens=(2048,),
        colocated_max_batch_size=(256,),
        tps=(1, 2),
    )
    fits = {}
    for c in enumerate_candidates(4, grid=grid, modes=("disaggregated",)):
        fits[(c.prefill.tp, c.decode.tp, c.prefill.max_batch_tokens)] = memory_fit(c, cache)
    assert not fits[(1, 2, 16384)].fits and "does not fit in memory" in fits[(1, 2, 16384)].reason
    assert "(prefill)" in fits[(1, 2, 16384)].reason
    assert not fits[(2, 2, 262144)].fits and "no room for KV" in fits[(2, 2, 262144)].reason
    ok = fits[(2, 2, 16384)]
    assert ok.fits
    expected = kv_capacity_tokens(profiles.profiles[2], max_step_tokens=256, max_batch_size=256)
    assert ok.costs["decode"].kv_capacity_tokens == expected
    assert ok.costs["prefill"].kv_capacity_tokens < expected  # a 16k-token step reserves more

"""Pipeline parallelism in the search and the plan: Llama-3.1-405B (bf16) on 8-GPU H100 nodes,
which one node cannot hold, searched as TP8 × PP2 instances; pp in plan.yaml and back."""

from __future__ import annotations

import pytest
import yaml

from pdplan.planner.plan import plan_from_dict
from pdplan.planner.presets import get_preset
from pdplan.planner.probe import SloTargets
from pdplan.planner.profileset import ProfileSet
from pdplan.planner.search import SearchSpec, run_search
from pdplan.planner.search_files import plan_of
from pdplan.planner.slo import parse_slo
from pdplan.planner.space import CostCache, SpaceGrid, enumerate_candidates, memory_fit
from pdplan.planner.traffic import synthetic
from pdplan.profiles.analytic import kv_budget_bytes
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.hardware import get_hardware
from pdplan.profiles.layouts import choose_instance_layout
from pdplan.profiles.model_spec import load_model_spec
from pdplan.sim.cluster import KvLink

GRID = SpaceGrid(
    tps=(8, 16),
    pps=((16, 2),),
    prefill_max_batch_tokens=(16384,),
    decode_max_batch_size=(256,),
    colocated_max_batch_size=(256,),
    colocated_chunk_tokens=(2048,),
)


@pytest.fixture(scope="module")
def l405() -> ProfileSet:
    spec, h100 = load_model_spec("llama-3.1-405b"), get_hardware("h100-sxm")
    with pytest.raises(ProfileError) as tp8:
        kv_budget_bytes(spec, h100, 8, "bfloat16")
    choice = choose_instance_layout(spec, h100, 16)
    return ProfileSet({16: choice.profile}, {8: f"does not fit in memory: {tp8.value}"}, {16: choice.reason})


def test_widths_with_a_pipeline_become_tp_times_pp_pools(l405: ProfileSet) -> None:
    candidates = enumerate_candidates(32, grid=GRID)
    staged = [c for c in candidates if c.mode == "disaggregated" and c.tps == (16,)]
    assert staged, "16-GPU instances are enumerated"
    first = staged[0]
    assert first.prefill is not None and first.decode is not None
    assert (first.prefill.tp, first.prefill.pp, first.decode.tp, first.decode.pp) == (8, 2, 8, 2)
    assert first.gpus == 32 and first.shape == "1P:1D (TP8×PP2)"
    row = first.row()  # candidates.csv names the stages, so its TP and GPUs agree
    assert (row["prefill_tp"], row["prefill_pp"], row["decode_pp"], row["gpus"]) == (8, 2, 2, 32)
    assert all(c.gpus <= 32 for c in candidates)
    cache = CostCache(l405.profiles, l405.unfit)
    assert memory_fit(first, cache).fits
    tp8 = next(c for c in candidates if c.tps == (8,))
    reason = memory_fit(tp8, cache).reason
    assert "does not fit in memory" in reason and "94.5 GiB weights" in reason


def test_a_search_that_needs_a_pipeline_names_it_and_the_plan_round_trips(l405: ProfileSet) -> None:
    spec = SearchSpec(
        profiles=l405,
        traffic=synthetic(get_preset("chat").workload(num_requests=300, seed=0)),
        slo=SloTargets(parse_slo("ttft=2s,tpot=100ms")),
        link=KvLink(50.0, 0.01, link="infiniband"),
        max_gpus=32,
        grid=GRID,
        workers=1,
    )
    result = run_search(spec)
    assert result.chosen is not None, "two TP8×PP2 instances fit 32 H100s"
    plan = plan_of(result, workload=None)
    assert plan.pps == {"prefill": 2, "decode": 2} or plan.pps == {"colocated": 2}
    pools = [p for p in (plan.prefill, plan.decode, plan.colocated) if p is not None]
    assert plan.gpus == sum(p.instances * p.tp * p.pp for p in pools)
    data = yaml.safe_load(yaml.safe_dump(plan.to_dict()))
    assert all(data[role]["pp"] == 2 for role in plan.pps)
    back = plan_from_dict(data, source="plan.yaml")
    assert back.pps == plan.pps and back.gpus == plan.gpus


def test_pp_is_written_only_when_pipelined_and_gpus_count_it() -> None:
    base = {
        "schema_version": 1,
        "mode": "disaggregated",
        "model": "llama-3.1-405b",
        "hardware": "h100-sxm",
        "prefill": {"instances": 1, "tp": 8, "pp": 2, "max_batch_tokens": 8192, "max_batch_size": 8},
        "decode": {"instances": 2, "tp": 8, "pp": 2, "max_batch_size": 128},
        "kv_transfer": {"link": "infiniband"},
    }
    plan = plan_from_dict(base, source="p")
    assert plan.gpus == 48
    assert plan_from_dict({**base, "gpus": 48}, source="p").gpus == 48
    with pytest.raises(ConfigError, match=r"gpus=24 but the pools use 48 \(instances × tp × pp\)"):
        plan_from_dict({**base, "gpus": 24}, source="p")
    with pytest.raises(ConfigError, match=r"prefill\.pp"):
        plan_from_dict({**base, "prefill": {**base["prefill"], "pp": 0}}, source="p")
    flat = {**base, "prefill": {"instances": 1, "tp": 8}, "decode": {"instances": 1, "tp": 8}}
    written = plan_from_dict(flat, source="p").to_dict()
    assert "pp" not in written["prefill"] and "pp" not in written["decode"]

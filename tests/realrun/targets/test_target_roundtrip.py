"""plan -> SGLang scripts -> parsed back -> the same plan (every field the launch carries)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from target_cases import PLANS, plan, tplan

from pdplan.planner.cli.deploy_targets import TargetRequest, target_plan
from pdplan.planner.plan import Plan
from pdplan.profiles.engine import sglang_mem_fraction_static
from pdplan.profiles.errors import DeployError
from pdplan.realrun.targets import sglang
from pdplan.realrun.targets.layout import LaunchSettings, RoleParallel, TargetPlan
from pdplan.sim.cluster import ColocatedPool, DecodePool, PrefillPool


def _launch_view(p: Plan) -> dict[str, object]:
    t = target_plan(p, TargetRequest("sglang"))
    return {
        "mode": t.mode,
        "pools": t.pools,
        "router": t.router,
        "mem": t.mem_fraction,
        "settings": t.settings,
    }


@pytest.mark.parametrize("name", list(PLANS))
def test_plan_survives_the_sglang_scripts(name: str) -> None:
    original = plan(name)
    bundle = sglang.build(target_plan(original, TargetRequest("sglang")))
    back = sglang.parse_bundle(bundle.files)
    rebuilt = Plan(
        mode=back.mode,
        model=original.model,
        hardware=original.hardware,
        router=back.router,
        gpu_memory_utilisation=back.mem_fraction,
        launch=back.settings,
        kv_transfer=original.kv_transfer,  # a link's numbers are the simulator's, not an engine flag
        **dict(back.pools),
    )
    # a plan that leaves the memory fraction to the engine gets SGLang's default for its TP, spelled out
    fraction = original.gpu_memory_utilisation
    if fraction is None:
        fraction = sglang_mem_fraction_static(max(original.tps.values()))
    expected = replace(original, gpu_memory_utilisation=fraction)
    assert _launch_view(rebuilt) == _launch_view(expected)
    assert rebuilt.to_dict() == expected.to_dict() | {"predicted": {}, "slo": None}


_pools = st.one_of(
    st.tuples(
        st.builds(PrefillPool, st.integers(1, 3), st.sampled_from([1, 2, 4, 8]), st.integers(256, 32768),
                  st.integers(1, 512), st.one_of(st.none(), st.integers(64, 8192))),
        st.builds(DecodePool, st.integers(1, 3), st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 1024),
                  st.one_of(st.none(), st.integers(1000, 10**6))),
    ),
    st.tuples(
        st.one_of(
            st.builds(ColocatedPool, st.integers(1, 4), st.sampled_from([1, 2, 8, 16]), st.just("chunked"),
                      st.integers(1, 512), st.integers(256, 32768), st.integers(64, 8192),
                      st.one_of(st.none(), st.integers(1000, 10**6)), reuse_preempted_kv=st.booleans()),
            st.builds(ColocatedPool, st.integers(1, 4), st.sampled_from([1, 2, 8]), st.just("prefill-first"),
                      st.integers(1, 512), st.integers(256, 32768), st.just(2048),
                      st.one_of(st.none(), st.integers(1000, 10**6)), reuse_preempted_kv=st.booleans()),
        )
    ),
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    pools=_pools,
    router=st.sampled_from(["round_robin", "random", "least_loaded"]),
    mem=st.sampled_from([0.5, 0.8, 0.88, 0.9]),
    backend=st.sampled_from(["mooncake", "nixl"]),
    store=st.sampled_from([None, "mooncake"]),
    dtypes=st.sampled_from([(None, None), ("fp8", None), ("fp8", "fp8"), (None, "fp8"), ("float16", None)]),
)
def test_any_plan_survives_the_scripts(pools, router, mem, backend, store, dtypes) -> None:  # type: ignore[no-untyped-def]
    roles = ("prefill", "decode") if len(pools) == 2 else ("colocated",)
    mode = "disaggregated" if len(pools) == 2 else "colocated"
    par = {}
    if roles[-1] == "decode" and pools[1].tp == 16:
        par["decode"] = RoleParallel(dp=8, ep=16, dp_attention=True)
    settings_ = LaunchSettings("org/model", backend if mode == "disaggregated" else "mooncake", 8, store, par)
    pairs = tuple(zip(roles, pools, strict=True))
    original = TargetPlan(
        mode, "org/model", pairs, router, mem, settings=settings_, dtype=dtypes[0], kv_dtype=dtypes[1]
    )
    back = sglang.parse_bundle(sglang.build(original).files)
    assert back == original


def test_instances_of_one_role_must_agree() -> None:
    files = dict(sglang.build(tplan("disagg")).files)
    files["node-0.sh"] = files["node-0.sh"].replace(
        "--max-running-requests 16", "--max-running-requests 17", 1
    )
    with pytest.raises(DeployError, match="prefill instances differ"):
        sglang.parse_bundle(files)


def test_a_foreign_flag_in_a_script_is_refused() -> None:
    files = dict(sglang.build(tplan("disagg")).files)
    files["node-0.sh"] = files["node-0.sh"].replace("--enable-metrics", "--enable-magic", 1)
    with pytest.raises(DeployError, match="--enable-magic"):
        sglang.parse_bundle(files)

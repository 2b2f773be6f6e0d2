"""``Plan`` (strict plan.yaml load/save) and ``parse_slo``."""

from __future__ import annotations

import re

import plan_cases as sp
import pytest
import yaml

from pdplan.planner.plan import PLAN_KEYS, Plan, load_plan, plan_from_dict, save_plan
from pdplan.planner.slo import SLO, parse_slo
from pdplan.profiles.errors import ConfigError
from pdplan.sim import ColocatedCluster, ColocatedPool, DecodePool, DisaggregatedCluster, KvLink, PrefillPool

DISAGG = {
    "schema_version": 1,
    "mode": "disaggregated",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "gpus": 6,
    "prefill": {"instances": 2, "tp": 1, "max_batch_tokens": 8192, "max_batch_size": 32},
    "decode": {"instances": 2, "tp": 2, "max_batch_size": 128, "max_kv_tokens": None},
    "kv_transfer": {"link": "infiniband"},
    "slo": "ttft=1s,tpot=50ms",
    "attainment": 0.9,
    "workload": "workloads/chat.yaml",
    "predicted": {"goodput_rps": 12.5, "goodput_rps_per_gpu": 2.08, "ttft_p99_ms": None},
}


def test_disaggregated_plan_round_trips(tmp_path):
    plan = plan_from_dict(DISAGG)
    assert plan.gpus == 6 and plan.tps == {"prefill": 1, "decode": 2}
    assert plan.prefill == PrefillPool(2, 1, 8192, 32)
    assert plan.decode == DecodePool(2, 2, 128)
    # A known link label alone fills the numbers from the hardware catalog (InfiniBand NDR).
    assert plan.kv_transfer == KvLink(50.0, 0.01, link="infiniband")
    assert plan.slo == SLO({"ttft": 1000.0, "tpot": 50.0})
    path = save_plan(plan, tmp_path / "plan.yaml")
    again = load_plan(path)
    assert again == plan
    written = yaml.safe_load(path.read_text())
    assert list(written)[:5] == ["schema_version", "mode", "model", "hardware", "gpus"]
    assert set(written) <= set(PLAN_KEYS)
    assert written["kv_transfer"] == {
        "bandwidth_gbps": 50.0,
        "latency_ms": 0.01,
        "contention": "per_instance",
        "layerwise_overlap": False,
        "link": "infiniband",
    }


def test_numbers_beside_a_label_win_and_custom_links_need_numbers():
    plan = plan_from_dict({**DISAGG, "kv_transfer": {"link": "roce", "bandwidth_gbps": 12.5}})
    assert plan.kv_transfer is not None
    assert (plan.kv_transfer.bandwidth_gbps, plan.kv_transfer.latency_ms) == (12.5, 0.02)
    custom = plan_from_dict(
        {**DISAGG, "kv_transfer": {"link": "my-fabric", "bandwidth_gbps": 5, "latency_ms": 1}}
    )
    assert custom.kv_transfer == KvLink(5, 1, link="my-fabric")
    with pytest.raises(ConfigError, match="unknown kv_transfer link 'my-fabric'; valid: infiniband"):
        plan_from_dict({**DISAGG, "kv_transfer": {"link": "my-fabric"}})


def test_colocated_plan_and_cluster():
    plan = plan_from_dict(
        {"mode": "colocated", "colocated": {"instances": 4, "tp": 2, "policy": "prefill-first"}}
    )
    assert plan.gpus == 8 and plan.colocated == ColocatedPool(4, 2, "prefill-first")
    cluster = plan.cluster({"colocated": sp.profile(tp=2)})
    assert isinstance(cluster, ColocatedCluster) and cluster.cost.kv_capacity_tokens > 0
    disagg = plan_from_dict(DISAGG).cluster({"prefill": sp.profile(tp=1), "decode": sp.profile(tp=2)})
    assert isinstance(disagg, DisaggregatedCluster) and disagg.kv_bytes_per_token == 131072


def test_cache_section_round_trips_and_reaches_the_cluster(tmp_path):
    from pdplan.sim.prefix_cache import CacheTier, PrefixCache

    data = {
        **DISAGG,
        "router": "cache_aware",
        "cache": {"l2": {"capacity_gb": 64}, "l3": {"capacity_gb": 2000, "bandwidth_gbps": 10}},
    }
    plan = plan_from_dict(data)
    want = PrefixCache(l2=CacheTier(64, 25.0), l3=CacheTier(2000, 10, 1.0))  # the stated defaults
    assert plan.cache == want and plan.router == "cache_aware"
    assert load_plan(save_plan(plan, tmp_path / "plan.yaml")).cache == want
    assert plan.cluster({"prefill": sp.profile(tp=1), "decode": sp.profile(tp=2)}).cache == want
    colocated = plan_from_dict({"mode": "colocated", "colocated": {"instances": 1}, "cache": {"l1": True}})
    cluster = colocated.cluster({"colocated": sp.profile()})
    assert cluster.cache == PrefixCache() and cluster.kv_bytes_per_token == 131072
    assert "cache" not in plan_from_dict(DISAGG).to_dict()  # plans without one are unchanged


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prefil": {"instances": 1}}, "unknown keys ['prefil']; valid: ['schema_version', 'mode'"),
        (
            {"prefill": {"instances": 2, "max_tokens": 5}},
            "prefill: unknown keys ['max_tokens']; valid: ['instances', 'tp', 'max_batch_tokens'",
        ),
        ({"decode": {"instances": 2, "tp": 0}}, "decode.tp=0; expected an integer ≥ 1"),
        ({"mode": "hybrid"}, "unknown plan mode 'hybrid'; valid: colocated, disaggregated"),
        ({"gpus": 5}, "gpus=5 but the pools use 6"),
        ({"schema_version": 2}, "schema_version 2; expected 1"),
        ({"kv_transfer": None}, "mode disaggregated needs kv_transfer"),
        ({"colocated": {"instances": 1}}, "mode disaggregated does not use colocated"),
        ({"kv_transfer": {"link": "nvlink", "speed": 3}}, "kv_transfer: unknown keys ['speed']"),
        (
            {"kv_transfer": {"bandwidth_gbps": -1, "latency_ms": 0}},
            "kv_transfer.bandwidth_gbps=-1; expected > 0",
        ),
        ({"predicted": {"goodput": 3}}, "predicted: unknown keys ['goodput']"),
        ({"attainment": 1.5}, "attainment=1.5; expected a fraction in (0, 1]"),
        (
            {"router": "nearest"},
            "unknown plan router 'nearest'; valid: cache_aware, least_loaded, random, round_robin",
        ),
        ({"cache": {"l2": {"capacity_gb": 0}}}, "cache.l2: cache tier capacity_gb=0; expected a number > 0"),
        (
            {"cache": {"l4": {}}},
            "cache: unknown keys ['l4']; valid: ['l1', 'l2', 'l3', 'decode_reads_store']",
        ),
        ({"slo": "ttft=1"}, "ttft='1'; expected a positive number with a unit"),
        ({"feasible": "yes"}, "feasible='yes'; expected true or false"),
    ],
)
def test_bad_plans_name_the_key(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_from_dict({**DISAGG, **change})


def test_infeasible_plan_needs_no_pools(tmp_path):
    plan = plan_from_dict({"mode": "disaggregated", "feasible": False, "reason": "does not fit in memory"})
    assert plan.gpus == 0
    assert (
        yaml.safe_load(save_plan(plan, tmp_path / "p.yaml").read_text())["reason"] == "does not fit in memory"
    )
    with pytest.raises(ConfigError, match="infeasible"):
        plan.cluster({})


def test_load_plan_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML at line 1, column"):
        load_plan(bad)


def test_parse_slo():
    slo = parse_slo("ttft=1s, tpot=50ms,ttft_p99=2.5s,e2e_p90=1e1s")
    assert slo.per_request_ms == {"ttft": 1000.0, "tpot": 50.0}
    assert slo.percentile_ms == (("ttft", 99.0, 2500.0), ("e2e", 90.0, 10000.0))
    assert slo.spec == "ttft=1000ms,tpot=50ms,ttft_p99=2500ms,e2e_p90=10000ms"
    assert parse_slo(slo.spec) == slo
    assert slo.percentiles == (50.0, 90.0, 99.0)
    assert parse_slo("tpot_p99.9=80ms").percentiles == (50.0, 90.0, 99.0, 99.9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected comma-separated metric=value pairs"),
        ("ttft", "cannot read 'ttft'"),
        ("ttft=1", "expected a positive number with a unit, s or ms"),
        ("ttft=1min", "ttft='1min'"),
        ("ttft=-1s", "ttft='-1s'"),
        ("ttft=0ms", "ttft threshold 0.0 ms; expected a positive number"),
        ("latency=1s", "unknown metric 'latency'; valid: ttft, tpot, e2e"),
        ("ttft=1s,ttft=2s", "ttft is given twice"),
        ("ttft_p100=1s", "expected a percentile strictly between 0 and 100"),
    ],
)
def test_parse_slo_errors(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_slo(text)


def test_slo_violations_read_a_summary():
    summary = {"attainment": 0.85, "ttft_ms": {"p99": 2100.0}, "tpot_ms": {"p99": 40.0}}
    slo = parse_slo("ttft=1s,ttft_p99=2s,tpot_p99=50ms")
    assert slo.violations(summary, 0.9) == ["attainment 0.85 < 0.9", "ttft_p99 2100 ms > 2000 ms"]
    assert slo.violations(summary, 0.8) == ["ttft_p99 2100 ms > 2000 ms"]
    assert parse_slo("tpot_p99=50ms").violations(summary) == []
    assert parse_slo("tpot_p99=50ms").violations({"tpot_ms": None}) == ["tpot_p99 n/a ms > 50 ms"]


def test_slo_percentiles_on_a_table_count_failures_as_infinitely_slow():
    table = {
        "arrival_s": [0.0, 1.0, 2.0, 3.0],
        "first_token_s": [0.1, 1.1, 2.1, float("nan")],
        "finish_s": [0.2, 1.2, 2.2, float("nan")],
        "output_tokens": [2, 2, 2, 2],
        "status": ["ok", "ok", "ok", "rejected"],
    }
    slo = parse_slo("ttft_p50=200ms,ttft_p90=200ms")
    # Over ok requests alone every TTFT is 100 ms; with the rejected one as +inf, p90 is infinite.
    assert slo.violations({"ttft_ms": {"p50": 100.0, "p90": 100.0}}) == []
    assert slo.violations({}, table=table) == ["ttft_p90 inf ms > 200 ms"]
    assert slo.violations({}, table=table, warmup_fraction=0.0) == slo.violations({}, table=table)


def test_plan_is_frozen():
    plan = plan_from_dict(DISAGG)
    with pytest.raises(AttributeError):
        plan.mode = "colocated"  # type: ignore[misc]
    assert isinstance(plan, Plan)

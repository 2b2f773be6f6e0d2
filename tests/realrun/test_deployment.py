"""Mapping a plan to processes: roles, ports, thread split, and the router's command line."""

from __future__ import annotations

import pytest
from realrun_helpers import free_port

from pdplan.profiles.errors import DeployError
from pdplan.realrun.deployment import DeploymentSpec, InstanceGroup, LaunchOptions, build_launch


def _disagg(prefill: int = 1, decode: int = 2, tp: int = 1) -> DeploymentSpec:
    return DeploymentSpec(
        "tiny-llama",
        "disaggregated",
        (InstanceGroup("prefill", prefill, tp, 8, 512), InstanceGroup("decode", decode, 1, 16, 2048, 4096)),
    )


def test_disaggregated_launch_plan() -> None:
    port = free_port()
    launch = build_launch(_disagg(), LaunchOptions(port=port))
    names = [w.name for w in launch.workers]
    assert names == ["prefill-0", "decode-0", "decode-1"]
    ports = [w.port for w in launch.workers] + [w.bootstrap_port for w in launch.workers if w.bootstrap_port]
    assert len(set(ports)) == len(ports) and port not in ports
    argv = launch.router.argv
    assert argv[1:4] == ("-m", "sglang_router.launch_router", "--pd-disaggregation")
    prefill = launch.workers[0]
    i = argv.index("--prefill")
    assert argv[i + 1 : i + 3] == (prefill.url, str(prefill.bootstrap_port))
    assert [argv[j + 1] for j, a in enumerate(argv) if a == "--decode"] == [w.url for w in launch.workers[1:]]
    # The router listens on an internal port; the gateway in front of it on the public one.
    assert "--disable-circuit-breaker" in argv and argv[argv.index("--port") + 1] == str(launch.router.port)
    assert launch.gateway is not None and launch.endpoint == f"http://127.0.0.1:{port}"
    gateway = launch.gateway.argv
    assert gateway[gateway.index("--router") + 1] == launch.router.url
    assert gateway[gateway.index("--model-name") + 1] == "tiny-llama"
    assert (
        int(gateway[gateway.index("--max-inflight") + 1]) == 2 * 16 + 1 * 128
    )  # 2 decode batches + 1 prefill queue
    decode_argv = launch.workers[1].argv
    assert decode_argv[decode_argv.index("--max-kv-tokens") + 1] == "4096"
    assert decode_argv[decode_argv.index("--role") + 1] == "decode"
    assert all(w.threads >= 1 and w.env["OMP_NUM_THREADS"] == str(w.threads) for w in launch.workers)


def test_colocated_uses_the_routers_regular_mode() -> None:
    spec = DeploymentSpec("tiny-llama", "colocated", (InstanceGroup("colocated", 2),))
    launch = build_launch(spec, LaunchOptions(port=free_port()))
    argv = launch.router.argv
    assert "--pd-disaggregation" not in argv
    i = argv.index("--worker-urls")
    assert list(argv[i + 1 : i + 3]) == [w.url for w in launch.workers]


def test_colocated_least_loaded_routes_by_the_routers_live_load() -> None:
    """least_loaded colocated workers get cache_aware set to route by load alone (its in-flight
    count is live; power_of_two's is polled once a second); other policies keep their names."""
    groups = (InstanceGroup("colocated", 2),)
    argv = list(
        build_launch(
            DeploymentSpec("tiny-llama", "colocated", groups), LaunchOptions(port=free_port())
        ).router.argv
    )
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    assert argv[argv.index("--balance-abs-threshold") + 1] == "0"
    assert argv[argv.index("--balance-rel-threshold") + 1] == "1.0"
    assert argv[argv.index("--cache-threshold") + 1] == "1.0"
    for policy in ("round_robin", "cache_aware"):
        spec = DeploymentSpec("tiny-llama", "colocated", groups, router_policy=policy)
        argv = list(build_launch(spec, LaunchOptions(port=free_port())).router.argv)
        assert argv[argv.index("--policy") + 1] == policy and "--balance-abs-threshold" not in argv


def test_gpus_are_assigned_round_robin() -> None:
    launch = build_launch(_disagg(1, 3), LaunchOptions(devices=("cuda:0", "cuda:1"), port=free_port()))
    assert [w.device for w in launch.workers] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _disagg(tp=2), "tp=2"),
        (lambda: _disagg(prefill=0), "instances=0"),
        (lambda: DeploymentSpec("m", "colocated", (InstanceGroup("prefill", 1),)), "expected roles"),
    ],
)
def test_unsupported_plans_are_deploy_errors(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DeployError, match=message):
        make()


def test_busy_router_port_is_refused() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(DeployError, match="already in use"):
            build_launch(_disagg(), LaunchOptions(port=busy.getsockname()[1]))


def test_router_policy_is_the_plans_where_the_router_allows_it() -> None:
    """least_loaded -> power_of_two for a role with two or more workers; one worker -> round_robin
    (sglang-router refuses power_of_two there)."""
    launch = build_launch(_disagg(1, 2), LaunchOptions(port=free_port()))
    argv = list(launch.router.argv)
    assert argv[argv.index("--prefill-policy") + 1] == "round_robin"
    assert argv[argv.index("--decode-policy") + 1] == "power_of_two"
    decode = [w for w in launch.workers if w.role == "decode"]
    prefill = [w for w in launch.workers if w.role == "prefill"]
    peers = decode[0].argv[list(decode[0].argv).index("--prefill-peers") + 1]
    assert peers == f"127.0.0.1:{prefill[0].bootstrap_port}"


def test_a_prefix_cache_goes_to_prefill_workers_only() -> None:
    spec = DeploymentSpec("tiny-llama", "disaggregated", _disagg().groups, prefix_cache_page_tokens=16)
    launch = build_launch(spec, LaunchOptions(port=free_port()))
    flags = {w.name: "--prefix-cache" in w.argv for w in launch.workers}
    assert flags == {"prefill-0": True, "decode-0": False, "decode-1": False}
    prefill = launch.workers[0].argv
    assert prefill[prefill.index("--prefix-cache-page-tokens") + 1] == "16"
    plain = build_launch(_disagg(), LaunchOptions(port=free_port()))
    assert not any("--prefix-cache" in w.argv for w in plain.workers)


@pytest.mark.parametrize(
    ("cache", "code", "said"),
    [
        ({"l1": True}, 0, "--prefix-cache"),
        ({"l1": True, "l2": {"capacity_gb": 64}}, 2, "not run by the local workers"),
    ],
    ids=["l1", "l2-refused"],
)
def test_deploy_runs_the_plans_l1_cache_and_refuses_lower_tiers(
    tmp_path, monkeypatch, capsys, cache, code, said
) -> None:
    import sys

    import yaml

    from pdplan.planner.cli.app import main

    plan = {
        "schema_version": 1, "mode": "colocated", "model": "tiny-llama", "hardware": "cpu",
        "colocated": {"instances": 1, "tp": 1}, "cache": cache,
    }  # fmt: skip
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    argv = ["pdplan", "deploy", str(tmp_path / "plan.yaml"), "--dry-run", "--port", str(free_port())]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    assert stop.value.code == code, out
    assert said in " ".join((out.out + out.err).split())

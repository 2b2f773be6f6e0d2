"""The flag tables against the engines' own parsers where importable, and the checking itself."""

from __future__ import annotations

import argparse

import pytest
from target_cases import PLANS, tplan

from pdplan.profiles.errors import DeployError
from pdplan.realrun.targets import flags, sglang


def _router_parser() -> argparse.ArgumentParser:
    router_args = pytest.importorskip("sglang_router.router_args")
    parser = argparse.ArgumentParser()
    router_args.RouterArgs.add_cli_args(parser, use_router_prefix=False)
    return parser


def test_router_table_matches_the_installed_router() -> None:
    from importlib.metadata import version

    actions = {o: a for a in _router_parser()._actions for o in a.option_strings}
    assert version("sglang-router") == flags.SGLANG_ROUTER.version
    for flag, kind in flags.SGLANG_ROUTER.flags.items():
        assert flag in actions, f"sglang-router {flags.SGLANG_ROUTER.version} has no {flag}"
        nargs = actions[flag].nargs
        want = {flags.SWITCH: (0,), flags.VALUE: (None, 1), flags.MANY: ("+", "*", 1)}[kind]
        assert nargs in want, (flag, nargs)
    policies = actions["--policy"].choices
    assert all(policy in policies for policy, _ in flags.SGLANG_ROUTER_POLICIES.values())


@pytest.mark.parametrize("name", list(PLANS))
def test_generated_router_command_parses_with_the_router(name: str) -> None:
    launch_router = pytest.importorskip("sglang_router.launch_router")
    bundle = sglang.build(tplan(name))
    router = next(p for p in bundle.processes if p.role == "router")
    args = [a.replace("${NODE", "node").replace("}", "") for a in router.argv[3:]]
    parsed = launch_router.parse_router_args(args)
    placements = [p for p in bundle.processes if p.role != "router" and p.leader]
    if tplan(name).mode == "disaggregated":
        assert parsed.pd_disaggregation
        prefill = [p for p in placements if p.role == "prefill"]
        assert [(u, b) for u, b in parsed.prefill_urls] == [
            (f"http://node{p.node}:{p.port}", p.bootstrap_port) for p in prefill
        ]
        assert len(parsed.decode_urls) == sum(p.role == "decode" for p in placements)
    else:
        assert len(parsed.worker_urls) == len(placements)
    assert parsed.policy == "round_robin"


def test_check_argv_names_the_unknown_flag() -> None:
    with pytest.raises(DeployError, match="--max-num-tokens"):
        flags.check_argv(flags.SGLANG, ["--tp-size", "2", "--max-num-tokens", "5"])
    with pytest.raises(DeployError, match="--enable-dp-attention: switch flag given 1"):
        flags.check_argv(flags.SGLANG, ["--enable-dp-attention", "yes"])
    with pytest.raises(DeployError, match="--tp-size: value flag given 0"):
        flags.check_argv(flags.SGLANG, ["--tp-size", "--port", "1"])
    flags.check_argv(flags.SGLANG, ["--chunked-prefill-size", "-1"])  # a negative value is a value


@pytest.mark.parametrize("name", list(PLANS))
def test_every_emitted_engine_flag_is_in_the_table(name: str) -> None:
    for proc in sglang.build(tplan(name)).processes:
        table = flags.SGLANG_ROUTER if proc.role == "router" else flags.SGLANG
        assert proc.argv[: len(table.entry)] == table.entry
        flags.check_argv(table, proc.argv[len(table.entry) :])


def test_engine_version_is_written_into_the_output() -> None:
    bundle = sglang.build(tplan("disagg"))
    assert bundle.versions == {"sglang": "0.5.9", "sglang-router": "0.3.2"}
    assert "sglang 0.5.9, sglang-router 0.3.2" in bundle.files["node-0.sh"]
    assert "sglang 0.5.9" in bundle.files["README.md"]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def test_sglang_table_matches_the_installed_sglang() -> None:
    # runs where SGLang is installed (a GPU host); its server_args pulls in torch and more, so the
    # suite does not install it
    server_args = pytest.importorskip("sglang.srt.server_args")
    parser = argparse.ArgumentParser()
    server_args.ServerArgs.add_cli_args(parser)
    missing = [f for f in flags.SGLANG.flags if f not in _option_strings(parser)]
    assert not missing, f"installed SGLang lacks {missing}"


def test_vllm_table_matches_the_installed_vllm() -> None:
    cli_args = pytest.importorskip("vllm.entrypoints.openai.cli_args")  # the server's flags + EngineArgs'
    from vllm.utils import FlexibleArgumentParser  # type: ignore[import-not-found]

    parser = cli_args.make_arg_parser(FlexibleArgumentParser())
    known = _option_strings(parser) | {"--headless"}  # added by the `vllm serve` subcommand itself
    missing = [f for f in flags.VLLM.flags if f not in known]
    assert not missing, f"installed vLLM lacks {missing}"

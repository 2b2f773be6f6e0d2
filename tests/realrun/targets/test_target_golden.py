"""Golden outputs: every target on the disaggregated, colocated and multi-node (TP16, DP attention)
plans, compared file by file with ``golden/<target>-<plan>/``. After an intended change, regenerate
with ``PDPLAN_UPDATE_GOLDEN=1 pytest tests/realrun/targets`` and review the diff."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from target_cases import GOLDEN, PLANS, tplan

from pdplan.realrun.targets import k8s, sglang, vllm
from pdplan.realrun.targets.bundle import Bundle

TARGETS = ("sglang", "vllm", "k8s-rbg", "k8s-lws")


def _build(target: str, name: str) -> Bundle:
    tp = tplan(name)
    if target == "sglang":
        return sglang.build(tp)
    if target == "vllm":
        return vllm.build(tp)
    return k8s.build(tp, target.split("-")[1])


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("target", TARGETS)
def test_matches_golden(target: str, name: str) -> None:
    bundle = _build(target, name)
    where = GOLDEN / f"{target}-{name}"
    if os.environ.get("PDPLAN_UPDATE_GOLDEN"):
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        for rel, text in bundle.files.items():
            (where / rel).write_text(text)
    expected = sorted(p.name for p in where.iterdir())
    assert sorted(bundle.files) == expected
    for rel, text in bundle.files.items():
        assert text == (where / rel).read_text(), f"{target}-{name}/{rel} differs from the golden file"


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("target", ("sglang", "vllm"))
def test_scripts_are_valid_bash(target: str, name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    for rel, text in _build(target, name).files.items():
        if rel.endswith(".sh"):
            (tmp_path / rel).write_text(text)
            result = subprocess.run([bash, "-n", str(tmp_path / rel)], capture_output=True, text=True)
            assert result.returncode == 0, f"{rel}: {result.stderr}"


def test_multinode_sglang_ranks_share_one_rendezvous() -> None:
    bundle = sglang.build(tplan("multinode"))
    prefill = [p for p in bundle.processes if p.name.startswith("prefill-0")]
    assert [p.node for p in prefill] == [0, 1]
    for rank, proc in enumerate(prefill):
        args = list(proc.argv)
        assert args[args.index("--node-rank") + 1] == str(rank)
        assert args[args.index("--nnodes") + 1] == "2"
        assert args[args.index("--dist-init-addr") + 1] == "${NODE0}:5000"
        assert args[args.index("--tp-size") + 1] == "16"
        assert args[args.index("--dp-size") + 1] == "16"
        assert "--enable-dp-attention" in args
    # four nodes: prefill on 0-1, decode-0 on 2-3, decode-1 on 4-5; the router knows only leaders
    assert sorted({p.node for p in bundle.processes}) == list(range(6))
    router = next(p for p in bundle.processes if p.role == "router")
    assert router.argv.count("--decode") == 2 and "${NODE2}" in " ".join(router.argv)

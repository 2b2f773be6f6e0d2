"""Run directories are written whole or not at all, and ``--out`` belongs to one kind of run."""

from __future__ import annotations

import os
from pathlib import Path

import plan_cases as pc
import pytest
import yaml
from typer.testing import CliRunner

from pdplan.planner.cli import simulate_cmd
from pdplan.planner.cli.app import app
from pdplan.planner.rundir import claim_out, run_kind
from pdplan.profiles.atomic import replacing_dir, write_file
from pdplan.profiles.errors import ConfigError

runner = CliRunner()


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    monkeypatch.setattr(simulate_cmd, "_report", lambda out: None)
    return {
        "plan": pc.write_yaml(tmp_path / "plan.yaml", pc.DISAGG_PLAN),
        "workload": pc.write_yaml(tmp_path / "workload.yaml", {**pc.WORKLOAD, "num_requests": 50}),
        "profile": pc.profile_dir(tmp_path, tp=1),
    }


def _simulate(inputs: dict[str, Path], out: Path, *extra: str):
    args = ["simulate", "--plan", inputs["plan"], "--profile", inputs["profile"],
            "--workload", inputs["workload"], "--out", out, *extra]  # fmt: skip
    return runner.invoke(app, [str(a) for a in args])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_crash_mid_run_leaves_the_earlier_run_as_it_was(inputs, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    assert _simulate(inputs, out).exit_code == 0
    before = _files(out)

    def crash(folder: Path, kind: str, command: str | None = None) -> Path:
        raise RuntimeError("disk went away")

    monkeypatch.setattr("pdplan.planner.rundir.write_run_yaml", crash)
    result = _simulate(inputs, out, "--seed", "7")
    assert isinstance(result.exception, RuntimeError)
    assert _files(out) == before  # not a mix: plan.yaml and requests.csv of the new run are not there
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_a_first_run_that_crashes_leaves_nothing(inputs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("pdplan.planner.rundir.write_run_yaml", lambda *a, **k: 1 / 0)
    assert isinstance(_simulate(inputs, tmp_path / "new").exception, ZeroDivisionError)
    assert not (tmp_path / "new").exists()


def test_force_replaces_another_kind_whole(inputs, tmp_path: Path) -> None:
    out = tmp_path / "search"
    out.mkdir()
    (out / "run.yaml").write_text("kind: search\n")
    (out / "candidates.csv").write_text("candidate_id\nc0000\n")
    refused = _simulate(inputs, out)
    assert refused.exit_code != 0 and "holds a search run" in str(refused.exception)
    assert _simulate(inputs, out, "--force").exit_code == 0
    assert not (out / "candidates.csv").exists()  # no stale search file beside a hand-written plan
    assert run_kind(out) == "simulate"
    assert yaml.safe_load((out / "run.yaml").read_text())["kind"] == "simulate"


def test_same_kind_is_replaced_without_force(inputs, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _simulate(inputs, out).exit_code == 0
    (out / "stale.csv").write_text("x\n")
    assert _simulate(inputs, out, "--seed", "3").exit_code == 0
    assert not (out / "stale.csv").exists()


def test_claim_out_rules(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert claim_out(tmp_path / "new", "simulate") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    claim_out(tmp_path / "empty", "profile")
    for bad, why in ((Path(""), "current directory"), (tmp_path, "current directory")):
        with pytest.raises(ConfigError, match=why):
            claim_out(bad, "simulate")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a pdplan run directory"):
        claim_out(tmp_path / "mine", "simulate", force=True)  # --force never takes a user's folder
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_out(tmp_path / "link", "simulate")


def test_write_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        write_file(fifo, "x")
    with pytest.raises(ConfigError, match="directory"):
        write_file(tmp_path, "x")
    assert fifo.is_fifo()
    target = write_file(tmp_path / "a" / "b.txt", "hello")
    assert target.read_text() == "hello" and oct(target.stat().st_mode & 0o777) == "0o644"


def test_replacing_dir_swaps_whole(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with replacing_dir(out) as staging:
        (staging / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # untouched until the end
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]

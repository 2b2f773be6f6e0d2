"""The compiled simulator (``pdplan.sim.compiled``): identical results to pure Python, and used only
when its build matches the sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pdplan.sim import compiled

HERE = Path(__file__).resolve().parent


def _cases(switch: str) -> dict:
    env = {**os.environ, compiled.ENV_SWITCH: switch}
    done = subprocess.run(
        [sys.executable, str(HERE / "compiled_cases.py"), "2500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout)


def test_compiled_and_pure_python_simulate_bit_for_bit_alike():
    paths, why = compiled.check()
    if not paths:
        pytest.skip(f"no usable compiled build here: {why}")
    fast, slow = _cases("1"), _cases("0")
    assert fast["status"].startswith("compiled"), fast["status"]
    assert slow["status"] == f"python ({compiled.ENV_SWITCH}=0)"
    assert len(fast["runs"]) == 9
    assert fast["runs"] == slow["runs"]


def _fake_build(tmp_path: Path, sim_dir: Path, **override) -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    build = tmp_path / "_compiled"
    build.mkdir()
    modules = {}
    for name in compiled.COMPILED_MODULES:
        (build / f"{name}{suffix}").write_bytes(b"")
        modules[name] = {"file": f"{name}{suffix}", "sha256": compiled.source_digest(name, sim_dir)}
    (build / f"abc__mypyc{suffix}").write_bytes(b"")
    manifest = {
        "ext_suffix": suffix,
        "mypy": "x",
        "modules": modules,
        "shared": {"module": "abc__mypyc", "file": f"abc__mypyc{suffix}"},
        **override,
    }
    (build / "manifest.json").write_text(json.dumps(manifest))
    return build


@pytest.fixture()
def sim_copy(tmp_path):
    """A copy of the compiled modules' sources, to edit."""
    sim = tmp_path / "sim"
    sim.mkdir()
    for name in compiled.COMPILED_MODULES:
        (sim / f"{name}.py").write_bytes((HERE.parents[1] / "sim" / f"{name}.py").read_bytes())
    return sim


def test_a_matching_build_maps_every_module_and_the_shared_library(tmp_path, sim_copy):
    build = _fake_build(tmp_path, sim_copy)
    paths, status = compiled.check(build, sim_copy)
    assert status == f"compiled (mypyc x, {len(compiled.COMPILED_MODULES)} modules)"
    assert set(paths) == {f"pdplan.sim.{m}" for m in compiled.COMPILED_MODULES} | {"abc__mypyc"}


def test_an_edited_source_falls_back_to_python_whole(tmp_path, sim_copy):
    build = _fake_build(tmp_path, sim_copy)
    (sim_copy / "decode.py").write_text((sim_copy / "decode.py").read_text() + "\n# edited\n")
    paths, status = compiled.check(build, sim_copy)
    assert paths == {}
    assert status == "python (sim/decode.py changed since it was compiled: rebuild with scripts/build_sim.py)"


def test_no_build_another_interpreter_or_a_missing_file_fall_back(tmp_path, sim_copy):
    assert compiled.check(tmp_path / "nothing", sim_copy)[1].startswith("python (no compiled build")
    other = _fake_build(tmp_path, sim_copy, ext_suffix=".cpython-39-x86_64-linux-gnu.so")
    assert compiled.check(other, sim_copy) == (
        {},
        f"python (compiled for .cpython-39-x86_64-linux-gnu.so, this interpreter loads "
        f"{sysconfig.get_config_var('EXT_SUFFIX')})",
    )
    (other / "manifest.json").unlink()
    (tmp_path / "b").mkdir()
    build = _fake_build(tmp_path / "b", sim_copy)
    (build / f"decode{sysconfig.get_config_var('EXT_SUFFIX')}").unlink()
    paths, status = compiled.check(build, sim_copy)
    assert paths == {} and "incomplete" in status and "decode" in status
    (build / "manifest.json").write_text("{")
    assert compiled.check(build, sim_copy)[1].startswith("python (unreadable")

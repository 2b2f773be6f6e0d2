"""The simulator's event-loop modules compiled to C with mypyc, used when built from these sources.

The search spends ~95 % of its time in the simulator (issue 9), whose per-event Python work is
already minimal; compiled by mypyc from the same type-annotated sources (no second
implementation), those modules run the same events about 1.8× faster (``bench/sim_speed.py``).
``scripts/build_sim.py`` (run by ``scripts/install.sh``) compiles ``COMPILED_MODULES`` into
``sim/_compiled/`` with a manifest of each source's SHA-256. ``install`` (run when ``pdplan.sim``
imports this module, first) puts a finder at the head of ``sys.meta_path`` that loads those extension modules
instead of the ``.py`` files — only when every listed source is byte for byte the one compiled
(an edited source falls back to pure Python, whole: the modules call each other natively, so they
are used all together or not at all) and the interpreter's extension suffix matches.
``PDPLAN_SIM_COMPILED=0`` turns it off (the tests compare both). Results are identical either way:
the same float expressions in the same order (``tests/sim/test_sim_compiled.py``).

This is the one piece of import-time state in ``pdplan.sim``; it changes which file implements a
module, never what it computes.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The hot modules, compiled together (``scripts/build_sim.py``): the instances' event callbacks.
COMPILED_MODULES = (
    "colocated",
    "colocated_preempt",
    "colocated_chunkkv",
    "decode",
    "prefill",
    "disagg",
    "costs",
    "router",
)
PACKAGE = "pdplan.sim"
#: Where the build puts the extension modules and ``manifest.json`` (ignored by git).
BUILD_DIR = Path(__file__).resolve().parent / "_compiled"
ENV_SWITCH = "PDPLAN_SIM_COMPILED"

_state: dict[str, str] = {"status": "python (not checked)"}


def source_digest(name: str, sim_dir: Path | None = None) -> str:
    """SHA-256 of ``sim/<name>.py``."""
    path = (sim_dir or Path(__file__).resolve().parent) / f"{name}.py"
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled extension modules (and their shared library) by full name."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        where = self.paths.get(fullname)
        if where is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(where))
        return importlib.util.spec_from_file_location(fullname, where, loader=loader)


def check(build_dir: Path = BUILD_DIR, sim_dir: Path | None = None) -> tuple[dict[str, Path], str]:
    """The extension modules to load by full name, and a status line; no modules (and why) when
    there is no build, it was made for another interpreter, or a source changed since."""
    manifest_path = build_dir / "manifest.json"
    if not manifest_path.is_file():
        return {}, "python (no compiled build: scripts/build_sim.py)"
    try:
        manifest = json.loads(manifest_path.read_text())
        suffix, modules, shared = manifest["ext_suffix"], manifest["modules"], manifest["shared"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}, f"python (unreadable {manifest_path})"
    here = sysconfig.get_config_var("EXT_SUFFIX")
    if suffix != here:
        return {}, f"python (compiled for {suffix}, this interpreter loads {here})"
    if set(modules) != set(COMPILED_MODULES):
        return {}, "python (the compiled build lists other modules: rebuild with scripts/build_sim.py)"
    paths: dict[str, Path] = {}
    for name in COMPILED_MODULES:
        entry = modules[name]
        if entry.get("sha256") != source_digest(name, sim_dir):
            return (
                {},
                f"python (sim/{name}.py changed since it was compiled: rebuild with scripts/build_sim.py)",
            )
        paths[f"{PACKAGE}.{name}"] = build_dir / entry["file"]
    paths[shared["module"]] = build_dir / shared["file"]
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        return {}, f"python (compiled build incomplete: {', '.join(missing)} missing)"
    return paths, f"compiled (mypyc {manifest.get('mypy', '?')}, {len(COMPILED_MODULES)} modules)"


def install() -> str:
    """Load the compiled modules from now on where the build matches the sources; returns the
    status (``status()``). Idempotent; a no-op with ``PDPLAN_SIM_COMPILED=0``."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return _state["status"]
    if os.environ.get(ENV_SWITCH, "1") == "0":
        _state["status"] = f"python ({ENV_SWITCH}=0)"
        return _state["status"]
    paths, status = check()
    if paths and any(f"{PACKAGE}.{name}" in sys.modules for name in COMPILED_MODULES):
        status = "python (simulator modules imported before pdplan.sim)"
        paths = {}
    if paths:
        sys.meta_path.insert(0, _Finder(paths))
    _state["status"] = status
    return status


def status() -> str:
    """``compiled (...)`` or ``python (why)``: which implementation this process runs."""
    return _state["status"]


def is_compiled() -> bool:
    return _state["status"].startswith("compiled")


install()

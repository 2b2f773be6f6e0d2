"""Compile the simulator's hot modules with mypyc into sim/_compiled/ (see pdplan.sim.compiled).

    .venv/bin/python scripts/build_sim.py [--force]  # ~4-5 min on 2 cores; mypy (dev extra), a C compiler
    PDPLAN_SIM_COMPILED=0 pdplan ...                 # run the pure-Python simulator instead

The sources are copied into a scratch tree (``pdplan/sim/*.py``, the other packages linked) and
compiled there, so nothing is written beside the ``.py`` files (an extension module there would
shadow its source after an edit). The result is installed whole or not at all: the extension
modules and ``manifest.json`` (each source's SHA-256, the interpreter's extension suffix) go to a
new folder that replaces ``sim/_compiled`` in one rename. Exit 0 with the status line; exit 1 when
the compiler is missing or fails (the simulator then stays pure Python, which is correct, slower).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "sim"
OTHER_PACKAGES = ("profiles", "realrun", "planner", "reports")


def _modules() -> tuple[str, ...]:
    from pdplan.sim.compiled import COMPILED_MODULES

    return COMPILED_MODULES


SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify

modules = sys.argv[1].split(",")
sys.argv[1:] = ["build_ext", "--inplace", "--parallel", sys.argv[2]]
paths = ["--namespace-packages", "--explicit-package-bases"] + [f"pdplan/sim/{m}.py" for m in modules]
setup(name="pdplan-sim-compiled", ext_modules=mypycify(paths, opt_level="3"))
"""


def build(jobs: int) -> str:
    from pdplan.sim.compiled import BUILD_DIR, check, source_digest

    modules = _modules()
    try:
        import mypy.version
    except ImportError:
        raise SystemExit(
            "build_sim: mypy is not installed (pip install 'pdplan[dev]'); the simulator stays pure Python"
        ) from None
    with tempfile.TemporaryDirectory(prefix="pdplan-simc-") as tmp:
        work = Path(tmp)
        pkg = work / "pdplan"
        (pkg / "sim").mkdir(parents=True)
        for name in OTHER_PACKAGES:
            (pkg / name).symlink_to(ROOT / name, target_is_directory=True)
        for src in SIM.glob("*.py"):
            shutil.copy2(src, pkg / "sim" / src.name)
        digests = {m: source_digest(m, pkg / "sim") for m in modules}
        (work / "setup.py").write_text(SETUP)
        env = {**os.environ, "MYPYPATH": str(work)}
        done = subprocess.run(
            [sys.executable, "setup.py", ",".join(modules), str(jobs)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise SystemExit(f"build_sim: mypyc failed; the simulator stays pure Python\n{tail}")
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        shared = [p for p in work.glob(f"*__mypyc{suffix}")]
        if len(shared) != 1:
            raise SystemExit(
                f"build_sim: expected one shared mypyc library, found {[p.name for p in shared]}"
            )
        staging = Path(tempfile.mkdtemp(prefix="_compiled.", dir=SIM))
        try:
            entries = {}
            for m in modules:
                built = pkg / "sim" / f"{m}{suffix}"
                shutil.copy2(built, staging / built.name)
                entries[m] = {"file": built.name, "sha256": digests[m]}
            shutil.copy2(shared[0], staging / shared[0].name)
            manifest = {
                "ext_suffix": suffix,
                "mypy": mypy.version.__version__,
                "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "modules": entries,
                "shared": {"module": shared[0].name[: -len(suffix)], "file": shared[0].name},
            }
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            old = SIM / "_compiled.old"
            shutil.rmtree(old, ignore_errors=True)
            if BUILD_DIR.exists():
                BUILD_DIR.rename(old)
            staging.rename(BUILD_DIR)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    paths, status = check()
    if not paths:
        raise SystemExit(f"build_sim: built, but not usable: {status}")
    return status


def main() -> None:
    from pdplan.sim.compiled import check

    paths, status = check()
    if paths and "--force" not in sys.argv[1:]:
        print(f"simulator: {status}, up to date (--force rebuilds)")
        return
    jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    start = time.perf_counter()
    status = build(jobs)
    print(f"simulator: {status}, built in {time.perf_counter() - start:.0f} s ({SIM / '_compiled'})")


if __name__ == "__main__":
    main()

"""Writing a run directory (notes/RUNDIR.md): who may own ``--out``, every file atomically, ``run.yaml``.

A command checks ``--out`` with ``claim_out`` before its work, writes every file into a staging
directory from ``replacing_dir`` (``pdplan.profiles.atomic``), which replaces ``--out`` whole when
the run is complete, so a crash leaves the previous directory exactly as it was.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import pandas as pd
import yaml

from pdplan.profiles.atomic import replacing_dir, write_file
from pdplan.profiles.errors import ConfigError

__all__ = ["claim_out", "replacing_dir", "write_atomic", "write_csv", "write_run_yaml", "write_yaml"]

RUN_KINDS = ("profile", "simulate", "search", "bench")


def prepare_out(out: Path) -> Path:
    """Create the output directory (and parents).

    Raises:
        ConfigError: ``out`` is a file or cannot be created.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; expected a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {str(out)!r}: cannot create ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"--out {str(out)!r}: not writable")
    return out


def run_kind(folder: Path) -> str | None:
    """The kind of pdplan run in ``folder`` (``run.yaml``'s ``kind``; a bare profile counts), else None."""
    try:
        meta = yaml.safe_load((folder / "run.yaml").read_text()[:65536])
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        meta = None
    if isinstance(meta, dict) and isinstance(meta.get("kind"), str):
        return str(meta["kind"])
    return "profile" if (folder / "profile.yaml").is_file() else None


def claim_out(out: Path, kind: str, *, force: bool = False) -> Path:
    """Check that a run of ``kind`` may be written to ``--out`` (which it replaces whole).

    ``out`` may be new, empty, or a run directory of the same kind; one of another kind only with
    ``force``; a non-empty directory pdplan did not write, the current directory (``--out ''``)
    and anything that is not a directory never.

    Raises:
        ConfigError: naming ``out`` and why.
    """
    text = str(out)
    if not text or text == ".":
        raise ConfigError(f"--out {text!r}: expected a directory for this run, not the current directory")
    resolved = out.absolute()
    if resolved == Path.cwd() or resolved in Path.cwd().parents:
        raise ConfigError(f"--out {text!r} holds the current directory; expected a directory for this run")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {text!r} exists and is not a directory; expected a run directory")
    if out.is_dir() and any(out.iterdir()):
        existing = run_kind(out)
        if existing is None:
            raise ConfigError(
                f"--out {text!r} is not empty and is not a pdplan run directory; "
                "choose a new or empty directory"
            )
        if existing != kind and not force:
            raise ConfigError(
                f"--out {text!r} holds a {existing} run; a {kind} run would replace it whole "
                "(pass --force to do so, or choose another directory)"
            )
    check_writable(out)
    return out


def check_writable(out: Path) -> None:
    """Check that ``out`` could be created: its nearest existing ancestor takes a new entry.

    Raises:
        ConfigError: that ancestor is not a writable directory.
    """
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    try:  # a real probe: os.access says yes to root even on read-only or virtual file systems
        os.rmdir(tempfile.mkdtemp(prefix=".pdplan-probe-", dir=ancestor))
    except OSError:
        raise ConfigError(f"--out {str(out)!r}: {str(ancestor)!r} is not a writable directory") from None


def write_atomic(path: Path, write: Callable[[IO[str]], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``."""
    return write_file(path, write)


def write_yaml(path: Path, data: Any) -> Path:
    return write_atomic(path, lambda fh: yaml.safe_dump(data, fh, sort_keys=False, allow_unicode=True))


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return write_atomic(path, lambda fh: frame.to_csv(fh, index=False))


def command_line() -> str:
    """The command as typed at the console script."""
    return shlex.join(["pdplan", *sys.argv[1:]])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("pdplan", "numpy", "pandas", "simpy", "torch", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    simulator = sys.modules.get("pdplan.sim.compiled")
    if simulator is not None:  # which implementation ran the simulator (compiled or pure Python)
        out["simulator"] = simulator.status()
    return out


def write_run_yaml(out: Path, kind: str, command: str | None = None) -> Path:
    """``run.yaml``: schema_version, kind, command, created_at (UTC), versions."""
    assert kind in RUN_KINDS, f"run kind {kind!r}"
    return write_yaml(
        out / "run.yaml",
        {
            "schema_version": 1,
            "kind": kind,
            "command": command or command_line(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        },
    )

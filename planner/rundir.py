"""Writing a run directory (notes/RUNDIR.md): every file atomically, and ``run.yaml``.

Each file is written to a temporary name in the same directory and renamed into place, so a
failure never leaves a half-written file behind.
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

from pdplan.profiles.errors import ConfigError

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


def write_atomic(path: Path, write: Callable[[IO[str]], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            write(fh)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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

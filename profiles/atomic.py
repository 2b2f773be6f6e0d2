"""Atomic writes: one file (temporary sibling, then rename) and one whole directory.

Every file pdplan writes goes through ``write_file``, so a crash never leaves half a file, and a
path that is not a regular file (``/dev/null``, a FIFO, a directory) is refused rather than
replaced. ``replacing_dir`` stages a whole run directory beside its destination and renames it
into place only when everything in it was written: a run directory is written whole or not at all.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pdplan.profiles.errors import ConfigError

FILE_MODE = 0o644  # mkstemp creates 0600; run files and reports are meant to be shared


def check_replaceable(path: Path) -> None:
    """Refuse a target that exists and is not a regular file (or a link to one).

    Raises:
        ConfigError: ``path`` is a directory, a device, a FIFO or a socket.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise ConfigError(f"{str(path)!r}: cannot write ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"{str(path)!r} is {kind}; refusing to replace it")


def write_file(path: str | Path, content: str | bytes | Callable[[IO[str]], Any]) -> Path:
    """Write ``content`` (text, bytes, or a function given the open text file) to ``path`` atomically.

    Raises:
        ConfigError: ``path`` exists and is not a regular file, or its folder cannot be written.
    """
    target = Path(path)
    check_replaceable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise ConfigError(f"cannot write {str(target)!r}: {err.strerror or err}") from None
    try:
        if isinstance(content, bytes):
            with os.fdopen(fd, "wb") as raw:
                raw.write(content)
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                if isinstance(content, str):
                    fh.write(content)
                else:
                    content(fh)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@contextmanager
def replacing_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out``; on success it replaces ``out`` whole.

    On an exception the staging directory is removed and ``out`` is left exactly as it was. The
    swap is two renames (``out`` aside, staging in), so ``out`` is never a mix of old and new.

    Raises:
        ConfigError: the parent of ``out`` cannot be created or written.
    """
    target = Path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; give what a plain mkdir gives
    except OSError as err:
        raise ConfigError(f"cannot write {str(target)!r}: {err.strerror or err}") from None
    try:
        yield staging
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

"""``Bundle``: what a launch target writes — files by relative path, the processes they start, notes —
and writing it as a directory whole or not at all.

Shell rendering lives here too: every script sources ``hosts.env`` and refers to node addresses as
``${NODEk}``, so an argument holding one is double-quoted (the shell expands it) and every other
argument is quoted with ``shlex.quote``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdplan.profiles.errors import ConfigError


@dataclass(frozen=True)
class Process:
    """One process of a launch: its command line (with ``${NODEk}`` placeholders), node, role, URL."""

    name: str
    role: str  # prefill | decode | colocated | router | proxy | store
    node: int
    argv: tuple[str, ...]
    port: int
    leader: bool = True  # False: a non-zero rank of a multi-node instance (serves no HTTP)
    bootstrap_port: int | None = None
    env: tuple[tuple[str, str], ...] = ()  # set on the command line, before the entry point

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Bundle:
    target: str
    files: dict[str, str]
    processes: tuple[Process, ...] = ()
    notes: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)

    def write(self, out: Path) -> Path:
        """Write every file under ``out`` (created; must not exist or be empty) atomically: the files
        go to a temporary sibling directory first, renamed into place when all are written.

        Raises:
            ConfigError: ``out`` exists and is not an empty directory.
        """
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"--out {str(out)!r}: exists and is not empty; pick a new directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for rel, text in self.files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                os.chmod(path, 0o755 if rel.endswith(".sh") else 0o644)
            os.chmod(tmp, 0o755)
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def shell_word(arg: str) -> str:
    """One argument for a bash script: ``${VAR}`` placeholders stay expandable, the rest is quoted."""
    if "${" in arg:
        assert '"' not in arg and "`" not in arg, f"unsafe placeholder argument {arg!r}"
        return f'"{arg}"'
    return shlex.quote(arg)


def shell_command(argv: Sequence[str], env: Sequence[tuple[str, str]] = (), indent: str = "    ") -> str:
    """``argv`` as a multi-line bash command: environment and entry point on the first line, one flag
    (with its values) per line."""
    words = [shell_word(a) for a in argv]
    head: list[str] = [f"{k}={shell_word(v)}" for k, v in env]
    lines: list[str] = []
    i = 0
    while i < len(words) and not argv[i].startswith("--"):
        head.append(words[i])
        i += 1
    while i < len(words):
        line = [words[i]]
        i += 1
        while i < len(words) and not argv[i].startswith("--"):
            line.append(words[i])
            i += 1
        lines.append(" ".join(line))
    return " \\\n".join([" ".join(head), *(indent + line for line in lines)])


def substitute_hosts(argv: Sequence[str], hosts: dict[str, str]) -> tuple[str, ...]:
    """``argv`` with ``${NODEk}`` replaced by the given addresses (for running on this host)."""
    out = []
    for arg in argv:
        for name, value in hosts.items():
            arg = arg.replace("${" + name + "}", value)
        out.append(arg)
    return tuple(out)

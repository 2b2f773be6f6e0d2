"""Process facts from Linux ``/proc``: start time (to tell a live process from a recycled PID),
liveness (zombies count as gone) and process-group members (to prove a group is empty)."""

from __future__ import annotations

from pathlib import Path


def _fields(pid: int | str) -> list[str] | None:
    """``/proc/PID/stat`` fields after the command name (field 3 on), or ``None`` if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), ``None`` if it does not exist."""
    fields = _fields(pid)
    return None if fields is None else int(fields[19])


def is_alive(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` still runs *and* is the process that started at ``ticks`` (not a zombie)."""
    fields = _fields(pid)
    return fields is not None and fields[0] != "Z" and (ticks is None or int(fields[19]) == ticks)


def group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) whose process group is ``pgid`` (none where there is no ``/proc``)."""
    out: list[int] = []
    if not Path("/proc").is_dir():
        return out
    for entry in Path("/proc").iterdir():
        fields = _fields(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out

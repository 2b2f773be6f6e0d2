"""Profiles shipped with pdplan under ``profiles/data/`` and how to find them.

Layout: ``data/<hardware>/<model>/tp<N>/`` holds one profile directory (``profile.yaml``,
``prefill.csv``, ``decode.csv``, ``ops.csv``); a TP1 profile may also sit directly in
``data/<hardware>/<model>/`` (the measured ``cpu/tiny-llama``). The analytic ones are written by
``profiles/data/regenerate.sh`` with ``pdplan profile --analytic``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pdplan.profiles.errors import ProfileError


def data_dir() -> Path:
    """The folder of shipped profiles (a real directory in both editable and wheel installs)."""
    return Path(str(resources.files("pdplan.profiles") / "data"))


def shipped_profile_dirs() -> list[Path]:
    """Every shipped profile directory (one holding ``profile.yaml``), sorted by path."""
    root = data_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob("profile.yaml"))


def shipped_label(path: Path) -> str:
    """``<hardware>/<model>/tp<N>`` (or ``<hardware>/<model>``) of a shipped profile directory."""
    return path.relative_to(data_dir()).as_posix()


def find_shipped_profile(model: str, hardware: str, tp: int = 1) -> Path:
    """The shipped profile directory of ``model`` on ``hardware`` at tensor parallelism ``tp``.

    Raises:
        ProfileError: none is shipped; the message lists the shipped ones for that model.
    """
    base = data_dir() / hardware / model
    candidates = [base / f"tp{tp}"] + ([base] if tp == 1 else [])
    for path in candidates:
        if (path / "profile.yaml").is_file():
            return path
    shipped = [shipped_label(p) for p in shipped_profile_dirs()]
    same_model = [s for s in shipped if s.split("/")[1:2] == [model]]
    listed = ", ".join(same_model or shipped) or "none"
    raise ProfileError(
        f"no shipped profile for model {model!r} on hardware {hardware!r} at tp={tp}; "
        f"shipped: {listed} (or write one: pdplan profile --analytic --model {model} "
        f"--hardware {hardware} --tp {tp} --out DIR)"
    )

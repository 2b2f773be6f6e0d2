"""Helpers shared by the real-run tests (imported by name, like ``simcases`` in tests/sim)."""

from __future__ import annotations

import socket
from pathlib import Path

#: Untied test model (see its config.json for why the catalog tiny-llama cannot serve these tests).
TEST_MODEL = Path(__file__).resolve().parent / "models" / "pd-test-llama"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

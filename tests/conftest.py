"""Fixtures shared by every test package: repository paths, the console script, small profiles."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.profile import Profile

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared reference data (``<repo>/../shared/data``); the test skips when it is absent."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not present at {path}")
    return path


@pytest.fixture(scope="session")
def pdplan_script() -> Path:
    """The ``pdplan`` console script of the environment running the tests."""
    script = Path(sys.executable).parent / "pdplan"
    if not script.is_file():
        pytest.skip(f"console script not installed next to {sys.executable}")
    return script


ProfileMaker = Callable[..., Profile]


@pytest.fixture
def make_profile() -> ProfileMaker:
    """Build a tiny-llama Profile whose tables come from two latency functions (ms)::

    make_profile(lambda num_seqs, seq_len: ..., lambda batch, context: ..., tp=1)
    """

    def make(
        prefill: Callable[[int, int], float],
        decode: Callable[[int, int], float],
        *,
        tp: int = 1,
        method: str = "measured",
    ) -> Profile:
        pre = [(s, n, prefill(s, n)) for s in (1, 2, 4) for n in (16, 64, 256)]
        dec = [(b, c, decode(b, c)) for b in (1, 4, 16) for c in (32, 128, 512)]
        return Profile(
            method=method,
            model=load_model_spec("tiny-llama"),
            hardware={"name": "cpu", "memory_bytes": 8 << 30},
            dtype="float32",
            tp=tp,
            prefill=pd.DataFrame(pre, columns=["num_seqs", "seq_len", "latency_ms"]),
            decode=pd.DataFrame(dec, columns=["batch_size", "context_len", "latency_ms"]),
            created_at="2026-01-01T00:00:00+00:00",
        )

    return make

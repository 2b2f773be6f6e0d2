"""Fixtures for the real-run tests: the untied test model and an executor on it."""

from __future__ import annotations

from typing import Any

import pytest
from realrun_helpers import TEST_MODEL


@pytest.fixture(scope="session")
def test_model() -> str:
    return str(TEST_MODEL)


@pytest.fixture(scope="module")
def executor(test_model: str) -> Any:
    torch = pytest.importorskip("torch")
    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec

    torch.set_num_threads(1)
    return Executor(load_model_spec(test_model), seed=0)

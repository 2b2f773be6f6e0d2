"""Run directories shared by the report tests (built once per session: they are read-only inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rundir_factory import SearchSize, write_bench_run, write_profile_run, write_search_run

from pdplan.profiles.profile import Profile


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def profile_run(runs_root: Path) -> tuple[Path, Profile]:
    folder = runs_root / "prof"
    return folder, write_profile_run(folder, np.random.default_rng(1))


@pytest.fixture(scope="session")
def search_run(runs_root: Path, profile_run: tuple[Path, Profile]) -> Path:
    folder = runs_root / "search"
    write_search_run(folder, np.random.default_rng(2), SearchSize(), profile=profile_run[1])
    return folder


@pytest.fixture(scope="session")
def bench_run(runs_root: Path, profile_run: tuple[Path, Profile]) -> Path:
    folder = runs_root / "bench"
    write_bench_run(folder, np.random.default_rng(3), profile_run[1])
    return folder


@pytest.fixture(scope="session")
def full_report(
    runs_root: Path, profile_run: tuple[Path, Profile], search_run: Path, bench_run: Path
) -> Path:
    """The profile, search and bench runs in one report, rendered once (strict: a section that
    fails raises): the render test reads its HTML, the browser test loads it in Chromium."""
    from pdplan.reports.render import write_combined_report

    runs = [profile_run[0], search_run, bench_run]
    return write_combined_report(runs, runs_root / "full" / "report.html", strict=True)

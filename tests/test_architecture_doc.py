"""docs/architecture.md lists every module of every package (it must be kept current)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("profiles", "sim", "realrun", "planner", "reports")


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            found.append(str(path.relative_to(ROOT / package)))
    return found


@pytest.mark.parametrize("module", _modules())
def test_module_is_listed(module: str) -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert f"`{module}`" in text, f"docs/architecture.md does not list {module}"


def test_bench_scripts_are_listed() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [p.name for p in sorted((ROOT / "bench").glob("*.py")) if f"`{p.name}`" not in text]
    assert not missing, f"docs/architecture.md does not list bench scripts {missing}"

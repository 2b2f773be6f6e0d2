"""Writing report.html: public API, absent data, broken files, atomicity, the CLI command."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pdplan.planner.cli.app import app
from pdplan.profiles.errors import ConfigError
from pdplan.reports import render as render_module
from pdplan.reports import write_combined_report, write_report
from pdplan.reports.render import FAILED_MARK, render_html
from pdplan.reports.rundir import RunData, load_run

ROOT = Path(__file__).resolve().parents[2]
# Anything a browser would fetch: a src/href/... with a scheme (inline PNGs of rasterised figures
# excepted), a CSS url() that is not a same-page #reference, an @import.
RESOURCE = re.compile(
    r"""\b(?:src|href|action|poster)\s*=\s*["']?\s*(?!#|data:image/png;base64,)[a-z]+:"""
    r"""|url\(\s*["']?(?!#)|@import""",
    re.I,
)


def _sections(html: str) -> dict[str, bool]:
    """Section key → present (True) or absent (False)."""
    found = re.findall(r'<section id="([a-z]+)" data-section="[a-z]+"( data-absent="true")?>', html)
    return {key: not absent for key, absent in found}


def _figures(html: str) -> list[str]:
    return re.findall(r'<figure data-figure="([a-z0-9-]+)">', html)


def _check_self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert not RESOURCE.search(html), RESOURCE.search(html)
    assert "<script" not in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "duplicate ids on the page"


def test_write_report_for_a_search_run(tmp_path: Path, search_run: Path) -> None:
    run = tmp_path / "search"
    run.mkdir()
    for f in search_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    path = write_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    _check_self_contained(html)
    assert _sections(html) == {
        "summary": True,
        "search": True,
        "operating": True,
        "profile": False,
        "validation": False,
        "inputs": True,
    }
    assert _figures(html) == [
        "search-heatmap",
        "search-attainment",
        "search-pareto",
        "operating-cdf",
        "operating-traffic",
        "operating-timeseries",
        "inputs-traffic",
    ]
    assert "search has no profile.yaml" in html
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert "<title>pdplan search report: llama-3.1-8b on h100-sxm</title>" in html


def test_combined_report_has_every_section(full_report: Path) -> None:
    """The profile + search + bench report (shared with the browser test; the title the user
    gives is checked through the CLI below)."""
    html = full_report.read_text()
    _check_self_contained(html)
    assert all(_sections(html).values()) and len(_sections(html)) == 6
    # a traffic-over-time figure for the search and the bench; validation: CDFs and error over time
    assert len(_figures(html)) == 15


def test_report_of_an_empty_run_explains_every_absent_section(tmp_path: Path) -> None:
    html = render_html([load_run(tmp_path)], strict=True)
    sections = _sections(html)
    assert sections == {
        "summary": False,
        "search": False,
        "operating": False,
        "profile": False,
        "validation": False,
        "inputs": True,
    }
    assert _figures(html) == []
    for reason in (
        "No plan to summarise",
        "Not a search run",
        "No simulated or measured run",
        "No profile in this report",
        "No measured run with a prediction",
    ):
        assert reason in html


def test_broken_file_is_named_in_the_report(tmp_path: Path, search_run: Path) -> None:
    for f in search_run.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "candidates.csv").write_text("candidate_id,mode\nc0,colocated\n")
    path = write_report(tmp_path)
    html = path.read_text()
    assert "candidates.csv could not be read (missing columns" in html
    assert _sections(html)["search"] is False and _sections(html)["summary"] is True


def test_a_failing_section_is_shown_not_fatal(
    tmp_path: Path, search_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(runs):
        raise ValueError("synthetic failure")

    builders = tuple((k, t, broken if k == "search" else b) for k, t, b in render_module.BUILDERS)
    monkeypatch.setattr(render_module, "BUILDERS", builders)
    runs = [load_run(search_run)]
    html = render_html(runs)
    assert f"This section {FAILED_MARK}: ValueError: synthetic failure" in html
    assert _sections(html)["operating"] is True
    with pytest.raises(ValueError, match="synthetic failure"):
        render_html(runs, strict=True)


def test_missing_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nope")
    with pytest.raises(ConfigError, match="holds no run files"):
        write_combined_report([tmp_path], tmp_path / "r.html")


def test_cli_report_combines_directories(tmp_path: Path, search_run: Path, bench_run: Path) -> None:
    out = tmp_path / "r" / "combined.html"  # its folder is created
    args = ["report", str(search_run), str(bench_run), "--out", str(out), "--title", "All <in> one"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"report: {out}" in result.output
    html = out.read_text()
    assert _sections(html)["validation"] is True  # search predicted, bench measured
    assert "<title>All &lt;in&gt; one</title>" in html


def test_cli_user_errors_exit_2(tmp_path: Path, search_run: Path, bench_run: Path) -> None:
    cli = ROOT / ".venv" / "bin" / "pdplan"
    if not cli.exists():
        pytest.skip("console script not installed")
    several = subprocess.run(
        [str(cli), "report", str(search_run), str(bench_run)], capture_output=True, text=True
    )
    assert several.returncode == 2 and "--out is required" in several.stderr
    missing = subprocess.run([str(cli), "report", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_importing_the_package_and_the_cli_stays_light() -> None:
    code = (
        "import sys, pdplan.reports, pdplan.planner.cli.app; "
        "print(sorted(m for m in ('matplotlib', 'pandas', 'jinja2', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert "matplotlib" not in out.stdout and "torch" not in out.stdout


def test_combined_runs_of_different_models_are_all_named_in_the_title(
    tmp_path: Path, search_run: Path
) -> None:
    from rundir_factory import write_deploy_run

    from pdplan.reports.render import default_title

    write_deploy_run(tmp_path / "dep")  # tiny-llama on cpu
    runs = [load_run(tmp_path / "dep"), load_run(search_run)]
    assert (
        default_title(runs) == "pdplan deploy + search report: tiny-llama on cpu + llama-3.1-8b on h100-sxm"
    )
    assert default_title(runs[::-1]).endswith(": llama-3.1-8b on h100-sxm + tiny-llama on cpu")
    same = [load_run(search_run), load_run(search_run)]
    assert default_title(same) == "pdplan search report: llama-3.1-8b on h100-sxm"
    model_only = RunData(path=tmp_path / "x", plan={"model": "llama-3.1-8b"})
    assert default_title([model_only, load_run(search_run)]).endswith(": llama-3.1-8b on h100-sxm")

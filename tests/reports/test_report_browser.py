"""The report in a real browser: loads without console errors, every figure is drawn, nothing is
fetched from anywhere but the file itself. Screenshots go to test-artifacts/reports/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from chromium_cdp import find_chromium, load_page

from pdplan.reports.render import write_combined_report

pytestmark = pytest.mark.browser
CHROMIUM = find_chromium()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reports"

# Every figure and section as the browser lays it out: a figure counts as drawn when its inline
# <svg> has a non-empty box and contains drawn paths.
PROBE = """(() => {
  const figures = {};
  for (const f of document.querySelectorAll('figure[data-figure]')) {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    figures[f.dataset.figure] = {width: box.width, height: box.height,
                                 paths: svg ? svg.querySelectorAll('path, use, image').length : 0};
  }
  const sections = {};
  for (const s of document.querySelectorAll('section[data-section]')) {
    sections[s.dataset.section] = s.dataset.absent === 'true' ? 'absent' : 'present';
  }
  const resources = [...document.querySelectorAll('[src], link[href], [href]')]
    .map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => u && !u.startsWith('#'));
  return {figures, sections, resources, title: document.title, width: document.documentElement.scrollWidth};
})()"""

EVERY_FIGURE = (
    "search-heatmap",
    "search-attainment",
    "search-pareto",
    "operating-cdf",
    "operating-traffic",
    "operating-traffic1",
    "operating-timeseries",
    "profile-fit",
    "profile-error",
    "profile-ops",
    "validation-errors",
    "validation-requests",
    "inputs-traffic",
)

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@needs_chromium
def test_full_report_renders_in_chromium(full_report: Path) -> None:
    out = full_report  # profile + search + bench, strict (conftest.py)
    assert CHROMIUM is not None
    page = load_page(CHROMIUM, out, PROBE, pdf=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "full_report.png").write_bytes(page.screenshot_png)
    (ARTIFACTS / "full_report.pdf").write_bytes(page.pdf)

    assert page.errors == []
    fetched = [url for url in page.requests if not url.startswith("data:image/png;base64,")]
    assert fetched == [out.resolve().as_uri()], "the page must fetch nothing but itself (and inline images)"
    assert page.probe["resources"] == []
    assert page.probe["sections"] == {
        k: "present" for k in ("summary", "search", "operating", "profile", "validation", "inputs")
    }
    for key in EVERY_FIGURE:
        fig = page.probe["figures"].get(key)
        assert fig is not None, f"figure {key} missing"
        assert fig["width"] > 200 and fig["height"] > 100 and fig["paths"] > 5, (key, fig)
    assert page.probe["width"] <= 1366, "the page must not scroll sideways on a laptop screen"
    assert page.screenshot_png[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot_png) > 50_000
    # printable: A4 pages (595×842 pt) from the print CSS, a handful of them, not one per figure
    assert page.pdf.startswith(b"%PDF") and re.search(rb"/MediaBox \[0 0 59[45]\.\d* 84[12]", page.pdf)
    assert 4 <= len(re.findall(rb"/Type\s*/Page\b", page.pdf)) <= 20


@needs_chromium
def test_empty_run_dir_renders_with_every_section_absent(tmp_path: Path) -> None:
    run = tmp_path / "nothing"
    run.mkdir()
    (run / "run.yaml").write_text("schema_version: 1\nkind: simulate\ncommand: pdplan simulate\n")
    out = write_combined_report([run], run / "report.html", strict=True)
    assert CHROMIUM is not None
    page = load_page(CHROMIUM, out, PROBE)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "empty_report.png").write_bytes(page.screenshot_png)
    assert page.errors == []
    assert page.probe["figures"] == {}
    assert page.probe["sections"]["summary"] == "absent"
    assert page.probe["sections"]["inputs"] == "present"  # the command line is always there


@needs_chromium
def test_harness_catches_console_errors_and_external_loads(tmp_path: Path) -> None:
    """The checks above can fail: a page with a console error and an external image trips both."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><img src='http://pdplan-test.invalid/x.png'>"
        "<script>console.error('boom')</script></body></html>"
    )
    assert CHROMIUM is not None
    page = load_page(CHROMIUM, bad, PROBE)
    assert any("boom" in e for e in page.errors)
    assert any(url.startswith("http://pdplan-test.invalid") for url in page.requests)

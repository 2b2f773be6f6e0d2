"""pdplan.reports: one self-contained HTML report per run directory (or over several).

``write_report(out_dir)`` is what every command calls last; ``write_combined_report`` backs
``pdplan report DIR... --out FILE``. Both import matplotlib, pandas and jinja2 only when called, so
importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_combined_report", "write_report"]


def write_report(out_dir: str | Path, *, title: str | None = None) -> Path:
    """Render ``report.html`` into the run directory ``out_dir`` (atomically) and return its path.

    Reads whichever run files exist (run.yaml, plan.yaml, summary.yaml, requests.csv,
    timeseries.csv, candidates.csv, probes.csv, the profile files, predicted/); a section whose
    data is absent or unreadable says why instead of failing.

    Raises:
        ConfigError: ``out_dir`` does not exist.
    """
    from pdplan.reports.render import write_run_report

    return write_run_report(out_dir, title=title)


def write_combined_report(
    run_dirs: Sequence[str | Path], out_file: str | Path, *, title: str | None = None
) -> Path:
    """Render one report over several run directories into ``out_file`` and return its path.

    Raises:
        ConfigError: a directory does not exist or holds no run file.
    """
    from pdplan.reports.render import write_combined_report as _write

    return _write(run_dirs, out_file, title=title)

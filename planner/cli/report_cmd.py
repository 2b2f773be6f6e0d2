"""`pdplan report DIR... --out FILE`: one HTML report over one or several run directories.

Every other command already writes ``report.html`` into its own ``--out``; this one re-renders a
run directory, or combines several (say a profile, a search and a bench run) into one page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pdplan.profiles.atomic import check_replaceable
from pdplan.profiles.errors import ConfigError


def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories written by pdplan profile / simulate / bench.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="HTML file to write. Default: DIR/report.html when one "
            "directory is given; required when combining several.",
        ),
    ] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="Page title (default: kinds, model, hardware).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out file that is not an HTML page.")
    ] = False,
) -> None:
    """Render a self-contained HTML report (inline figures, no network) from run directories."""
    from rich.console import Console

    from pdplan.reports import write_combined_report

    if out is None:
        if len(run_dirs) > 1:
            raise ConfigError(f"--out is required when combining {len(run_dirs)} run directories")
        out = run_dirs[0] / "report.html"
    if not str(out) or out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a directory; expected an HTML file path")
    check_replaceable(out)  # never a device such as /dev/null, a FIFO or a socket
    if out.is_file() and not force and not _is_html(out):
        raise ConfigError(
            f"--out {str(out)!r} exists and is not an HTML page; "
            "pass --force to replace it, or choose another name"
        )
    from pdplan.planner.rundir import check_writable

    check_writable(out)  # fail before rendering when the file cannot be written
    with Console(stderr=True).status("rendering report"):
        path = write_combined_report(run_dirs, out, title=title)
    typer.echo(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")


def _is_html(path: Path) -> bool:
    """Whether ``path`` starts like an HTML page (what a report, this one's or another's, is)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith((b"<!doctype html", b"<html"))

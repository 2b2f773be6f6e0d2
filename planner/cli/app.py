"""The ``pdplan`` typer app: composes the command modules and turns user errors into exit code 2.

Command modules must not import torch or transformers at module level: ``pdplan --help`` loads them
all and has to start in well under a second.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from pdplan.planner.cli import (
    bench_cmd,
    calibrate_cmd,
    deploy_cmd,
    profile_cmd,
    report_cmd,
    simulate_cmd,
    validate_cmd,
)
from pdplan.profiles.errors import PdplanError

app = typer.Typer(
    name="pdplan",
    help="Capacity planner for prefill/decode-disaggregated LLM serving: "
    "profile -> simulate -> deploy -> bench, each with an HTML report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("profile")(profile_cmd.profile)
app.command("deploy")(deploy_cmd.deploy)
app.command("report")(report_cmd.report)
app.command("simulate")(simulate_cmd.simulate)
app.command("bench")(bench_cmd.bench)
app.command("validate")(validate_cmd.validate)
app.command("calibrate")(calibrate_cmd.calibrate)

err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"pdplan {version('pdplan')}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


def main() -> None:
    """Console entry point: user mistakes print one line and exit 2, never a traceback."""
    import click

    try:
        rc = app(standalone_mode=False)
    except PdplanError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.ClickException as err:  # usage errors: bad option, missing argument
        err.show()
        sys.exit(2)
    except (click.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)

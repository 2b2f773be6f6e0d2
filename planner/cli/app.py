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
from rich.markup import escape

from pdplan.planner.cli import (
    bench_cmd,
    calibrate_cmd,
    deploy_cmd,
    hardware_cmd,
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
app.add_typer(hardware_cmd.app, name="hardware")

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
    r"""Console entry point: user mistakes print one line and exit 2, never a traceback.

    typer ≥ 0.29 carries its own copy of click: usage errors (a bad option value, an unknown
    option or command, a missing argument) are ``typer.TyperException``\ s, and click itself is
    not a dependency. They are shown here on one line, like ``PdplanError``.
    """
    try:
        rc = app(standalone_mode=False, prog_name="pdplan")
    except PdplanError as err:
        _one_line(str(err))
        sys.exit(2)
    except typer.TyperException as err:  # usage errors: bad option, missing argument, no such command
        if type(err).__name__ == "NoArgsIsHelpError":  # plain ``pdplan``: the help, as typer shows it
            typer.echo(err.format_message(), err=True)
            sys.exit(2)
        ctx = getattr(err, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _one_line(f"{where}{err.format_message()}{hint}")
        sys.exit(2 if getattr(err, "exit_code", 1) == 2 else 1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


def _one_line(message: str) -> None:
    """``error: message`` on stderr, folded onto one line (no markup, no wrapping)."""
    text = " ".join(message.split())
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)

"""``pdplan validate PREDICTED_RUN MEASURED_RUN --out DIR``: how far a prediction is from a run.

Either side is a pdplan run directory (``requests.csv``: simulate, search or bench) or a
vLLM-style request log directory (``requests.jsonl``, converted; ``pdplan.planner.measured``).
Writes into ``--out``: the measured run in the shared schema (``requests.csv``, ``summary.yaml``),
the prediction under ``predicted/``, ``validation.yaml`` (per-metric signed errors and the error
over time) and ``report.html`` with the Validation section filled.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from pdplan.profiles.errors import ConfigError


def validate(
    predicted: Annotated[Path, typer.Argument(help="Predicted run (pdplan simulate --plan ... --out DIR).")],
    measured: Annotated[Path, typer.Argument(help="Measured run (pdplan bench, or a vLLM request log dir).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write (created if needed).")],
    slo: Annotated[
        str | None, typer.Option("--slo", help='SLO for attainment/goodput, e.g. "ttft=1s,tpot=50ms".')
    ] = None,
    warmup: Annotated[
        float, typer.Option("--warmup", help="Fraction of the earliest requests left out on both sides.")
    ] = 0.0,
    windows: Annotated[
        int, typer.Option("--windows", help="Slices of the run for the error over time.")
    ] = 10,
) -> None:
    """Compare a predicted run with a measured one: per-metric signed errors (predicted / measured − 1), per request, and over time."""  # noqa: E501
    import pandas as pd

    from pdplan.planner.measured import read_run
    from pdplan.planner.rundir import prepare_out, write_csv, write_run_yaml, write_yaml
    from pdplan.planner.validate import error_over_time, error_table, flatten, summaries

    if not 0 <= warmup < 1:
        raise ConfigError(f"--warmup {warmup!r}; expected a fraction in [0, 1)")
    if windows < 1:
        raise ConfigError(f"--windows {windows!r}; expected an integer ≥ 1")
    pred, meas = read_run(predicted), read_run(measured)
    if out.resolve() in (pred.path.resolve(), meas.path.resolve()):
        raise ConfigError("--out must be a new directory, not one of the runs")
    slo_ms = None
    if slo is not None:
        from pdplan.planner.slo import parse_slo

        slo_ms = parse_slo(slo).per_request_ms
    pred_summary, meas_summary = summaries(
        pred.requests, meas.requests, slo_ms=slo_ms, warmup_fraction=warmup
    )
    itl_file = meas.path / "itl.csv"
    if meas.source_format == "pdplan" and itl_file.is_file():
        from pdplan.realrun.bench_results import bench_summary

        meas_summary = bench_summary(
            meas.requests, pd.read_csv(itl_file), slo_ms=slo_ms, warmup_fraction=warmup
        )
        if meas_summary.get("attainment") is not None and meas_summary["duration_s"] > 0:
            meas_summary["goodput_rps"] = round(
                meas_summary["attainment"] * meas_summary["measured"] / meas_summary["duration_s"], 6
            )
    notes = _notes(pred.requests, meas.requests)
    table = error_table(flatten(pred_summary), flatten(meas_summary))
    over_time = error_over_time(pred.requests, meas.requests, windows)
    prepare_out(out)
    write_csv(out / "requests.csv", meas.requests)
    if itl_file.is_file() and meas.source_format == "pdplan":
        shutil.copyfile(itl_file, out / "itl.csv")
    write_yaml(out / "summary.yaml", {"schema_version": 1, "mode": "measured", **meas_summary})
    prepare_out(out / "predicted")
    write_csv(out / "predicted" / "requests.csv", pred.requests)
    write_yaml(out / "predicted" / "summary.yaml", {"schema_version": 1, **pred_summary})
    if (pred.path / "plan.yaml").is_file():
        shutil.copyfile(pred.path / "plan.yaml", out / "predicted" / "plan.yaml")
    write_run_yaml(out / "predicted", "simulate")
    write_yaml(
        out / "validation.yaml",
        {
            "schema_version": 1,
            "predicted": str(pred.path),
            "measured": str(meas.path),
            "measured_format": meas.source_format,
            "error": "predicted / measured - 1, in percent",
            "warmup_fraction": warmup,
            "notes": notes,
            "metrics": table,
            "over_time": over_time,
        },
    )
    write_run_yaml(out, "bench")
    _print(table, notes, out)
    from pdplan.reports import write_report

    typer.echo(f"report: {write_report(out)}")


def _notes(pred: Any, meas: Any) -> list[str]:
    notes = []
    if len(pred) != len(meas):
        notes.append(f"the runs have {len(pred)} (predicted) and {len(meas)} (measured) requests")
    common = min(len(pred), len(meas))
    for column in ("prompt_tokens", "output_tokens"):
        a = pred[column].to_numpy()[:common]
        b = meas[column].to_numpy()[:common]
        differ = int((a != b).sum())
        if differ:
            notes.append(f"{differ} of {common} requests differ in {column}: not the same request list")
    return notes


def _print(table: list[dict[str, Any]], notes: list[str], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    view = Table(title=f"pdplan validate → {out}  (error = predicted / measured − 1)")
    for column in ("metric", "predicted", "measured", "error"):
        view.add_column(column, justify="left" if column == "metric" else "right")
    for row in table:
        p, m, e = row["predicted"], row["measured"], row["error_pct"]
        view.add_row(
            row["metric"],
            "—" if p is None else f"{p:,.2f}",
            "—" if m is None else f"{m:,.2f}",
            "—" if e is None else f"{e:+.1f}%",
        )
    console.print(view)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)

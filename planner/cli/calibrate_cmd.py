"""``pdplan calibrate MEASURED_RUN... --plan P (--profile DIR | --model M --hardware H) --out DIR``.

Fits the named engine parameters (``pdplan.planner.calibrate``) so that simulating each measured
run's own traffic (its arrivals and token counts) on the plan reproduces its latencies. Held out
from the fit: the second half of each run's requests (``--split half``, the default), or the runs
given with ``--holdout``. Writes into ``--out``:

- the calibrated profile (``method: calibrated``; the tables with the parameters applied, and a
  ``calibration`` section: parameters, uncertainty, runs used, before/after and held-out errors,
  the range of traffic it was fitted on) — a subdirectory ``tp<N>`` per TP when the plan uses two;
- ``plan.yaml``: the plan with the calibrated KV capacity written in (``max_kv_tokens``), since
  KV capacity is a property of the deployment, not of the step costs.

``pdplan simulate --plan OUT/plan.yaml --profile OUT`` then predicts with both, and warns when
asked about traffic outside the calibrated range.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pdplan.profiles.errors import ConfigError

log = logging.getLogger(__name__)
SPLITS = ("half", "none")


def calibrate(
    runs: Annotated[
        list[Path], typer.Argument(help="Measured runs (pdplan bench dirs or vLLM request logs).")
    ],
    plan: Annotated[Path, typer.Option("--plan", help="The plan the runs were measured on.")],
    out: Annotated[Path, typer.Option("--out", help="Calibrated profile directory to write.")],
    profile: Annotated[
        list[Path] | None, typer.Option("--profile", help="Profile to calibrate (one per TP of the plan).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Catalog model (analytic profile).")] = None,
    hardware: Annotated[
        str | None, typer.Option("--hardware", help="Hardware catalog name (analytic).")
    ] = None,
    holdout: Annotated[
        list[Path] | None,
        typer.Option("--holdout", help="Measured run judged but not fitted on (repeatable)."),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split", help="half: fit the first half of each run's requests, judge the rest; none."
        ),
    ] = "half",
    fit: Annotated[
        str | None,
        typer.Option("--fit", help="Comma-separated parameters (default: overhead, compute, bandwidth, KV)."),
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Refits for the uncertainty (0: none).")] = 8,
) -> None:
    """Fit per-step overhead, compute/bandwidth efficiency and KV capacity to measured runs; write a calibrated profile with its held-out error."""  # noqa: E501
    from pdplan.planner.calibrate import DEFAULT_FIT

    if split not in SPLITS:
        from pdplan.profiles.errors import choices_error

        raise choices_error("--split", split, SPLITS)
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap {bootstrap!r}; expected an integer ≥ 0")
    names = tuple(n.strip() for n in fit.split(",") if n.strip()) if fit else DEFAULT_FIT
    from pdplan.planner.inputs import role_profiles
    from pdplan.planner.plan import load_plan

    the_plan = load_plan(plan)
    if not profile and not (model or hardware):
        model, hardware = the_plan.model or None, the_plan.hardware or None
    profiles = role_profiles(the_plan.tps, profile or [], model, hardware, pps=the_plan.pps)
    if any(p.method == "calibrated" for p in profiles.values()):
        log.warning("calibrating an already calibrated profile: its parameters compound")
    cluster = the_plan.cluster(profiles)
    measured = [_measured(path, cluster, split) for path in runs]
    held = [_measured(path, cluster, "all-held") for path in holdout or []]
    _run_calibration(the_plan, profiles, measured, held, names, bootstrap, out, [*runs, *(holdout or [])])


def _measured(path: Path, cluster: Any, split: str) -> Any:
    import numpy as np

    from pdplan.planner.calibrate import MeasuredRun, latencies
    from pdplan.planner.measured import read_run
    from pdplan.sim.requests import Requests

    run = read_run(path)
    frame = run.requests.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    frame = frame[np.isfinite(frame["arrival_s"].to_numpy(dtype=float))]
    if len(frame) < 4:
        raise ConfigError(f"run {str(path)!r}: {len(frame)} requests; calibration needs at least 4")
    reqs = Requests(
        frame["arrival_s"].to_numpy(dtype=float),
        frame["prompt_tokens"].to_numpy(),
        frame["output_tokens"].to_numpy(),
    )
    ok = (frame["status"] == "ok").to_numpy()
    ttft, tpot = latencies(
        reqs.arrival_s - reqs.arrival_s[0],
        frame["first_token_s"].to_numpy(dtype=float) - reqs.arrival_s[0],
        frame["finish_s"].to_numpy(dtype=float) - reqs.arrival_s[0],
        reqs.output_tokens,
        ok,
    )
    n = len(reqs)
    mask = np.ones(n, dtype=bool)
    if split == "half":
        mask[n // 2 :] = False
    elif split == "all-held":
        mask[:] = False
    return MeasuredRun(run.name, reqs, ttft, tpot, mask, cluster)


def _run_calibration(
    plan: Any,
    profiles: dict[str, Any],
    measured: list[Any],
    held: list[Any],
    names: tuple[str, ...],
    bootstrap: int,
    out: Path,
    paths: list[Path],
) -> None:
    from rich.console import Console

    from pdplan.planner.calibrate import calibrate as fit_params
    from pdplan.planner.calibrate import calibrated_plan, calibrated_profile, fit_range, range_notes
    from pdplan.planner.plan import save_plan
    from pdplan.planner.rundir import prepare_out
    from pdplan.profiles.profile import save_profile

    console = Console(stderr=True)
    with console.status("calibrating") as status:
        result = fit_params(
            [*measured, *held], names, bootstrap, progress=lambda m: status.update(f"calibrating: {m}")
        )
    fitted_on = fit_range(measured)
    notes = [note for run in held for note in range_notes(fitted_on, run.requests, run.name)]
    block = {
        "parameters": result.params.to_dict(),
        "fitted": list(result.fitted),
        "uncertainty_std": result.uncertainty,
        "not_fitted": result.not_fitted,
        "at_bounds": result.at_bounds,
        "runs": [str(p) for p in paths],
        "errors": result.runs,
        "objective": {"before": round(result.objective_before, 6), "after": round(result.objective_after, 6)},
        "fitted_range": fitted_on,
        "extrapolation_notes": notes,
        "error_definition": "predicted / measured - 1, in percent",
    }
    prepare_out(out)
    tps = sorted({p.tp for p in profiles.values()})
    for tp in tps:
        source = next(p for p in profiles.values() if p.tp == tp)
        save_profile(
            calibrated_profile(source, result.params, block), out if len(tps) == 1 else out / f"tp{tp}"
        )
    save_plan(calibrated_plan(plan, profiles, result.params), out / "plan.yaml")
    _print(block, out)


def _print(block: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    params = Table(title=f"pdplan calibrate → {out}")
    for column in ("parameter", "value", "± (bootstrap std)"):
        params.add_column(column)
    for name, value in block["parameters"].items():
        if name in block["fitted"]:
            params.add_row(name, f"{value:.4g}", f"{block['uncertainty_std'].get(name, float('nan')):.2g}")
        else:
            params.add_row(name, f"{value:.4g}", f"not fitted: {block['not_fitted'].get(name, 'not asked')}")
    console.print(params)
    errors = Table(title="error = predicted / measured − 1 (before → after calibration)")
    for column in ("run", "requests", "metric", "before", "after"):
        errors.add_column(column)
    for run in block["errors"]:
        for part in ("fit", "held_out"):
            if part not in run:
                continue
            for metric, after in run[part]["error_after_pct"].items():
                before = run[part]["error_before_pct"].get(metric)
                errors.add_row(
                    f"{run['name']} ({part})",
                    str(run[part]["requests"]),
                    metric,
                    f"{before:+.1f}%",
                    f"{after:+.1f}%",
                )
    console.print(errors)
    for name, why in block["at_bounds"].items():
        console.print(
            f"[yellow]at a bound:[/] {name} = {why}: the rest of the error is not in it", highlight=False
        )
    for note in block["extrapolation_notes"]:
        console.print(f"[yellow]extrapolation:[/] {note}", highlight=False)

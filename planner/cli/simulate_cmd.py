"""``pdplan simulate``: evaluate one plan on a workload (issue 3).

``pdplan simulate --plan plan.yaml (--profile DIR [--profile DIR] | --model M --hardware H)
(--workload W.yaml | --trace F [--trace-format F]) [--rate R] [--seed S] [--slo ...] --out DIR``

Writes into ``--out`` (each file atomically): ``plan.yaml`` (the plan as simulated, with the
workload and the ``predicted`` figures), ``requests.csv``, ``summary.yaml``, ``timeseries.csv``,
``run.yaml``, then ``report.html`` when ``pdplan.reports`` provides ``write_report``. Input loading
lives in ``pdplan.planner.inputs`` so the SLO search can share it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pdplan.profiles.errors import ConfigError

if TYPE_CHECKING:
    from pdplan.planner.inputs import RequestSource
    from pdplan.planner.plan import Plan

log = logging.getLogger(__name__)
DEFAULT_WARMUP = 0.05
MAX_SAMPLES = 1_000_000  # time-series rows per instance (--sample-interval)


def simulate(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write (created if needed).")],
    plan: Annotated[Path | None, typer.Option("--plan", help="plan.yaml to evaluate.")] = None,
    profile: Annotated[
        list[Path] | None,
        typer.Option(
            "--profile", help="Profile directory; repeat for each TP the plan uses (matched by tp)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Catalog name or config.json (analytic profile).")
    ] = None,
    hardware: Annotated[
        str | None,
        typer.Option("--hardware", help="Hardware catalog name or .yaml file (analytic profile)."),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="Analytic profile's weights: bfloat16, float16, fp8 or int4."),
    ] = None,
    kv_dtype: Annotated[
        str | None, typer.Option("--kv-dtype", help="Analytic profile's KV cache dtype (fp8 halves it).")
    ] = None,
    workload: Annotated[
        Path | None, typer.Option("--workload", help="Workload YAML (synthetic or trace).")
    ] = None,
    trace: Annotated[Path | None, typer.Option("--trace", help="Trace file to replay.")] = None,
    trace_format: Annotated[
        str | None, typer.Option("--trace-format", help="azure | mooncake | csv (default: guessed).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Mean arrival rate to simulate (req/s).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for drawing the workload and routing.")
    ] = None,
    slo: Annotated[
        str | None, typer.Option("--slo", help='SLO, e.g. "ttft=1s,tpot=50ms" (default: the plan\'s).')
    ] = None,
    attainment: Annotated[
        float | None,
        typer.Option("--attainment", help="Fraction of requests that must meet the SLO (default 0.9)."),
    ] = None,
    warmup: Annotated[
        float, typer.Option("--warmup", help="Fraction of the earliest requests left out of the summary.")
    ] = DEFAULT_WARMUP,
    sample_interval: Annotated[
        float | None,
        typer.Option("--sample-interval", help="Time-series interval in s (default: ≤ 1000 samples)."),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="Search: best goodput per GPU on at most N GPUs.")
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="Search: both (default), disaggregated or colocated.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Search: named workload chat, code or summarize.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Search: worker processes (default: one per core).")
    ] = None,
    price_per_gpu_hour: Annotated[
        str | None,
        typer.Option(
            "--price-per-gpu-hour",
            help="$ per GPU-hour: one number, or NAME=PRICE per type (h100-sxm=2.5,a100-80g=1.3).",
        ),
    ] = None,
    kv_link: Annotated[
        str | None,
        typer.Option("--kv-link", help="Search: KV link nvlink (default), infiniband, roce, pcie, tcp."),
    ] = None,
    traffic: Annotated[
        str | None,
        typer.Option(
            "--traffic",
            help="A trace as-recorded (default: replayed whole, with its swings) or stationary (detrended).",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Plan runs: a cluster policy YAML (static, autoscale, role-switch)."),
    ] = None,
    diurnal: Annotated[
        str | None,
        typer.Option(
            "--diurnal", help="Plan runs: stretch --trace to a day, e.g. mean=3,peak_to_trough=3,hours=24."
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option("--executor", help="Search: where candidates run: local, ray, or ray://HOST:PORT."),
    ] = None,
    budget_per_hour: Annotated[
        float | None,
        typer.Option(
            "--budget-per-hour",
            help="Search over several --hardware types (A,B): dollars per hour to spend, ranked per dollar.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an --out that holds another kind of pdplan run.")
    ] = False,
    cache_l2_gb: Annotated[
        str | None,
        typer.Option(
            "--cache-l2-gb",
            help="Search, prefix traffic: host DRAM sizes per instance to try (GB, e.g. 0,64,256).",
        ),
    ] = None,
    cache_l3_gb: Annotated[
        str | None,
        typer.Option(
            "--cache-l3-gb", help="Search, prefix traffic: shared store sizes to try (GB, e.g. 0,8000)."
        ),
    ] = None,
) -> None:
    """Simulate one plan (--plan), or search layouts against an SLO (--slo with --gpus N or --rate R).

    With --plan: evaluate that plan on the workload and write its run directory. Without --plan, --slo searches P:D ratio, TP and batch limits (and colocated layouts) for the most goodput per GPU on at most --gpus GPUs, or the fewest GPUs that hold --rate req/s, and writes plan.yaml.
    """  # noqa: E501 (one line per paragraph: typer reflows the help text)
    search_only = {
        "--gpus": gpus,
        "--mode": mode,
        "--workers": workers,
        "--kv-link": kv_link,
        "--budget-per-hour": budget_per_hour,
        "--executor": executor,
        "--cache-l2-gb": cache_l2_gb,
        "--cache-l3-gb": cache_l3_gb,
    }
    if plan is None:
        if slo is None:
            raise ConfigError(
                "give --plan plan.yaml to evaluate one plan, or --slo SLO with --gpus N or --rate R to search"
            )
        plan_only = {
            "--trace-format": trace_format,
            "--sample-interval": sample_interval,
            "--policy": policy,
            "--diurnal": diurnal,
        }
        given = [name for name, value in plan_only.items() if value is not None]
        if warmup != DEFAULT_WARMUP:
            given.append("--warmup")
        if given:
            raise ConfigError(f"{', '.join(given)} apply to --plan runs only, not to the --slo search")
        from pdplan.planner.cli.search_cmd import search

        search(
            slo=slo,
            out=out,
            gpus=gpus,
            rate=rate,
            attainment=0.9 if attainment is None else attainment,
            mode=mode or "both",
            profile=profile,
            model=model,
            hardware=hardware,
            dtype=dtype,
            kv_dtype=kv_dtype,
            workload=workload,
            trace=trace,
            preset=preset,
            seed=seed,
            workers=workers,
            price_per_gpu_hour=price_per_gpu_hour,
            kv_link=kv_link,
            budget_per_hour=budget_per_hour,
            executor=executor or "local",
            traffic=traffic,
            force=force,
            cache_l2_gb=cache_l2_gb,
            cache_l3_gb=cache_l3_gb,
        )
        return
    given = [name for name, value in search_only.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to the --slo search only, not to --plan runs")
    from pdplan.planner.plan import load_plan

    source = _request_source(workload, trace, trace_format, rate, seed, preset, traffic)
    if diurnal is not None:
        from pdplan.planner.cli.policy_run import diurnal_source

        source = diurnal_source(source, diurnal, rate)
    _simulate_plan(
        load_plan(plan),
        out=out,
        profile_dirs=profile or [],
        model=model,
        hardware=hardware,
        dtypes=(dtype, kv_dtype),
        source=source,
        policy_file=policy,
        slo_text=slo,
        attainment=attainment,
        warmup=warmup,
        sample_interval=sample_interval,
        seed=seed,
        force=force,
        prices=price_per_gpu_hour,
    )


def _request_source(
    workload: Path | None,
    trace: Path | None,
    trace_format: str | None,
    rate: float | None,
    seed: int | None,
    preset: str | None = None,
    traffic: str | None = None,
) -> RequestSource:
    """The request list of a ``--plan`` run: exactly what the search replays as "the same traffic"
    (``pdplan.planner.traffic``), so a plan's promise can be checked with this command."""
    from pdplan.planner import traffic as views
    from pdplan.planner.inputs import RequestSource, check_rate, load_trace, load_workload
    from pdplan.planner.presets import get_preset
    from pdplan.profiles.errors import choices_error
    from pdplan.sim.workload import draw_requests

    given = [n for n, v in (("--workload", workload), ("--trace", trace), ("--preset", preset)) if v]
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of --workload W.yaml, --trace F and --preset P (got {given or 'none'})"
        )
    if trace_format is not None and trace is None:
        raise ConfigError("--trace-format applies to --trace only")
    if traffic is not None and traffic not in views.TRACE_TRAFFIC:
        raise choices_error("--traffic", traffic, views.TRACE_TRAFFIC)
    if preset is not None:
        if traffic is not None:
            raise ConfigError("--traffic applies to a trace; a preset is synthetic (stationary) traffic")
        spec = get_preset(preset).workload(num_requests=views.PRESET_REPLAY_REQUESTS, seed=seed or 0)
        if rate is not None:
            spec = spec.with_rate(check_rate(rate))
        described = {"preset": preset, "seed": spec.seed, "rate_rps": spec.arrival.rate_rps}
        return RequestSource(draw_requests(spec), {**described, "traffic": views.SYNTHETIC}, spec)
    if workload is not None:
        source = load_workload(workload, seed=seed, rate_rps=rate)
        synthetic = source.workload is not None or source.closed_loop is not None
        kind = views.SYNTHETIC if synthetic else views.AS_RECORDED
        if traffic is not None and kind == views.SYNTHETIC:
            raise ConfigError("--traffic applies to a trace; this workload is synthetic (stationary) traffic")
    else:
        assert trace is not None
        source = load_trace(trace, trace_format, rate_rps=rate)
        kind = views.AS_RECORDED
    if traffic == views.STATIONARY:
        flat = views.trace_list(source.requests, seed or 0)
        flat = flat.at_rate(rate) if rate is not None else flat
        kind = views.STATIONARY
        source = RequestSource(flat, {**source.description, "detrended_bin_s": views.DETREND_BIN_S})
    return RequestSource(
        source.requests, {**source.description, "traffic": kind}, source.workload, source.closed_loop
    )


def _simulate_plan(
    plan: Plan,
    *,
    out: Path,
    profile_dirs: list[Path],
    model: str | None,
    hardware: str | None,
    source: RequestSource,
    dtypes: tuple[str | None, str | None] = (None, None),
    slo_text: str | None,
    attainment: float | None,
    warmup: float,
    sample_interval: float | None,
    seed: int | None,
    force: bool = False,
    prices: str | None = None,
    policy_file: Path | None = None,
) -> None:
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from pdplan.planner.cli.plan_summary import predicted_of, print_summary, summary_of
    from pdplan.planner.cli.policy_run import checked_policy, write_policy_files
    from pdplan.planner.hardware_mix import pool_profiles, roles_hardware
    from pdplan.planner.inputs import role_profiles
    from pdplan.planner.plan import save_plan
    from pdplan.planner.pricing import parse_prices, plan_cost
    from pdplan.planner.rundir import claim_out, replacing_dir, write_csv, write_run_yaml, write_yaml
    from pdplan.planner.slo import parse_slo
    from pdplan.profiles.validate import number
    from pdplan.sim.cluster import DisaggregatedCluster
    from pdplan.sim.simulate import SimOptions
    from pdplan.sim.simulate import simulate as run_simulation
    from pdplan.sim.timeseries import timeseries

    if sample_interval is not None:
        number("--sample-interval", sample_interval, low=0, low_open=True, high=86400.0)
    if not 0 <= warmup < 1:
        raise ConfigError(f"--warmup {warmup!r}; expected a fraction in [0, 1)")
    if attainment is not None:
        number("--attainment", attainment, low=0, low_open=True, high=1)
    if seed is not None and not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed}; expected an integer in [0, 2**63)")
    price_list = parse_prices(prices) if prices is not None else None
    if not profile_dirs:  # the plan's serving dtypes unless --dtype/--kv-dtype say otherwise
        dtypes = (dtypes[0] or plan.dtype, dtypes[1] or plan.kv_dtype)
    if plan.pool_hardware:  # pools on different hardware: a profile per (hardware, TP)
        if hardware:
            raise ConfigError("the plan names hardware per pool; leave --hardware out (or edit plan.yaml)")
        if any(dtypes):
            raise ConfigError(
                "--dtype/--kv-dtype (or plan dtype/kv_dtype) are not supported yet for a plan "
                "with hardware per pool"
            )
        profiles = pool_profiles(plan.tps, plan.pool_hardware, model or plan.model, profile_dirs)
    else:
        if not profile_dirs and not (model or hardware):
            model, hardware = plan.model or None, plan.hardware or None
        profiles = role_profiles(plan.tps, profile_dirs, model, hardware, *dtypes, pps=plan.pps)
    _warn_outside_calibration(profiles, source)
    _warn_beyond_grid(profiles, source)
    first = next(iter(profiles.values()))
    other = sorted({p.model.name for p in profiles.values()} - {plan.model or first.model.name})
    if other:
        log.warning("the plan names model %r but the profiles are of %s", plan.model, other)
    # profiles of two hardware types label the run per pool, not with the first one's GPU
    pools_hw = plan.pool_hardware or roles_hardware(profiles)
    plan = replace(
        plan,
        slo=parse_slo(slo_text) if slo_text is not None else plan.slo,
        attainment=attainment if attainment is not None else plan.attainment,
        model=plan.model or first.model.name,
        hardware="+".join(dict.fromkeys(pools_hw.values()))
        if pools_hw
        else plan.hardware or str(first.hardware.get("name", "")),
        pool_hardware=pools_hw,
    )
    if price_list is not None:
        for role in plan.tps:
            price_list.of(plan.hardware_of(role))  # a missing price fails before the run
    cluster = plan.cluster(profiles)
    policy = checked_policy(policy_file, plan, source) if policy_file is not None else None
    claim_out(out, "simulate", force=force)
    requests = source.requests
    started = time.perf_counter()
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} requests"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("simulate", total=len(requests))
        elastic = None
        if policy is not None:
            from pdplan.sim.autoscale import simulate_elastic

            assert isinstance(cluster, DisaggregatedCluster), "_policy checked the mode"
            elastic = simulate_elastic(requests, cluster, policy)
            result = elastic.result
        else:
            result = run_simulation(
                requests,
                cluster,
                SimOptions(router=plan.router, closed_loop=source.closed_loop),
                np.random.default_rng(seed or 0),
                progress=lambda done, total: bar.update(task, completed=done),
            )
    wall_s = time.perf_counter() - started
    if sample_interval is not None and result.end_s / sample_interval > MAX_SAMPLES:
        raise ConfigError(
            f"--sample-interval {sample_interval:g} s over {result.end_s:.6g} simulated s is "
            f"{result.end_s / sample_interval:.3g} samples; the limit is {MAX_SAMPLES}"
        )
    # open-loop stationary traffic only: closed-loop clients cannot outrun the cluster
    stationary = source.description.get("traffic") in ("synthetic", "stationary")
    stability = stationary and source.closed_loop is None
    summary = summary_of(plan, result, warmup, stability)
    log.info(
        "simulated %d requests in %.2f s (%.0f req/s)",
        len(requests),
        wall_s,
        len(requests) / max(wall_s, 1e-9),
    )
    predicted = predicted_of(summary, source)
    if price_list is not None:
        cost = plan_cost(plan, price_list, summary.get("output_tokens_per_s"))
        plan = replace(plan, notes={**plan.notes, "cost": {**cost, "rate_rps": predicted.get("rate_rps")}})
    with replacing_dir(out) as staging:  # the run directory is written whole or not at all
        save_plan(replace(plan, workload=source.description, predicted=predicted), staging / "plan.yaml")
        write_csv(staging / "requests.csv", result.records.to_frame())
        write_yaml(staging / "summary.yaml", summary)
        write_csv(staging / "timeseries.csv", timeseries(result, sample_interval))
        if elastic is not None:
            write_policy_files(staging, plan, elastic, price_list, source.description)
        write_run_yaml(staging, "simulate")
    print_summary(summary, out)
    cost_note = plan.notes.get("cost") if price_list is not None else None
    if isinstance(cost_note, dict) and cost_note.get("per_million_output_tokens") is not None:
        typer.echo(
            f"cost: ${cost_note['per_hour']:,.2f} per hour, "
            f"${cost_note['per_million_output_tokens']:,.4g} per million output tokens"
        )
    _report(out)


def _warn_outside_calibration(profiles: dict[str, Any], source: RequestSource) -> None:
    """A calibrated profile says which traffic it was fitted on; say so when asked beyond it."""
    from pdplan.planner.calibrate import range_notes

    for role, profile in profiles.items():
        fitted = (profile.calibration or {}).get("fitted_range")
        if fitted and source.closed_loop is None:
            for note in range_notes(fitted, source.requests, "this workload"):
                log.warning("%s profile calibrated on other traffic: %s", role, note)


def _warn_beyond_grid(profiles: dict[str, Any], source: RequestSource) -> None:
    """A measured profile prices prompts longer than its prefill grid's longest by extrapolating
    the quadratic attention term; say so (a quick CPU grid that ended at 512 tokens priced
    768-1,536-token prompts up to 2× too slow: bench/local_steps.py)."""
    longest = int(source.requests.prompt_tokens.max()) if len(source.requests) else 0
    for role, profile in profiles.items():
        if profile.method != "measured" or role == "decode":
            continue
        measured = int(profile.prefill["seq_len"].max())
        if longest > measured:
            log.warning(
                "%s profile: this workload has prompts up to %d tokens, but the profile measured "
                "prefills of at most %d: longer ones are extrapolated (%.1f× the measured length); "
                "profile again with a grid that reaches them",
                role,
                longest,
                measured,
                longest / measured,
            )


def _report(out: Path) -> None:
    try:
        from pdplan.reports import write_report
    except ImportError:
        log.info("pdplan.reports.write_report is not available; no report.html")
        return
    path = write_report(out)
    typer.echo(f"report: {path}")

"""``pdplan bench``: replay the simulator's request list against a live endpoint and measure it.

``pdplan bench --endpoint URL (--workload W | --trace T | --preset P) [--rate R | --concurrency C]
[--api sglang-generate | openai-completions | openai-chat] [--model NAME] [--tokenizer DIR]
[--duration-s S | --num-requests N] [--plan P (--profile DIR | --model M --hardware H)] --out DIR``

Writes ``requests.csv`` (the simulator's schema + ``cached_tokens`` + ``error``), ``itl.csv`` (every chunk),
``summary.yaml`` (``summarize``'s figures + ITL and goodput), ``run.yaml`` and ``report.html``.
With ``--plan`` it also simulates the same request list on that plan into ``predicted/``, so the
report's Validation section compares the two. Metric definitions: ``pdplan.realrun.bench_results``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from pdplan.profiles.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_WARMUP = 0.0


def bench(
    endpoint: Annotated[str, typer.Option("--endpoint", help="Base URL, e.g. http://127.0.0.1:8000.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write (created if needed).")],
    workload: Annotated[Path | None, typer.Option("--workload", help="Workload YAML.")] = None,
    trace: Annotated[Path | None, typer.Option("--trace", help="Trace file to replay.")] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Named workload: chat, code, summarize.")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Open loop: mean arrival rate (req/s).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Closed loop: this many clients, back to back.")
    ] = None,
    think_time_s: Annotated[
        float, typer.Option("--think-time-s", help="Closed loop: pause between a reply and the next request.")
    ] = 0.0,
    api: Annotated[
        str, typer.Option("--api", help="sglang-generate (default), openai-completions or openai-chat.")
    ] = "sglang-generate",
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model name for the OpenAI APIs; with --plan, analytic model."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="HF tokenizer directory for openai-chat prompts.")
    ] = None,
    num_requests: Annotated[
        int | None, typer.Option("--num-requests", help="Replay the first N requests.")
    ] = None,
    duration_s: Annotated[
        float | None,
        typer.Option("--duration-s", help="Replay the requests arriving in the first S seconds."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for drawing the workload.")] = None,
    slo: Annotated[
        str | None, typer.Option("--slo", help='SLO for attainment and goodput, e.g. "ttft=1s,tpot=50ms".')
    ] = None,
    warmup: Annotated[
        float, typer.Option("--warmup", help="Fraction of the earliest requests left out of the summary.")
    ] = DEFAULT_WARMUP,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Per-request time limit (s).")] = 600.0,
    deadline_s: Annotated[
        float | None,
        typer.Option("--deadline-s", help="Stop the whole run after S seconds (rest: unfinished)."),
    ] = None,
    max_in_flight: Annotated[int, typer.Option("--max-in-flight", help="Most requests open at once.")] = 1024,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="Also predict this plan on the same requests (predicted/).")
    ] = None,
    profile: Annotated[
        list[Path] | None, typer.Option("--profile", help="With --plan: profile directory (one per TP).")
    ] = None,
    hardware: Annotated[
        str | None, typer.Option("--hardware", help="With --plan: analytic hardware.")
    ] = None,
    wait_s: Annotated[
        float, typer.Option("--wait-s", help="Wait this long for the endpoint's /health before starting.")
    ] = 120.0,
) -> None:
    """Measure a live endpoint with the simulator's request list (open loop with --rate, closed loop with --concurrency); with --plan also predict it and compare."""  # noqa: E501
    from pdplan.planner.rundir import prepare_out
    from pdplan.realrun.bench_apis import APIS, ApiSpec
    from pdplan.realrun.bench_client import BenchConfig

    if api not in APIS:
        from pdplan.profiles.errors import choices_error

        raise choices_error("--api", api, APIS)
    if rate is not None and concurrency is not None:
        raise ConfigError("give --rate (open loop) or --concurrency (closed loop), not both")
    if num_requests is not None and duration_s is not None:
        raise ConfigError("give --num-requests or --duration-s, not both")
    if not 0 <= warmup < 1:
        raise ConfigError(f"--warmup {warmup!r}; expected a fraction in [0, 1)")
    if plan is None and (profile or hardware):
        raise ConfigError("--profile/--hardware describe the prediction: they need --plan")
    source = _source(workload, trace, preset, rate if concurrency is None else None, seed)
    requests = _cut(source.requests, num_requests, duration_s)
    loop = source.closed_loop
    if concurrency is not None:
        from pdplan.sim.closed_loop import ClosedLoop

        loop = ClosedLoop(concurrency, think_time_s)
    decode_text = _decoder(tokenizer) if tokenizer is not None else None
    config = BenchConfig(
        endpoint=endpoint,
        api=ApiSpec(api, model or "", decode_text),
        concurrency=None if loop is None else loop.concurrency,
        think_time_s=0.0 if loop is None else loop.think_time_s,
        max_in_flight=max_in_flight,
        timeout_s=timeout_s,
        deadline_s=deadline_s,
    )
    slo_spec = None
    if slo is not None:
        from pdplan.planner.slo import parse_slo

        slo_spec = parse_slo(slo)
    from pdplan.realrun.bench_client import wait_ready

    waited = wait_ready(endpoint, wait_s)
    if waited > 1:
        log.info("endpoint ready after %.1f s", waited)
    prepare_out(out)
    described = dict(source.description)
    if loop is not None:
        described.update(
            {"arrival": "closed", "concurrency": loop.concurrency, "think_time_s": loop.think_time_s}
        )
    run = _measure(requests, config)
    _write(out, run, config, described, slo_spec, warmup)
    if plan is not None:
        _predict(plan, out, requests, source, loop, profile or [], model, hardware, slo, warmup)
    from pdplan.reports import write_report

    typer.echo(f"report: {write_report(out)}")
    if run.interrupted:
        raise typer.Exit(130)


def _source(
    workload: Path | None, trace: Path | None, preset: str | None, rate: float | None, seed: int | None
):
    from pdplan.planner.inputs import RequestSource, check_rate, load_trace, load_workload

    given = [x for x in (workload, trace, preset) if x is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --workload W.yaml, --trace F and --preset NAME")
    if workload is not None:
        return load_workload(workload, seed=seed, rate_rps=rate)
    if trace is not None:
        return load_trace(trace, rate_rps=rate)
    from dataclasses import replace

    from pdplan.planner.presets import get_preset
    from pdplan.sim.workload import draw_requests

    chosen = get_preset(str(preset))
    spec = chosen.workload(num_requests=200, seed=seed or 0)
    if rate is not None:
        spec = replace(spec, arrival=spec.arrival.with_rate(check_rate(rate)))
    described = {
        "preset": chosen.name,
        "seed": spec.seed,
        "rate_rps": spec.arrival.rate_rps,
        "arrival": "poisson",
    }
    return RequestSource(draw_requests(spec), described)


def _cut(requests: Any, num_requests: int | None, duration_s: float | None) -> Any:
    if num_requests is not None:
        if num_requests < 1:
            raise ConfigError(f"--num-requests {num_requests!r}; expected an integer ≥ 1")
        return requests.head(num_requests)
    if duration_s is not None:
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ConfigError(f"--duration-s {duration_s!r}; expected a positive number of seconds")
        start = requests.arrival_s[0] if len(requests) else 0.0
        return requests.head(int((requests.arrival_s - start <= duration_s).sum()))
    return requests


def _decoder(folder: Path):
    from pdplan.realrun.tokenizer import load_tokenizer

    if not folder.is_dir():
        raise ConfigError(f"--tokenizer {str(folder)!r}: not a directory")
    tok = load_tokenizer(str(folder), 1 << 30)
    return lambda ids: tok.decode(list(ids))


def _measure(requests: Any, config: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pdplan.realrun.bench_client import run_bench

    with Progress(
        TextColumn("benchmarking"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} requests"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("bench", total=len(requests))
        run = run_bench(requests, config, progress=lambda done, total: bar.update(task, completed=done))
    if run.interrupted:
        log.warning("interrupted: writing what was measured (unsent and open requests are 'unfinished')")
    return run


def _write(out: Path, run: Any, config: Any, described: dict[str, Any], slo: Any, warmup: float) -> None:
    import numpy as np

    from pdplan.planner.rundir import write_csv, write_run_yaml, write_yaml
    from pdplan.realrun.bench_results import bench_summary, itl_frame, requests_frame

    frame, itl = requests_frame(run), itl_frame(run)
    summary: dict[str, Any] = {"schema_version": 1, "mode": "measured"}
    summary.update(
        bench_summary(
            frame,
            itl,
            slo_ms=slo.per_request_ms if slo else None,
            warmup_fraction=warmup,
            percentiles=slo.percentiles if slo else (50.0, 90.0, 99.0),
        )
    )
    lag = frame["arrival_s"].to_numpy() - (run.requests.arrival_s - run.requests.arrival_s[0])
    sent = np.isfinite(np.array([o.sent_s for o in run.outcomes]))
    summary["bench"] = {
        "endpoint": config.endpoint,
        "api": config.api.api,
        "loop": "closed" if config.concurrency else "open",
        "concurrency": config.concurrency,
        "workload": described,
        "wall_s": round(run.wall_s, 3),
        "interrupted": run.interrupted,
        "send_lag_ms_p99": round(float(np.percentile(lag[sent], 99)) * 1000, 3)
        if sent.any() and not config.concurrency
        else None,
    }
    if slo is not None:
        summary["slo"] = slo.spec
    errors = frame.loc[frame["status"] == "failed", "error"]
    if len(errors):
        summary["errors"] = {str(k): int(v) for k, v in errors.value_counts().head(5).items()}
    write_csv(out / "requests.csv", frame)
    write_csv(out / "itl.csv", itl)
    write_yaml(out / "summary.yaml", summary)
    write_run_yaml(out, "bench")
    _print(summary, out)


def _predict(
    plan_path: Path,
    out: Path,
    requests: Any,
    source: Any,
    loop: Any,
    profiles: list[Path],
    model: str | None,
    hardware: str | None,
    slo: str | None,
    warmup: float,
) -> None:
    from pdplan.planner.cli.simulate_cmd import _simulate_plan
    from pdplan.planner.inputs import RequestSource
    from pdplan.planner.plan import load_plan

    _simulate_plan(
        load_plan(plan_path),
        out=out / "predicted",
        profile_dirs=profiles,
        model=model if hardware else None,
        hardware=hardware,
        source=RequestSource(requests, source.description, closed_loop=loop),
        slo_text=slo,
        attainment=None,
        warmup=warmup,
        sample_interval=None,
        seed=None,
    )


def _print(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"pdplan bench → {out}")
    table.add_column("metric")
    for column in ("mean", "p50", "p90", "p99"):
        table.add_column(column, justify="right")
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        stats = summary.get(metric) or {}
        cells = ["—" if stats.get(c) is None else f"{stats[c]:,.1f}" for c in ("mean", "p50", "p90", "p99")]
        table.add_row(metric[:-3].upper() + " (ms)", *cells)
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    console.print(
        f"requests: {counts}; throughput {summary['throughput_rps']:.3f} req/s, "
        f"{summary['output_tokens_per_s']:.1f} output tok/s"
    )
    if summary.get("prefix_cache"):  # the server's cached_tokens (pdplan.realrun.bench_results)
        cache = summary["prefix_cache"]
        console.print(
            f"prefix cache hit rate {cache['hit_rate']['total']:.1%} "
            f"({cache['hit_tokens']['total']:,} of {cache['prompt_tokens']:,} prompt tokens)"
        )
    if summary.get("attainment") is not None:
        console.print(
            f"SLO {summary.get('slo')}: attainment {summary['attainment']}, "
            f"goodput {summary.get('goodput_rps')} req/s"
        )
    for error, count in (summary.get("errors") or {}).items():
        console.print(f"[red]failed ×{count}:[/] {error}", highlight=False)

"""The SLO search behind ``pdplan simulate --slo ... (--gpus N | --rate R) ... --out DIR``.

Finds the layout (disaggregated P:D counts, TP per role, batch limits — or colocated) with the most
goodput per GPU within a GPU budget, or the fewest GPUs that hold a target rate, and compares the
best disaggregated plan with the best colocated one. A thin layer: read the inputs, build a
``SearchSpec``, call ``pdplan.planner.search.run_search`` under a progress bar, write the run
directory (``pdplan.planner.search_files``), print the top plans and the verdict, render the
report. An SLO no layout can meet is a result: ``plan.yaml`` says ``feasible: false`` and why, and
the command exits 0.

Nothing heavy is imported at module level: ``pdplan --help`` loads this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pdplan.planner.profileset import ProfileSet
    from pdplan.planner.search import SearchResult
    from pdplan.planner.traffic import Traffic
    from pdplan.sim.requests import Requests

MODE_CHOICES = ("both", "disaggregated", "colocated")
TOP_PLANS = 5


def search(
    slo: Annotated[
        str, typer.Option("--slo", help='SLO thresholds, e.g. "ttft=1s,tpot=50ms" or ttft_p99=2s.')
    ],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write (created if missing).")],
    gpus: Annotated[
        int | None, typer.Option("--gpus", help="GPU budget: best goodput per GPU on at most N GPUs.")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Target req/s: fewest GPUs (or lowest cost) holding it.")
    ] = None,
    attainment: Annotated[
        float, typer.Option("--attainment", help="Fraction of requests that must meet the SLO.")
    ] = 0.9,
    mode: Annotated[
        str, typer.Option("--mode", help="Layouts to search: both, disaggregated or colocated.")
    ] = "both",
    profile: Annotated[
        list[Path] | None,
        typer.Option("--profile", help="Profile directory (repeatable, one per TP)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Catalog model for analytic profiles (with --hardware).")
    ] = None,
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="GPU for analytic profiles: a catalog name (e.g. h800) or a .yaml file."
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Analytic profiles' weights: bfloat16, float16, fp8 or int4 (default: the config's).",
        ),
    ] = None,
    kv_dtype: Annotated[
        str | None,
        typer.Option("--kv-dtype", help="Analytic profiles' KV cache: fp8 halves it (default: 16-bit)."),
    ] = None,
    workload: Annotated[
        Path | None, typer.Option("--workload", help="Workload YAML (synthetic or trace).")
    ] = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="Trace file (canonical CSV, Azure CSV or Mooncake JSONL).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Named workload: chat, code or summarize.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the request list (a trace's starting point). Default: the workload's, or 0.",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes (default: one per core).")
    ] = None,
    price_per_gpu_hour: Annotated[
        str | None,
        typer.Option(
            "--price-per-gpu-hour", help="Dollars per GPU-hour (one number, or NAME=PRICE per hardware type)."
        ),
    ] = None,
    kv_link: Annotated[
        str | None,
        typer.Option("--kv-link", help="KV transfer link: nvlink, infiniband, roce, pcie, tcp, loopback."),
    ] = None,
    executor: Annotated[
        str,
        typer.Option("--executor", help="Where candidates run: local (processes), ray, or ray://HOST:PORT."),
    ] = "local",
    budget_per_hour: Annotated[
        float | None,
        typer.Option("--budget-per-hour", help="Several --hardware types: dollars per hour to spend."),
    ] = None,
    traffic: Annotated[
        str | None,
        typer.Option(
            "--traffic", help="A trace as-recorded (default: whole, with its swings) or stationary."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an --out that holds another kind of pdplan run.")
    ] = False,
    cache_l2_gb: Annotated[
        str | None,
        typer.Option(
            "--cache-l2-gb", help="Prefix traffic: host DRAM sizes per instance to try, e.g. 0,64,256."
        ),
    ] = None,
    cache_l3_gb: Annotated[
        str | None,
        typer.Option("--cache-l3-gb", help="Prefix traffic: shared store sizes to try, e.g. 0,2000,8000."),
    ] = None,
) -> None:
    """Search P:D ratio, TP and batch limits for the most goodput per GPU under an SLO."""
    from pdplan.planner.cache_choice import CacheOptions, parse_sizes
    from pdplan.planner.pricing import parse_prices
    from pdplan.planner.probe import SloTargets
    from pdplan.planner.ray_executor import check_executor
    from pdplan.planner.rundir import claim_out
    from pdplan.planner.search import SearchSpec
    from pdplan.planner.slo import parse_slo
    from pdplan.planner.waves import default_workers
    from pdplan.profiles.errors import ConfigError, choices_error
    from pdplan.profiles.validate import number

    number("--attainment", attainment, low=0, low_open=True, high=1)
    if rate is not None:
        number("--rate", rate, low=0, low_open=True, high=1e6)
    prices = parse_prices(price_per_gpu_hour) if price_per_gpu_hour is not None else None
    if workers is not None and not 1 <= workers <= 1024:
        raise ConfigError(f"--workers {workers}; expected an integer in [1, 1024]")
    if seed is not None and not 0 <= seed < 2**63:
        raise ConfigError(f"--seed {seed}; expected an integer in [0, 2**63)")
    targets = SloTargets(parse_slo(slo), attainment)
    executor = check_executor(executor)
    if mode not in MODE_CHOICES:
        raise choices_error("--mode", mode, MODE_CHOICES)
    cache_options = CacheOptions(
        parse_sizes("--cache-l2-gb", cache_l2_gb), parse_sizes("--cache-l3-gb", cache_l3_gb)
    )
    if (hardware is not None and "," in hardware) or budget_per_hour is not None:
        if cache_options.tiered:
            raise ConfigError(
                "--cache-l2-gb/--cache-l3-gb apply to a single-hardware search (--gpus or --rate)"
            )
        if gpus is not None or profile:
            raise ConfigError(
                "a search over several --hardware types spends --budget-per-hour or holds --rate; "
                "leave out --gpus and --profile (it builds analytic profiles per type)"
            )
        from pdplan.planner.cli.hardware_search_cmd import hardware_search

        views, described = _traffic(workload, trace, preset, seed, traffic)
        hardware_search(
            offers_text=hardware or "",
            prices_text=price_per_gpu_hour,
            budget_per_hour=budget_per_hour,
            rate=rate,
            model=model,
            targets=targets,
            traffic=views,
            described=described,
            kv_link=kv_link or "roce",
            out=out,
            force=force,
        )
        return
    if (gpus is None) == (rate is None):
        raise ConfigError("give exactly one of --gpus N (a budget) and --rate R (a target req/s)")
    views, described = _traffic(workload, trace, preset, seed, traffic)
    profiles = _profiles(profile or [], model, hardware, dtype, kv_dtype)
    for tp, why in sorted(profiles.layouts.items()):
        log.info("tp=%d instances: %s", tp, why)
    price = prices.of(profiles.hardware) if prices is not None else None
    spec = SearchSpec(
        profiles=profiles,
        traffic=views,
        slo=targets,
        link=_link(kv_link or "nvlink"),
        max_gpus=gpus,
        target_rate_rps=rate,
        modes=("disaggregated", "colocated") if mode == "both" else (mode,),
        price_per_gpu_hour=price,
        workers=workers if workers is not None else default_workers(),
        executor=executor,
        **_grid(profiles),
    )
    if spec.requests.prefix is None and cache_options.tiered:
        raise ConfigError(
            "--cache-l2-gb/--cache-l3-gb need traffic that names its prefixes (a Mooncake trace's "
            "hash_ids, a CSV's prefix_hashes column, or a workload's prefix: key)"
        )
    claim_out(out, "search", force=force)
    result = _run(spec, cache_options)
    _finish(out, result, described)


def _profiles(
    dirs: list[Path], model: str | None, hardware: str | None, dtype: str | None, kv_dtype: str | None
) -> ProfileSet:
    from pdplan.planner.profileset import analytic_profile_set, load_profile_set
    from pdplan.profiles.errors import ConfigError

    if dirs and (model or hardware or dtype or kv_dtype):
        raise ConfigError(
            "give either --profile DIR... or --model M --hardware H [--dtype, --kv-dtype], not both"
        )
    if dirs:
        return load_profile_set(dirs)
    if not (model and hardware):
        raise ConfigError("need --profile DIR (repeatable), or --model M with --hardware H")
    return analytic_profile_set(model, hardware, dtype=dtype, kv_dtype=kv_dtype)


def _grid(profiles: ProfileSet) -> dict[str, Any]:
    """The search grid widened for multi-node instances when the profiles need them (a model that
    does not fit in 8 GPUs): their TPs, and decode batch caps that give each GPU of a 16-64-GPU
    instance a batch as large as a single-node instance's (SGLang's DeepSeek decode runs hundreds
    of sequences per GPU under DP attention); the default grid otherwise."""
    from pdplan.planner.space import SpaceGrid

    base = SpaceGrid()
    if max(profiles.tps) <= max(base.tps):
        return {}
    return {
        "grid": SpaceGrid(
            tps=tuple(sorted({*base.tps, *profiles.tps})),
            pps=tuple((w, p.pp) for w, p in sorted(profiles.profiles.items()) if p.pp > 1),
            decode_max_batch_size=(*base.decode_max_batch_size, 1024, 2048, 4096),
        )
    }


def _traffic(
    workload: Path | None,
    trace: Path | None,
    preset: str | None,
    seed: int | None,
    traffic: str | None,
) -> tuple[Traffic, dict[str, Any]]:
    """The search's traffic (``pdplan.planner.traffic``) and the workload's description for
    ``plan.yaml``."""
    from pdplan.planner import inputs
    from pdplan.planner import traffic as views
    from pdplan.planner.presets import get_preset
    from pdplan.profiles.errors import ConfigError, choices_error

    given = [
        name for name, value in (("--workload", workload), ("--trace", trace), ("--preset", preset)) if value
    ]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --workload W.yaml, --trace F, --preset chat|code|summarize "
            f"(got {', '.join(given) or 'none'})"
        )
    if traffic is not None and traffic not in views.TRACE_TRAFFIC:
        raise choices_error("--traffic", traffic, views.TRACE_TRAFFIC)
    if preset is not None:
        if traffic is not None:
            raise ConfigError("--traffic applies to a trace; a preset is synthetic (stationary) traffic")
        chosen = get_preset(preset)
        load = chosen.workload(num_requests=views.PRESET_REPLAY_REQUESTS, seed=seed or 0)
        described = {**chosen.to_dict(), "num_requests": load.num_requests, "seed": load.seed}
        return views.synthetic(load), described
    if trace is not None:
        return _trace_traffic(inputs.read_trace(trace), traffic, seed), {"trace": str(trace)}
    assert workload is not None
    data = inputs.read_yaml(workload, "--workload")
    if isinstance(data, dict) and "trace" in data:
        source = inputs.load_workload(workload)
        described = {k: v for k, v in source.description.items() if k != "rate_rps"}
        return _trace_traffic(source.requests, traffic, seed), described
    if traffic is not None:
        raise ConfigError("--traffic applies to a trace; this workload is synthetic (stationary) traffic")
    source = inputs.load_workload(workload, seed=seed)
    spec = source.workload
    if spec is None:  # closed-loop clients: their rate is an outcome, not something to search
        raise ConfigError(
            f"--workload {str(workload)!r}: the search needs open-loop arrivals (poisson, gamma, "
            "constant); a closed-loop workload is for pdplan simulate --plan and pdplan bench"
        )
    described = {"path": str(workload), "seed": spec.seed}
    if spec.num_requests is not None:
        described["num_requests"] = spec.num_requests
    else:
        described["duration_s"] = spec.duration_s
    return views.synthetic(spec), described


def _trace_traffic(trace: Requests, traffic: str | None, seed: int | None) -> Traffic:
    from pdplan.planner import traffic as views

    if traffic == views.STATIONARY:
        return views.stationary(trace, seed or 0)
    return views.as_recorded(trace)


def _link(label: str) -> Any:
    from pdplan.profiles.hardware import link_preset
    from pdplan.sim.cluster import KvLink

    preset = link_preset(label)
    return KvLink(preset.bandwidth_gbps, preset.latency_ms, link=label)


def _run(spec: Any, cache_options: Any) -> SearchResult:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pdplan.planner.search import run_search

    columns = (TextColumn("searching"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # no refresh thread: the search forks its workers, and a forked child must not inherit threads
    with Progress(*columns, console=Console(stderr=True), transient=True, auto_refresh=False) as bar:
        task = bar.add_task("search", total=None)
        last = [0.0]

        def update(done: int, total: int) -> None:
            # redraw at most 10 times a second: a 128-GPU search decides ~170k candidates, and a
            # redraw per candidate cost a quarter of its time
            now = time.monotonic()
            if done == total or now - last[0] >= 0.1:
                last[0] = now
                bar.update(task, completed=done, total=total, refresh=True)

        result = run_search(spec, progress=update)
    if result.chosen is None or spec.requests.prefix is None:
        return result
    from pdplan.planner.cache_choice import choose_cache

    with Progress(
        TextColumn("choosing the router and cache tiers"), TimeElapsedColumn(), transient=True
    ) as bar:
        bar.add_task("cache")
        return choose_cache(result, cache_options)


def _finish(out: Path, result: SearchResult, described: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    from pdplan.planner.rundir import replacing_dir
    from pdplan.planner.search_files import write_search_run
    from pdplan.planner.verdict import verdict

    with replacing_dir(out) as staging:  # the run directory is written whole or not at all
        plan = write_search_run(staging, result, workload=described)
    console = Console()
    if result.chosen is not None:
        console.print(_table(result))
    counts = (
        f"{len(result.evaluations)} candidates: {result.count('ok')} simulated to their goodput, "
        f"{result.count('pruned')} pruned, {result.count('infeasible')} infeasible; "
        f"{result.num_probes} probes in {result.wall_s:.1f} s"
    )
    console.print(counts, highlight=False)
    if plan.feasible:
        console.print("[bold]verdict:[/]", escape(verdict(result)), highlight=False, soft_wrap=True)
        if result.cache_choice is not None:
            console.print(escape(_cache_line(result)), highlight=False, soft_wrap=True)
    else:
        console.print("[bold yellow]infeasible:[/]", escape(plan.reason), highlight=False, soft_wrap=True)
    console.print(f"plan: {out / 'plan.yaml'}   report: {_report(out)}", highlight=False)


def _cache_line(result: SearchResult) -> str:
    """The router and cache tiers chosen for the plan (``pdplan.planner.cache_choice``), in words."""
    choice = result.cache_choice
    assert choice is not None
    rates = choice.stats["hit_rate"]
    tiers = ", ".join(f"{t.upper()} {rates[t]:.1%}" for t in ("l1", "l2", "l3"))
    tried = len(choice.trials)
    return (
        f"prefix cache: {choice.router} routing with {choice.cache.label} holds "
        f"{choice.chosen.goodput_rps:.3g} req/s on the replays ({choice.without_cache_rps:.3g} without "
        f"a prefix cache; {tried} router/tier options tried); hit rate {rates['total']:.1%} ({tiers})"
    )


def _report(out: Path) -> Path:
    from pdplan.reports import write_report

    return write_report(out)


def _table(result: SearchResult) -> Any:
    from rich.table import Table

    spec = result.spec
    objective = "fewest GPUs at the target rate" if spec.target_rate_rps else "goodput per GPU"
    table = Table(title=f"Top plans by {objective}")
    numeric = ("#", "GPUs", "req/s", "/GPU", "TTFT p90", "TPOT p90")
    for header in ("#", "id", "layout", "limits", *numeric[1:]):
        table.add_column(header, justify="right" if header in numeric else "left")
    if spec.price_per_gpu_hour is not None:
        table.add_column("req/$", justify="right")
    ranked = result.ranked()
    shown = ranked[:TOP_PLANS]
    for best in result.best_by_mode.values():  # the best of the other mode, if not in the top
        if best not in shown:
            shown.append(best)
    for e in shown:
        probe = e.operating_probe
        cells = [
            str(ranked.index(e) + 1),
            e.candidate.candidate_id,
            e.candidate.label,
            e.candidate.limits,
            str(e.candidate.gpus),
            f"{e.goodput_rps:.3g}",
            f"{e.goodput_rps_per_gpu:.3g}",
            f"{probe.ttft_ms[1]:.0f} ms" if probe else "-",
            f"{probe.tpot_ms[1]:.1f} ms" if probe else "-",
        ]
        if spec.price_per_gpu_hour is not None:
            cells.append(f"{(e.goodput_rps_per_gpu or 0) * 3600 / spec.price_per_gpu_hour:,.0f}")
        table.add_row(*cells, style="bold" if e is result.chosen else None)
    return table

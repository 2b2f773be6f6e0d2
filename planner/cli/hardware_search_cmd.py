"""The hardware search behind ``pdplan simulate --slo ... --hardware A,B[,...] --price-per-gpu-hour
A=PA,B=PB --budget-per-hour D --model M ... --out DIR``.

Several hardware types in ``--hardware`` (``NAME`` or ``NAME:GPUS`` for the GPUs available) make
the search compare layouts on every pairing of types (prefill on one, decode on another, or both on
one, or colocated on one) at the same budget in dollars per hour, ranked by goodput per dollar
(``pdplan.planner.hardware_search``) — or, with ``--rate R`` instead of ``--budget-per-hour``, find
each pairing's cheapest layout that holds R. Writes ``plan.yaml`` (the winner, hardware per pool, its
cost per million output tokens), ``hardware.csv`` (every layout), ``probes.csv``, the winner's
``requests.csv``/``summary.yaml``/``timeseries.csv`` at its goodput, ``run.yaml`` and the report.

Nothing heavy is imported at module level: ``pdplan --help`` loads this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pdplan.planner.hardware_search import HardwareResult, Offer
    from pdplan.planner.plan import Plan
    from pdplan.planner.pricing import Prices

HARDWARE_COLUMNS = (
    "layout_id",
    "kind",
    "layout",
    "prefill_hardware",
    "prefill_instances",
    "decode_hardware",
    "decode_instances",
    "colocated_hardware",
    "colocated_instances",
    "tp_prefill",
    "tp_decode",
    "gpus",
    "cost_per_hour",
    "status",
    "goodput_rps",
    "held_rps",
    "requests_per_dollar",
    "cost_per_million_output_tokens",
    "bound_rps",
)


def parse_offers(text: str, prices: Prices) -> tuple[Offer, ...]:
    """``h100-sxm,a100-80g:16`` with their prices → offers (``:N``: GPUs of that type available).

    Raises:
        ConfigError: an empty name, a count that is not a positive integer, a type without a price.
    """
    from pdplan.planner.hardware_search import Offer
    from pdplan.profiles.errors import ConfigError

    offers = []
    for part in text.split(","):
        name, sep, count = part.strip().partition(":")
        if not name:
            raise ConfigError(f"--hardware {text!r}: an empty name; expected NAME[:GPUS],NAME[:GPUS]")
        available = None
        if sep:
            if not count.isdigit() or int(count) < 1:
                raise ConfigError(f"--hardware {part!r}: GPUs available {count!r}; expected an integer ≥ 1")
            available = int(count)
        offers.append(Offer(name, prices.of(name), available))
    return tuple(offers)


def hardware_search(
    *,
    offers_text: str,
    prices_text: str | None,
    budget_per_hour: float | None,
    rate: float | None,
    model: str | None,
    targets: Any,
    traffic: Any,
    described: dict[str, Any],
    kv_link: str,
    out: Path,
    force: bool,
) -> None:
    """Run the hardware search and write its run directory (see the module docstring)."""
    from rich.console import Console

    from pdplan.planner.hardware_search import HardwareSpec, run_hardware_search
    from pdplan.planner.pricing import parse_prices
    from pdplan.planner.rundir import claim_out, replacing_dir
    from pdplan.profiles.errors import ConfigError
    from pdplan.profiles.hardware import link_preset
    from pdplan.sim.cluster import KvLink

    if prices_text is None:
        raise ConfigError("a search over several --hardware types needs --price-per-gpu-hour NAME=PRICE,...")
    if (budget_per_hour is None) == (rate is None):
        raise ConfigError(
            "a search over several --hardware types needs --budget-per-hour D (dollars per hour, ranked "
            "by goodput per dollar) or --rate R (the cheapest layouts that hold R)"
        )
    if not model:
        raise ConfigError("a search over several --hardware types needs --model (analytic profiles per type)")
    prices = parse_prices(prices_text)
    preset = link_preset(kv_link)
    spec = HardwareSpec(
        model=model,
        offers=parse_offers(offers_text, prices),
        traffic=traffic,
        slo=targets,
        link=KvLink(preset.bandwidth_gbps, preset.latency_ms, link=kv_link),
        budget_per_hour=budget_per_hour,
        target_rate_rps=rate,
    )
    claim_out(out, "search", force=force)
    result = run_hardware_search(spec)
    with replacing_dir(out) as staging:  # the run directory is written whole or not at all
        plan = write_hardware_run(staging, result, prices, described)
    Console().print(comparison_text(result), highlight=False, soft_wrap=True)
    from pdplan.reports import write_report

    print(f"plan: {out / 'plan.yaml'}   report: {write_report(out)}")
    if not plan.feasible:
        print(f"infeasible: {plan.reason}")


def hardware_frame(result: HardwareResult) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for r in result.results:
        lay, c = r.layout, r.layout.candidate
        hw = lay.hardware
        rows.append(
            {
                "layout_id": c.candidate_id,
                "kind": lay.kind,
                "layout": lay.label,
                "prefill_hardware": hw.get("prefill", ""),
                "prefill_instances": c.prefill.instances if c.prefill else 0,
                "decode_hardware": hw.get("decode", ""),
                "decode_instances": c.decode.instances if c.decode else 0,
                "colocated_hardware": hw.get("colocated", ""),
                "colocated_instances": c.colocated.instances if c.colocated else 0,
                "tp_prefill": c.prefill.tp if c.prefill else (c.colocated.tp if c.colocated else 0),
                "tp_decode": c.decode.tp if c.decode else 0,
                "gpus": c.gpus,
                "cost_per_hour": round(lay.cost_per_hour, 6),
                "status": r.status,
                "goodput_rps": r.goodput_rps,
                "held_rps": r.held_rps,
                "requests_per_dollar": r.requests_per_dollar,
                "cost_per_million_output_tokens": r.cost_per_million_output_tokens,
                "bound_rps": r.bound_rps,
            }
        )
    return pd.DataFrame(rows, columns=list(HARDWARE_COLUMNS))


def comparison_text(result: HardwareResult) -> str:
    """The verdict: the winner, the best mixed layout and the best single-type ones, at equal cost."""
    chosen = result.chosen
    if chosen is None:
        return "no layout meets the SLO on this budget"
    lines = [f"best goodput per dollar: {_describe(chosen)}"]
    mixed = result.best_mixed()
    singles = result.best_single()
    if mixed is not None:
        lines.append(f"best mixed: {_describe(mixed)}")
    for name, best in singles.items():
        lines.append(f"best on {name} only: {_describe(best)}")
        if mixed is not None and mixed.requests_per_dollar and best.requests_per_dollar:
            ratio = mixed.requests_per_dollar / best.requests_per_dollar
            lines.append(f"  mixed / {name}-only goodput per dollar = {ratio:.3f}")
    return "\n".join(lines)


def _describe(r: Any) -> str:
    if r.goodput_rps is None:  # rate mode: it holds the target rate
        return f"{r.layout.label} at ${r.layout.cost_per_hour:,.2f}/h holds {r.held_rps:.3g} req/s"
    return (
        f"{r.layout.label} at ${r.layout.cost_per_hour:,.2f}/h: {r.goodput_rps:.3g} req/s, "
        f"{r.requests_per_dollar:,.0f} requests per dollar"
    )


def write_hardware_run(out: Path, result: HardwareResult, prices: Prices, described: dict[str, Any]) -> Plan:
    """Every file of the hardware search's run directory, into ``out`` (which must exist)."""
    import pandas as pd

    from pdplan.planner.plan import Plan, save_plan
    from pdplan.planner.pricing import plan_cost
    from pdplan.planner.probe import judge, simulate_requests
    from pdplan.planner.rundir import write_csv, write_run_yaml, write_yaml
    from pdplan.sim.timeseries import timeseries

    spec = result.spec
    write_csv(out / "hardware.csv", hardware_frame(result))
    probes = [p.row(r.layout.candidate.candidate_id) for r in result.results for p in r.probes]
    write_csv(out / "probes.csv", pd.DataFrame(probes))
    chosen = result.chosen
    common: dict[str, Any] = {
        "model": spec.model,
        "slo": spec.slo.slo,
        "attainment": spec.slo.attainment,
        "workload": described,
    }
    if chosen is None:
        plan = Plan(
            mode="disaggregated",
            hardware="+".join(o.name for o in spec.offers),
            feasible=False,
            reason=(
                f"no layout meets the SLO within ${spec.budget_per_hour:g} per hour on any pairing"
                if spec.target_rate_rps is None
                else f"no layout tried holds {spec.target_rate_rps:g} req/s on any pairing"
            ),
            **common,
        )
        save_plan(plan, out / "plan.yaml")
        write_run_yaml(out, "search")
        return plan
    target = spec.target_rate_rps
    from pdplan.planner.hardware_search import _Costs

    layout, cand = chosen.layout, chosen.layout.candidate
    rate = target if target is not None else chosen.goodput_rps
    assert rate is not None, "a chosen layout has a goodput or holds the target"
    goodput = None if target is not None else round(rate, 6)
    operating = simulate_requests(_Costs(spec).cluster(layout, spec.link), spec.traffic.replays(rate)[0])
    probe, summary = judge(operating, rate, spec.slo, spec.traffic.warmup_fraction, spec.traffic.stability)
    mixed = layout.kind == "mixed"
    names = list(dict.fromkeys(layout.hardware.values()))
    plan = Plan(
        mode=cand.mode,
        prefill=cand.prefill,
        decode=cand.decode,
        colocated=cand.colocated,
        kv_transfer=spec.link if cand.mode == "disaggregated" else None,
        hardware="+".join(names),
        pool_hardware=dict(layout.hardware) if mixed else {},
        predicted={
            "goodput_rps": goodput,
            "goodput_rps_per_gpu": None if goodput is None else round(rate / cand.gpus, 6),
            "rate_rps": round(rate, 6),
            "ttft_p50_ms": probe.ttft_ms[0],
            "ttft_p90_ms": probe.ttft_ms[1],
            "ttft_p99_ms": probe.ttft_ms[2],
            "tpot_p50_ms": probe.tpot_ms[0],
            "tpot_p90_ms": probe.tpot_ms[1],
            "tpot_p99_ms": probe.tpot_ms[2],
            "attainment": probe.attainment,
        },
        notes={"traffic": spec.traffic.describe()},
        **common,
    )
    cost = plan_cost(plan, prices, summary.get("output_tokens_per_s"))
    cost["rate_rps"] = round(rate, 6)
    notes: dict[str, Any] = {**plan.notes, "cost": cost}
    if target is not None:
        notes["target"] = {"rate_rps": target, "held": bool(probe.meets_slo), "gpus": cand.gpus}
    else:
        cost["budget_per_hour"] = spec.budget_per_hour
    plan = Plan(**{**_fields(plan), "notes": notes})
    save_plan(plan, out / "plan.yaml")
    write_csv(out / "requests.csv", operating.records.to_frame())
    write_yaml(out / "summary.yaml", dict(summary))
    write_csv(out / "timeseries.csv", timeseries(operating))
    write_run_yaml(out, "search")
    return plan


def _fields(plan: Plan) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(plan, f.name) for f in fields(plan)}

"""The report's hardware comparison and cluster-policy figure (issue 17)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from pdplan.reports.render import write_combined_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))
from simcases import disagg, requests

from pdplan.planner.fleet import outcome, per_minute, write_fleet_run
from pdplan.planner.probe import SloTargets
from pdplan.planner.slo import parse_slo
from pdplan.sim import DecodePool, PrefillPool
from pdplan.sim.autoscale import Autoscale, Static, Thresholds, simulate_elastic


def test_policies_over_a_day_in_one_figure(tmp_path):
    cluster = disagg(prefill=PrefillPool(1, max_batch_tokens=1024, max_batch_size=4), decode=DecodePool(1))
    reqs = requests([(float(t), 1024, 2) for t in range(0, 600, 2)])
    slo = SloTargets(parse_slo("ttft=1.5s"), 0.9)
    policy = Autoscale(
        {"prefill": 3, "decode": 1}, Thresholds(1000, 10, 0.9, 0.0), provision_s=30.0, cooldown_s=60.0
    )
    results = [simulate_elastic(reqs, cluster, Static()), simulate_elastic(reqs, cluster, policy)]
    minutes = pd.concat([per_minute(r, slo, 2.0) for r in results], ignore_index=True)
    outcomes = [outcome(r, slo, 2.0) for r in results]
    run = write_fleet_run(tmp_path / "day", minutes, outcomes, {"attainment": 0.9})
    assert (run / "run.yaml").is_file()
    html = write_combined_report([run], tmp_path / "report.html", strict=True).read_text()
    assert 'data-figure="fleet-day"' in html or "fleet-day" in html
    assert "Policies compared" in html and "autoscale" in html and "GPU-hours" in html


def test_hardware_comparison_table(tmp_path):
    run = tmp_path / "hw"
    run.mkdir()
    rows = [
        ("mixed", "1P h100-sxm (TP1) : 4D a100-80g (TP1)", "h100-sxm", "a100-80g", "", 7.7, "ok", 20.0),
        ("single", "1P h100-sxm (TP1) : 2D h100-sxm (TP1)", "h100-sxm", "h100-sxm", "", 7.5, "ok", 18.0),
        ("single", "2P a100-80g (TP1) : 4D a100-80g (TP1)", "a100-80g", "a100-80g", "", 7.8, "ok", 12.0),
        ("colocated", "colocated 3× h100-sxm (TP1)", "", "", "h100-sxm", 7.5, "pruned", None),
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "kind",
            "layout",
            "prefill_hardware",
            "decode_hardware",
            "colocated_hardware",
            "cost_per_hour",
            "status",
            "goodput_rps",
        ],
    )
    frame["requests_per_dollar"] = frame.goodput_rps * 3600 / frame.cost_per_hour
    frame.to_csv(run / "hardware.csv", index=False)
    (run / "run.yaml").write_text("schema_version: 1\nkind: search\n")
    html = write_combined_report([run], tmp_path / "report.html", strict=True).read_text()
    assert "best mixed (prefill and decode on two types)" in html
    assert "best disaggregated on a100-80g only" in html and "best disaggregated on h100-sxm only" in html
    # the ratio column: the best single h100 plan against the mixed one (the best overall)
    ratio = (18.0 / 7.5) / (20.0 / 7.7)
    assert f"{ratio:.3f}" in html

"""The report names a pipelined plan's stages (plan.yaml's ``pp``) and counts their GPUs."""

from __future__ import annotations

from pdplan.reports.plans import plan_view


def test_a_pipelined_plan_reads_tp_times_pp() -> None:
    plan = {
        "mode": "disaggregated",
        "prefill": {"instances": 1, "tp": 8, "pp": 2},
        "decode": {"instances": 2, "tp": 8, "pp": 2},
        "predicted": {},
    }
    view = plan_view(plan)
    assert view.tp == "P TP8 × PP2 / D TP8 × PP2"
    assert view.phrase == "1 prefill instance (TP 8 × PP2) + 2 decode instances (TP 8 × PP2)"
    assert view.gpus == 48  # no gpus key: instances × tp × pp
    flat = plan_view({"mode": "colocated", "colocated": {"instances": 2, "tp": 4}, "predicted": {}})
    assert (flat.tp, flat.gpus) == ("TP4", 8)

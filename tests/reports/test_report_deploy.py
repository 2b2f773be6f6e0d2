"""The deploy report shows what runs: processes, roles, ports, the endpoint and the ready time."""

from __future__ import annotations

from pathlib import Path

from rundir_factory import write_deploy_run

from pdplan.reports.deployment import HEADER
from pdplan.reports.render import render_html
from pdplan.reports.rundir import load_run
from pdplan.reports.summary import build_summary


def test_deploy_summary_lists_processes_endpoint_and_ready_time(tmp_path: Path) -> None:
    folder = tmp_path / "dep"
    write_deploy_run(folder)
    run = load_run(folder)
    assert run.kind == "deploy" and run.deploy is not None
    items = build_summary([run]).items
    texts = [i.text for i in items if i.kind == "paragraph"]
    sentence = next(t for t in texts if t.startswith("Deployment"))
    assert sentence.startswith(
        "Deployment ready (disaggregated): 3 processes (1 router, 1 prefill, 1 decode)"
    )
    assert "endpoint http://127.0.0.1:18731" in sentence and "ready in 4.2 s" in sentence
    assert f"pdplan deploy --stop {folder}" in sentence
    table = next(i for i in items if i.kind == "table" and i.header == HEADER)
    assert [row[:6] for row in table.rows] == [
        ("prefill-0", "prefill", "21586", "http://127.0.0.1:18732", "18732", "18733"),
        ("decode-0", "decode", "21587", "http://127.0.0.1:18734", "18734", "—"),
        ("router", "router", "21588", "http://127.0.0.1:18731", "18731", "—"),
    ]
    assert [row[8:10] for row in table.rows] == [("0", "running"), ("1", "running"), ("—", "running")]
    html = render_html([run], strict=True)
    assert "<title>pdplan deploy report: tiny-llama on cpu</title>" in html
    assert "logs/decode-0.log" in html


def test_a_deploy_that_never_became_ready_says_so(tmp_path: Path) -> None:
    write_deploy_run(tmp_path / "dep", ready_s=None, status="failed")
    text = next(i.text for i in build_summary([load_run(tmp_path / "dep")]).items if i.kind == "paragraph"
                and i.text.startswith("Deployment"))  # fmt: skip
    assert text.startswith("Deployment failed") and "not ready when this report was written" in text


def test_unreadable_deploy_json_is_named(tmp_path: Path) -> None:
    write_deploy_run(tmp_path / "dep")
    (tmp_path / "dep" / "deploy.json").write_text("{not json")
    run = load_run(tmp_path / "dep")
    assert run.deploy is None and run.problems["deploy.json"].startswith("not valid JSON")

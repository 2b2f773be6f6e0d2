"""Reading run directories: every file optional, unreadable files explained, never an exception."""

from __future__ import annotations

from pathlib import Path

from pdplan.reports.rundir import load_run
from pdplan.reports.slo import SloLine, parse_slo


def test_search_run_reads_every_file(search_run: Path) -> None:
    run = load_run(search_run)
    assert run.problems == {}
    assert run.kind == "search"
    for name in ("plan", "summary", "requests", "timeseries", "candidates", "probes"):
        assert getattr(run, name) is not None, name
    assert run.probes is not None and run.probes["meets_slo"].dtype == bool
    assert run.requests is not None and run.requests["arrival_s"].is_monotonic_increasing
    assert run.profile is None and run.predicted is None


def test_bench_run_reads_its_prediction(bench_run: Path) -> None:
    run = load_run(bench_run)
    assert run.kind == "bench" and run.predicted is not None
    assert run.predicted.requests is not None and run.predicted.label == "predicted"


def test_profile_run_loads_the_fitted_profile(profile_run) -> None:
    run = load_run(profile_run[0])
    assert run.kind == "profile" and run.profile is not None
    assert run.profile.latency.prefill_loo is not None


def test_empty_directory_reads_as_nothing(tmp_path: Path) -> None:
    run = load_run(tmp_path)
    assert run.kind == "unknown" and run.problems == {}
    assert run.why_absent("plan.yaml") == f"{tmp_path.name} has no plan.yaml"


def test_broken_files_are_explained_not_raised(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text("mode: [unclosed\n")
    (tmp_path / "summary.yaml").write_text("- a list\n")
    (tmp_path / "requests.csv").write_text("req_id,arrival_s\nr0,0.0\n")
    (tmp_path / "probes.csv").write_text("")
    (tmp_path / "profile.yaml").write_text("schema_version: 1\nmethod: guessed\n")
    run = load_run(tmp_path)
    assert run.plan is None and "not valid YAML" in run.problems["plan.yaml"]
    assert "expected a mapping" in run.problems["summary.yaml"]
    assert (
        "missing columns" in run.problems["requests.csv"] and "first_token_s" in run.problems["requests.csv"]
    )
    assert "not a readable CSV" in run.problems["probes.csv"]
    assert "profile.yaml" in run.problems
    assert run.why_absent("requests.csv").startswith(
        f"{tmp_path.name}: requests.csv could not be read (missing"
    )


def test_meets_slo_accepts_csv_spellings(tmp_path: Path) -> None:
    header = (
        "candidate_id,rate_rps,attainment,ttft_p50_ms,ttft_p90_ms,ttft_p99_ms,tpot_p50_ms,"
        "tpot_p90_ms,tpot_p99_ms,output_tokens_per_s,meets_slo\n"
    )
    rows = "".join(f"c0,{i},0.9,1,1,1,1,1,1,1,{v}\n" for i, v in enumerate(["True", "false", "1", "0", ""]))
    (tmp_path / "probes.csv").write_text(header + rows)
    run = load_run(tmp_path)
    assert run.probes is not None and run.probes["meets_slo"].tolist() == [True, False, True, False, False]


def test_slo_forms() -> None:
    assert parse_slo("ttft=1s,tpot=50ms") == ([SloLine("ttft", 1000.0), SloLine("tpot", 50.0)], [])
    assert parse_slo({"ttft_ms": 800, "tpot_s": 0.05, "attainment": 0.9})[0] == [
        SloLine("ttft", 800.0),
        SloLine("tpot", 50.0),
    ]
    assert parse_slo({"ttft_p99": "2s"})[0] == [SloLine("ttft", 2000.0, 99.0)]
    assert parse_slo("ttft_p99_ms=1500")[0] == [SloLine("ttft", 1500.0, 99.0)]
    lines, notes = parse_slo({"ttft": 1.0})
    assert lines == [] and "no readable unit" in notes[0]
    assert parse_slo({"ttft": 1000, "tpot": "0.1s"}, default_unit="ms")[0] == [
        SloLine("ttft", 1000.0),
        SloLine("tpot", 100.0),
    ]
    assert parse_slo(None) == ([], [])
    assert SloLine("ttft", 2000.0, 99.0).label == "SLO TTFT p99 ≤ 2 s"

"""Bad input across every command and file kind: exit 2, one line on stderr, no traceback, nothing touched.

Each case writes its files into a fresh folder (beside a valid plan, workload, profile and an
earlier simulate run), runs ``pdplan`` in-process through the console entry point, and checks that
the exit code is 2, that stderr is exactly one line naming the problem, and that no file in the
folder was created, changed or removed. A few cases run the real ``pdplan`` executable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import plan_cases as pc
import pytest
import yaml

from pdplan.planner.cli.app import main

RUN = "earlier-run"  # a finished simulate run in every case's folder: it must survive untouched
FIFO = object()  # a file entry that is made as a named pipe
DIR = object()  # a file entry that is made as an empty directory

CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
}
AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:50.99,396,109\n"
)
CANONICAL = "arrival_s,prompt_tokens,output_tokens\n"
PREFILL_HEAD = "num_seqs,seq_len,latency_ms\n"
DECODE_HEAD = "batch_size,context_len,latency_ms\n"
W = "bad.yaml"  # the bad workload of a case

# Command lines; {t} is the case's folder, which holds plan.yaml, workload.yaml, profile-tp1/ and RUN.
SIM = ["simulate", "--plan", "{t}/plan.yaml", "--profile", "{t}/profile-tp1", "--out", "{t}/new-run"]
SIM_W = [*SIM, "--workload", "{t}/workload.yaml"]
SIM_BAD_W = [*SIM, "--workload", "{t}/bad.yaml"]
SIM_TRACE = [*SIM, "--trace", "{t}/trace.csv"]
SEARCH = ["simulate", "--slo", "ttft=1s,tpot=50ms", "--model", "llama-3.1-8b", "--hardware", "h100-sxm",
          "--preset", "chat", "--out", "{t}/new-search"]  # fmt: skip
ANALYTIC = ["profile", "--analytic", "--hardware", "h100-sxm", "--out", "{t}/new-profile", "--model"]
PROFILE_BAD = ["simulate", "--plan", "{t}/plan.yaml", "--profile", "{t}/pbad", "--workload",
               "{t}/workload.yaml", "--out", "{t}/new-run"]  # fmt: skip
DEPLOY = ["deploy", "{t}/plan.yaml", "--dry-run"]


def config(**change) -> str:
    return json.dumps({**CONFIG, **change})


def workload(**change) -> str:
    return yaml.safe_dump({**pc.WORKLOAD, **change})


def plan(**change) -> str:
    return yaml.safe_dump({**pc.DISAGG_PLAN, **change})


def profile_meta(**change) -> dict[str, object]:
    """Files of a copy of profile-tp1 (``pbad/``) whose profile.yaml has ``change`` (made in the test)."""
    return {"pbad/profile.yaml": ("meta", change)}


def deep(kind: str) -> str:
    depth = 5000 if kind == "json" else 1000  # past MAX_DEPTH and past Python's recursion limit
    return "[" * depth + "]" * depth if kind == "json" else "a: " + "[" * depth + "]" * depth


# (id, files to write into the folder, command line, what the one error line must mention)
CASES: list[tuple[str, dict[str, object], list[str], str]] = [
    # --- usage errors (typer) ---
    ("gpus-not-int", {}, [*SEARCH, "--gpus", "abc"], "--gpus"),
    ("unknown-option", {}, ["simulate", "--foo"], "--foo"),
    ("report-no-dir", {}, ["report"], "Missing argument"),
    ("unknown-command", {}, ["nosuchcmd"], "nosuchcmd"),
    ("rate-not-number", {}, [*SIM_W, "--rate", "fast"], "--rate"),
    ("tp-not-int", {}, [*ANALYTIC, "llama-3.1-8b", "--tp", "two"], "--tp"),
    # --- model config.json ---
    ("config-binary", {"c.json": b"\x00\x01\xff\xfe"}, [*ANALYTIC, "{t}/c.json"], "binary"),
    ("config-latin1", {"c.json": '{"a": "caf\xe9"}'.encode("latin-1")}, [*ANALYTIC, "{t}/c.json"], "UTF-8"),
    ("config-not-json", {"c.json": "{hidden_size: 1"}, [*ANALYTIC, "{t}/c.json"], "line 1, column 2"),
    (
        "config-heads-string",
        {"c.json": config(num_attention_heads="many")},
        [*ANALYTIC, "{t}/c.json"],
        "num_attention_heads",
    ),
    (
        "config-1e400",
        {"c.json": config()[:-1] + ', "rope_theta": 1e400}'},
        [*ANALYTIC, "{t}/c.json"],
        "rope_theta",
    ),
    ("config-nan", {"c.json": '{"hidden_size": NaN}'}, [*ANALYTIC, "{t}/c.json"], "NaN"),
    ("config-deep", {"c.json": deep("json")}, [*ANALYTIC, "{t}/c.json"], "nested"),
    (
        "config-rope-string",
        {"c.json": config(rope_scaling="llama3")},
        [*ANALYTIC, "{t}/c.json"],
        "rope_scaling",
    ),
    (
        "config-zero-heads",
        {"c.json": config(num_attention_heads=0)},
        [*ANALYTIC, "{t}/c.json"],
        "num_attention_heads",
    ),
    (
        "config-tiny-hidden",
        {"c.json": config(hidden_size=2, num_key_value_heads=4)},
        [*ANALYTIC, "{t}/c.json"],
        "head_dim",
    ),
    (
        "config-huge-layers",
        {"c.json": config(num_hidden_layers=10**9)},
        [*ANALYTIC, "{t}/c.json"],
        "num_hidden_layers",
    ),
    (
        "config-bias-string",
        {"c.json": config(attention_bias="yes")},
        [*ANALYTIC, "{t}/c.json"],
        "attention_bias",
    ),
    ("config-array", {"c.json": "[1, 2]"}, [*ANALYTIC, "{t}/c.json"], "JSON object"),
    ("config-missing-field", {"c.json": '{"model_type": "llama"}'}, [*ANALYTIC, "{t}/c.json"], "lacks"),
    ("config-fifo", {"c.json": FIFO}, [*ANALYTIC, "{t}/c.json"], "regular file"),
    ("model-unknown", {}, [*ANALYTIC, "no-such-model"], "no-such-model"),
    # --- profile.yaml and its tables ---
    ("profile-tp-string", profile_meta(tp="one"), PROFILE_BAD, "tp"),
    ("profile-tp-zero", profile_meta(tp=0), PROFILE_BAD, "tp"),
    ("profile-dtype", profile_meta(dtype="float8"), PROFILE_BAD, "dtype"),
    (
        "profile-memory-string",
        profile_meta(hardware={"name": "x", "memory_bytes": "lots"}),
        PROFILE_BAD,
        "memory_bytes",
    ),
    ("profile-unknown-key", profile_meta(colour="red"), PROFILE_BAD, "colour"),
    (
        "profile-latency-string",
        {**profile_meta(), "pbad/decode.csv": DECODE_HEAD + "1,9,x\n"},
        PROFILE_BAD,
        "latency_ms",
    ),
    (
        "profile-latency-negative",
        {**profile_meta(), "pbad/prefill.csv": PREFILL_HEAD + "1,9,-3\n"},
        PROFILE_BAD,
        "latency_ms",
    ),
    ("profile-empty-table", {**profile_meta(), "pbad/prefill.csv": PREFILL_HEAD}, PROFILE_BAD, "no rows"),
    ("profile-yaml-syntax", {**profile_meta(), "pbad/profile.yaml": "tp: [1"}, PROFILE_BAD, "line 1"),
    ("profile-missing", {}, [*SIM_W[:4], "{t}/nowhere", *SIM_W[5:]], "profile"),
    # --- workload YAML ---
    ("workload-yaml-syntax", {"bad.yaml": "arrival: {process: poisson\n  rate: [\n"}, SIM_BAD_W, "line"),
    (
        "workload-python-tag",
        {"bad.yaml": "seed: !!python/object/apply:os.system ['true']\n"},
        SIM_BAD_W,
        "line 1, column 7",
    ),
    ("workload-deep", {"bad.yaml": deep("yaml")}, SIM_BAD_W, "nested"),
    (
        "workload-gamma-cv-tiny",
        {W: workload(arrival={"process": "gamma", "rate_rps": 1, "cv": 1e-200})},
        SIM_BAD_W,
        "cv",
    ),
    (
        "workload-uniform-huge",
        {W: workload(output_tokens={"dist": "uniform", "min": 1, "max": 1e30})},
        SIM_BAD_W,
        "max",
    ),
    ("workload-num-requests-huge", {"bad.yaml": workload(num_requests=10**9)}, SIM_BAD_W, "num_requests"),
    (
        "workload-duration-huge",
        {"bad.yaml": workload(num_requests=None, duration_s=1e12)},
        SIM_BAD_W,
        "duration_s",
    ),
    (
        "workload-rate-zero",
        {"bad.yaml": workload(arrival={"process": "poisson", "rate_rps": 0})},
        SIM_BAD_W,
        "rate_rps",
    ),
    (
        "workload-rate-inf",
        {"bad.yaml": workload(arrival={"process": "poisson", "rate_rps": float("inf")})},
        SIM_BAD_W,
        "rate_rps",
    ),
    ("workload-unknown-key", {"bad.yaml": workload(colour=1)}, SIM_BAD_W, "colour"),
    ("workload-not-mapping", {"bad.yaml": "- 1\n- 2\n"}, SIM_BAD_W, "mapping"),
    ("workload-seed-negative", {"bad.yaml": workload(seed=-1)}, SIM_BAD_W, "seed"),
    (
        "workload-lognormal-cv",
        {W: workload(prompt_tokens={"dist": "lognormal", "mean": 9, "cv": 1e9})},
        SIM_BAD_W,
        "cv",
    ),
    (
        "workload-empirical-huge",
        {W: workload(prompt_tokens={"dist": "empirical", "values": [1, 10**12]})},
        SIM_BAD_W,
        "empirical",
    ),
    ("workload-missing", {}, [*SIM, "--workload", "{t}/nowhere.yaml"], "no such file"),
    ("workload-is-dir", {"wdir": DIR}, [*SIM, "--workload", "{t}/wdir"], "directory"),
    (
        "workload-trace-scale",
        {"t.csv": CANONICAL + "0,5,5\n", W: "trace: {path: t.csv, time_scale: 0}"},
        SIM_BAD_W,
        "time_scale",
    ),
    # --- traces ---
    ("trace-header-only", {"trace.csv": CANONICAL}, SIM_TRACE, "no requests"),
    ("trace-empty-file", {"trace.csv": ""}, SIM_TRACE, "trace"),
    ("azure-empty-timestamp", {"trace.csv": AZURE + ",10,10\n"}, SIM_TRACE, "TIMESTAMP row 2"),
    ("azure-year-1600", {"trace.csv": AZURE + "1600-01-01 00:00:00,10,10\n"}, SIM_TRACE, "days"),
    ("azure-year-3000", {"trace.csv": AZURE + "3000-01-01 00:00:00,10,10\n"}, SIM_TRACE, "days"),
    ("azure-not-a-date", {"trace.csv": AZURE + "yesterday,10,10\n"}, SIM_TRACE, "TIMESTAMP row 2"),
    ("azure-header-only", {"trace.csv": AZURE.splitlines()[0] + "\n"}, SIM_TRACE, "no requests"),
    ("trace-negative-tokens", {"trace.csv": CANONICAL + "0,-5,5\n"}, SIM_TRACE, "prompt_tokens"),
    ("trace-string-arrival", {"trace.csv": CANONICAL + "soon,5,5\n"}, SIM_TRACE, "arrival_s"),
    ("trace-missing-columns", {"trace.csv": "a,b\n1,2\n"}, SIM_TRACE, "missing columns"),
    ("trace-binary", {"trace.csv": b"\xff\xfe\x00\x01" * 10}, SIM_TRACE, "trace"),
    ("trace-format-unknown", {"trace.csv": CANONICAL}, [*SIM_TRACE, "--trace-format", "parquet"], "parquet"),
    ("mooncake-not-json", {"trace.csv": "{nope\n"}, SIM_TRACE, "JSON"),
    ("mooncake-header-only", {"trace.csv": "\n"}, [*SIM_TRACE, "--trace-format", "mooncake"], "no requests"),
    # --- plan.yaml ---
    ("plan-yaml-syntax", {"plan.yaml": "mode: [disaggregated\n"}, SIM_W, "line"),
    ("plan-unknown-key", {"plan.yaml": plan(colour="red")}, SIM_W, "colour"),
    ("plan-instances-string", {"plan.yaml": plan(prefill={"instances": "two", "tp": 1})}, SIM_W, "instances"),
    ("plan-instances-huge", {"plan.yaml": plan(decode={"instances": 10**9, "tp": 1})}, SIM_W, "instances"),
    (
        "plan-bandwidth-inf",
        {"plan.yaml": plan(kv_transfer={"link": "x", "bandwidth_gbps": float("inf"), "latency_ms": 1})},
        SIM_W,
        "bandwidth_gbps",
    ),
    ("plan-mode", {"plan.yaml": plan(mode="sideways")}, SIM_W, "mode"),
    ("plan-attainment", {"plan.yaml": plan(attainment=7)}, SIM_W, "attainment"),
    # --- SLO strings and numeric options ---
    ("slo-1e400", {}, [*SEARCH[:2], "ttft=1e400s", *SEARCH[3:], "--gpus", "2"], "ttft"),
    ("slo-no-unit", {}, [*SIM_W, "--slo", "ttft=5"], "unit"),
    ("slo-unknown-metric", {}, [*SIM_W, "--slo", "latency=5s"], "latency"),
    ("slo-empty", {}, [*SIM_W, "--slo", ""], "slo"),
    ("sample-interval-tiny", {}, [*SIM_W, "--sample-interval", "1e-9"], "samples"),
    ("sample-interval-negative", {}, [*SIM_W, "--sample-interval", "-1"], "--sample-interval"),
    ("rate-negative", {}, [*SIM_W, "--rate", "-2"], "--rate"),
    ("rate-inf", {}, [*SIM_W, "--rate", "inf"], "--rate"),
    ("warmup-one", {}, [*SIM_W, "--warmup", "1"], "--warmup"),
    ("attainment-zero", {}, [*SIM_W, "--attainment", "0"], "--attainment"),
    ("seed-negative", {}, [*SIM_W, "--seed", "-1"], "seed"),
    ("gpus-million", {}, [*SEARCH, "--gpus", "1000000"], "candidate layouts"),
    ("gpus-zero", {}, [*SEARCH, "--gpus", "0"], "--gpus"),
    ("gpus-beyond-int64", {}, [*SEARCH, "--gpus", "99999999999999999999"], "candidate layouts"),
    ("workers-zero", {}, [*SEARCH, "--gpus", "2", "--workers", "0"], "--workers"),
    ("price-negative", {}, [*SEARCH, "--gpus", "2", "--price-per-gpu-hour", "-1"], "price"),
    ("mode-unknown", {}, [*SEARCH, "--gpus", "2", "--mode", "both-ways"], "--mode"),
    ("preset-unknown", {}, [*SEARCH, "--gpus", "2", "--preset", "poetry"], "poetry"),
    ("kv-link-unknown", {}, [*SEARCH, "--gpus", "2", "--kv-link", "pigeon"], "pigeon"),
    ("tp-zero", {}, [*ANALYTIC, "llama-3.1-8b", "--tp", "0"], "--tp"),
    ("tp-not-dividing", {}, [*ANALYTIC, "llama-3.1-8b", "--tp", "3"], "--tp"),
    ("hardware-unknown", {}, [*ANALYTIC, "llama-3.1-8b", "--hardware", "tpu9"], "tpu9"),
    ("dtype-unknown", {}, [*ANALYTIC, "llama-3.1-8b", "--dtype", "float7"], "float7"),
    (
        "device-unknown",
        {},
        ["profile", "--model", "tiny-llama", "--device", "gpu0", "--out", "{t}/p"],
        "--device",
    ),
    # --- --out ownership ---
    ("out-empty-string", {}, [*SIM_W, "--out", ""], "--out"),
    ("out-cwd", {}, [*SIM_W, "--out", "."], "--out"),
    ("out-is-file", {}, [*SIM_W, "--out", "{t}/plan.yaml"], "not a directory"),
    ("out-under-a-file", {}, [*SIM_W, "--out", "{t}/plan.yaml/run"], "--out"),
    ("out-foreign-dir", {"mine/a.txt": "keep"}, [*SIM_W, "--out", "{t}/mine"], "not empty"),
    ("simulate-over-profile", {}, [*SIM_W, "--out", "{t}/profile-tp1"], "--force"),
    (
        "simulate-over-search-run",
        {"old/run.yaml": "kind: search\n", "old/candidates.csv": "candidate_id\n"},
        [*SIM_W, "--out", "{t}/old"],
        "search run",
    ),
    ("profile-over-simulate-run", {}, [*ANALYTIC, "llama-3.1-8b", "--out", "{t}/" + RUN], "--force"),
    ("search-over-simulate-run", {}, [*SEARCH, "--gpus", "2", "--out", "{t}/" + RUN], "--force"),
    ("profile-out-unwritable", {}, [*ANALYTIC, "llama-3.1-8b", "--out", "/proc/pdplan-x/p"], "writable"),
    ("simulate-out-unwritable", {}, [*SIM_W, "--out", "/proc/pdplan-x/run"], "writable"),
    ("report-out-devnull", {}, ["report", "{t}/" + RUN, "--out", "/dev/null"], "regular file"),
    ("report-out-fifo", {"r.html": FIFO}, ["report", "{t}/" + RUN, "--out", "{t}/r.html"], "regular file"),
    ("report-out-dir", {}, ["report", "{t}/" + RUN, "--out", "{t}"], "directory"),
    ("report-out-empty", {}, ["report", "{t}/" + RUN, "--out", ""], "directory"),
    ("report-out-not-html", {}, ["report", "{t}/" + RUN, "--out", "{t}/plan.yaml"], "HTML"),
    ("report-out-unwritable", {}, ["report", "{t}/" + RUN, "--out", "/proc/pdplan-x/r.html"], "writable"),
    ("report-missing-dir", {}, ["report", "{t}/nowhere"], "nowhere"),
    ("report-foreign-dir", {"f/x.txt": "x"}, ["report", "{t}/f", "--out", "{t}/r.html"], "run files"),
    ("report-several-no-out", {}, ["report", "{t}/" + RUN, "{t}/profile-tp1"], "--out"),
    # --- deploy ---
    ("deploy-plan-missing", {}, ["deploy", "{t}/nowhere.yaml", "--dry-run"], "nowhere"),
    ("deploy-plan-python-tag", {"plan.yaml": "mode: !!python/name:os.system\n"}, DEPLOY, "line 1"),
    ("deploy-port-zero", {}, [*DEPLOY, "--port", "0"], "--port"),
    ("deploy-max-queue-negative", {}, [*DEPLOY, "--max-queue=-1"], "--max-queue"),
    ("deploy-kv-timeout-inf", {}, [*DEPLOY, "--kv-timeout-s", "inf"], "--kv-timeout-s"),
    ("deploy-out-over-run", {}, ["deploy", "{t}/plan.yaml", "--out", "{t}/" + RUN], "--force"),
    ("deploy-stop-nowhere", {}, ["deploy", "--stop", "{t}/nowhere"], "deploy.json"),
]


def _write_files(root: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(path)
        elif content is DIR:
            path.mkdir()
        elif isinstance(content, tuple):  # ("meta", change): a copy of profile-tp1 with a changed yaml
            for table in ("prefill.csv", "decode.csv"):
                if not (path.parent / table).exists():
                    (path.parent / table).write_text((root / "profile-tp1" / table).read_text())
            meta = yaml.safe_load((root / "profile-tp1" / "profile.yaml").read_text())
            path.write_text(yaml.safe_dump({**meta, **content[1]}))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(str(content))


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A real simulate run directory, made once and copied into every case's folder."""
    root = tmp_path_factory.mktemp("earlier")
    _base(root)
    args = [a.replace("{t}", str(root)) for a in [*SIM_W, "--out", "{t}/" + RUN]]  # the last --out wins
    assert _run_main(args)[0] == 0, args
    return root / RUN


def _base(tmp: Path) -> None:
    pc.write_yaml(tmp / "plan.yaml", pc.DISAGG_PLAN)
    pc.write_yaml(tmp / "workload.yaml", {**pc.WORKLOAD, "num_requests": 60})
    pc.profile_dir(tmp, tp=1)


def _run_main(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    argv = sys.argv
    sys.argv = ["pdplan", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            else:
                code = 0
    finally:
        sys.argv = argv
    return code, err.getvalue()


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir() or path.is_fifo():
            out[str(path.relative_to(root))] = "dir" if path.is_dir() else "fifo"
    return out


def test_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("files", "args", "mention"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(files, args: list[str], mention: str, tmp_path: Path, earlier_run: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _base(tmp_path)
    shutil.copytree(earlier_run, tmp_path / RUN)
    _write_files(tmp_path, files)
    before = _snapshot(tmp_path)
    code, err = _run_main([a.replace("{t}", str(tmp_path)) for a in args])
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert mention.lower() in lines[0].lower(), lines[0]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--gpus", "abc", "--out", "x"],
        ["report"],
        [
            "simulate",
            "--slo",
            "ttft=1e400s",
            "--gpus",
            "2",
            "--model",
            "llama-3.1-8b",
            "--hardware",
            "h100-sxm",
            "--preset",
            "chat",
            "--out",
            "s",
        ],
    ],
    ids=["usage-error", "missing-argument", "slo-overflow"],
)
def test_real_entry_point(args: list[str], tmp_path: Path) -> None:
    """The installed console script, as a user runs it: exit 2 and one line, nothing written."""
    exe = Path(sys.executable).with_name("pdplan")
    if not exe.exists():
        pytest.skip("the pdplan console script is not installed beside this python")
    done = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []

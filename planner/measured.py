"""Reading measured runs for ``validate`` and ``calibrate``: pdplan run directories, and external
request logs converted into the shared ``requests.csv`` schema.

Converted format — vLLM-style request logs (a directory with ``requests.jsonl`` and optionally
``meta.json``, as in LLMServingSim's ``bench/examples/*/vllm/`` runs, see
``../shared/data/SOURCES.md``): one JSON object per request with ``input_toks``, ``output_toks``
and the engine's monotonic ``queued_ts``, ``scheduled_ts``, ``first_token_ts``,
``last_token_ts``. Mapping: arrival = queued, prefill start = scheduled, first token, finish =
last token, all relative to the first arrival; a request without a first or last token time is
``unfinished``. This reproduces the run's published summary (TTFT = first_token − queued; TPOT =
(last_token − first_token) / (output − 1)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pdplan.profiles.errors import ConfigError
from pdplan.sim.records import REQUEST_COLUMNS, STATUS_NAMES

_VLLM_KEYS = ("input_toks", "output_toks", "queued_ts", "first_token_ts", "last_token_ts")


@dataclass(frozen=True)
class Measured:
    """A run's requests table (``REQUEST_COLUMNS`` at least), where it came from, and metadata."""

    name: str
    path: Path
    requests: pd.DataFrame
    meta: dict[str, Any]
    source_format: str  # "pdplan" | "vllm-log"


def read_run(path: Path) -> Measured:
    """A pdplan run directory (``requests.csv``) or a vLLM-style request log directory.

    Raises:
        ConfigError: neither, or malformed content (the file and the problem named).
    """
    if not path.exists():
        raise ConfigError(f"run {str(path)!r}: no such file or directory")
    folder = path if path.is_dir() else path.parent
    if (folder / "requests.csv").is_file():
        return Measured(
            folder.name, folder, _read_requests_csv(folder / "requests.csv"), _meta(folder), "pdplan"
        )
    log = path if path.is_file() else folder / "requests.jsonl"
    if log.is_file():
        meta_file = folder / "meta.json"
        meta = _read_json(meta_file) if meta_file.is_file() else {}
        return Measured(folder.name, folder, convert_vllm_log(log), meta, "vllm-log")
    raise ConfigError(
        f"run {str(path)!r}: expected a run directory with requests.csv or a vLLM-style log "
        "directory with requests.jsonl"
    )


def convert_vllm_log(path: Path) -> pd.DataFrame:
    """``requests.jsonl`` (see the module docstring) → the ``requests.csv`` table, by arrival."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(path)!r}: not readable ({err})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ConfigError(f"{str(path)!r} line {number}: not JSON") from None
        missing = [k for k in _VLLM_KEYS if k not in row] if isinstance(row, dict) else list(_VLLM_KEYS)
        if missing:
            raise ConfigError(f"{str(path)!r} line {number}: missing {missing}; expected {list(_VLLM_KEYS)}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{str(path)!r}: no requests")
    frame = pd.DataFrame(rows)

    def col(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(len(frame), np.nan)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)

    queued = col("queued_ts")
    if not np.isfinite(queued).all():
        raise ConfigError(f"{str(path)!r}: every request needs a numeric queued_ts")
    order = np.argsort(queued, kind="stable")
    t0 = queued[order[0]]
    first, last = col("first_token_ts")[order] - t0, col("last_token_ts")[order] - t0
    done = np.isfinite(first) & np.isfinite(last)
    out = pd.DataFrame(
        {
            "req_id": np.arange(len(order)),
            "arrival_s": queued[order] - t0,
            "prompt_tokens": col("input_toks")[order].astype(np.int64),
            "output_tokens": col("output_toks")[order].astype(np.int64),
            "first_token_s": first,
            "finish_s": np.where(done, last, np.nan),
            "prefill_start_s": (col("scheduled_ts") - t0)[order] if "scheduled_ts" in frame else np.nan,
            "prefill_end_s": np.nan,
            "decode_start_s": np.nan,
            "status": np.where(done, "ok", "unfinished"),
        }
    )
    if "request_id" in frame:
        out["source_id"] = frame["request_id"].to_numpy()[order]
    return out


def _read_requests_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"{str(path)!r}: not a readable CSV ({err})") from None
    missing = [c for c in REQUEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{str(path)!r}: lacks columns {missing}; expected {list(REQUEST_COLUMNS)}")
    bad = sorted(set(frame["status"].astype(str)) - set(STATUS_NAMES))
    if bad:
        raise ConfigError(f"{str(path)!r}: unknown status values {bad}; expected {list(STATUS_NAMES)}")
    return frame


def _meta(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("run.yaml", "plan.yaml"):
        file = folder / name
        if file.is_file():
            try:
                out[name.split(".")[0]] = yaml.safe_load(file.read_text())
            except yaml.YAMLError:
                continue
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{str(path)!r}: not readable JSON ({err})") from None
    return data if isinstance(data, dict) else {}


def ok_latencies(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """TTFT, TPOT and E2E (ms) per request, NaN where not ok (TPOT also where output ≤ 1)."""
    ok = (frame["status"] == "ok").to_numpy()
    arrival = frame["arrival_s"].to_numpy(dtype=float)
    first = frame["first_token_s"].to_numpy(dtype=float)
    finish = frame["finish_s"].to_numpy(dtype=float)
    out_tokens = frame["output_tokens"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (out_tokens > 1), (finish - first) / np.maximum(out_tokens - 1, 1), math.nan)
    return {
        "ttft": np.where(ok, first - arrival, math.nan) * 1000,
        "tpot": tpot * 1000,
        "e2e": np.where(ok, finish - arrival, math.nan) * 1000,
    }

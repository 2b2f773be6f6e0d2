"""Trace parsers: canonical CSV, Azure LLM inference 2023 CSV, Mooncake JSONL → ``Requests``.

Pure functions over already-read content (a DataFrame, or lines of text): opening files is the CLI
layer's job. Rows are sorted by arrival (stable) and times made relative to the first arrival.

Formats (DESIGN.md, ../shared/data/SOURCES.md):
- ``csv`` (canonical): ``arrival_s, prompt_tokens, output_tokens`` (+ optional ``prefix_hashes``:
  the prompt's block hashes separated by spaces, one per 512-token block, as Mooncake's ``hash_ids``).
- ``azure``: ``TIMESTAMP`` (date-time), ``ContextTokens``, ``GeneratedTokens`` (Splitwise / Azure
  Public Dataset, Patel et al., ISCA 2024).
- ``mooncake``: one JSON object per line with ``timestamp`` (ms), ``input_length``,
  ``output_length`` (+ ``hash_ids``: one id per 512-token prompt block) (Mooncake, Qin et al.,
  FAST 2025).

Block ids become ``Requests.prefix`` (``pdplan.sim.prefix``), what the prefix cache model reuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pandas as pd

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.validate import MAX_SPAN_S, MAX_TOKENS
from pdplan.sim.prefix import PrefixBlocks, parse_hash_cells
from pdplan.sim.requests import Requests

TRACE_FORMATS = ("csv", "azure", "mooncake")
CANONICAL_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def parse_canonical(frame: pd.DataFrame, *, source: str = "trace") -> Requests:
    """Requests from a canonical trace table (``arrival_s`` in seconds)."""
    _require_columns(frame, CANONICAL_COLUMNS, source, "csv")
    arrival = _numeric(frame["arrival_s"], f"{source}: arrival_s")
    blocks = None
    if "prefix_hashes" in frame.columns:
        blocks = parse_hash_cells(frame["prefix_hashes"].tolist(), where=f"{source}: prefix_hashes")
    return _build(arrival, frame["prompt_tokens"], frame["output_tokens"], source, blocks)


def parse_azure(frame: pd.DataFrame, *, source: str = "trace") -> Requests:
    """Requests from an Azure LLM inference trace table (``TIMESTAMP`` date-times)."""
    _require_columns(frame, AZURE_COLUMNS, source, "azure")
    column = frame["TIMESTAMP"]
    try:
        stamps = pd.to_datetime(column, format="ISO8601", utc=True, errors="coerce")
    except (ValueError, TypeError, OverflowError) as err:
        why = " ".join(str(err).split())[:160]
        raise ConfigError(f"{source}: TIMESTAMP is not a date-time column ({why})") from None
    missing = stamps.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise ConfigError(
            f"{source}: TIMESTAMP row {row} is {column.iloc[row]!r}; expected an ISO 8601 date-time "
            "(years 1678 to 2261)"
        )
    # seconds since the epoch at the column's own resolution (no ns overflow for far dates)
    arrival = (stamps - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    return _build(arrival, frame["ContextTokens"], frame["GeneratedTokens"], source)


def parse_mooncake(lines: Iterable[str], *, source: str = "trace") -> Requests:
    """Requests from Mooncake JSONL lines (``timestamp`` in milliseconds)."""
    stamps: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    blocks: list[list[int]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}: line {number} is not JSON ({err.msg})") from None
        if not isinstance(row, dict) or any(k not in row for k in MOONCAKE_KEYS):
            raise ConfigError(f"{source}: line {number} lacks one of {list(MOONCAKE_KEYS)} (mooncake format)")
        stamps.append(row["timestamp"])
        prompt.append(row["input_length"])
        output.append(row["output_length"])
        ids = row.get("hash_ids", [])
        if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
            raise ConfigError(f"{source}: line {number}: hash_ids must be a list of integers")
        blocks.append(ids)
    arrival = _numeric(pd.Series(stamps, dtype=object), f"{source}: timestamp") / 1000.0
    prefix = blocks if any(blocks) else None
    return _build(arrival, pd.Series(prompt, dtype=object), pd.Series(output, dtype=object), source, prefix)


def detect_format(name: str, first_line: str) -> str:
    """Guess a trace's format from its file name and first line."""
    if name.endswith((".jsonl", ".json")) or first_line.lstrip().startswith("{"):
        return "mooncake"
    header = [c.strip() for c in first_line.split(",")]
    if "TIMESTAMP" in header:
        return "azure"
    return "csv"


def check_format(fmt: str) -> str:
    if fmt not in TRACE_FORMATS:
        raise choices_error("trace format", fmt, TRACE_FORMATS)
    return fmt


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], source: str, fmt: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"{source}: missing columns {missing} for trace format {fmt!r}; "
            f"expected {list(columns)}, found {list(map(str, frame.columns))}"
        )


def _numeric(column: pd.Series, what: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise ConfigError(f"{what}: row {row} has {column.iloc[row]!r}; expected a number")
    return values


def _build(
    arrival: np.ndarray,
    prompt: pd.Series,
    output: pd.Series,
    source: str,
    blocks: list[list[int]] | None = None,
) -> Requests:
    if arrival.size:
        # a stray ancient or far-future stamp would put one request years away from the rest
        middle = float(np.median(arrival))
        far = np.abs(arrival - middle) > MAX_SPAN_S / 2
        if far.any():
            row = int(np.argmax(far))
            raise ConfigError(
                f"{source}: row {row} arrives {abs(arrival[row] - middle) / 86400:.3g} days from the "
                f"trace's median arrival; expected a trace spanning at most {MAX_SPAN_S / 86400:g} days"
            )
    lengths = {}
    for name, column in (("prompt_tokens", prompt), ("output_tokens", output)):
        values = _numeric(column, f"{source}: {name}")
        bad = (values < 1) | (values != np.floor(values)) | (values > MAX_TOKENS)
        if bad.any():
            row = int(np.argmax(bad))
            raise ConfigError(
                f"{source}: {name} row {row} is {values[row]:g}; expected an integer in [1, {MAX_TOKENS}]"
            )
        lengths[name] = values.astype(np.int64)
    order = np.argsort(arrival, kind="stable")
    start = arrival[order[0]] if arrival.size else 0.0
    prefix = None
    if blocks is not None:
        prefix = PrefixBlocks.from_lists([blocks[int(i)] for i in order])
        try:
            prefix.check_prompts(lengths["prompt_tokens"][order])
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return Requests(
        arrival[order] - start, lengths["prompt_tokens"][order], lengths["output_tokens"][order], prefix
    )

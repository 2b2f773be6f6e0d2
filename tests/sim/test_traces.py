"""Trace parsers on small hand-made tables and on the shared real traces."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdplan.profiles.errors import ConfigError
from pdplan.sim import parse_azure, parse_canonical, parse_mooncake
from pdplan.sim.traces import detect_format

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces"


def _trace(name: str) -> Path:
    path = TRACES / name
    if not path.is_file():
        pytest.skip(f"shared trace {path} is absent")
    return path


def test_canonical_sorts_and_rebases():
    frame = pd.DataFrame(
        {
            "arrival_s": [5.0, 3.0, 4.0],
            "prompt_tokens": [10, 30, 40],
            "output_tokens": [1, 3, 4],
            "prefix_hashes": ["a", "b", "c"],
        }
    )
    reqs = parse_canonical(frame)
    assert reqs.arrival_s.tolist() == [0.0, 1.0, 2.0] and reqs.prompt_tokens.tolist() == [30, 40, 10]
    assert reqs.prefix is not None  # hashes follow their rows; equal tokens are equal ids
    assert [reqs.prefix.of(i) for i in range(3)] == [[2**62 + 1], [2**62 + 2], [2**62]]


def test_bad_tables_name_the_problem():
    with pytest.raises(ConfigError, match=r"missing columns \['output_tokens'\]"):
        parse_canonical(pd.DataFrame({"arrival_s": [0.0], "prompt_tokens": [3]}))
    with pytest.raises(ConfigError, match="prompt_tokens row 1 is 0; expected an integer"):
        parse_canonical(pd.DataFrame({"arrival_s": [0, 1], "prompt_tokens": [3, 0], "output_tokens": [1, 1]}))
    with pytest.raises(ConfigError, match="arrival_s: row 0 has 'soon'"):
        parse_canonical(pd.DataFrame({"arrival_s": ["soon"], "prompt_tokens": [3], "output_tokens": [1]}))
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        parse_mooncake(['{"timestamp": 0, "input_length": 5, "output_length": 1}', "{oops"])
    with pytest.raises(ConfigError, match="TIMESTAMP row 0 is 'yesterday'; expected an ISO 8601 date-time"):
        parse_azure(pd.DataFrame({"TIMESTAMP": ["yesterday"], "ContextTokens": [3], "GeneratedTokens": [1]}))


def test_azure_small_table():
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
    )
    reqs = parse_azure(pd.read_csv(io.StringIO(text)))
    assert reqs.arrival_s.tolist() == pytest.approx([0.0, 0.052])
    assert reqs.prompt_tokens.tolist() == [4808, 3180]


def test_real_azure_code_trace():
    reqs = parse_azure(pd.read_csv(_trace("AzureLLMInferenceTrace_code.csv")))
    # 8,819 requests from 18:17:03.98 to 19:14:19.93 (SOURCES.md; first and last rows).
    assert len(reqs) == 8819
    assert reqs.span_s == pytest.approx(3435.948, abs=1e-3)
    assert reqs.prompt_tokens.mean() == pytest.approx(2047.85, abs=0.01)


def test_real_mooncake_trace():
    with open(_trace("mooncake_conversation_trace.jsonl")) as fh:
        reqs = parse_mooncake(fh)
    assert len(reqs) == 12031
    assert reqs.span_s == pytest.approx(3536.999)
    assert reqs.prompt_tokens.min() == 891 and reqs.output_tokens.min() == 1
    assert np.all(np.diff(reqs.arrival_s) >= 0)


def test_detect_format():
    assert detect_format("x.jsonl", "") == "mooncake"
    assert detect_format("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens") == "azure"
    assert detect_format("a.csv", "arrival_s,prompt_tokens,output_tokens") == "csv"

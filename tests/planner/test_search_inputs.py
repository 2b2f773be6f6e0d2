"""The search's inputs: workload presets (numbers from the shared traces) and the request list
(detrended, rotated traces)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdplan.planner.presets import PRESETS, get_preset
from pdplan.planner.traffic import detrend, trace_list, workload_list
from pdplan.profiles.errors import ConfigError
from pdplan.sim.requests import Requests

PRESET_SOURCES = {
    "chat": ("AzureLLMInferenceTrace_conv.csv", "ContextTokens", "GeneratedTokens"),
    "code": ("AzureLLMInferenceTrace_code.csv", "ContextTokens", "GeneratedTokens"),
    "summarize": ("mooncake_conversation_trace.jsonl", "input_length", "output_length"),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_draw_the_stated_lengths_without_data_files(name: str) -> None:
    preset = get_preset(name)
    requests = workload_list(preset.workload(seed=1), 40_000)
    for drawn, stats in ((requests.prompt_tokens, preset.prompt), (requests.output_tokens, preset.output)):
        assert stats.min <= drawn.min() and drawn.max() <= stats.max
        # clipping at the trace's min/max moves the mean a little; lognormal draws match otherwise
        assert drawn.mean() == pytest.approx(stats.mean, rel=0.06)
    assert requests.mean_rate_rps == pytest.approx(preset.rate_rps, rel=0.03)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_numbers_are_the_traces_statistics(name: str, shared_data: Path) -> None:
    file, prompt_col, output_col = PRESET_SOURCES[name]
    path = shared_data / "traces" / file
    frame = pd.read_json(path, lines=True) if file.endswith(".jsonl") else pd.read_csv(path)
    preset = get_preset(name)
    for column, stats in ((prompt_col, preset.prompt), (output_col, preset.output)):
        values = frame[column].to_numpy(dtype=float)
        assert stats.mean == pytest.approx(values.mean(), abs=0.06)
        assert stats.cv == pytest.approx(values.std() / values.mean(), abs=6e-4)
        assert (stats.min, stats.max) == (values.min(), values.max())


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="chat, code, summarize"):
        get_preset("poetry")


def _two_speed_trace() -> Requests:
    """10 minutes at 1 req/s, then 10 minutes at 3 req/s (Poisson), lengths = index."""
    rng = np.random.default_rng(7)
    slow = np.cumsum(rng.exponential(1.0, 600))
    fast = slow[-1] + np.cumsum(rng.exponential(1 / 3, 1800))
    arrival = np.concatenate(([0.0], slow, fast))
    index = np.arange(1, arrival.size + 1)
    return Requests(arrival, index, index)


def test_detrend_flattens_the_rate_and_keeps_order_and_lengths() -> None:
    trace = _two_speed_trace()
    flat = detrend(trace, bin_s=60.0)
    assert np.array_equal(flat.prompt_tokens, trace.prompt_tokens)
    assert np.all(np.diff(flat.arrival_s) >= 0)
    assert flat.span_s == pytest.approx(trace.span_s, rel=0.01)
    half = flat.arrival_s[-1] / 2
    first, second = np.count_nonzero(flat.arrival_s < half), np.count_nonzero(flat.arrival_s >= half)
    assert first == pytest.approx(second, rel=0.05)  # was 1:2.3 before
    before = np.count_nonzero(trace.arrival_s < trace.arrival_s[-1] / 2)
    assert before < 0.45 * len(trace)


def test_trace_list_rotates_by_seed() -> None:
    trace = _two_speed_trace()
    zero, one = trace_list(trace, 0), trace_list(trace, 1)
    for listed in (zero, one):
        assert len(listed) == len(trace) and np.all(np.diff(listed.arrival_s) >= 0)
        assert sorted(listed.prompt_tokens) == sorted(trace.prompt_tokens)
    assert zero.prompt_tokens[0] != one.prompt_tokens[0]
    assert np.array_equal(trace_list(trace, 1).prompt_tokens, one.prompt_tokens)
    start = int(one.prompt_tokens[0]) - 1  # lengths are the index: the rotation keeps the order
    assert np.array_equal(one.prompt_tokens[: len(trace) - start], trace.prompt_tokens[start:])


def test_detrend_needs_a_spread_of_arrivals() -> None:
    with pytest.raises(ConfigError, match="spread in time"):
        detrend(Requests(np.zeros(3), np.ones(3), np.ones(3)))

"""The search's views of a trace keep each prompt's prefix blocks with it."""

from __future__ import annotations

import numpy as np

from pdplan.planner.traffic import busiest_stretch, detrend, trace_list
from pdplan.sim import Requests
from pdplan.sim.prefix import PrefixBlocks


def test_stretch_rotation_and_detrending_keep_prompts_and_prefixes_together():
    n = 40
    rng = np.random.default_rng(1)
    arrival = np.cumsum(rng.exponential(1.0, n))
    prompt = np.arange(1, n + 1) * 10
    blocks = PrefixBlocks.from_lists([[0, 1000 + i] for i in range(n)], block_tokens=8)
    trace = Requests(arrival, prompt, np.ones(n, dtype=int), blocks)
    for view in (busiest_stretch(trace, 10), trace_list(trace, seed=5, bin_s=5.0), detrend(trace, 5.0)):
        assert view.prefix is not None and len(view.prefix) == len(view)
        for i in range(len(view)):  # request k has prompt 10(k+1) and blocks [0, 1000 + k]
            assert view.prefix.of(i) == [0, 1000 + int(view.prompt_tokens[i]) // 10 - 1]

"""Named workload presets: chat, code and long-context summarisation, from public traces' lengths.

Each preset is a ``Workload`` whose prompt and output lengths are lognormal with the mean and
coefficient of variation measured on a production trace (``../shared/data/traces``, see its
SOURCES.md), clipped to that trace's minimum and maximum, with Poisson arrivals at the trace's mean
rate (the search rescales the rate anyway). The numbers were computed once with::

    import pandas as pd, numpy as np                     # Azure: ContextTokens, GeneratedTokens
    x = pd.read_csv(path)["ContextTokens"].to_numpy()    # Mooncake: input_length, output_length
    x.mean(), x.std() / x.mean(), x.min(), x.max()

so the presets need no data file at run time. Poisson arrivals: the Azure conversation trace's
inter-arrival CV is 1.09 (Poisson: 1); the code and Mooncake traces are far burstier (CV 13 and
3), which a replay of the trace itself (``--trace``) keeps and a preset deliberately does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdplan.profiles.errors import choices_error
from pdplan.sim.workload import Arrival, Lengths, Workload


@dataclass(frozen=True)
class _LengthStats:
    mean: float
    cv: float
    min: int
    max: int

    def lengths(self) -> Lengths:
        return Lengths("lognormal", mean=self.mean, cv=self.cv, min=self.min, max=self.max)


@dataclass(frozen=True)
class Preset:
    """A named workload: lengths from a trace, the trace's mean rate, and where they came from."""

    name: str
    description: str
    source: str
    rate_rps: float
    prompt: _LengthStats
    output: _LengthStats

    def workload(self, num_requests: int = 2000, seed: int = 0) -> Workload:
        return Workload(
            arrival=Arrival("poisson", self.rate_rps),
            prompt_tokens=self.prompt.lengths(),
            output_tokens=self.output.lengths(),
            num_requests=num_requests,
            seed=seed,
            name=self.name,
        )

    def to_dict(self) -> dict[str, object]:
        """The workload description written into ``plan.yaml`` (DESIGN.md workload schema)."""

        def dist(s: _LengthStats) -> dict[str, object]:
            return {"dist": "lognormal", "mean": s.mean, "cv": s.cv, "min": s.min, "max": s.max}

        return {
            "name": self.name,
            "arrival": {"process": "poisson", "rate_rps": self.rate_rps},
            "prompt_tokens": dist(self.prompt),
            "output_tokens": dist(self.output),
        }


PRESETS: dict[str, Preset] = {
    # Azure LLM inference trace 2023, conversation (AzureLLMInferenceTrace_conv.csv, 19,366
    # requests over 3,502 s): ContextTokens mean 1154.7, CV 0.960, 2-14050; GeneratedTokens
    # mean 211.1, CV 0.771, 7-1000; 5.53 req/s.
    "chat": Preset(
        "chat",
        "conversation: ~1.2k-token prompts, ~210-token answers",
        "Azure LLM inference trace 2023, conversation (Patel et al., ISCA 2024)",
        5.53,
        _LengthStats(1154.7, 0.960, 2, 14050),
        _LengthStats(211.1, 0.771, 7, 1000),
    ),
    # Azure LLM inference trace 2023, code (AzureLLMInferenceTrace_code.csv, 8,819 requests over
    # 3,436 s): ContextTokens mean 2047.8, CV 0.964, 3-7437; GeneratedTokens mean 27.9, CV 2.147,
    # 6-1899; 2.57 req/s.
    "code": Preset(
        "code",
        "code completion: ~2k-token prompts, short completions (~28 tokens)",
        "Azure LLM inference trace 2023, code (Patel et al., ISCA 2024)",
        2.57,
        _LengthStats(2047.8, 0.964, 3, 7437),
        _LengthStats(27.9, 2.147, 6, 1899),
    ),
    # Mooncake conversation trace (kvcache-ai/Mooncake FAST25-release, conversation_trace.jsonl,
    # 12,031 requests over 3,537 s): input_length mean 12035.1, CV 1.313, 891-126195;
    # output_length mean 342.6, CV 0.729, 1-2000; 3.40 req/s.
    "summarize": Preset(
        "summarize",
        "long-context summarisation: ~12k-token documents, ~340-token summaries",
        "Mooncake conversation trace (Qin et al., FAST 2025)",
        3.40,
        _LengthStats(12035.1, 1.313, 891, 126195),
        _LengthStats(342.6, 0.729, 1, 2000),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset ``name`` (chat, code, summarize).

    Raises:
        ConfigError: unknown name (the valid ones are listed).
    """
    if name not in PRESETS:
        raise choices_error("--preset", name, PRESETS)
    return PRESETS[name]

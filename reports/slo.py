"""SLO thresholds as the report draws them, read from a plan's or summary's ``slo`` entry.

Accepted forms (DESIGN.md: ``--slo "ttft=1s,tpot=50ms"``, percentile form ``ttft_p99=2s``): the
string itself, or a mapping whose keys carry the unit (``ttft_ms: 1000``, ``tpot_s: 0.05``,
``ttft_p99_ms: 2000``) or whose values do (``ttft: 1s``). A number with no unit anywhere is
ambiguous and is reported, not guessed; a mapping named ``slo_ms`` holds milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pdplan.reports.units import fmt_ms

METRICS = ("ttft", "tpot", "e2e", "itl")
_UNIT_MS = {"ms": 1.0, "s": 1000.0}
_KEY = re.compile(r"^(ttft|tpot|e2e|itl)(?:_p(\d+(?:\.\d+)?))?(?:_(ms|s))?$")
_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(ms|s)?\s*$")


@dataclass(frozen=True)
class SloLine:
    """One threshold: ``metric`` ≤ ``threshold_ms`` per request, or at ``percentile`` when set."""

    metric: str
    threshold_ms: float
    percentile: float | None = None

    @property
    def condition(self) -> str:
        """E.g. 'TTFT ≤ 1 s' or 'TTFT p99 ≤ 2 s'."""
        where = f" p{self.percentile:g}" if self.percentile is not None else ""
        value = fmt_ms(self.threshold_ms)
        return f"{self.metric.upper()}{where} ≤ {value}"

    @property
    def label(self) -> str:
        return f"SLO {self.condition}"


def parse_slo(slo: Any, default_unit: str | None = None) -> tuple[list[SloLine], list[str]]:
    """The thresholds in ``slo`` and a note for every entry that could not be read.

    ``default_unit`` (``ms`` or ``s``) applies to bare numbers, for a mapping whose own name carries
    the unit (``slo_ms: {ttft: 1000}``, what ``pdplan.sim.summary.summarize`` takes).

    Keys that are not latency metrics (``attainment``, say) are ignored without a note.
    """
    if slo is None or slo == "" or slo == {}:
        return [], []
    if isinstance(slo, str):
        pairs = [part.split("=", 1) for part in slo.split(",") if part.strip()]
        items = [(p[0].strip(), p[1].strip() if len(p) == 2 else "") for p in pairs]
    elif isinstance(slo, dict):
        items = [(str(k), v) for k, v in slo.items()]
    else:
        return [], [f"slo {slo!r} is neither a string nor a mapping"]
    lines: list[SloLine] = []
    notes: list[str] = []
    for key, value in items:
        match = _KEY.match(key.strip().lower())
        if match is None:
            continue
        metric, pct, key_unit = match.group(1), match.group(2), match.group(3)
        threshold = _to_ms(value, key_unit or default_unit)
        if threshold is None:
            notes.append(f"slo {key}={value!r} has no readable unit (ms or s); line not drawn")
            continue
        lines.append(SloLine(metric, threshold, float(pct) if pct is not None else None))
    return lines, notes


def _to_ms(value: Any, key_unit: str | None) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) * _UNIT_MS[key_unit] if key_unit else None
    match = _VALUE.match(str(value))
    if match is None:
        return None
    unit = match.group(2) or key_unit
    return float(match.group(1)) * _UNIT_MS[unit] if unit else None


def slo_for(metric: str, lines: list[SloLine]) -> list[SloLine]:
    """The thresholds that apply to ``metric``."""
    assert metric in METRICS, f"unknown metric {metric!r}"
    return [line for line in lines if line.metric == metric]

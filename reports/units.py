"""Numbers as the report prints them: one helper per kind of quantity, used by every section.

Latencies are milliseconds below one second and seconds above (``850 ms``, ``1.29 s``, ``26.7 s``);
large counts and rates get a k/M suffix (``12.8k tok/s``); nothing is ever printed in exponent
notation (``1.29e+03``). The same helpers label the figures' axes, so a table and the figure beside
it show a value the same way.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sig(number: float, digits: int) -> str:
    """``digits`` significant digits in plain decimal notation, trailing zeros dropped."""
    if number == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(number)))
    decimals = max(0, digits - 1 - magnitude)
    rounded = round(number, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > magnitude:  # 9.996 → 10.0
        decimals = max(0, decimals - 1)
        rounded = round(number, decimals)
    text = f"{rounded:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: exact when a whole number below 10 000, else ``digits``
    significant digits with a k/M/G suffix from 1 000 up; '—' for missing; text passes through."""
    if value is None:
        return MISSING
    number = _finite(value)
    if number is None:
        try:
            float(value)
        except (TypeError, ValueError):
            return str(value)
        return MISSING
    if number == int(number) and abs(number) < 10_000:
        return str(int(number))
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return _sig(number / scale, digits) + suffix
    return _sig(number, digits)


def fmt_count(value: Any) -> str:
    """A whole count with thousands separators (``2,374``)."""
    number = _finite(value)
    return MISSING if number is None else f"{round(number):,}"


def fmt_ms(value: Any) -> str:
    """A latency given in ms: ``850 ms`` below one second, ``1.29 s`` / ``26.7 s`` above."""
    number = _finite(value)
    if number is None:
        return MISSING
    if abs(number) < 1000:
        return f"{_sig(number, 3)} ms"
    seconds = number / 1000
    if abs(seconds) >= 1000:
        return f"{seconds:,.0f} s"
    return f"{_sig(seconds, 3)} s"


def fmt_ms_fine(value: Any) -> str:
    """A small duration given in ms, e.g. a latency model's per-token cost: ``1.85 ms``,
    ``20.5 µs``, ``0.598 ns``; ``0`` below a thousandth of a nanosecond (a term the fit zeroed)."""
    number = _finite(value)
    if number is None:
        return MISSING
    for scale, unit in ((1.0, "ms"), (1e-3, "µs"), (1e-6, "ns")):
        if abs(number) >= scale:
            return f"{_sig(number / scale, 4)} {unit}"
    if abs(number) >= 1e-9:
        return f"{_sig(number / 1e-6, 3)} ns"
    return "0"


def fmt_s(value: Any) -> str:
    """A duration given in seconds, printed as ``fmt_ms`` prints it."""
    number = _finite(value)
    return MISSING if number is None else fmt_ms(number * 1000)


def fmt_ms_list(values: Any) -> str:
    """Several latencies in ms, e.g. percentiles: ``1.29 s / 6.98 s / 26.7 s``."""
    return " / ".join(fmt_ms(v) for v in values)


def fmt_rps(value: Any) -> str:
    """A request rate: ``54.8 req/s``."""
    return MISSING if _finite(value) is None else f"{fmt_num(value)} req/s"


def fmt_tok_s(value: Any) -> str:
    """A token rate: ``12.8k tok/s``."""
    return MISSING if _finite(value) is None else f"{fmt_num(value)} tok/s"


def fmt_pct(fraction: Any, decimals: int = 1) -> str:
    """A fraction as a percentage: ``0.934`` → ``93.4%``."""
    number = _finite(fraction)
    return MISSING if number is None else f"{100 * number:.{decimals}f}%"


def fmt_money(value: Any, currency: str = "$") -> str:
    """An amount of money: cents from one unit up (``$12.30``, ``$1,234.00``), three significant
    digits below (``$0.0412``)."""
    number = _finite(value)
    if number is None:
        return MISSING
    if abs(number) >= 1:
        return f"{currency}{number:,.2f}"
    return f"{currency}{_sig(number, 3)}"


def ms_tick(value: float, _pos: Any = None) -> str:
    """An axis tick for a latency axis in ms (``500 ms``, ``2 s``)."""
    return fmt_ms(value)


def num_tick(value: float, _pos: Any = None) -> str:
    """An axis tick for a plain number (``800``, ``12k``)."""
    return fmt_num(value)

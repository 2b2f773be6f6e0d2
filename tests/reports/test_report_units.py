"""Units that fit: latencies in ms below one second and s above, k/M suffixes, never an exponent."""

from __future__ import annotations

import math

import pytest

from pdplan.reports.units import (
    fmt_count,
    fmt_money,
    fmt_ms,
    fmt_ms_list,
    fmt_num,
    fmt_pct,
    fmt_rps,
    fmt_s,
    fmt_tok_s,
)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (850.0, "850 ms"),
        (8.5, "8.5 ms"),
        (0.123, "0.123 ms"),
        (999.4, "999 ms"),
        (1290.0, "1.29 s"),
        (6980.0, "6.98 s"),
        (26_700.0, "26.7 s"),
        (267_000.0, "267 s"),
        (1_234_000.0, "1,234 s"),
        (None, "—"),
        (math.nan, "—"),
        ("x", "—"),
    ],
)
def test_latency_is_ms_below_one_second_and_s_above(ms: object, text: str) -> None:
    assert fmt_ms(ms) == text


def test_the_issue_s_percentiles_read_as_seconds() -> None:
    assert fmt_ms_list([1.29e3, 6.98e3, 2.67e4]) == "1.29 s / 6.98 s / 26.7 s"
    assert fmt_s(0.85) == "850 ms" and fmt_s(12.5) == "12.5 s"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3.0, "3"),
        (0.48312, "0.483"),
        (2382, "2382"),
        (12_834.2, "12.8k"),
        (1.28e4, "12.8k"),
        (1_500_000.0, "1.5M"),
        (999.96, "1000"),
        (0.000123, "0.000123"),
        (-54.83, "-54.8"),
        (None, "—"),
        (math.inf, "—"),
        ("n/a", "n/a"),
    ],
)
def test_numbers_never_use_exponent_notation(value: object, text: str) -> None:
    assert fmt_num(value) == text
    assert "e+" not in fmt_num(value) and "e-" not in fmt_num(value)


def test_rates_tokens_money_and_shares() -> None:
    assert fmt_tok_s(12_800.0) == "12.8k tok/s" and fmt_tok_s(850.4) == "850 tok/s"
    assert fmt_rps(54.83) == "54.8 req/s" and fmt_rps(None) == "—"
    assert fmt_pct(0.934) == "93.4%" and fmt_pct(0.9, 0) == "90%"
    assert (
        fmt_money(40.0) == "$40.00" and fmt_money(0.04123) == "$0.0412" and fmt_money(1234.5) == "$1,234.50"
    )
    assert fmt_count(2374) == "2,374"

"""GPU prices per hardware type and what a plan costs: per hour and per million output tokens.

``--price-per-gpu-hour`` takes one number (every GPU type costs that) or ``NAME=PRICE`` pairs, one
per hardware type (``h100-sxm=2.5,a100-80g=1.3``); a type the flag leaves out takes the catalog's
``price_per_hour`` when the catalog (or a hardware file) gives one. A plan's cost is the sum over
its pools of GPUs × that pool's price; its cost per million output tokens divides the hourly cost
by the output tokens per hour served at the simulated rate (what serving *that* traffic costs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pdplan.profiles.errors import ConfigError

if TYPE_CHECKING:
    from pdplan.planner.plan import Plan

#: Most a GPU-hour may cost (a guard against typos, e.g. a price in cents).
MAX_PRICE_PER_GPU_HOUR = 1e4


@dataclass(frozen=True)
class Prices:
    """Dollars per GPU-hour: ``by_name`` per hardware type, ``default`` for every other type."""

    by_name: Mapping[str, float] = field(default_factory=dict)
    default: float | None = None

    def __post_init__(self) -> None:
        for name, price in [*self.by_name.items(), ("default", self.default)]:
            if price is None and name == "default":
                continue
            if not (isinstance(price, (int, float)) and math.isfinite(price)) or not (
                0 < price <= MAX_PRICE_PER_GPU_HOUR
            ):
                limit = f"(0, {MAX_PRICE_PER_GPU_HOUR:g}]"
                raise ConfigError(f"--price-per-gpu-hour {name}={price!r}; expected a price in {limit}")

    def of(self, hardware: str) -> float:
        """The price of one GPU-hour of ``hardware``.

        Raises:
            ConfigError: no price for that type (neither given nor in the catalog).
        """
        if hardware in self.by_name:
            return float(self.by_name[hardware])
        if self.default is not None:
            return float(self.default)
        catalog = _catalog_price(hardware)
        if catalog is None:
            given = ", ".join(sorted(self.by_name)) or "none"
            raise ConfigError(
                f"--price-per-gpu-hour: no price for {hardware!r} (priced: {given}); add {hardware}=PRICE"
            )
        return catalog

    def describe(self) -> float | dict[str, float]:
        """For ``plan.yaml``: the one number, or the prices by type."""
        if not self.by_name and self.default is not None:
            return float(self.default)
        out = {k: float(v) for k, v in sorted(self.by_name.items())}
        if self.default is not None:
            out["default"] = float(self.default)
        return out


def parse_prices(text: str) -> Prices:
    """``"2.5"`` or ``"h100-sxm=2.5,a100-80g=1.3"`` → ``Prices``.

    Raises:
        ConfigError: not a number, a pair without ``=``, a type named twice, or a price out of range.
    """
    text = text.strip()
    if "=" not in text:
        return Prices(default=_price("--price-per-gpu-hour", text))
    by_name: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(
                f"--price-per-gpu-hour {text!r}: {part!r} is not NAME=PRICE "
                "(e.g. h100-sxm=2.5,a100-80g=1.3, or one number for every type)"
            )
        if name in by_name:
            raise ConfigError(f"--price-per-gpu-hour {text!r}: {name!r} is priced twice")
        by_name[name] = _price(f"--price-per-gpu-hour {name}", value.strip())
    return Prices(by_name)


def _price(what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}; expected dollars per GPU-hour, e.g. 2.5") from None
    if not (math.isfinite(value) and 0 < value <= MAX_PRICE_PER_GPU_HOUR):
        raise ConfigError(f"{what} {text!r}; expected a price in (0, {MAX_PRICE_PER_GPU_HOUR:g}]")
    return value


def _catalog_price(hardware: str) -> float | None:
    """The price a catalog entry or a hardware YAML file (its ``price_per_hour``) states."""
    from pdplan.profiles.hardware import CATALOG, get_hardware, is_hardware_file

    entry = get_hardware(hardware) if is_hardware_file(hardware) else CATALOG.get(hardware)
    return None if entry is None or entry.price_per_hour is None else float(entry.price_per_hour)


def pool_cost(
    pools: Mapping[str, tuple[str, int]], prices: Prices, output_tokens_per_s: float | None
) -> dict[str, Any]:
    """The ``cost`` note of a plan: ``pools`` maps a role to (hardware, GPUs).

    Returns ``{price_per_gpu_hour, gpus, per_hour, per_million_output_tokens, pools: {role:
    {hardware, gpus, price_per_gpu_hour, per_hour}}}``; ``per_million_output_tokens`` is None when
    no output token was served.
    """
    roles: dict[str, Any] = {}
    per_hour = 0.0
    for role, (hardware, gpus) in pools.items():
        price = prices.of(hardware)
        roles[role] = {
            "hardware": hardware,
            "gpus": int(gpus),
            "price_per_gpu_hour": price,
            "per_hour": round(gpus * price, 6),
        }
        per_hour += gpus * price
    tokens = float(output_tokens_per_s or 0.0)
    per_million = per_hour / (tokens * 3600.0) * 1e6 if tokens > 0 else None
    names = sorted({hw for hw, _ in pools.values()})
    price_note: float | dict[str, float] = (
        prices.of(names[0]) if len(names) == 1 else {name: prices.of(name) for name in names}
    )
    return {
        "price_per_gpu_hour": price_note,
        "gpus": int(sum(g for _, g in pools.values())),
        "per_hour": round(per_hour, 6),
        "output_tokens_per_s": round(tokens, 6),
        "per_million_output_tokens": None if per_million is None else round(per_million, 6),
        "pools": roles,
    }


def plan_cost(plan: Plan, prices: Prices, output_tokens_per_s: float | None) -> dict[str, Any]:
    """The ``cost`` note of ``plan`` (``pdplan.planner.pricing.pool_cost``) at the served output rate."""
    pools = {"prefill": plan.prefill, "decode": plan.decode, "colocated": plan.colocated}
    roles = {role: (plan.hardware_of(role), pool.gpus) for role, pool in pools.items() if pool is not None}
    return pool_cost(roles, prices, output_tokens_per_s)

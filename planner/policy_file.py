"""Reading a cluster policy (``pdplan simulate --plan P --policy FILE``) and a diurnal day
(``--diurnal mean=3,peak_to_trough=3,hours=24``) for the simulator's ``pdplan.sim.autoscale`` and
``pdplan.sim.diurnal``.

A policy file (YAML, strict: unknown keys are errors that list the valid ones)::

    kind: autoscale            # static | autoscale | role-switch
    max_instances: {prefill: 6, decode: 3}   # autoscale only
    provision_s: 120           # autoscale: GPUs billed from the request, serving after this
    cooldown_s: 900            # autoscale: quiet window before a scale-down; role-switch: between switches
    switch_s: 30               # role-switch: after the drain
    interval_s: 60
    poll_s: 1
    min_instances: 1
    thresholds: {prefill_high_tokens: 8192, prefill_low_tokens: 1024, decode_high_kv: 0.6, decode_low_kv: 0.2}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.validate import load_yaml
from pdplan.sim.autoscale import Autoscale, Policy, RoleSwitch, Static, Thresholds
from pdplan.sim.diurnal import DiurnalProfile

KINDS = ("static", "autoscale", "role-switch")
_COMMON = ("kind", "interval_s", "poll_s")
_KEYS = {
    "static": _COMMON,
    "autoscale": (*_COMMON, "max_instances", "provision_s", "cooldown_s", "min_instances", "thresholds"),
    "role-switch": (*_COMMON, "switch_s", "cooldown_s", "min_instances", "thresholds"),
}
_THRESHOLDS = ("prefill_high_tokens", "prefill_low_tokens", "decode_high_kv", "decode_low_kv")
_DIURNAL = {
    "mean": "mean_rate_rps",
    "peak_to_trough": "peak_to_trough",
    "peak_hour": "peak_hour",
    "hours": "hours",
}


def policy_from_dict(data: Any, *, source: str = "--policy") -> Policy:
    """A ``Policy`` from its mapping (see the module docstring).

    Raises:
        ConfigError: not a mapping, an unknown kind or key, a value of the wrong type or range.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with 'kind' ({', '.join(KINDS)})")
    kind = data.get("kind")
    if kind not in KINDS:
        raise choices_error(f"{source} kind", kind, KINDS)
    unknown = [k for k in data if k not in _KEYS[kind]]
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown} for kind {kind}; valid: {list(_KEYS[kind])}")
    values: dict[str, Any] = {
        k: v for k, v in data.items() if k not in ("kind", "thresholds", "max_instances")
    }
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}={value!r}; expected a number")
    if "thresholds" in data:
        raw = data["thresholds"]
        if not isinstance(raw, Mapping) or any(k not in _THRESHOLDS for k in raw):
            raise ConfigError(f"{source}: thresholds must be a mapping with keys among {list(_THRESHOLDS)}")
        values["thresholds"] = Thresholds(**{k: float(v) for k, v in raw.items()})
    if kind == "static":
        return Static(**values)
    if kind == "role-switch":
        return RoleSwitch(**values)
    raw_max = data.get("max_instances")
    if not isinstance(raw_max, Mapping) or sorted(raw_max) != ["decode", "prefill"]:
        raise ConfigError(f"{source}: autoscale needs max_instances: {{prefill: N, decode: M}}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in raw_max.values()):
        raise ConfigError(f"{source}: max_instances {dict(raw_max)!r}; expected integers")
    return Autoscale(max_instances=dict(raw_max), **values)


def load_policy(path: Path) -> Policy:
    """Read and check a policy file."""
    return policy_from_dict(load_yaml(path, "--policy"), source=f"--policy {str(path)!r}")


def parse_diurnal(text: str) -> DiurnalProfile:
    """``mean=3,peak_to_trough=3,peak_hour=14,hours=24`` → ``DiurnalProfile`` (``mean`` required).

    Raises:
        ConfigError: an unknown key, a value that is not a number, no mean, a value out of range.
    """
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in _DIURNAL:
            raise ConfigError(
                f"--diurnal {text!r}: {part!r}; expected KEY=VALUE with KEY in {list(_DIURNAL)}"
            )
        try:
            values[_DIURNAL[key]] = float(value)
        except ValueError:
            raise ConfigError(f"--diurnal {text!r}: {key}={value!r}; expected a number") from None
    if "mean_rate_rps" not in values:
        raise ConfigError(f"--diurnal {text!r}: needs mean=REQ_PER_S")
    hours = values.pop("hours", 24.0)
    if not 0 < hours <= 24 * 366:
        raise ConfigError(f"--diurnal hours={hours!r}; expected in (0, 8784]")
    return DiurnalProfile(**values, duration_s=hours * 3600.0)

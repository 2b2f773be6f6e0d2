"""Pools on different hardware: prefill on compute-strong GPUs, decode on bandwidth- or cost-efficient
ones, joined by a KV link between the two node types.

A plan names its hardware per pool as ``hardware: {prefill: h100-sxm, decode: a100-80g}``. The
simulator already takes one profile per role (``pdplan.sim.costs.disaggregated_cluster``), so a
mixed plan needs only (1) a profile of each role on its own hardware — analytic from the catalog
(or whatever ``pdplan.profiles.hardware.get_hardware`` accepts), or ``--profile`` directories
matched by (hardware, TP) — and (2) a KV link that can join two node types: pools on different
GPU types sit on different nodes, so an intra-node link (NVLink, PCIe, loopback) cannot carry
their KV; an inter-node preset (``infiniband``, ``roce``, ``tcp``; DESIGN.md link labels, figures in
``pdplan.profiles.hardware.LINK_PRESETS``) or a custom label with its own numbers must.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pdplan.profiles.errors import ConfigError
from pdplan.profiles.profile import Profile, load_profile
from pdplan.sim.cluster import KvLink

ROLES = ("prefill", "decode")
#: Links inside one node: they cannot join pools on two GPU types (two kinds of node).
INTRA_NODE_LINKS = ("nvlink", "pcie", "loopback")
#: Links between nodes, with presets (what ``--kv-link`` offers a mixed plan).
INTER_NODE_LINKS = ("infiniband", "roce", "tcp")


def pool_hardware_from_dict(raw: Mapping[str, Any], *, source: str = "plan") -> dict[str, str]:
    """``{prefill: NAME, decode: NAME}`` from ``plan.yaml``'s ``hardware`` mapping (strict).

    Raises:
        ConfigError: unknown keys, a missing role, or a name that is not a non-empty string.
    """
    unknown = [k for k in raw if k not in ROLES]
    if unknown:
        raise ConfigError(f"{source}: hardware: unknown keys {unknown}; valid: {list(ROLES)}")
    out: dict[str, str] = {}
    for role in ROLES:
        name = raw.get(role)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"{source}: hardware.{role}={name!r}; expected a hardware name (hardware per pool "
                "needs both prefill and decode)"
            )
        out[role] = name.strip()
    return out


def check_pool_hardware(mode: str, pool_hardware: Mapping[str, str], link: KvLink | None) -> None:
    """Hardware per pool is for disaggregated plans, names both roles, and pools on two types are
    joined by an inter-node link.

    Raises:
        ConfigError: otherwise, naming what to change.
    """
    if mode != "disaggregated":
        raise ConfigError(f"plan: hardware per pool applies to disaggregated plans; this plan is {mode}")
    if sorted(pool_hardware) != sorted(ROLES):
        raise ConfigError(f"plan: hardware per pool needs {list(ROLES)}; got {sorted(pool_hardware)}")
    mixed = pool_hardware["prefill"] != pool_hardware["decode"]
    if mixed and link is not None and link.link in INTRA_NODE_LINKS:
        raise ConfigError(
            f"plan: prefill on {pool_hardware['prefill']} and decode on {pool_hardware['decode']} run on "
            f"different nodes, so kv_transfer.link {link.link!r} (inside one node) cannot join them; "
            f"use {', '.join(INTER_NODE_LINKS)} or a custom link with bandwidth_gbps and latency_ms"
        )


def is_mixed(pool_hardware: Mapping[str, str]) -> bool:
    return len(set(pool_hardware.values())) > 1


def profile_hardware(profile: Profile) -> str:
    return str(profile.hardware.get("name", "unknown"))


def pool_profiles(
    tps: Mapping[str, int],
    pool_hardware: Mapping[str, str],
    model: str,
    profile_dirs: Sequence[Path] = (),
) -> dict[str, Profile]:
    """A profile per role on that role's hardware: analytic (``model`` on each type) when no
    ``profile_dirs`` are given, else the directory whose (hardware name, TP) matches the role's.

    Raises:
        ConfigError: no profile for a role's (hardware, TP), two profiles for one, no model.
        ProfileError: an unreadable profile, or the model does not fit a role's hardware.
    """
    if profile_dirs:
        found: dict[tuple[str, int], Profile] = {}
        for folder in profile_dirs:
            profile = load_profile(folder)
            key = (profile_hardware(profile), profile.tp)
            if key in found:
                raise ConfigError(f"two --profile directories are of {key[0]} at tp={key[1]}; give one each")
            found[key] = profile
        out = {}
        for role, tp in tps.items():
            key = (pool_hardware[role], tp)
            if key not in found:
                raise ConfigError(
                    f"the plan's {role} pool runs on {key[0]} at tp={tp} and no --profile is of that "
                    f"(given: {sorted(found)}); profile it or leave --profile out for analytic profiles"
                )
            out[role] = found[key]
        check_same_kv(out)
        return out
    if not model:
        raise ConfigError("a plan with hardware per pool needs a model (plan.yaml's model or --model)")
    from pdplan.profiles.analytic import analytic_profile
    from pdplan.profiles.model_spec import load_model_spec

    spec = load_model_spec(model)
    cache: dict[tuple[str, int], Profile] = {}
    for role, tp in tps.items():
        key = (pool_hardware[role], tp)
        if key not in cache:
            cache[key] = analytic_profile(spec, key[0], tp=tp)
    out = {role: cache[(pool_hardware[role], tp)] for role, tp in tps.items()}
    check_same_kv(out)
    return out


def check_same_kv(profiles: Mapping[str, Profile]) -> None:
    """The KV that crosses the link is laid out the same on both sides: one model, one KV size.

    Raises:
        ConfigError: the roles' profiles are of different models or KV bytes per token (dtypes).
    """
    sizes = {role: (p.model.name, p.model.kv_bytes_per_token(p.dtype)) for role, p in profiles.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(
            f"the pools' profiles disagree on the model or its KV bytes per token {sizes}; "
            "prefill and decode must serve one model in one KV dtype"
        )


def roles_hardware(profiles: Mapping[str, Profile]) -> dict[str, str]:
    """The hardware of each role's profile when they differ (a plan's ``pool_hardware``), else {}."""
    names = {role: profile_hardware(p) for role, p in profiles.items()}
    return names if len(set(names.values())) > 1 else {}

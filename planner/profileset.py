"""``ProfileSet``: the profiles a search may use — one per TP, for one model on one hardware.

From ``--profile DIR`` (repeatable; measured or analytic profile directories, one per TP) or from
``--model M --hardware H`` (an analytic roofline profile per TP in ``DEFAULT_TPS``, and the
multi-node TPs 16-64 when the model does not fit in 8 GPUs; a MoE model's instance takes the
expert-parallel / DP-attention layout that decodes fastest at that TP, and a multi-node instance
TP alone or TP per node × pipeline stages, whichever decodes faster, ``pdplan.profiles.layouts``;
a TP at which the model does not fit, or that does not divide its heads, is kept with the reason,
so the search can report the candidates that need it as infeasible).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.profile import Profile, load_profile

log = logging.getLogger(__name__)

#: TP degrees tried with --model/--hardware (a node of 8 GPUs).
DEFAULT_TPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class ProfileSet:
    """Profiles by TP — by instance width ``tp × pp``, which is the TP when the profile has no
    pipeline — for one model on one hardware; ``unfit`` maps each width that was tried and cannot
    serve the model to the reason."""

    profiles: Mapping[int, Profile]
    unfit: Mapping[int, str] = field(default_factory=dict)
    #: per TP, the parallel layout chosen for its instances and why (analytic MoE profiles)
    layouts: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.profiles:
            reasons = "; ".join(f"tp={tp}: {why}" for tp, why in sorted(self.unfit.items()))
            raise ConfigError(f"no usable profile for the search ({reasons or 'none given'})")
        first = self.any
        for tp, prof in self.profiles.items():
            if prof.tp * prof.pp != tp:  # keyed by instance width (tp × pp)
                raise ConfigError(f"profile for tp={tp} was made at tp={prof.tp} × pp={prof.pp}")
            if prof.model.name != first.model.name or prof.hardware.get("name") != first.hardware.get("name"):
                raise ConfigError(
                    f"profiles mix models or hardware: {first.model.name} on "
                    f"{first.hardware.get('name')} and {prof.model.name} on {prof.hardware.get('name')}; "
                    "a search uses one of each"
                )

    @property
    def any(self) -> Profile:
        """The profile of the smallest TP (model-wide facts are the same in all)."""
        return self.profiles[min(self.profiles)]

    @property
    def tps(self) -> tuple[int, ...]:
        return tuple(sorted(self.profiles))

    @property
    def model(self) -> str:
        return self.any.model.name

    @property
    def hardware(self) -> str:
        return str(self.any.hardware.get("name", "unknown"))

    @property
    def kv_bytes_per_token(self) -> int:
        """The whole model's KV bytes per token (what crosses the KV link)."""
        return self.any.model.kv_bytes_per_token(self.any.dtype)

    @property
    def num_layers(self) -> int:
        return self.any.model.num_layers


def load_profile_set(profile_dirs: Sequence[Path]) -> ProfileSet:
    """Profiles read from directories, one per TP.

    Raises:
        ConfigError: two directories at one TP, or mixed models/hardware.
        ProfileError: a directory that is not a readable profile.
    """
    by_tp: dict[int, Profile] = {}
    for folder in profile_dirs:
        profile = load_profile(folder)
        width = profile.tp * profile.pp  # GPUs per instance: the search's key
        if width in by_tp:
            raise ConfigError(f"two --profile directories have tp × pp = {width}; give one per TP")
        by_tp[width] = profile
    return ProfileSet(by_tp)


def analytic_profile_set(
    model: str,
    hardware: str,
    tps: Sequence[int] = DEFAULT_TPS,
    dtype: str | None = None,
    kv_dtype: str | None = None,
) -> ProfileSet:
    """Analytic profiles of ``model`` on ``hardware`` (a catalog name or a YAML file) at each TP
    that can serve it, with weights in ``dtype`` and the KV cache in ``kv_dtype``.

    Raises:
        ConfigError: unknown model or hardware, or no TP can serve the model (reasons listed).
    """
    from pdplan.profiles.hardware import get_hardware
    from pdplan.profiles.layouts import choose_instance_layout, tps_to_try
    from pdplan.profiles.model_spec import load_model_spec

    spec = load_model_spec(model, kv_dtype=kv_dtype)
    hw = get_hardware(hardware)
    if tuple(tps) == DEFAULT_TPS:
        tps = tps_to_try(spec, hw, dtype)
    profiles: dict[int, Profile] = {}
    unfit: dict[int, str] = {}
    layouts: dict[int, str] = {}
    for tp in tps:
        try:
            choice = choose_instance_layout(spec, hw, tp, dtype)
            profiles[tp] = choice.profile
            if spec.is_moe or choice.layout.pp > 1 or "PP" in choice.reason:
                layouts[tp] = choice.reason
                log.info("tp=%d: %s", tp, choice.reason)
        except ProfileError as err:  # the weights leave no room for KV
            unfit[tp] = f"does not fit in memory: {err}"
        except ConfigError as err:  # tp does not divide the heads
            unfit[tp] = f"tp={tp} cannot shard the model: {err}"
        if tp in unfit:
            log.info("tp=%d left out: %s", tp, unfit[tp])
    return ProfileSet(profiles, unfit, layouts)

"""The roofline lower bound on a forward pass's time, for the Profile section's figure.

time ≥ max(FLOPs / peak FLOP/s, bytes moved / memory bandwidth) (Williams, Waterman & Patterson,
"Roofline", CACM 2009), per GPU of a TP group. Peak numbers come from the profile's own ``hardware``
mapping and, failing that, from the hardware catalog (``pdplan.profiles.hardware``, imported only
when needed); when neither has them the figure goes without the line and says why.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from pdplan.profiles.errors import PdplanError
from pdplan.profiles.profile import Profile


@dataclass(frozen=True)
class Roofline:
    """Peak compute (TFLOP/s for the profile's dtype) and memory bandwidth (GB/s) of one GPU."""

    peak_tflops: float
    mem_bandwidth_gbps: float
    source: str

    def __post_init__(self) -> None:
        assert self.peak_tflops > 0 and self.mem_bandwidth_gbps > 0, "peaks must be positive"

    def time_ms(self, flops: np.ndarray, bytes_moved: np.ndarray) -> np.ndarray:
        compute_s = np.asarray(flops, dtype=float) / (self.peak_tflops * 1e12)
        memory_s = np.asarray(bytes_moved, dtype=float) / (self.mem_bandwidth_gbps * 1e9)
        return np.maximum(compute_s, memory_s) * 1000


def roofline_for(profile: Profile) -> tuple[Roofline | None, str]:
    """The profile's roofline and where its numbers came from, or ``None`` and why not.

    The numbers recorded in ``profile.yaml`` come first (they describe the machine that was
    measured; ``cpu`` peaks are detected at profile time), then the hardware catalog by name.
    """
    hw = profile.hardware
    name = str(hw.get("name", ""))
    loose = (
        " (bf16 tensor peak: a loose bound for float32)"
        if (profile.dtype == "float32" and name != "cpu")
        else ""
    )
    peak, bandwidth = _positive(hw.get("peak_bf16_tflops")), _positive(hw.get("mem_bandwidth_gbps"))
    if peak and bandwidth:
        return Roofline(peak, bandwidth, f"profile.yaml ({name}){loose}"), ""
    if name == "cpu":
        return None, (
            "No roofline: cpu peaks are detected when profiling and this profile.yaml "
            "does not record peak_bf16_tflops / mem_bandwidth_gbps."
        )
    try:
        module = importlib.import_module("pdplan.profiles.hardware")
    except ImportError:
        return None, "No roofline: the hardware catalog (pdplan.profiles.hardware) is not available."
    try:
        entry = module.get_hardware(name)
    except (PdplanError, LookupError) as err:
        return None, f"No roofline: hardware {name!r} has no catalog entry ({err})."
    peak = _positive(getattr(entry, "peak_bf16_tflops", None))
    bandwidth = _positive(getattr(entry, "mem_bandwidth_gbps", None))
    if peak and bandwidth:
        return Roofline(peak, bandwidth, f"the {name} catalog entry{loose}"), ""
    return None, f"No roofline: the {name} catalog entry has no peak FLOP/s or bandwidth."


def _positive(value: object) -> float | None:
    """``value`` as a float when it is a positive number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def prefill_work(
    profile: Profile, num_seqs: np.ndarray, seq_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) per GPU of one prefill of ``num_seqs`` × ``seq_len`` new tokens.

    FLOPs: 2 per weight per token (ModelSpec.flops_per_token) plus causal attention, whose queries
    see seq_len/2 keys on average; bytes: the weight shard plus the KV written.
    """
    spec = profile.model
    s = np.asarray(num_seqs, dtype=float)
    n = np.asarray(seq_len, dtype=float)
    per_pair = spec.attention_flops(1, 1)  # attention FLOPs per (query, key) pair
    flops = (s * n * spec.flops_per_token + s * n * (n / 2) * per_pair) / profile.tp
    bytes_moved = profile.weight_bytes + s * n * profile.kv_bytes_per_token
    return flops, bytes_moved


def decode_work(
    profile: Profile, batch_size: np.ndarray, context_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) per GPU of one decode step: the weight shard and every sequence's KV are read."""
    spec = profile.model
    b = np.asarray(batch_size, dtype=float)
    c = np.asarray(context_len, dtype=float)
    flops = (b * spec.flops_per_token + b * c * spec.attention_flops(1, 1)) / profile.tp
    bytes_moved = profile.weight_bytes + b * c * profile.kv_bytes_per_token
    return flops, bytes_moved

"""Which parallel layout an instance of a given TP size should run, and which TP sizes to try.

A dense model runs tensor parallelism only. A MoE model may also run expert parallelism over the
instance's GPUs (``ep = tp``), and an MLA model data-parallel attention as well (``attention_dp =
tp``, SGLang's ``--enable-dp-attention``, the layout of SGLang's and DeepSeek's own DeepSeek-V3 PD
deployments). For each TP the layouts the model can use are priced analytically and the one with
the most decode throughput at the batch its KV pool holds (contexts of ``CHOICE_CONTEXT``, at most
``CHOICE_BATCH`` sequences) is kept, with a one-line reason naming the alternatives.

TP sizes: the single-node sizes 1-8, and — when the model does not fit in 8 GPUs — multi-node
sizes 16, 32, 64 (an instance spanning nodes, as DeepSeek-V3 on H800s does at TP16).
"""

from __future__ import annotations

from dataclasses import dataclass

from pdplan.profiles.analytic import analytic_profile, kv_budget_bytes, resolve_dtype, roofline
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.hardware import Hardware
from pdplan.profiles.model_spec import ModelSpec
from pdplan.profiles.moe_cost import Layout
from pdplan.profiles.profile import Profile

SINGLE_NODE_TPS = (1, 2, 4, 8)
MULTI_NODE_TPS = (16, 32, 64)
CHOICE_CONTEXT = 2048
CHOICE_BATCH = 256


def candidate_layouts(spec: ModelSpec, tp: int) -> list[Layout]:
    """Layouts of a ``tp``-GPU instance that ``spec`` can use (TP first)."""
    out = [Layout(tp=tp)]
    if tp > 1 and spec.is_moe and spec.num_experts % tp == 0:
        out.append(Layout(tp=tp, ep=tp))
        if spec.is_mla:
            out.append(Layout(tp=tp, ep=tp, attention_dp=tp))
    return out


def describe(layout: Layout) -> str:
    """``TP16 + EP16 + DP-attention 16`` and the SGLang flags that run it."""
    parts = [f"TP{layout.tp}"]
    flags = [f"--tp {layout.tp}"]
    if layout.ep > 1:
        parts.append(f"EP{layout.ep}")
        flags.append(f"--ep-size {layout.ep}")
    if layout.attention_dp > 1:
        parts.append(f"DP-attention {layout.attention_dp}")
        flags.append(f"--dp {layout.attention_dp} --enable-dp-attention")
    return f"{' + '.join(parts)} (SGLang {' '.join(flags)})"


@dataclass(frozen=True)
class LayoutChoice:
    """The profile of the chosen layout at one TP and why it was chosen."""

    profile: Profile
    layout: Layout
    reason: str


def decode_tokens_per_s(
    spec: ModelSpec, hardware: Hardware, layout: Layout, dtype: str, engine: str
) -> tuple[float, int]:
    """Decode tokens/s of one instance at the batch its KV pool holds (``CHOICE_CONTEXT``-token
    contexts, at most ``CHOICE_BATCH``), and that batch.

    Raises:
        ProfileError: the layout leaves no room for KV.
    """
    pool = kv_budget_bytes(spec, hardware, layout.tp, dtype, engine, layout.attention_dp)
    per_token = spec.kv_bytes_per_token_per_rank(layout.tp, dtype, layout.attention_dp)
    batch = max(1, min(CHOICE_BATCH, pool // per_token // (CHOICE_CONTEXT + 1)))
    step_ms = roofline(spec, hardware, layout, dtype, engine).decode(batch, CHOICE_CONTEXT).total_ms
    return batch / step_ms * 1e3, batch


def choose_layout(
    spec: ModelSpec, hardware: Hardware, tp: int, dtype: str | None = None, engine: str = "vllm"
) -> LayoutChoice:
    """The analytic profile of the best layout of a ``tp``-GPU instance (see the module docstring).

    Raises:
        ConfigError: ``tp`` cannot shard the model.
        ProfileError: no layout fits in memory (the TP-only reason).
    """
    chosen_dtype = resolve_dtype(spec, hardware, dtype)
    scored: list[tuple[float, int, Layout]] = []
    first_error: ProfileError | None = None
    for layout in candidate_layouts(spec, tp):
        try:
            rate, batch = decode_tokens_per_s(spec, hardware, layout, chosen_dtype, engine)
        except ProfileError as err:
            first_error = first_error or err
            continue
        scored.append((rate, batch, layout))
    if not scored:
        assert first_error is not None, "at least the TP layout was tried"
        raise first_error
    rate, batch, best = max(scored, key=lambda s: s[0])
    others = ", ".join(f"{describe(lay).split(' (')[0]} {r:.0f}" for r, _, lay in scored if lay != best)
    reason = (
        f"{describe(best)}: {rate:.0f} decode tok/s per instance at batch {batch} × {CHOICE_CONTEXT} "
        f"context" + (f" (vs {others})" if others else "")
    )
    profile = analytic_profile(
        spec, hardware, tp=tp, dtype=chosen_dtype, engine=engine, ep=best.ep, attention_dp=best.attention_dp
    )
    return LayoutChoice(profile, best, reason)


def tps_to_try(
    spec: ModelSpec, hardware: Hardware, dtype: str | None = None, engine: str = "vllm"
) -> tuple[int, ...]:
    """``SINGLE_NODE_TPS``, plus ``MULTI_NODE_TPS`` when the model does not fit at TP8."""
    chosen = resolve_dtype(spec, hardware, dtype)
    top = SINGLE_NODE_TPS[-1]
    try:
        kv_budget_bytes(spec, hardware, top, chosen, engine)
    except ProfileError:
        return (*SINGLE_NODE_TPS, *MULTI_NODE_TPS)
    except ConfigError:
        pass
    return SINGLE_NODE_TPS

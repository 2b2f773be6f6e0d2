"""Which parallel layout an instance of a given TP size should run, and which TP sizes to try.

A dense model runs tensor parallelism only. A MoE model may also run expert parallelism over the
instance's GPUs (``ep = tp``), and an MLA model data-parallel attention as well (``attention_dp =
tp``, SGLang's ``--enable-dp-attention``, the layout of SGLang's and DeepSeek's own DeepSeek-V3 PD
deployments). For each TP the layouts the model can use are priced analytically and the one with
the most decode throughput at the batch its KV pool holds (contexts of ``CHOICE_CONTEXT``, at most
``CHOICE_BATCH`` sequences) is kept, with a one-line reason naming the alternatives.

TP sizes: the single-node sizes 1-8, and — when the model does not fit in 8 GPUs — multi-node
sizes 16, 32, 64 (an instance spanning nodes, as DeepSeek-V3 on H800s does at TP16). An instance
of such a size may also run pipeline parallelism (:mod:`pdplan.profiles.pipeline`): one TP group
per node and a stage per node (``tp = gpus_per_node``, ``pp = size / gpus_per_node``), priced
beside the TP layouts by the same decode throughput (``choose_instance_layout``). PP is offered
only there: inside a node it saves no memory that a larger TP would not, and a decode round of
``pp`` micro-batches rereads the weights ``pp`` times.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdplan.profiles.analytic import analytic_profile, kv_budget_bytes, resolve_dtype, roofline
from pdplan.profiles.engine import get_engine
from pdplan.profiles.errors import ConfigError, PdplanError, ProfileError
from pdplan.profiles.hardware import Hardware
from pdplan.profiles.model_spec import ModelSpec
from pdplan.profiles.moe_cost import Layout
from pdplan.profiles.pipeline import PipelineSend, kv_bytes_per_token_per_gpu, micro_batch
from pdplan.profiles.profile import Profile

SINGLE_NODE_TPS = (1, 2, 4, 8)
MULTI_NODE_TPS = (16, 32, 64)
CHOICE_CONTEXT = 2048
CHOICE_BATCH = 256


def candidate_layouts(spec: ModelSpec, tp: int, pp: int = 1) -> list[Layout]:
    """Layouts of a ``tp × pp``-GPU instance that ``spec`` can use (TP first)."""
    out = [Layout(tp=tp, pp=pp)]
    if tp > 1 and spec.is_moe and spec.num_experts % tp == 0:
        out.append(Layout(tp=tp, ep=tp, pp=pp))
        if spec.is_mla:
            out.append(Layout(tp=tp, ep=tp, attention_dp=tp, pp=pp))
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
    if layout.pp > 1:
        parts.append(f"PP{layout.pp}")
        flags.append(f"--pp-size {layout.pp}")
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
    tp, pp = layout.tp, layout.pp
    pool = kv_budget_bytes(spec, hardware, tp, dtype, engine, layout.attention_dp, pp)
    per_token = kv_bytes_per_token_per_gpu(spec, tp, pp, dtype, layout.attention_dp)
    batch = max(1, min(CHOICE_BATCH, pool // per_token // (CHOICE_CONTEXT + 1)))
    micro = micro_batch(batch, pp)  # a decode round (pdplan.profiles.pipeline); pp = 1: one step
    step_ms = roofline(spec, hardware, layout, dtype, engine).decode(micro, CHOICE_CONTEXT).total_ms
    if pp > 1:
        overhead = get_engine(engine).step_overhead_ms
        step_ms += (pp - 1) * overhead + PipelineSend.of(spec, hardware, tp, pp, dtype).ms(micro)
    return batch / step_ms * 1e3, batch


def choose_layout(
    spec: ModelSpec,
    hardware: Hardware,
    tp: int,
    dtype: str | None = None,
    engine: str = "vllm",
    pp: int = 1,
) -> LayoutChoice:
    """The analytic profile of the best layout of a ``tp``-GPU TP group, ``pp`` of them in a
    pipeline (see the module docstring).

    Raises:
        ConfigError: ``tp`` cannot shard the model.
        ProfileError: no layout fits in memory (the TP-only reason).
    """
    chosen_dtype = resolve_dtype(spec, hardware, dtype)
    scored: list[tuple[float, int, Layout]] = []
    first_error: ProfileError | None = None
    for layout in candidate_layouts(spec, tp, pp):
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
        spec,
        hardware,
        tp=tp,
        dtype=chosen_dtype,
        engine=engine,
        ep=best.ep,
        attention_dp=best.attention_dp,
        pp=pp,
    )
    return LayoutChoice(profile, best, reason)


def pipeline_splits(hardware: Hardware, gpus: int) -> list[tuple[int, int]]:
    """(tp, pp) of a ``gpus``-GPU instance: TP alone, and — when it spans whole nodes — one TP
    group per node in a pipeline of ``gpus / gpus_per_node`` stages."""
    per_node = hardware.gpus_per_node
    out = [(gpus, 1)]
    if gpus > per_node and gpus % per_node == 0:
        out.append((per_node, gpus // per_node))
    return out


def choose_instance_layout(
    spec: ModelSpec, hardware: Hardware, gpus: int, dtype: str | None = None, engine: str = "vllm"
) -> LayoutChoice:
    """The best layout of a ``gpus``-GPU instance over its TP / pipeline splits
    (:func:`pipeline_splits`), each split's best TP-group layout (:func:`choose_layout`) compared
    by decode tokens/s; the reason names the split left out and why.

    Raises:
        ConfigError: no split can shard the model. ProfileError: none fits in memory.
    """
    chosen_dtype = resolve_dtype(spec, hardware, dtype)
    choices: list[tuple[float, LayoutChoice]] = []
    failed: list[tuple[str, PdplanError]] = []
    for tp, pp in pipeline_splits(hardware, gpus):
        try:
            choice = choose_layout(spec, hardware, tp, chosen_dtype, engine, pp)
        except (ConfigError, ProfileError) as err:
            failed.append((f"TP{tp}" + (f" × PP{pp}" if pp > 1 else ""), err))
            continue
        rate, _ = decode_tokens_per_s(spec, hardware, choice.layout, chosen_dtype, engine)
        choices.append((rate, choice))
    if not choices:
        raise failed[0][1]
    best = max(choices, key=lambda c: c[0])[1]
    left = [f"{describe(c.layout).split(' (')[0]} {r:.0f} tok/s" for r, c in choices if c is not best]
    left += [f"{name}: {err}" for name, err in failed]
    if not left:
        return best
    return LayoutChoice(best.profile, best.layout, f"{best.reason}; over {'; '.join(left)}")


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

"""Pipeline parallelism (PP): what one GPU of a ``pp``-stage instance holds and what a step costs.

An instance of ``tp × pp`` GPUs runs ``pp`` stages one after another, each a TP group of ``tp``
GPUs holding a contiguous run of layers (SGLang ``--pp-size``, vLLM
``--pipeline-parallel-size``). pdplan places the stages' TP groups inside nodes and the stages
across them, the way both engines' multi-node guides do.

**Memory per GPU.** Layers are split as evenly as possible, the ``L mod pp`` extra layers going to
the stages before the last, from the second-to-last backwards (vLLM's ``get_pp_indices`` in
``vllm/distributed/utils.py`` without ``VLLM_PP_LAYER_PARTITION``: the last stage holds the norm
and LM head; SGLang gives them to the last stages instead, which can make its last stage one layer
heavier than priced here); the embedding
sits on the first stage and the final norm and LM head on the last (a tied head is a second copy
there). The *heaviest* stage sets whether the instance fits and its KV capacity: its GPUs hold its
weights / tp and the KV of its layers for every token of the instance.

**Stage-to-stage send.** After its layers a stage sends each token's hidden state and residual
(vLLM's ``IntermediateTensors({"hidden_states", "residual"})`` in ``models/llama.py``; SGLang's
``PPProxyTensors`` the same) to the next: ``2 × hidden × activation bytes`` per token, over the
inter-node network when the boundary crosses nodes, else NVLink
(:func:`pdplan.profiles.comm.p2p_send_s`).

**Scheduling** (stated assumptions: equal stages; the engine keeps ``pp`` micro-batches in flight,
as vLLM V0's one virtual engine per stage does and as V1's PP scheduler does — vLLM RFC #11945 —
and as SGLang's asynchronous PP overlaps chunks of one request across stages,
docs.sglang.io/advanced_features/pipeline_parallelism.html):

- A stage's step on ``T`` tokens costs ``stage(T) = (full(T) − o)/pp + o``: its share of the
  model's kernel time plus the engine's per-step overhead ``o`` (each stage launches its own).
- *Prefill*: a batch's latency is ``pp · stage(T) + (pp − 1) · send(T)``, and the next batch may
  enter stage 1 once stage 1 is free — a tandem of ``pp`` identical stages, simulated exactly
  (``pdplan.sim.prefill``; the profile's prefill table holds the latency, ``PipelineSend`` the
  send, so the simulator recovers ``stage``).
- *Decode*: a running batch of ``N`` sequences is split into ``pp`` micro-batches of ``⌈N/pp⌉``;
  each stage serves them in turn, so every sequence advances one token per *round* of
  ``pp · stage(⌈N/pp⌉) + (pp − 1) · send(⌈N/pp⌉)`` — stage 1 is busy ``pp · stage`` per round,
  and one micro-batch's own cycle is its ``pp`` stage steps plus ``pp − 1`` sends, the longer of
  the two (the return of the sampled token to stage 1 is a few bytes and is left out). The
  profile's decode table holds the round, so the simulator's decode path is unchanged: a
  profile-level transform, which keeps its closed-form hot path. Since a micro-batch of ``N/pp``
  rereads every weight, a round costs about ``full(N/pp)``, not ``full(N)/pp``: PP buys memory,
  not decode speed, which is why the search offers it only where the model needs more than a node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdplan.profiles.comm import p2p_send_s
from pdplan.profiles.errors import ConfigError
from pdplan.profiles.hardware import Hardware
from pdplan.profiles.model_spec import DTYPE_BYTES, WEIGHT_BITS, ModelSpec, activation_dtype


def stage_layers(num_layers: int, pp: int) -> list[int]:
    """Layers per stage: ``num_layers // pp`` each, one more for the ``num_layers mod pp`` stages
    before the last, second-to-last first (vLLM's rule; the module docstring).

    Raises:
        ConfigError: ``pp`` < 1 or more stages than layers.
    """
    if isinstance(pp, bool) or not isinstance(pp, int) or pp < 1:
        raise ConfigError(f"--pp {pp!r}; expected an integer ≥ 1")
    if pp > num_layers:
        raise ConfigError(f"--pp {pp}: more pipeline stages than the model's {num_layers} layers")
    base, extra = divmod(num_layers, pp)
    out = [base] * pp
    for k in range(2, extra + 2):  # vLLM: partitions[-i] += 1 for i in 2 .. extra + 1
        out[-k] += 1
    return out


def stage_params(spec: ModelSpec, pp: int) -> list[int]:
    """Parameters of each stage (whole, before TP): its layers (the first ``num_dense_layers``
    dense, the rest MoE), the embedding on the first stage, the final norm and LM head on the last."""
    h = spec.hidden_size
    base = spec.attention_params + 2 * h
    dense = base + 3 * h * spec.intermediate_size
    moe = base + spec.moe_params(active=False) if spec.is_moe else dense
    first_moe = spec.num_layers - spec.num_moe_layers  # index of the first MoE layer
    out, start = [], 0
    for n in stage_layers(spec.num_layers, pp):
        dense_here = max(0, min(start + n, first_moe) - start)
        out.append(dense_here * dense + (n - dense_here) * moe)
        start += n
    out[0] += spec.embedding_params
    out[-1] += spec.embedding_params + h  # LM head (a tied one is a copy on another GPU) + norm
    return out


def stage_weight_bytes(spec: ModelSpec, dtype: str, pp: int) -> int:
    """Weight bytes of the heaviest stage (whole; divide by TP for one GPU). ``pp = 1``: all."""
    if pp == 1:
        return spec.weight_bytes(dtype)
    return max(stage_params(spec, pp)) * WEIGHT_BITS[dtype] // 8


def kv_bytes_per_token_per_gpu(spec: ModelSpec, tp: int, pp: int, dtype: str, attention_dp: int = 1) -> int:
    """KV bytes per token of the instance on one GPU of the stage with the most layers."""
    per_rank = spec.kv_bytes_per_token_per_rank(tp, dtype, attention_dp)
    if pp == 1:
        return per_rank
    return -(-per_rank * max(stage_layers(spec.num_layers, pp)) // spec.num_layers)


def send_bytes_per_token(spec: ModelSpec, dtype: str) -> int:
    """Bytes one stage sends the next per token: hidden state and residual (module docstring)."""
    return 2 * spec.hidden_size * DTYPE_BYTES[activation_dtype(dtype)]


def boundaries_across_nodes(tp: int, pp: int, gpus_per_node: int) -> int:
    """How many of the ``pp − 1`` stage boundaries cross nodes, with stage ``k`` on GPUs
    ``[k·tp, (k+1)·tp)`` of consecutive nodes."""
    return sum(1 for k in range(1, pp) if (k * tp - 1) // gpus_per_node != (k * tp) // gpus_per_node)


@dataclass(frozen=True)
class PipelineSend:
    """The ``pp − 1`` stage-to-stage sends of one micro-batch, summed: ``latency_ms`` plus
    ``ms_per_token`` × its tokens (``profile.yaml``'s ``pp_send``)."""

    latency_ms: float
    ms_per_token: float

    def ms(self, tokens: float) -> float:
        return self.latency_ms + self.ms_per_token * tokens

    def to_dict(self) -> dict[str, float]:
        return {"latency_ms": self.latency_ms, "ms_per_token": self.ms_per_token}

    @classmethod
    def of(cls, spec: ModelSpec, hardware: Hardware, tp: int, pp: int, dtype: str) -> PipelineSend:
        """The sends of a ``tp × pp`` instance of ``spec`` on ``hardware`` (none when ``pp = 1``)."""
        if pp == 1:
            return cls(0.0, 0.0)
        crossing = boundaries_across_nodes(tp, pp, hardware.gpus_per_node)
        per_token = send_bytes_per_token(spec, dtype)
        latency = crossing * p2p_send_s(hardware, 0, True) + (pp - 1 - crossing) * p2p_send_s(
            hardware, 0, False
        )
        one_token = crossing * p2p_send_s(hardware, per_token, True) + (pp - 1 - crossing) * p2p_send_s(
            hardware, per_token, False
        )
        return cls(round(latency * 1e3, 9), round((one_token - latency) * 1e3, 12))


def micro_batch(batch_size: int, pp: int) -> int:
    """Sequences per decode micro-batch: ``⌈N/pp⌉``."""
    return math.ceil(batch_size / pp)

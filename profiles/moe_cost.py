"""Mixture-of-experts and parallel-layout costs for the analytic model (:mod:`pdplan.profiles.analytic`).

**Experts touched by a batch.** A step of ``T`` tokens, each routed to ``k`` of ``E`` experts,
reads the weights of every expert at least one token chose. Under uniform routing (each token's
k-subset drawn independently), an expert is missed by one token with probability 1 − k/E, so the
expected number of distinct experts touched is::

    E · (1 − (1 − k/E)^T)

(the occupancy expectation; e.g. Feller, *An Introduction to Probability Theory*, vol. 1, II.11).
At batch 1 that is k experts — a decode step of Qwen3-30B-A3B reads 8 of 128 experts, about 3.3B
parameters — and it approaches all E as T grows (T = 256: 127.9 of 128). Real routers are skewed,
which touches *fewer* experts than uniform routing at the same T: the model is a slight upper
bound on weight reads. Expert FLOPs are 2 · T · k · 3 · hidden · moe_intermediate either way.

**Expert parallelism** (EP, SGLang ``--ep-size``, vLLM ``--enable-expert-parallel``): each of
``ep`` ranks holds E/ep whole experts (the remaining tp/ep split each expert's intermediate
dimension). Tokens are dispatched to the ranks that hold their experts and combined back: two
all-to-alls per MoE layer, each rank sending its tokens' k copies of the hidden state, of which
(ep − 1)/ep leave the rank; traffic beyond one node crosses the inter-node network
(DeepSeek-V3 report §3.2.2 describes the same dispatch/combine over NVLink and InfiniBand).

**Data-parallel attention** (SGLang ``--enable-dp-attention --dp N``): the instance's GPUs split
into N attention groups of tp/N GPUs, each running attention for its own 1/N of the sequences.
Attention FLOPs per GPU are unchanged, but each GPU reads (and stores) only its own sequences' KV:
for MLA, whose latent cannot be split by heads, TP attention makes every GPU read and hold the
latent of every sequence, and DP attention divides both by N.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdplan.profiles.comm import all_reduce_fit
from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.hardware import Hardware
from pdplan.profiles.model_spec import WEIGHT_BITS, ModelSpec


def expected_distinct_experts(tokens: float, top_k: int, num_experts: int) -> float:
    """Expected experts touched by ``tokens`` tokens choosing ``top_k`` of ``num_experts`` each
    (uniform routing; see the module docstring)."""
    assert 1 <= top_k <= num_experts, "top-k must be within the expert count"
    if tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


@dataclass(frozen=True)
class ExpertReads:
    """The routed-expert weights one GPU reads in a step, as a function of the step's tokens: the
    experts touched (:func:`expected_distinct_experts`) × ``gb_per_expert``, one expert's weights
    held by one GPU summed over the MoE layers (GB).

    Per EP shard: each of ``ep`` ranks holds E/ep whole experts, each split tp/ep ways, so a GPU
    reads, in expectation, touched/ep of its experts × 1/(tp/ep) of each — touched/tp of one
    expert's bytes, whatever the EP split. (The step waits for the busiest rank, which reads a
    little more than the mean when few experts per rank are touched; not modelled.)

    ``micro_batches``: a pipelined instance (``pdplan.profiles.pipeline``) runs a decode batch of B
    as ``pp`` micro-batches of B/pp, each reading the experts *its* tokens touch in every layer on
    its way through the stages, so a round reads X(B/pp), not X(B).
    """

    num_experts: int
    top_k: int
    gb_per_expert: float
    micro_batches: int = 1

    def __post_init__(self) -> None:
        assert 1 <= self.top_k <= self.num_experts, "top-k must be within the expert count"
        assert self.gb_per_expert > 0, "an expert holds weights"

    @classmethod
    def of(cls, spec: ModelSpec, tp: int, dtype: str, pp: int = 1) -> ExpertReads | None:
        """The reads of ``spec``'s routed experts on one GPU of a ``tp``-way instance with weights in
        ``dtype`` (``WEIGHT_BITS``), ``pp`` pipeline stages of them; None for a dense model."""
        if not spec.is_moe:
            return None
        if dtype not in WEIGHT_BITS:
            raise choices_error("dtype", dtype, WEIGHT_BITS)
        expert_bytes = spec.num_moe_layers * spec.expert_params * WEIGHT_BITS[dtype] / 8
        return cls(spec.num_experts, spec.num_experts_per_tok, expert_bytes / tp / 1e9, pp)

    def gb(self, tokens: float) -> float:
        """GB of expert weights one GPU reads in a step of ``tokens`` tokens (a round of
        ``micro_batches`` micro-batches when pipelined)."""
        if self.micro_batches > 1:
            tokens = tokens / self.micro_batches
        return expected_distinct_experts(tokens, self.top_k, self.num_experts) * self.gb_per_expert

    def to_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "gb_per_expert": round(self.gb_per_expert, 9),
        }
        return out | ({"micro_batches": self.micro_batches} if self.micro_batches > 1 else {})


@dataclass(frozen=True)
class Layout:
    """How one instance of ``tp`` GPUs runs a model: ``ep`` ranks split the experts (1: every rank
    holds a TP slice of every expert), ``attention_dp`` groups split the sequences for attention
    (1: tensor-parallel attention over all ``tp`` GPUs). ``pp`` pipeline stages, each such a group
    holding a share of the layers (:mod:`pdplan.profiles.pipeline`): the instance has ``tp × pp``
    GPUs."""

    tp: int = 1
    ep: int = 1
    attention_dp: int = 1
    pp: int = 1

    def check(self, spec: ModelSpec) -> None:
        """Raise ``ConfigError`` when the layout cannot run ``spec`` (named)."""
        for field in ("tp", "ep", "attention_dp", "pp"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{field.replace('_', '-')} {value!r}; expected an integer ≥ 1")
        if self.tp % self.ep or self.tp % self.attention_dp:
            raise ConfigError(
                f"--ep {self.ep} and --attention-dp {self.attention_dp} must divide --tp {self.tp} "
                "(SGLang runs EP and DP attention inside the instance's TP group)"
            )
        if self.ep > 1 and not spec.is_moe:
            raise ConfigError(f"--ep {self.ep}: model {spec.name!r} has no experts")
        if self.ep > 1 and spec.num_experts % self.ep:
            raise ConfigError(
                f"--ep {self.ep} does not divide num_experts={spec.num_experts} of {spec.name!r}"
            )
        if self.pp > spec.num_layers:
            raise ConfigError(
                f"--pp {self.pp}: more pipeline stages than the {spec.num_layers} layers of {spec.name!r}"
            )

    @property
    def gpus(self) -> int:
        """GPUs of one instance: ``tp × pp``."""
        return self.tp * self.pp

    @property
    def attention_tp(self) -> int:
        return self.tp // self.attention_dp

    @property
    def expert_tp(self) -> int:
        return self.tp // self.ep


def all_to_all_s(hardware: Hardware, ranks: int, bytes_per_rank: float) -> float:
    """One all-to-all in which every one of ``ranks`` GPUs sends ``bytes_per_rank`` spread evenly
    over all ranks: α (the all-reduce floor of the intra-node fit) plus the larger of the
    intra-node and inter-node shares at their link rates (they move in parallel)."""
    if ranks <= 1:
        return 0.0
    per_node = min(ranks, hardware.gpus_per_node)
    alpha = all_reduce_fit(hardware, min(per_node, 8)).alpha_us * 1e-6 if per_node > 1 else 0.0
    intra = bytes_per_rank * (per_node - 1) / ranks / (hardware.link_bandwidth_gbps * 1e9)
    inter = 0.0
    if ranks > per_node:
        net = hardware.inter_node_bandwidth_gbps or hardware.link_bandwidth_gbps
        inter = bytes_per_rank * (ranks - per_node) / ranks / (net * 1e9)
        alpha *= 2  # a network hop on top of the NVLink one
    return alpha + max(intra, inter)


def tp_all_reduce_s(hardware: Hardware, ranks: int, num_bytes: float) -> float:
    """One all-reduce of ``num_bytes`` over ``ranks`` GPUs: the fitted intra-node model
    (:func:`pdplan.profiles.comm.all_reduce_fit`) inside a node; a group that spans nodes is
    limited by the inter-node network (ring traffic 2(n−1)/n · b at the per-GPU NIC rate, plus
    the intra-node floor twice)."""
    if ranks <= 1:
        return 0.0
    if ranks <= hardware.gpus_per_node:
        return all_reduce_fit(hardware, ranks).seconds(ranks, num_bytes)
    fit = all_reduce_fit(hardware, min(hardware.gpus_per_node, 8))
    net = hardware.inter_node_bandwidth_gbps or hardware.link_bandwidth_gbps
    return 2 * fit.alpha_us * 1e-6 + 2 * (ranks - 1) / ranks * num_bytes / (net * 1e9)

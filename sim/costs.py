"""From a ``Profile`` to what one instance costs: its latency model and its KV capacity.

KV capacity of one instance (tokens) is computed the way the profile's ``engine`` sizes its pool at
start-up (:mod:`pdplan.profiles.engine`): vLLM takes ``gpu_memory_utilization`` × the device's
memory − weights − the peak activations of a ``max_num_batched_tokens`` forward and a
``max_num_seqs`` sampler run − non-torch memory, in whole blocks of 16 tokens; SGLang takes
``mem_fraction_static`` × memory − weights; TensorRT-LLM 0.9 × what weights and activations
leave. The per-GPU weight shard and per-GPU KV bytes per token are the profile's (each token's KV
is split over the TP ranks, so the per-GPU quotient is already the instance's token count). A
plan's ``max_kv_tokens`` replaces the computed value; its ``gpu_memory_utilisation`` (when set)
replaces the engine's fraction.

Also holds ``StepCoef``, the simulator's internal view of a ``LatencyModel`` with coefficients in
*seconds*, and the cost of a colocated step that mixes a prefill chunk with the decode batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pdplan.profiles.engine import activation_bytes, kv_pool_bytes, kv_tokens
from pdplan.profiles.errors import ProfileError
from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.profile import Profile
from pdplan.sim.cluster import (
    ColocatedCluster,
    ColocatedPool,
    DecodePool,
    DisaggregatedCluster,
    InstanceCost,
    KvLink,
    PrefillPool,
)

#: vLLM's default ``gpu_memory_utilization`` (vllm/engine/arg_utils.py, EngineArgs).
DEFAULT_GPU_MEMORY_UTILISATION = 0.9


def activation_reserve_bytes(profile: Profile, max_step_tokens: int, max_batch_size: int) -> int:
    """Peak live activations of one forward step and its sampler on one GPU (an estimate, stated
    as such; ``pdplan.profiles.engine.activation_bytes``)."""
    return activation_bytes(profile.model, profile.tp, profile.dtype, max_step_tokens, max_batch_size)


def kv_capacity_tokens(
    profile: Profile,
    *,
    max_step_tokens: int,
    max_batch_size: int,
    gpu_memory_utilisation: float | None = None,
) -> int:
    """KV tokens one instance (one TP group) can hold; see the module docstring.

    Raises:
        ProfileError: weights and activations leave no room for KV ("needs X GiB, has Y GiB").
    """
    pool, terms = kv_pool_bytes(
        profile.engine,
        profile.model,
        hardware_name=str(profile.hardware.get("name", "")),
        memory_bytes=profile.memory_bytes,
        tp=profile.tp,
        dtype=profile.dtype,
        max_step_tokens=max_step_tokens,
        max_batch_size=max_batch_size,
        memory_fraction=gpu_memory_utilisation,
        pp=profile.pp,
    )
    tokens = kv_tokens(profile.engine, pool, profile.kv_bytes_per_token)
    if tokens < 1:
        gib = 1 << 30
        raise ProfileError(
            f"model {profile.model.name} at tp={profile.tp} does not fit under {profile.engine}: "
            f"weights {terms['weights'] / gib:.2f} GiB + activations "
            f"{(terms['activations'] + terms['non_torch']) / gib:.2f} GiB per GPU, has "
            f"{terms['usable'] / gib:.2f} GiB of {terms['total'] / gib:.2f} GiB; no room for KV"
        )
    return tokens


def instance_cost(
    profile: Profile,
    *,
    max_step_tokens: int,
    max_batch_size: int,
    max_kv_tokens: int | None = None,
    gpu_memory_utilisation: float | None = None,
) -> InstanceCost:
    """The profile's latency model and the KV capacity (``max_kv_tokens`` when given)."""
    capacity = (
        max_kv_tokens
        if max_kv_tokens is not None
        else kv_capacity_tokens(
            profile,
            max_step_tokens=max_step_tokens,
            max_batch_size=max_batch_size,
            gpu_memory_utilisation=gpu_memory_utilisation,
        )
    )
    if profile.pp == 1:
        return InstanceCost(profile.latency, int(capacity))
    return InstanceCost(profile.latency, int(capacity), pp=profile.pp, pp_send=profile.pp_send)


def disaggregated_cluster(
    prefill: PrefillPool,
    decode: DecodePool,
    link: KvLink,
    profiles: tuple[Profile, Profile],
    gpu_memory_utilisation: float | None = None,
) -> DisaggregatedCluster:
    """The cluster ``simulate`` takes, from pools and the (prefill, decode) profiles.

    Raises:
        ProfileError: a profile's TP differs from its pool's, or the model does not fit.
    """
    prefill_profile, decode_profile = profiles
    _check_tp("prefill", prefill, prefill_profile)
    _check_tp("decode", decode, decode_profile)
    return DisaggregatedCluster(
        prefill=prefill,
        decode=decode,
        link=link,
        prefill_cost=instance_cost(
            prefill_profile,
            max_step_tokens=prefill.step_tokens,
            max_batch_size=prefill.max_batch_size,
            gpu_memory_utilisation=gpu_memory_utilisation,
        ),
        decode_cost=instance_cost(
            decode_profile,
            max_step_tokens=decode.max_batch_size,
            max_batch_size=decode.max_batch_size,
            max_kv_tokens=decode.max_kv_tokens,
            gpu_memory_utilisation=gpu_memory_utilisation,
        ),
        kv_bytes_per_token=prefill_profile.model.kv_bytes_per_token(prefill_profile.dtype),
        num_layers=prefill_profile.model.num_layers,
    )


def colocated_cluster(
    pool: ColocatedPool,
    profile: Profile,
    gpu_memory_utilisation: float | None = None,
) -> ColocatedCluster:
    """The colocated cluster ``simulate`` takes.

    Raises:
        ProfileError: the profile's TP differs from the pool's, or the model does not fit.
    """
    _check_tp("colocated", pool, profile)
    cost = instance_cost(
        profile,
        max_step_tokens=pool.step_tokens,
        max_batch_size=pool.max_batch_size,
        max_kv_tokens=pool.max_kv_tokens,
        gpu_memory_utilisation=gpu_memory_utilisation,
    )
    return ColocatedCluster(pool, cost)


def _check_tp(role: str, pool: PrefillPool | DecodePool | ColocatedPool, profile: Profile) -> None:
    if profile.tp != pool.tp:
        raise ProfileError(f"{role}.tp={pool.tp} but the {role} profile was made at tp={profile.tp}")
    if profile.pp != pool.pp:
        raise ProfileError(f"{role}.pp={pool.pp} but the {role} profile was made at pp={profile.pp}")


@dataclass(frozen=True)
class StepCoef:
    """A ``LatencyModel``'s coefficients in seconds (the simulator's clock).

    prefill_s = pa + pb·seqs + pc·max(Σn, pk) + pd·Σ(n² + 2np); decode step = de + df·max(B, dk) + dg·C
    + xs·(1 − miss^B), with ``pk`` (tokens) and ``dk`` (sequences) the model's roofline knees (0:
    none) and the last term a MoE's expert reads (``LatencyModel.decode_expert_ms``: E·(1 − (1 −
    k/E)^B) experts touched, so ``xs`` is the time to read all E and ``miss`` = 1 − k/E; xs = 0 for
    a dense model). A dense CPU profile's small-batch ramp r·(1 − q^B) (``LatencyModel.decode_ramp_ms``)
    takes the same slot: xs = r, miss = q.
    """

    pa: float
    pb: float
    pc: float
    pd: float
    de: float
    df: float
    dg: float
    pk: float = 0.0
    dk: float = 0.0
    xs: float = 0.0
    miss: float = 1.0
    mixed_floor: float = field(init=False)  # max(pc·pk, df·dk): see ``mixed_s``

    def __post_init__(self) -> None:
        object.__setattr__(self, "mixed_floor", max(self.pc * self.pk, self.df * self.dk))

    @classmethod
    def of(cls, model: LatencyModel) -> StepCoef:
        # Plain floats: numpy scalars (what a fit returns) are several times slower in the event loop.
        a, b, c, d = (float(x) / 1000.0 for x in model.prefill_coef)
        e, f, g = (float(x) / 1000.0 for x in model.decode_coef)
        knees = float(model.prefill_knee_tokens), float(model.decode_knee_batch)
        x = model.experts
        if model.decode_ramp_ms:  # a CPU profile's small-batch ramp r·(1 − q^B): the same saturating form
            ramp = float(model.decode_ramp_ms) / 1000.0
            return cls(a, b, c, d, e, f, g, *knees, xs=ramp, miss=float(model.decode_ramp_rate))
        if x is None or model.decode_expert_coef == 0:
            return cls(a, b, c, d, e, f, g, *knees)
        xs = model.decode_expert_coef * x.num_experts * x.gb_per_expert / 1000.0
        miss = 1.0 - x.top_k / x.num_experts
        if x.micro_batches > 1:  # a pipelined round: X(B/pp) = E·(1 − (miss^(1/pp))^B)
            miss **= 1.0 / x.micro_batches
        return cls(a, b, c, d, e, f, g, *knees, xs=float(xs), miss=miss)

    def expert_s(self, tokens: int) -> float:
        """Reading the routed experts ``tokens`` tokens touch (0 for a dense model)."""
        return self.xs * (1.0 - self.miss**tokens) if self.xs else 0.0

    def prefill_s(self, num_seqs: int, sum_tokens: int, sum_pairs: int) -> float:
        tokens = sum_tokens if sum_tokens > self.pk else self.pk
        return self.pa + self.pb * num_seqs + self.pc * tokens + self.pd * sum_pairs

    def decode_s(self, batch: int, context: int) -> float:
        """One decode step of ``batch`` sequences holding ``context`` tokens (the segment's first)."""
        step = self.de + self.df * (batch if batch > self.dk else self.dk) + self.dg * context
        return step + self.xs * (1.0 - self.miss**batch) if self.xs else step

    def mixed_s(self, num_seqs: int, sum_tokens: int, sum_pairs: int, batch: int, context: int) -> float:
        """One colocated step: prompt chunks (``num_seqs``, Σn, Σpairs) + ``batch`` decodes.

        The fixed per-step cost (weight reads, kernel launches, sampling) is paid once —
        max(pa, de) — and every token-proportional term adds: the prefill terms for the chunk
        tokens and the decode per-sequence and per-context terms for the decodes. This is Vidur's
        approach (Agrawal et al., MLSys 2024: a mixed batch's time is the sum of per-operator
        costs over its token composition) applied to our fitted terms; Sarathi-Serve (Agrawal et
        al., OSDI 2024) shows the decodes ride along almost free in a chunk's GEMMs, which the
        shared fixed cost captures. Pure-prefill and pure-decode steps use their own formulas.

        The roofline knees are read the same way: below its knee each phase's GEMM time is the
        weight read (pc·pk for a prefill, df·dk for a decode step), which one mixed step also
        pays only once, so the token terms cost max(pc·Σn + df·B, pc·pk, df·dk) — the larger
        weight-read floor, or the two phases' compute when that is larger. With no decodes or no
        chunk this is exactly the pure step's term, and with zero knees the plain sum.

        A MoE's decode expert reads (``xs``) are not in that sum: a mixed step costs at least the
        pure decode step of its decodes with the experts *all* its tokens touch, decode_s with
        X(B + Σn) — never less than the decode step alone (X grows with the tokens). The prefill
        fit already prices the chunk's own expert reads (in pa, or in the knee pc·pk), so adding X
        to the sum would count them twice: against the analytic model's own price of mixed steps
        (``bench/moe_models.py``) the max is within its error, the sum 30-60 % high on Mixtral.
        For a dense model (xs = 0) the step is the sum, bit for bit.
        """
        if batch == 0:
            return self.prefill_s(num_seqs, sum_tokens, sum_pairs)
        if num_seqs == 0:
            return self.decode_s(batch, context)
        fixed = self.pa if self.pa > self.de else self.de
        floor = self.mixed_floor
        if floor > self.pc * sum_tokens + self.df * batch:
            step = fixed + self.pb * num_seqs + floor + self.pd * sum_pairs + self.dg * context
        else:
            # the same terms in the same order as before knees existed: bit-identical when they are 0
            step = (
                fixed
                + self.pb * num_seqs
                + self.pc * sum_tokens
                + self.pd * sum_pairs
                + self.df * batch
                + self.dg * context
            )
        if not self.xs:
            return step
        decode = self.de + self.df * (batch if batch > self.dk else self.dk) + self.dg * context
        decode += self.xs * (1.0 - self.miss ** (batch + sum_tokens))
        return step if step > decode else decode

"""Serving engines as pdplan models them: per-step overhead and KV capacity, per engine.

``engine: vllm | sglang | trtllm`` is recorded in a profile and a plan. What it sets:

**Per-step overhead** (``step_overhead_ms``): time per forward step that does not shrink with TP
or batch (CPU scheduling residue, input preparation, sampling launch, CUDA-graph replay). The
kernel floors that *are* measured (per-GEMM ``t0``, all-reduce α; :mod:`pdplan.profiles.gemm`,
:mod:`pdplan.profiles.comm`) are priced separately, so this is only what is left. The values are
assumptions, stated as such: vLLM ≥ 0.6 and SGLang overlap scheduling with the GPU step
(vLLM's v0.6.0 performance post, 2024; SGLang's zero-overhead batch scheduler, v0.4 release
notes, 2024), leaving ~0.5 ms per step for launches and sampling; TensorRT-LLM's C++ runtime has
no Python in the step loop (0.3 ms). Srivatsa et al. (mlsys.wuklab.io, "scheduling overhead",
2024) measured vLLM's non-overlapped scheduling at more than half the step time before that
overlap existed, which is why the value is a named parameter: ``pdplan calibrate`` fits it.

**KV capacity** (tokens per instance), the way each engine sizes its pool at start-up:

- vLLM (``vllm/v1/worker/gpu_worker.py``, ``determine_available_memory``): KV bytes =
  ``gpu_memory_utilization`` (0.9) × the device's total memory − weights − the torch peak of a
  profiling forward of ``max_num_batched_tokens`` tokens followed by a dummy sampler run of
  ``max_num_seqs`` rows − non-torch memory (cuBLAS/NCCL buffers); whole blocks of 16 tokens.
- SGLang (``python/sglang/srt/server_args.py``, ``mem_fraction_static``): KV bytes =
  ``mem_fraction_static`` × total − weights; activations and CUDA graphs live in the remaining
  fraction; pages of 1 token by default. Default fraction by TP: 0.88 (TP1), 0.87 (TP2),
  0.85 (TP4), 0.81 (TP8), 0.79 (TP16) — the rule of SGLang 0.3-0.4's ``server_args.py``.
- TensorRT-LLM (``KvCacheConfig.free_gpu_memory_fraction`` = 0.9): 0.9 × (total − weights −
  activations), blocks of 32 tokens (``tokens_per_block``).

The activation peak is modelled per model and batch limits (:func:`activation_bytes`). "Total
memory" is what the driver exposes, the catalog capacity less :data:`DRIVER_RESERVED_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdplan.profiles.errors import choices_error
from pdplan.profiles.model_spec import DTYPE_BYTES, ModelSpec, activation_dtype
from pdplan.profiles.pipeline import stage_weight_bytes

ENGINES = ("vllm", "sglang", "trtllm")
DEFAULT_ENGINE = "vllm"
#: Catalog capacity minus what CUDA reports as the device's total: measured on the RTX 4090 of the
#: shared vLLM run (meta.json ``device_total_memory_bytes`` 25,250,627,584 of 24 GiB → 495 MiB).
#: An H100 80GB shows 79.18 GiB in torch (a public vLLM memory-profiling log), 0.82 GiB less: we
#: apply the 4090's figure to every GPU (an approximation within 0.5 % of an 80 GB part).
DRIVER_RESERVED_BYTES = 24 * (1 << 30) - 25_250_627_584
#: vLLM's non-torch memory after the profiling run: 0.13 GiB at TP1 and 0.54-0.55 GiB at TP2
#: (NCCL buffers), from vLLM's ``non-torch forward increase memory`` log lines for Llama-3.1-8B,
#: Qwen3-32B and Llama-3.3-70B on H100 (a public vLLM 0.11 memory-profiling write-up).
NON_TORCH_BYTES = {1: int(0.13 * (1 << 30)), 2: int(0.55 * (1 << 30))}
#: Bytes per logit of vLLM's dummy sampler run (``_dummy_sampler_run``), live at its peak: bf16
#: logits (2) + float32 logits (4) + probabilities (4) + log-probabilities (4) + top-k/top-p sort
#: values (4) and int64 indices (8) + mask (4) = 30. An estimate from the sampler's tensors, checked
#: against two published start-ups (tests/profiles/test_engine.py): Llama-3.1-8B on an RTX 4090 at
#: 2048 tokens / 256 seqs (41,408 KV tokens) and on an H100 at 8192 / 1024 (51.38 GiB of KV).
SAMPLER_BYTES_PER_LOGIT = 30


@dataclass(frozen=True)
class Engine:
    name: str
    step_overhead_ms: float
    block_tokens: int


ENGINE_SPECS: dict[str, Engine] = {
    "vllm": Engine("vllm", 0.5, 16),
    "sglang": Engine("sglang", 0.5, 1),
    "trtllm": Engine("trtllm", 0.3, 32),
}
VLLM_GPU_MEMORY_UTILIZATION = 0.9
TRTLLM_FREE_GPU_MEMORY_FRACTION = 0.9


def get_engine(name: str) -> Engine:
    """The named engine; unknown names are a ConfigError listing the choices."""
    if name not in ENGINE_SPECS:
        raise choices_error("engine", name, ENGINES)
    return ENGINE_SPECS[name]


def sglang_mem_fraction_static(tp: int) -> float:
    """SGLang's default ``mem_fraction_static`` for a TP size (see the module docstring)."""
    if tp >= 16:
        return 0.79
    if tp >= 8:
        return 0.81
    if tp >= 4:
        return 0.85
    if tp >= 2:
        return 0.87
    return 0.88


def visible_memory_bytes(hardware_name: str, memory_bytes: int) -> int:
    """What CUDA reports as a GPU's total memory (the CPU's memory is taken as is)."""
    return memory_bytes if hardware_name == "cpu" else memory_bytes - DRIVER_RESERVED_BYTES


def activation_bytes(spec: ModelSpec, tp: int, dtype: str, max_step_tokens: int, max_batch_size: int) -> int:
    """Peak torch memory of vLLM's profiling run on one GPU: the forward and the sampler.

    Forward: one layer's activations are live at a time; the MLP is the peak, holding the
    residual stream and the normalised input (2 × hidden) and the gate/up output plus the
    activation output (3 × intermediate / tp) for every token; in a MoE layer each token's top-k
    experts and the shared experts hold theirs (3 × (k · moe_intermediate + shared) / tp).
    Sampler: ``max_batch_size`` rows of the full vocabulary (logits are gathered) ×
    :data:`SAMPLER_BYTES_PER_LOGIT`.
    """
    widest = spec.intermediate_size if spec.num_moe_layers < spec.num_layers else 0
    if spec.is_moe:
        routed = spec.num_experts_per_tok * spec.moe_intermediate_size
        widest = max(widest, routed + spec.shared_expert_intermediate_size)
    per_token = 2 * spec.hidden_size + 3 * widest // tp
    forward = max_step_tokens * per_token * DTYPE_BYTES[activation_dtype(dtype)]
    sampler = min(max_batch_size, max_step_tokens) * spec.vocab_size * SAMPLER_BYTES_PER_LOGIT
    return forward + sampler


def kv_pool_bytes(
    engine: str,
    spec: ModelSpec,
    *,
    hardware_name: str,
    memory_bytes: int,
    tp: int,
    dtype: str,
    max_step_tokens: int,
    max_batch_size: int,
    memory_fraction: float | None = None,
    pp: int = 1,
) -> tuple[int, dict[str, int]]:
    """KV pool bytes on one GPU and the terms that set it (``total``, ``usable``, ``weights``,
    ``activations``, ``non_torch``); may be ≤ 0 when the model does not fit.

    ``memory_fraction`` overrides the engine's fraction (vLLM ``gpu_memory_utilization``, SGLang
    ``mem_fraction_static``, TRT-LLM ``free_gpu_memory_fraction``). With ``pp`` pipeline stages the
    weights are the heaviest stage's (``pdplan.profiles.pipeline.stage_weight_bytes``).
    """
    get_engine(engine)
    total = visible_memory_bytes(hardware_name, memory_bytes)
    weights = (spec.weight_bytes(dtype) if pp == 1 else stage_weight_bytes(spec, dtype, pp)) // tp
    act = activation_bytes(spec, tp, dtype, max_step_tokens, max_batch_size)
    non_torch = NON_TORCH_BYTES[1 if tp == 1 else 2]
    if engine == "sglang":
        frac = memory_fraction if memory_fraction is not None else sglang_mem_fraction_static(tp)
        usable = int(total * frac)
        act = non_torch = 0  # outside the static fraction
        pool = usable - weights
    elif engine == "trtllm":
        frac = memory_fraction if memory_fraction is not None else TRTLLM_FREE_GPU_MEMORY_FRACTION
        usable = total
        non_torch = 0
        pool = int(frac * (total - weights - act))
    else:
        frac = memory_fraction if memory_fraction is not None else VLLM_GPU_MEMORY_UTILIZATION
        usable = int(total * frac)
        pool = usable - weights - act - non_torch
    terms = {"total": total, "usable": usable, "weights": weights, "activations": act, "non_torch": non_torch}
    return pool, terms


def kv_tokens(engine: str, pool_bytes: int, kv_bytes_per_token: int) -> int:
    """Whole blocks (pages) of the engine's size that fit in ``pool_bytes``, in tokens."""
    block = get_engine(engine).block_tokens
    if pool_bytes <= 0:
        return 0
    return int(pool_bytes // (kv_bytes_per_token * block)) * block

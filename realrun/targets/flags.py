"""Per-version flag tables of the engines pdplan writes launches for, with where each was checked.

A target builds command lines only from flags in these tables; :func:`check_argv` refuses any other
flag, so a typo or a flag from a newer release cannot slip into a script. Where the engine is
importable, ``tests/realrun/targets`` also checks the table against the engine's own parser
(sglang-router's ``launch_router`` parser is installed with the ``serve`` extra).

Sources (read through the public code index; repository + path):

- SGLang server: ``sgl-project/sglang python/sglang/srt/server_args.py`` (``ServerArgs`` fields; a
  field ``tp_size`` is the flag ``--tp-size``), ``DISAGG_TRANSFER_BACKEND_CHOICES`` in the same file,
  and ``docs/advanced_features/server_arguments.md``. The disaggregation, DP-attention, HiCache and
  multi-node flags used here appear unchanged in the RBG examples pinned to ``lmsysorg/sglang:v0.5.9``
  (``sgl-project/rbg examples/inference/*.yaml``, copies in ``shared/data/k8s/rbg``).
- sglang-router: ``sglang_router/launch_router.py`` of the PyPI wheel 0.3.2 (installed here).
- vLLM: ``vllm-project/vllm vllm/engine/arg_utils.py`` (``EngineArgs.add_cli_args``),
  ``vllm/config/kv_transfer.py`` (``KVTransferConfig``: ``kv_connector``, ``kv_role`` ∈
  kv_producer | kv_consumer | kv_both), and the disaggregation proxy
  ``tests/v1/kv_connector/nixl_integration/toy_proxy_server.py`` (``--prefiller-hosts/-ports``,
  ``--decoder-hosts/-ports``, round-robin only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pdplan.profiles.errors import DeployError
from pdplan.profiles.model_spec import activation_dtype

VALUE, SWITCH, MANY = "value", "switch", "many"  # flag takes one value / none / one or more


@dataclass(frozen=True)
class FlagTable:
    """The flags pdplan may emit for one engine entry point at one version."""

    engine: str
    version: str
    entry: tuple[str, ...]  # how the entry point is invoked
    source: str
    flags: Mapping[str, str]  # flag -> VALUE | SWITCH | MANY
    image: str = ""  # container image of that version (k8s target)

    def kind(self, flag: str) -> str:
        if flag not in self.flags:
            raise DeployError(
                f"{self.engine} {self.version} has no flag {flag} in pdplan's checked table "
                f"(source: {self.source})"
            )
        return self.flags[flag]


SGLANG = FlagTable(
    engine="sglang",
    version="0.5.9",
    entry=("python3", "-m", "sglang.launch_server"),
    source="sgl-project/sglang python/sglang/srt/server_args.py",
    image="lmsysorg/sglang:v0.5.9",
    flags={
        "--model-path": VALUE,
        "--served-model-name": VALUE,
        "--host": VALUE,
        "--port": VALUE,
        "--tp-size": VALUE,
        "--pp-size": VALUE,  # pipeline stages (docs.sglang.io advanced_features/pipeline_parallelism)
        "--dp-size": VALUE,
        "--ep-size": VALUE,
        "--enable-dp-attention": SWITCH,
        "--mem-fraction-static": VALUE,
        "--max-running-requests": VALUE,
        "--max-total-tokens": VALUE,
        "--chunked-prefill-size": VALUE,
        "--max-prefill-tokens": VALUE,
        "--base-gpu-id": VALUE,
        "--disaggregation-mode": VALUE,  # null | prefill | decode
        "--disaggregation-transfer-backend": VALUE,  # mooncake | nixl | ...
        "--disaggregation-bootstrap-port": VALUE,  # default 8998
        "--dist-init-addr": VALUE,
        "--nnodes": VALUE,
        "--node-rank": VALUE,
        "--enable-hierarchical-cache": SWITCH,
        "--hicache-storage-backend": VALUE,  # file | mooncake | hf3fs | nixl | aibrix
        "--disable-radix-cache": SWITCH,
        "--dtype": VALUE,  # auto | half | float16 | bfloat16 | float | float32
        "--quantization": VALUE,  # fp8 | awq | gptq | ...
        "--kv-cache-dtype": VALUE,  # auto | fp8_e5m2 | fp8_e4m3
        "--enable-metrics": SWITCH,
        "--trust-remote-code": SWITCH,
    },
)
SGLANG_TRANSFER_BACKENDS = ("mooncake", "nixl")

SGLANG_ROUTER = FlagTable(
    engine="sglang-router",
    version="0.3.2",
    entry=("python3", "-m", "sglang_router.launch_router"),
    source="sglang-router 0.3.2 (PyPI) sglang_router/launch_router.py",
    image="lmsysorg/sglang-router:v0.2.4",  # the router image the RBG examples pin
    flags={
        "--pd-disaggregation": SWITCH,
        "--prefill": MANY,  # URL [BOOTSTRAP_PORT], repeated per prefill instance
        "--decode": MANY,  # URL, repeated per decode instance
        "--worker-urls": MANY,
        "--policy": VALUE,
        "--host": VALUE,
        "--port": VALUE,
        "--prometheus-host": VALUE,
        "--prometheus-port": VALUE,
    },
)
#: plan router -> (sglang-router policy, note when it is not the same policy)
SGLANG_ROUTER_POLICIES = {
    "round_robin": ("round_robin", ""),
    "random": ("random", ""),
    "cache_aware": ("cache_aware", ""),  # simulated as sglang-router's (pdplan.sim.cache_router)
    "least_loaded": (
        "power_of_two",
        "plan router least_loaded (fewest outstanding tokens of all instances) runs as sglang-router's "
        "power_of_two (the less loaded of two random workers): the closest policy it has",
    ),
}

VLLM = FlagTable(
    engine="vllm",
    version="0.11.0",
    entry=("vllm", "serve"),
    source="vllm-project/vllm vllm/engine/arg_utils.py, vllm/config/kv_transfer.py",
    image="vllm/vllm-openai:v0.11.0",
    flags={
        "--host": VALUE,
        "--port": VALUE,
        "--served-model-name": VALUE,
        "--tensor-parallel-size": VALUE,
        "--pipeline-parallel-size": VALUE,  # docs/serving/parallelism_scaling.md
        "--data-parallel-size": VALUE,
        "--data-parallel-size-local": VALUE,
        "--data-parallel-address": VALUE,
        "--data-parallel-rpc-port": VALUE,
        "--data-parallel-start-rank": VALUE,
        "--headless": SWITCH,
        "--enable-expert-parallel": SWITCH,
        "--max-num-seqs": VALUE,
        "--max-num-batched-tokens": VALUE,
        "--max-model-len": VALUE,
        "--gpu-memory-utilization": VALUE,
        "--enable-chunked-prefill": SWITCH,
        "--no-enable-chunked-prefill": SWITCH,
        "--no-enable-prefix-caching": SWITCH,
        "--dtype": VALUE,  # auto | half | float16 | bfloat16 | float | float32
        "--quantization": VALUE,  # fp8 | awq | gptq | ...
        "--kv-cache-dtype": VALUE,  # auto | fp8 | fp8_e4m3 | fp8_e5m2
        "--block-size": VALUE,
        "--num-gpu-blocks-override": VALUE,
        "--kv-transfer-config": VALUE,  # JSON: kv_connector, kv_role
    },
)
#: pdplan transfer backend -> vLLM KV connector (kv_connector in KVTransferConfig)
VLLM_CONNECTORS = {"nixl": "NixlConnector", "mooncake": "MooncakeConnector"}
VLLM_KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}

VLLM_PROXY = FlagTable(
    engine="vllm-proxy",
    version="0.11.0",
    entry=("python3", "toy_proxy_server.py"),
    source="vllm-project/vllm tests/v1/kv_connector/nixl_integration/toy_proxy_server.py",
    image="vllm/vllm-openai:v0.11.0",
    flags={
        "--host": VALUE,
        "--port": VALUE,
        "--prefiller-hosts": MANY,
        "--prefiller-ports": MANY,
        "--decoder-hosts": MANY,
        "--decoder-ports": MANY,
    },
)

TABLES = {t.engine: t for t in (SGLANG, SGLANG_ROUTER, VLLM, VLLM_PROXY)}


def check_argv(table: FlagTable, args: Sequence[str]) -> None:
    """Check the flags after the entry point: every ``--flag`` is in ``table`` and takes as many
    values as the table says.

    Raises:
        DeployError: naming the first flag the engine version does not have, or a misuse.
    """
    i = 0
    while i < len(args):
        flag = args[i]
        if not flag.startswith("--"):
            raise DeployError(f"{table.engine}: expected a flag at {flag!r} in {' '.join(args)}")
        kind = table.kind(flag)
        i += 1
        values = 0
        while i < len(args) and not args[i].startswith("--"):
            values, i = values + 1, i + 1
        if (kind == SWITCH and values) or (kind == VALUE and values != 1) or (kind == MANY and not values):
            raise DeployError(f"{table.engine} {flag}: {kind} flag given {values} values")


def flag_values(table: FlagTable, args: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``args`` (checked) as ``[(flag, [values...]), ...]`` in order — for parsing scripts back."""
    check_argv(table, args)
    out: list[tuple[str, list[str]]] = []
    for arg in args:
        if arg.startswith("--"):
            out.append((arg, []))
        else:
            out[-1][1].append(arg)
    return out


def dtype_flags(dtype: str | None, kv_dtype: str | None, kv_fp8: str) -> list[str]:
    """The engine flags that serve the plan's weight and KV dtypes (both engines spell them alike):
    float types → ``--dtype``, fp8 (W8A8, quantised at load) → ``--quantization fp8``, fp8 KV →
    ``--kv-cache-dtype kv_fp8`` (the engine's name for e4m3). int4 has no flag: the engines read a
    GPTQ/AWQ checkpoint's quantisation from its config (see ``int4_note``)."""
    args: list[str] = []
    if dtype in ("float16", "bfloat16", "float32"):
        args += ["--dtype", dtype]
    elif dtype == "fp8":
        args += ["--quantization", "fp8"]
    if kv_dtype == "fp8":
        args += ["--kv-cache-dtype", kv_fp8]
    elif kv_dtype is not None and dtype is not None and kv_dtype != activation_dtype(dtype):
        raise DeployError(
            f"kv_dtype {kv_dtype} beside {dtype} weights: the engines hold KV in the activation dtype "
            f"({activation_dtype(dtype)}) or in fp8"
        )
    return args


def int4_note(dtype: str | None) -> str:
    """What a user must do for an int4 plan (empty otherwise)."""
    if dtype != "int4":
        return ""
    return (
        "the plan was simulated with int4 weights: give --model-path a GPTQ/AWQ int4 checkpoint (the "
        "engines read its quantisation from its config; no flag quantises bf16 weights to int4)"
    )

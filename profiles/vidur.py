"""Readers for Vidur's published operator measurements (``shared/data/measurements/vidur_profiling``).

Vidur (Agrawal et al., MLSys 2024; microsoft/vidur @ 7d47513, ``data/profiling``) timed NCCL
all-reduces on DGX A100/H100 nodes and NVLink pairs, and the per-layer ops of Llama-2-7B, Llama-3-8B
and Llama-3-70B at TP 1-8 on A100 and H100. pdplan fits its all-reduce model
(:mod:`pdplan.profiles.comm`) and its GEMM/elementwise efficiency model
(:mod:`pdplan.profiles.gemm`) on these tables; ``bench/fidelity.py`` and the tests read them.
Nothing here runs in the simulator or the CLI: the fitted constants ship in those modules.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pdplan.profiles.errors import ProfileError

#: The four projection GEMMs of a Llama layer, as Vidur names them.
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
#: Vidur's memory-bound elementwise ops (one kernel each per layer; ``add`` runs twice).
ELEMENTWISE_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
_BF16 = 2


def read_all_reduce(network_dir: str | Path) -> pd.DataFrame:
    """All single-node all-reduce measurements: ``topology, num_workers, bytes, time_ms``.

    ``topology`` is the folder name (``a100_dgx``, ``h100_pairwise_nvlink`` ...). Rows whose workers
    span several nodes (``devices_per_node < num_workers``) are dropped: tensor parallelism runs
    inside one node. Vidur's ``size`` counts fp16 elements, so bytes = 2 × size. Repeated sizes keep
    the median of their medians.
    """
    frames = []
    for path in sorted(Path(network_dir).glob("*/all_reduce.csv")):
        raw = pd.read_csv(path)
        raw = raw[raw["devices_per_node"] == raw["num_workers"]]
        df = raw.groupby(["num_workers", "size"])["time_stats.all_reduce.median"].median().reset_index()
        frames.append(
            pd.DataFrame(
                {
                    "topology": path.parent.name,
                    "num_workers": df["num_workers"].astype(int),
                    "bytes": df["size"].astype(float) * _BF16,
                    "time_ms": df["time_stats.all_reduce.median"].astype(float),
                }
            )
        )
    if not frames:
        raise ProfileError(f"no */all_reduce.csv under {network_dir}")
    return pd.concat(frames, ignore_index=True)


def read_compute(compute_dir: str | Path) -> pd.DataFrame:
    """Per-layer op times: ``gpu, model, op, kind, tp, tokens, flops, bytes, time_ms``.

    One row per (file row, op). ``kind`` is ``gemm`` or ``elementwise``. For a GEMM of a
    ``tokens × K`` input by a ``K × N`` shard, flops = 2·tokens·K·N and bytes = 2·(K·N + tokens·(K+N))
    (bf16 weights, input and output); elementwise bytes are what the op reads and writes.
    """
    rows: list[dict[str, object]] = []
    for path in sorted(Path(compute_dir).glob("*/*/*/mlp.csv")):
        gpu, model = path.parts[-4], path.parts[-2]
        df = pd.read_csv(path)
        for rec in df.to_dict("records"):
            heads, kv, hidden = int(rec["n_head"]), int(rec["n_kv_head"]), int(rec["n_embd"])
            inter, tp, tokens = (
                int(rec["n_expanded_embd"]),
                int(rec["num_tensor_parallel_workers"]),
                int(rec["num_tokens"]),
            )
            head_dim = hidden // heads
            q, kvs = heads * head_dim // tp, max(1, kv // tp) * head_dim
            gemms = {
                "attn_pre_proj": (hidden, q + 2 * kvs),
                "attn_post_proj": (q, hidden),
                "mlp_up_proj": (hidden, 2 * inter // tp),
                "mlp_down_proj": (inter // tp, hidden),
            }
            for op, (k, n) in gemms.items():
                rows.append(
                    dict(
                        gpu=gpu,
                        model=model,
                        op=op,
                        kind="gemm",
                        tp=tp,
                        tokens=tokens,
                        flops=2.0 * tokens * k * n,
                        bytes=float(_BF16 * (k * n + tokens * (k + n))),
                        time_ms=float(rec[f"time_stats.{op}.median"]),
                    )
                )
            elementwise = {
                "input_layernorm": 2 * hidden,
                "post_attention_layernorm": 2 * hidden,
                "attn_rope": 2 * (q + kvs),
                "mlp_act": 3 * inter // tp,
                "add": 3 * hidden,
            }
            for op, per_token in elementwise.items():
                rows.append(
                    dict(
                        gpu=gpu,
                        model=model,
                        op=op,
                        kind="elementwise",
                        tp=tp,
                        tokens=tokens,
                        flops=0.0,
                        bytes=float(_BF16 * per_token * tokens),
                        time_ms=float(rec[f"time_stats.{op}.median"]),
                    )
                )
    if not rows:
        raise ProfileError(f"no */*/*/mlp.csv under {compute_dir}")
    return pd.DataFrame(rows)

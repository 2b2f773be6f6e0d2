"""Check the analytic roofline's efficiency factors on a real CUDA GPU (plain PyTorch, bf16).

Measures, on one GPU, with CUDA events after warm-up (median of repeats):

1. DRAM copy bandwidth (bytes read + written) — the ceiling for MBU;
2. the GEMMs of one Llama-3.1-8B layer at M tokens — achieved TFLOP/s (MFU) and weight GB/s (MBU);
3. causal GQA attention (SDPA) for prefill — achieved TFLOP/s (attention efficiency);
4. whole Llama-3.1-8B-shaped steps (random bf16 weights, SDPA attention over a static KV cache):
   decode steps replayed from a CUDA graph, prefill forwards in eager mode,

and prints them next to ``pdplan.profiles.analytic``'s prediction for the catalog entry of this
GPU. Writes the table as JSON to ``--out``. Usage (on a CUDA machine)::

    python bench/analytic_factors.py --out analytic_factors.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

# Llama-3.1-8B shapes (profiles/catalog/llama-3.1-8b.json)
H, FF, L, NH, NKV, D, V = 4096, 14336, 32, 32, 8, 128, 128256
DT = torch.bfloat16


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def timed(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rand(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device=DEVICE, dtype=DT).normal_(std=0.02)


class Llama8B:
    """Random-weight Llama-3.1-8B forward with a static KV cache (enough for timing)."""

    def __init__(self, num_layers: int = L) -> None:
        q, kv = NH * D, NKV * D
        self.layers = [
            (rand(q + 2 * kv, H), rand(H, q), rand(2 * FF, H), rand(H, FF)) for _ in range(num_layers)
        ]
        self.norm = torch.ones(H, device=DEVICE, dtype=DT)
        self.lm_head = rand(V, H)

    def layer(self, x, w, attn):
        wqkv, wo, wgu, wd = w
        h = F.rms_norm(x, (H,), self.norm)
        qkv = h @ wqkv.t()
        x = x + attn(qkv) @ wo.t()
        g, u = (F.rms_norm(x, (H,), self.norm) @ wgu.t()).chunk(2, dim=-1)
        return x + (F.silu(g) * u) @ wd.t()

    def decode(self, x, caches):
        """x: (B, H); caches: per layer (k, v) of shape (B, NKV, C, D), last slot written."""
        b = x.shape[0]

        def attn_for(k_cache, v_cache):
            def attn(qkv):
                q, k, v = qkv.split([NH * D, NKV * D, NKV * D], dim=-1)
                k_cache[:, :, -1] = k.view(b, NKV, D)
                v_cache[:, :, -1] = v.view(b, NKV, D)
                o = F.scaled_dot_product_attention(q.view(b, NH, 1, D), k_cache, v_cache, enable_gqa=True)
                return o.reshape(b, NH * D)

            return attn

        for w, (kc, vc) in zip(self.layers, caches, strict=True):
            x = self.layer(x, w, attn_for(kc, vc))
        return F.rms_norm(x, (H,), self.norm) @ self.lm_head.t()

    def prefill(self, x, num_seqs: int, seq_len: int):
        def attn(qkv):
            q, k, v = qkv.split([NH * D, NKV * D, NKV * D], dim=-1)
            shape = (num_seqs, seq_len, -1, D)
            o = F.scaled_dot_product_attention(
                q.view(shape).transpose(1, 2),
                k.view(shape).transpose(1, 2),
                v.view(shape).transpose(1, 2),
                is_causal=True,
                enable_gqa=True,
            )
            return o.transpose(1, 2).reshape(num_seqs * seq_len, NH * D)

        for w in self.layers:
            x = self.layer(x, w, attn)
        last = x.view(num_seqs, seq_len, H)[:, -1]
        return F.rms_norm(last, (H,), self.norm) @ self.lm_head.t()


def analytic(kind: str, a: int, b: int) -> float:
    """The analytic model's step time for this GPU's catalog entry (NaN when unknown)."""
    try:
        from pdplan.profiles.analytic import Roofline
        from pdplan.profiles.hardware import CATALOG, catalog_name_for_device
        from pdplan.profiles.model_spec import load_model_spec
    except ImportError:
        return float("nan")
    name = catalog_name_for_device(torch.cuda.get_device_name()) if DEVICE == "cuda" else None
    if name is None:
        return float("nan")
    roof = Roofline(load_model_spec("llama-3.1-8b"), CATALOG[name], 1, "bfloat16")
    return (roof.prefill(a, b) if kind == "prefill" else roof.decode(a, b)).total_ms


def decode_ms(model: Llama8B, b: int, c: int) -> tuple[float, float]:
    """(CUDA-graph replay ms, eager ms) of one decode step; eager twice on the CPU."""
    caches = [(rand(b, NKV, c + 1, D), rand(b, NKV, c + 1, D)) for _ in model.layers]
    x = rand(b, H)
    eager = timed(lambda: model.decode(x, caches), repeats=10)
    if DEVICE == "cpu":
        return eager, eager
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            model.decode(x, caches)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model.decode(x, caches)
    return timed(graph.replay), eager


def copy_ms(nbytes: int) -> float:
    src = torch.empty(nbytes, device=DEVICE, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="analytic_factors.json")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and one layer: checks the script runs (e.g. on a CPU)",
    )
    args = parser.parse_args()
    smoke = args.smoke
    rows: list[dict] = []

    def add(section: str, case: str, ms: float, **extra: float) -> None:
        row = {
            "section": section,
            "case": case,
            "ms": round(ms, 4),
            **{k: round(v, 4) for k, v in extra.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}", flush=True)
    nbytes = 1 << (24 if smoke else 30)
    ms = copy_ms(nbytes)
    add("copy", f"{nbytes >> 20} MiB", ms, gbps=2 * nbytes / ms / 1e6)

    # 2. one layer's GEMMs at M tokens: achieved TFLOP/s and weight-streaming GB/s
    layer = [rand(NH * D + 2 * NKV * D, H), rand(H, NH * D), rand(2 * FF, H), rand(H, FF)]
    weight_bytes = sum(w.numel() for w in layer) * 2
    sizes = (1, 64) if smoke else (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    for m in sizes:
        x, xi = rand(m, H), rand(m, FF)

        def gemms(x=x, xi=xi):
            for a, w in ((x, layer[0]), (x, layer[1]), (x, layer[2]), (xi, layer[3])):
                a @ w.t()

        ms = timed(gemms)
        flops = 2 * m * weight_bytes / 2
        add("gemm", f"layer M={m}", ms, tflops=flops / ms / 1e9, weight_gbps=weight_bytes / ms / 1e6)

    # 3. causal GQA attention (FLOPs of the causal half, as FlashAttention's benchmarks count)
    for n in (128,) if smoke else (512, 2048, 8192, 16384):
        s = max(1, (256 if smoke else 16384) // n)
        q, k, v = rand(s, NH, n, D), rand(s, NKV, n, D), rand(s, NKV, n, D)
        ms = timed(
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        )
        add("attention", f"prefill {s}x{n}", ms, tflops=4 * s * NH * D * n * (n + 1) / 2 / ms / 1e9)
        del q, k, v

    # 4. whole Llama-3.1-8B-shaped steps
    model = Llama8B(1 if smoke else L)
    for b, c in ((1, 128),) if smoke else ((1, 1024), (16, 1024), (64, 1024), (256, 1024), (64, 4096)):
        ms, eager = decode_ms(model, b, c)
        add("decode", f"B={b} ctx={c}", ms, eager_ms=eager, analytic_ms=analytic("decode", b, c))
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    for s, n in ((1, 64),) if smoke else ((1, 128), (1, 512), (1, 2048), (4, 1024), (1, 8192), (1, 16384)):
        x = rand(s * n, H)
        ms = timed(lambda x=x, s=s, n=n: model.prefill(x, s, n), repeats=10)
        add("prefill", f"{s}x{n}", ms, analytic_ms=analytic("prefill", s, n))

    with open(args.out, "w") as fh:
        json.dump({"device": name, "torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()

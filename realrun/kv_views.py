"""Byte views of a ``KVCache`` for the wire: what the prefill sends from and the decode receives into.

A cache holds ``k``/``v`` as ``[num_layers, num_kv_heads, capacity, head_dim]``; the valid
``length`` positions of one (layer, head) are contiguous, so on the CPU the wire payload — ``k`` then
``v``, each ``[num_layers, num_kv_heads, length, head_dim]`` C-contiguous — is sent from, and received
into, ``2 × num_layers × num_kv_heads`` slices of the caches themselves: no user-space copy on either
side. CUDA caches are staged through one host copy each way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pdplan.profiles.kv_cache import KVCache
from pdplan.realrun.kv_wire import KvMeta, WireError


def _byte_view(t: torch.Tensor) -> memoryview:
    assert t.is_contiguous() and t.device.type == "cpu", "byte views need contiguous host memory"
    return t.view(torch.uint8).numpy().data.cast("B")


def _slices(k: torch.Tensor, v: torch.Tensor, length: int) -> list[memoryview]:
    layers, heads = k.shape[0], k.shape[1]
    return [
        _byte_view(t[layer, head, :length])
        for t in (k, v)
        for layer in range(layers)
        for head in range(heads)
    ]


def kv_meta(
    cache: KVCache,
    dtype: str,
    first_token: int,
    prefill_start_s: float,
    prefill_end_s: float,
    cached_tokens: int = 0,
    prefill_arrival_s: float = 0.0,
    prefill_queued_s: float = 0.0,
) -> KvMeta:
    """The typed header describing ``cache``'s valid positions (``cached_tokens`` of them came from
    the prefill's prefix cache)."""
    shape = (cache.num_layers, int(cache.k.shape[1]), cache.length, int(cache.k.shape[3]))
    return KvMeta(
        first_token, cache.length, prefill_start_s, prefill_end_s, dtype, (shape, shape), False,
        cached_tokens, prefill_arrival_s, prefill_queued_s,
    )  # fmt: skip


def send_views(cache: KVCache) -> list[memoryview]:
    """The payload of ``cache`` as byte views (the returned views keep any staging copy alive)."""
    if cache.device.type == "cpu":
        return _slices(cache.k, cache.v, cache.length)
    k, v = cache.to_tensors()
    return [_byte_view(k.cpu()), _byte_view(v.cpu())]


def expected_meta(spec_shape: tuple[int, int, int], dtype: str, prompt_tokens: int, meta: KvMeta) -> None:
    """Check that a received header describes *this* model's KV for *this* prompt.

    ``spec_shape`` is ``(num_layers, num_kv_heads, head_dim)`` of the receiving executor.

    Raises:
        WireError: another dtype, shape or prompt length than expected.
    """
    layers, heads, head_dim = spec_shape
    want = (layers, heads, prompt_tokens, head_dim)
    if meta.dtype != dtype:
        raise WireError(f"KV dtype {meta.dtype}; this worker runs {dtype}")
    if meta.prompt_tokens != prompt_tokens or meta.shapes != (want, want):
        raise WireError(f"KV shapes {list(meta.shapes)} for {meta.prompt_tokens} tokens; expected 2 × {want}")


def receive_views(cache: KVCache, length: int) -> tuple[list[memoryview], Callable[[], None]]:
    """The byte views a payload of ``length`` positions is read into, and a ``finish`` to call once
    every byte arrived (sets ``length``; copies a CUDA staging buffer onto the device)."""
    assert cache.length == 0 and length <= cache.capacity, "an empty cache with room for the prompt"
    if cache.device.type == "cpu":
        views = _slices(cache.k, cache.v, length)

        def finish() -> None:
            cache.length = length

        return views, finish
    shape = (cache.num_layers, int(cache.k.shape[1]), length, int(cache.k.shape[3]))
    k_host = torch.empty(shape, dtype=cache.dtype, pin_memory=True)
    v_host = torch.empty_like(k_host)

    def finish_device() -> None:
        cache.k[:, :, :length].copy_(k_host)
        cache.v[:, :, :length].copy_(v_host)
        cache.length = length

    return [_byte_view(k_host), _byte_view(v_host)], finish_device

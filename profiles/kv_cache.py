"""``KVCache``: the keys and values of one request, every layer, in two contiguous tensors.

Layout (the same for keys and values)::

    k, v: [num_layers, num_kv_heads, capacity, head_dim]   (dtype and device of the executor)

Token ``t`` of layer ``l`` lives at ``k[l, :, t, :]``; the first ``length`` positions are valid, the
rest is reserved space. Keeping every head's positions contiguous lets attention read
``k[l, :, :length]`` as a strided view, with no copy, in the ``[heads, tokens, head_dim]`` layout that
``scaled_dot_product_attention`` wants.

Growth: :meth:`KVCache.reserve` makes room for a total length. When the capacity is too small it is
raised to ``max(needed, 2 × capacity)`` rounded up to a multiple of :data:`CAPACITY_ALIGN_TOKENS`
(doubling, so appending one token per decode step costs amortised O(1) copies). Callers that know a
request's final length (prompt + max new tokens) reserve it once and never regrow.

Transport: :meth:`to_tensors` gives exactly ``length`` positions as two contiguous tensors
``[num_layers, num_kv_heads, length, head_dim]`` whose raw bytes (``tensor.view(torch.uint8)`` or
``.numpy().tobytes()`` for float32/float16) can be shipped with a header holding dtype and shape;
:meth:`from_tensors` rebuilds a cache from such tensors (reserving extra room for decode).
"""

from __future__ import annotations

import torch

#: Capacities are multiples of this many tokens (keeps regrowth rare and sizes tidy).
CAPACITY_ALIGN_TOKENS = 64


def aligned_capacity(tokens: int) -> int:
    """``tokens`` rounded up to a multiple of :data:`CAPACITY_ALIGN_TOKENS` (the capacity held)."""
    return -(-tokens // CAPACITY_ALIGN_TOKENS) * CAPACITY_ALIGN_TOKENS


class KVCache:
    """Per-request KV cache: ``k``/``v`` of shape ``[num_layers, num_kv_heads, capacity, head_dim]``
    whose first ``length`` positions hold the request's tokens."""

    __slots__ = ("k", "length", "v")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        assert k.shape == v.shape and k.dim() == 4, f"k {tuple(k.shape)} / v {tuple(v.shape)}"
        assert k.dtype == v.dtype and k.device == v.device, "k and v must share dtype and device"
        assert k.is_contiguous() and v.is_contiguous(), "cache storage must be contiguous"
        assert 0 <= length <= k.shape[2], f"length {length} outside capacity {k.shape[2]}"
        self.k = k
        self.v = v
        self.length = length

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        capacity_tokens: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        """An empty cache (``length`` 0) with room for ``capacity_tokens`` (aligned up)."""
        shape = (num_layers, num_kv_heads, aligned_capacity(max(capacity_tokens, 1)), head_dim)
        # Positions at or past ``length`` are never read, so the storage needs no initialising.
        k = torch.empty(shape, dtype=dtype, device=device)
        return cls(k, torch.empty_like(k), 0)

    # --- shape ------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.k.shape[2])

    @property
    def num_layers(self) -> int:
        return int(self.k.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def nbytes(self) -> int:
        """Bytes held (the whole capacity, keys and values)."""
        return 2 * self.k.numel() * self.k.element_size()

    def used_bytes(self) -> int:
        """Bytes of the ``length`` valid positions (what :meth:`to_tensors` ships)."""
        per_token = 2 * self.k.shape[0] * self.k.shape[1] * self.k.shape[3] * self.k.element_size()
        return int(per_token * self.length)

    # --- growth -----------------------------------------------------------------------------------
    def reserve(self, total_tokens: int) -> None:
        """Make room for ``total_tokens`` positions (doubling, aligned); keeps the valid prefix."""
        if total_tokens <= self.capacity:
            return
        new_capacity = aligned_capacity(max(total_tokens, 2 * self.capacity))
        shape = (self.k.shape[0], self.k.shape[1], new_capacity, self.k.shape[3])
        k = torch.empty(shape, dtype=self.k.dtype, device=self.k.device)
        v = torch.empty_like(k)
        k[:, :, : self.length].copy_(self.k[:, :, : self.length])
        v[:, :, : self.length].copy_(self.v[:, :, : self.length])
        self.k, self.v = k, v

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to re-run a step at the same context)."""
        assert 0 <= length <= self.length, f"cannot truncate length {self.length} to {length}"
        self.length = length

    # --- transport --------------------------------------------------------------------------------
    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the valid positions: two new contiguous tensors
        ``[num_layers, num_kv_heads, length, head_dim]`` (copies; the cache stays usable)."""
        return (
            self.k[:, :, : self.length].contiguous(),
            self.v[:, :, : self.length].contiguous(),
        )

    @classmethod
    def from_tensors(cls, k: torch.Tensor, v: torch.Tensor, *, reserve_tokens: int = 0) -> KVCache:
        """A cache holding ``k``/``v`` (``[num_layers, num_kv_heads, length, head_dim]``, same dtype
        and device), with room for ``reserve_tokens`` more positions before it has to grow."""
        assert k.shape == v.shape and k.dim() == 4, f"k {tuple(k.shape)} / v {tuple(v.shape)}"
        length = int(k.shape[2])
        cache = cls.allocate(
            int(k.shape[0]),
            int(k.shape[1]),
            int(k.shape[3]),
            length + max(reserve_tokens, 1),
            dtype=k.dtype,
            device=k.device,
        )
        cache.k[:, :, :length].copy_(k)
        cache.v[:, :, :length].copy_(v)
        cache.length = length
        return cache

    def __repr__(self) -> str:
        return (
            f"KVCache(length={self.length}, capacity={self.capacity}, "
            f"shape={tuple(self.k.shape)}, dtype={self.k.dtype}, device={self.k.device})"
        )

"""Same-host KV hand-off in one copy: decode caches in shared memory that the prefill writes into.

A decode worker on the CPU allocates its pooled caches in anonymous shared memory
(``memfd_create``). When a hand-off runs over the local Unix socket, READY carries the cache's file
descriptor (SCM_RIGHTS); the prefill maps it and copies its KV straight into the decode's cache —
one memcpy, the way Mooncake or NIXL write into a decode worker's registered KV buffers over RDMA
or NVLink — then sends the KV header flagged *in place*. The prefill keeps those mappings (the
decode worker recycles its caches, and a fresh mapping costs a page fault per 4 KiB), bounded in
bytes. Nothing is named on a filesystem, so nothing can leak: the memory lives while a process holds
the descriptor or a mapping.

Buffer layout (the decode side's ``KVCache``): ``k`` then ``v``, each
``[num_layers, num_kv_heads, capacity, head_dim]`` C-contiguous, in the executor's dtype.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import stat
import threading
import weakref
from collections import OrderedDict

import torch

from pdplan.profiles.kv_cache import CAPACITY_ALIGN_TOKENS, KVCache
from pdplan.realrun.kv_wire import WireError

#: Largest capacity a prefill maps for a decode worker (a sanity bound, far above any context).
MAX_CAPACITY_TOKENS = 1 << 22
#: Decode buffers a prefill worker keeps mapped between hand-offs (see ``SharedWriter``).
MAX_MAPPED_BYTES = 2 << 30


def _views(
    buf: torch.Tensor, shape: tuple[int, int, int, int], dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    half = buf.numel() // 2
    return buf[:half].view(dtype).view(shape), buf[half:].view(dtype).view(shape)


def buffer_bytes(shape: tuple[int, int, int, int], dtype: torch.dtype) -> int:
    return 2 * math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class SharedCaches:
    """Allocates memfd-backed caches of one model's shape and remembers their descriptors."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        self.num_layers, self.num_kv_heads, self.head_dim, self.dtype = (
            num_layers,
            num_kv_heads,
            head_dim,
            dtype,
        )
        self._fds: dict[int, int] = {}  # data_ptr of k -> descriptor

    def allocate(self, capacity_tokens: int) -> KVCache:
        """An empty cache with room for ``capacity_tokens`` (aligned up) in shared memory."""
        capacity = -(-max(capacity_tokens, 1) // CAPACITY_ALIGN_TOKENS) * CAPACITY_ALIGN_TOKENS
        shape = (self.num_layers, self.num_kv_heads, capacity, self.head_dim)
        size = buffer_bytes(shape, self.dtype)
        fd = os.memfd_create("pdplan-kv", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        k, v = _views(torch.frombuffer(mapping, dtype=torch.uint8), shape, self.dtype)
        key = k.data_ptr()
        self._fds[key] = fd
        weakref.finalize(k, self._forget, key, fd)  # the mapping goes with the tensors
        return KVCache(k, v, 0)

    def fd_of(self, cache: KVCache) -> int | None:
        """The descriptor of a cache this allocator made (``None`` for any other cache)."""
        return self._fds.get(cache.k.data_ptr())

    def _forget(self, key: int, fd: int) -> None:
        self._fds.pop(key, None)
        os.close(fd)


class SharedWriter:
    """The prefill side: writes KV into decode buffers, keeping their mappings for the next time.

    A decode worker recycles its caches, so the same buffers come back again and again; mapping one
    afresh costs a page-table entry per 4 KiB page (more than the copy on a VM), so mappings are kept,
    keyed by the buffer's identity (device, inode), least recently used first out once they exceed
    ``max_mapped_bytes``. A kept mapping also keeps a buffer the decode side has dropped alive until
    it is evicted: that is the memory cost, bounded by ``max_mapped_bytes``. So that a decode worker
    that died (and was restarted) does not leave its whole pool pinned in the prefill, each mapping
    remembers its owner (the decode process, from ``SO_PEERCRED``); mappings of owners that no
    longer run are dropped at the next write. Thread-safe.
    """

    def __init__(self, max_mapped_bytes: int = MAX_MAPPED_BYTES) -> None:
        self.max_mapped_bytes = max_mapped_bytes
        self._maps: OrderedDict[tuple[int, int], tuple[mmap.mmap, torch.Tensor]] = OrderedDict()
        self._owners: dict[tuple[int, int], tuple[int, int | None]] = {}  # key -> (pid, start ticks)
        self._bytes = 0
        self._lock = threading.Lock()

    def write(
        self, fd: int, capacity_tokens: int, cache: KVCache, owner: tuple[int, int | None] | None = None
    ) -> int:
        """Copy ``cache``'s valid positions into the decode buffer behind ``fd``; returns the KV bytes.

        Raises:
            WireError: ``fd`` is not a regular shared-memory file of exactly the size
                ``capacity_tokens`` implies, or the capacity is out of bounds.
        """
        layers, heads, _, head_dim = (int(x) for x in cache.k.shape)
        n = cache.length
        if not n <= capacity_tokens <= MAX_CAPACITY_TOKENS:
            raise WireError(
                f"shared KV buffer of {capacity_tokens} tokens for {n} (limit {MAX_CAPACITY_TOKENS})"
            )
        shape = (layers, heads, capacity_tokens, head_dim)
        size = buffer_bytes(shape, cache.dtype)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise WireError(f"shared KV buffer of {info.st_size} bytes; its capacity implies {size}")
        k, v = _views(self._mapped(fd, (info.st_dev, info.st_ino), size, owner), shape, cache.dtype)
        k[:, :, :n].copy_(cache.k[:, :, :n])
        v[:, :, :n].copy_(cache.v[:, :, :n])
        return buffer_bytes((layers, heads, n, head_dim), cache.dtype)

    def _mapped(
        self, fd: int, key: tuple[int, int], size: int, owner: tuple[int, int | None] | None
    ) -> torch.Tensor:
        with self._lock:
            self._drop_orphans()
            entry = self._maps.get(key)
            if entry is not None and len(entry[0]) == size:
                self._maps.move_to_end(key)
                return entry[1]
            if entry is not None:
                self._drop(key)
            # MAP_POPULATE builds the page tables in one call instead of one fault per page.
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
            buf = torch.frombuffer(mapping, dtype=torch.uint8)
            self._maps[key] = (mapping, buf)
            if owner is not None:
                self._owners[key] = owner
            self._bytes += size
            while self._bytes > self.max_mapped_bytes and len(self._maps) > 1:
                self._drop(next(iter(self._maps)))
            return buf

    @property
    def mapped_bytes(self) -> int:
        return self._bytes

    def _drop_orphans(self) -> None:
        """Drop the mappings of decode processes that no longer run (lock held)."""
        from pdplan.realrun.procfs import is_alive

        gone = {o for o in set(self._owners.values()) if not is_alive(o[0], o[1])}
        for key in [k for k, o in self._owners.items() if o in gone]:
            if key in self._maps:
                self._drop(key)

    def _drop(self, key: tuple[int, int]) -> None:
        self._owners.pop(key, None)
        mapping, buf = self._maps.pop(key)
        self._bytes -= len(mapping)
        del buf
        with contextlib.suppress(BufferError):  # a view still in use elsewhere: closed when collected
            mapping.close()

    def close(self) -> None:
        with self._lock:
            for key in list(self._maps):
                self._drop(key)

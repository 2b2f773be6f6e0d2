"""The prefill's kept mappings of decode buffers: reused while their decode worker lives, dropped once
it is gone (a restarted decode worker must not leave its old pool pinned in the prefill's memory)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from pdplan.realrun.kv_shm import SharedCaches, SharedWriter  # noqa: E402
from pdplan.realrun.procfs import start_ticks  # noqa: E402


def test_mappings_of_a_dead_decode_worker_are_dropped(executor: Any) -> None:
    spec = executor.spec
    shared = SharedCaches(spec.num_layers, spec.num_kv_heads, spec.head_dim, executor.dtype)
    _, caches = executor.prefill([[5, 6, 7, 8]])
    writer = SharedWriter()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner = (dead.pid, start_ticks(dead.pid))
    dead.wait()
    old, new = shared.allocate(16), shared.allocate(16)
    writer.write(shared.fd_of(old), old.capacity, caches[0], dead_owner)  # type: ignore[arg-type]
    first = writer.mapped_bytes
    assert first > 0
    me = (os.getpid(), start_ticks(os.getpid()))
    writer.write(shared.fd_of(new), new.capacity, caches[0], me)  # type: ignore[arg-type]
    assert writer.mapped_bytes == first  # the dead owner's buffer went, the live one's came
    writer.write(shared.fd_of(new), new.capacity, caches[0], me)  # type: ignore[arg-type]
    assert writer.mapped_bytes == first  # reused, not mapped again
    torch.testing.assert_close(new.k[:, :, :4], caches[0].k[:, :, :4])
    writer.close()

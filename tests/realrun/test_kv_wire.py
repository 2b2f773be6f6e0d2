"""The KV wire format: frames and typed headers round-trip, and every limit is enforced."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdplan.realrun import kv_wire as wire


def test_frame_round_trip() -> None:
    data = wire.pack_frame(wire.CLAIM, 2**64 - 1, wire.pack_claim(7, 123))
    kind, room, size = wire.unpack_header(data[: wire.FRAME.size])
    assert (kind, room, size) == (wire.CLAIM, 2**64 - 1, wire.CLAIM_BODY.size)
    assert wire.unpack_claim(data[wire.FRAME.size :]) == (7, 123)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((b"XXXX", 1, 1, 0, 0), "bad magic"),
        ((b"PDKV", 1, 1, 0, 0), "version 1"),
        ((b"PDKV", wire.VERSION, 99, 0, 0), "unknown frame kind 99"),
        ((b"PDKV", wire.VERSION, 1, 0, wire.MAX_BODY_BYTES + 1), "exceeds the limit"),
    ],
)
def test_bad_headers_are_refused(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.unpack_header(wire.FRAME.pack(*fields))


def test_error_body_carries_a_status() -> None:
    assert wire.unpack_error(wire.pack_error(503, "prefill overloaded")) == (503, "prefill overloaded")
    assert wire.unpack_error(struct.pack("<H", 7) + b"x")[0] == 502  # not an HTTP error status


def _meta(tokens: int = 5, dtype: str = "float32") -> wire.KvMeta:
    shape = (4, 4, tokens, 64)
    return wire.KvMeta(11, tokens, 1.0, 2.0, dtype, (shape, shape))


def test_kv_meta_round_trip_and_size() -> None:
    meta = _meta()
    assert meta.payload_bytes == 2 * 4 * 4 * 5 * 64 * 4
    assert wire.unpack_kv_meta(wire.pack_kv_meta(meta), meta.payload_bytes) == meta


def test_kv_payload_beyond_the_reservation_is_refused() -> None:
    meta = _meta()
    with pytest.raises(wire.WireError, match="exceeds the reservation"):
        wire.unpack_kv_meta(wire.pack_kv_meta(meta), meta.payload_bytes - 1)


def test_kv_header_whose_sizes_disagree_is_refused() -> None:
    body = bytearray(wire.pack_kv_meta(_meta()))
    body[-8:] = struct.pack("<Q", 12345)  # announced payload ≠ what the shapes imply
    with pytest.raises(wire.WireError, match="shapes imply"):
        wire.unpack_kv_meta(bytes(body), 10**9)


@pytest.mark.parametrize(
    ("code", "ndim", "count", "message"),
    [(9, 4, 2, "unknown dtype code"), (1, 9, 2, "ndim=9"), (1, 4, 17, "tensors=17"), (1, 0, 2, "ndim=0")],
)
def test_kv_header_limits(code: int, ndim: int, count: int, message: str) -> None:
    fixed = wire.KV_FIXED.pack(1, 1, 0, 0.0, 0.0, 0.0, 0.0, code, ndim, count, 0)
    body = fixed + b"\0" * (4 * ndim * count) + struct.pack("<Q", 0)
    with pytest.raises(wire.WireError, match=message):
        wire.unpack_kv_meta(body, 10**9)


def test_in_place_flag_round_trips_and_unknown_flags_are_refused() -> None:
    meta = wire.KvMeta(11, 5, 1.0, 2.0, "bfloat16", ((4, 4, 5, 64),) * 2, in_place=True)
    assert wire.unpack_kv_meta(wire.pack_kv_meta(meta), meta.payload_bytes) == meta
    body = bytearray(wire.pack_kv_meta(meta))
    struct.pack_into("<I", body, wire.KV_FIXED.size - 4, 6)
    with pytest.raises(wire.WireError, match="unknown KV flags"):
        wire.unpack_kv_meta(bytes(body), 10**9)


def test_cached_tokens_round_trip_and_never_cover_the_whole_prompt() -> None:
    meta = wire.KvMeta(11, 5, 1.0, 2.0, "float32", ((4, 4, 5, 64),) * 2, cached_tokens=4)
    assert wire.unpack_kv_meta(wire.pack_kv_meta(meta), meta.payload_bytes).cached_tokens == 4
    body = bytearray(wire.pack_kv_meta(meta))
    struct.pack_into("<I", body, 12, 5)  # after first_token i64 and prompt_tokens u32
    with pytest.raises(wire.WireError, match="5 cached tokens of a 5-token prompt"):
        wire.unpack_kv_meta(bytes(body), 10**9)


def test_truncated_kv_header_is_refused() -> None:
    body = wire.pack_kv_meta(_meta())
    with pytest.raises(wire.WireError):
        wire.unpack_kv_meta(body[:-3], 10**9)


@given(
    shape=st.tuples(*[st.integers(0, 64)] * 4),
    first=st.integers(-(2**63), 2**63 - 1),
    dtype=st.sampled_from(sorted(wire.DTYPES)),
)
def test_kv_meta_round_trips_for_any_shape(shape: tuple[int, int, int, int], first: int, dtype: str) -> None:
    meta = wire.KvMeta(first, shape[2], 0.5, 0.75, dtype, (shape, shape))
    assert wire.unpack_kv_meta(wire.pack_kv_meta(meta), meta.payload_bytes) == meta


def test_prompt_digest_is_stable_and_order_sensitive() -> None:
    assert wire.prompt_digest([1, 2, 3]) == wire.prompt_digest((1, 2, 3))
    assert wire.prompt_digest([1, 2, 3]) != wire.prompt_digest([3, 2, 1])
    assert wire.prompt_digest([1, 2, 3]) != wire.prompt_digest([1, 2, 3, 0])


@pytest.mark.parametrize(
    ("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True), ("10.0.0.2", False)]
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert wire.is_loopback(host) is loopback


def test_prefill_arrival_and_queue_times_round_trip() -> None:
    """The KV header carries the prefill worker's first-token-path times to the decode timeline."""
    meta = wire.KvMeta(
        11, 5, 1.5, 2.0, "float32", ((4, 4, 5, 64),) * 2, prefill_arrival_s=1.25, prefill_queued_s=1.375
    )
    got = wire.unpack_kv_meta(wire.pack_kv_meta(meta), meta.payload_bytes)
    assert (got.prefill_arrival_s, got.prefill_queued_s, got.prefill_start_s) == (1.25, 1.375, 1.5)

"""The KV hand-off wire format: typed binary frames and raw tensor bytes (never pickle).

Every message starts with a 20-byte frame header, little-endian::

    magic "PDKV" | version u16 | kind u16 | room u64 | body_bytes u32

followed by ``body_bytes`` (at most :data:`MAX_BODY_BYTES`) of a kind-specific body:

    CLAIM  decode → prefill   prompt_tokens u32 | prompt_hash u64   ("room R is mine, for this prompt")
    READY  decode → prefill   max_payload_bytes u64 | capacity_tokens u32 | flags u32
                              ("KV space reserved: send"; flag SHARED_FD: the decode cache's
                              shared-memory descriptor rides along (SCM_RIGHTS), see kv_shm)
    ABORT  decode → prefill   UTF-8 reason                          ("drop room R")
    KV     prefill → decode   first_token i64 | prompt_tokens u32 | cached_tokens u32 (prompt
                              tokens from the prefill's prefix cache) | prefill_start f64 | prefill_end f64
                              | prefill_arrival f64 | prefill_queued f64 (UNIX s: the request reached
                              the prefill worker; its prompt was queued for the engine) | dtype u8
                              | ndim u8 | num_tensors u16 | flags u32 | dims u32 × ndim ×
                              num_tensors | payload_bytes u64, then ``payload_bytes`` raw bytes: the
                              tensors in order, each C-contiguous — unless flag IN_PLACE says the
                              prefill already wrote them into the decode's shared buffer
    ERROR  either way         status u16 (the HTTP status to report) | UTF-8 message
    ACK    decode → prefill   (empty)                               ("all bytes received")
    ACCEPT prefill → decode   (empty)                               ("I am this deployment's prefill")

Every body except ERROR's also carries the authentication of :mod:`kv_auth` (nonces and an
HMAC-SHA256 with the deployment's secret); a frame that fails it ends the hand-off. Over the local
Unix socket both sides also check the peer's user id (``SO_PEERCRED``): abstract Unix sockets have no
file permissions, so this is what keeps other users out.

The receiver checks magic, version, kind, room, body size, dtype, rank, tensor count and that
``payload_bytes`` equals the bytes the shapes imply and stays within its reservation, *before*
reading any payload. Connections are TCP, or — when the bootstrap host is a loopback address on
Linux — a Unix socket in the abstract namespace named after the bootstrap port (no file to clean
up), over which a CPU decode worker passes its cache's shared-memory descriptor so the payload moves
in one memcpy instead of through the socket (``bench/runtime.py`` measures all three ways).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import os
import socket
import struct
import sys
from dataclasses import dataclass

import numpy as np

MAGIC = b"PDKV"
VERSION = 4  # 3: the KV header carries cached_tokens; 4: and the prefill's arrival and queue times
FRAME = struct.Struct("<4sHHQI")
CLAIM_BODY = struct.Struct("<IQ")
READY_BODY = struct.Struct("<QII")
ERROR_STATUS = struct.Struct("<H")
KV_FIXED = struct.Struct("<qIIddddBBHI")
PAYLOAD_BYTES = struct.Struct("<Q")
MAX_BODY_BYTES = 64 * 1024
MAX_TENSORS = 16
MAX_NDIM = 8

CLAIM, READY, ABORT, KV, ERROR, ACK, ACCEPT = 1, 2, 3, 4, 5, 6, 7
READY_SHARED_FD = 1  # READY flag: one descriptor (the decode cache's shared memory) accompanies it
KV_IN_PLACE = 1  # KV flag: the payload was written into that shared memory, none follows
KIND_NAMES = {
    CLAIM: "CLAIM", READY: "READY", ABORT: "ABORT", KV: "KV", ERROR: "ERROR", ACK: "ACK", ACCEPT: "ACCEPT"
}  # fmt: skip

#: dtype name → (wire code, bytes per element)
DTYPES = {"float32": (1, 4), "float16": (2, 2), "bfloat16": (3, 2)}
_DTYPE_BY_CODE = {code: name for name, (code, _) in DTYPES.items()}


class WireError(Exception):
    """The peer broke the protocol (bad header, sizes out of limits, closed mid-message)."""


@dataclass(frozen=True)
class Frame:
    kind: int
    room: int
    body: bytes

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]


@dataclass(frozen=True)
class KvMeta:
    """The typed header of a KV message."""

    first_token: int
    prompt_tokens: int
    prefill_start_s: float
    prefill_end_s: float
    dtype: str
    shapes: tuple[tuple[int, ...], ...]
    in_place: bool = False
    cached_tokens: int = 0
    #: when the prefill worker got the request and queued its prompt (UNIX s; 0: not known)
    prefill_arrival_s: float = 0.0
    prefill_queued_s: float = 0.0

    @property
    def payload_bytes(self) -> int:
        itemsize = DTYPES[self.dtype][1]
        return sum(math.prod(shape) * itemsize for shape in self.shapes)


def pack_frame(kind: int, room: int, body: bytes = b"") -> bytes:
    assert kind in KIND_NAMES and len(body) <= MAX_BODY_BYTES, (kind, len(body))
    return FRAME.pack(MAGIC, VERSION, kind, room, len(body)) + body


def unpack_header(data: bytes) -> tuple[int, int, int]:
    """``(kind, room, body_bytes)`` of a frame header, checked."""
    magic, version, kind, room, body_bytes = FRAME.unpack(data)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}; expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"protocol version {version}; expected {VERSION}")
    if kind not in KIND_NAMES:
        raise WireError(f"unknown frame kind {kind}")
    if body_bytes > MAX_BODY_BYTES:
        raise WireError(f"frame body of {body_bytes} bytes exceeds the limit of {MAX_BODY_BYTES}")
    return kind, room, body_bytes


def pack_claim(prompt_tokens: int, prompt_digest: int) -> bytes:
    return CLAIM_BODY.pack(prompt_tokens, prompt_digest)


def unpack_claim(body: bytes) -> tuple[int, int]:
    if len(body) != CLAIM_BODY.size:
        raise WireError(f"CLAIM body of {len(body)} bytes; expected {CLAIM_BODY.size}")
    prompt_tokens, digest = CLAIM_BODY.unpack(body)
    return int(prompt_tokens), int(digest)


def pack_error(status: int, message: str) -> bytes:
    return ERROR_STATUS.pack(status) + message.encode("utf-8")[: MAX_BODY_BYTES - ERROR_STATUS.size]


def unpack_error(body: bytes) -> tuple[int, str]:
    if len(body) < ERROR_STATUS.size:
        raise WireError(f"ERROR body of {len(body)} bytes; expected at least {ERROR_STATUS.size}")
    (status,) = ERROR_STATUS.unpack_from(body)
    if not 400 <= status <= 599:
        status = 502
    return int(status), body[ERROR_STATUS.size :].decode("utf-8", errors="replace")


def pack_kv_meta(meta: KvMeta) -> bytes:
    code = DTYPES[meta.dtype][0]
    ndim = len(meta.shapes[0])
    assert all(len(s) == ndim for s in meta.shapes), "all tensors share one rank"
    dims = [d for shape in meta.shapes for d in shape]
    fixed = KV_FIXED.pack(
        meta.first_token, meta.prompt_tokens, meta.cached_tokens, meta.prefill_start_s, meta.prefill_end_s,
        meta.prefill_arrival_s, meta.prefill_queued_s, code, ndim, len(meta.shapes),
        KV_IN_PLACE if meta.in_place else 0,
    )  # fmt: skip
    return fixed + struct.pack(f"<{len(dims)}I", *dims) + PAYLOAD_BYTES.pack(meta.payload_bytes)


def unpack_kv_meta(body: bytes, max_payload_bytes: int) -> KvMeta:
    """Parse and check a KV header; the payload it announces must fit ``max_payload_bytes``."""
    if len(body) < KV_FIXED.size:
        raise WireError(f"KV header of {len(body)} bytes is shorter than {KV_FIXED.size}")
    first, prompt_tokens, cached, t0, t1, arrived, queued, code, ndim, count, flags = KV_FIXED.unpack_from(
        body
    )
    if cached >= max(prompt_tokens, 1):
        raise WireError(f"KV header: {cached} cached tokens of a {prompt_tokens}-token prompt")
    if flags & ~KV_IN_PLACE:
        raise WireError(f"unknown KV flags {flags:#x}")
    if code not in _DTYPE_BY_CODE:
        raise WireError(f"unknown dtype code {code}; expected one of {sorted(_DTYPE_BY_CODE)}")
    if not 1 <= ndim <= MAX_NDIM or not 1 <= count <= MAX_TENSORS:
        raise WireError(f"KV header: ndim={ndim}, tensors={count}; limits {MAX_NDIM} and {MAX_TENSORS}")
    expected = KV_FIXED.size + 4 * ndim * count + PAYLOAD_BYTES.size
    if len(body) != expected:
        raise WireError(f"KV header of {len(body)} bytes; its counts imply {expected}")
    dims = struct.unpack_from(f"<{ndim * count}I", body, KV_FIXED.size)
    (announced,) = PAYLOAD_BYTES.unpack_from(body, expected - PAYLOAD_BYTES.size)
    shapes = tuple(tuple(dims[i * ndim : (i + 1) * ndim]) for i in range(count))
    meta = KvMeta(
        int(first), int(prompt_tokens), float(t0), float(t1), _DTYPE_BY_CODE[code], shapes, bool(flags),
        int(cached), float(arrived), float(queued),
    )  # fmt: skip
    if announced != meta.payload_bytes:
        raise WireError(f"KV header announces {announced} bytes; its shapes imply {meta.payload_bytes}")
    if announced > max_payload_bytes:
        raise WireError(f"KV payload of {announced} bytes exceeds the reservation of {max_payload_bytes}")
    return meta


def prompt_digest(token_ids: tuple[int, ...] | list[int]) -> int:
    """64-bit BLAKE2b of the prompt's ids (int32 little-endian): pairs a KV with its prompt."""
    raw = np.asarray(token_ids, dtype="<i4").tobytes()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


# --- blocking bulk transfer (runs in a thread; the GIL is released inside send/recv) ------------
def send_views(sock: socket.socket, views: list[memoryview]) -> int:
    """Send every buffer in order; returns the bytes sent."""
    total = 0
    for view in views:
        sock.sendall(view)
        total += view.nbytes
    return total


def recv_views(sock: socket.socket, views: list[memoryview]) -> int:
    """Fill every (writable, byte-format) buffer in order straight from the socket; no extra copy."""
    total = 0
    for view in views:
        got, size = 0, view.nbytes
        while got < size:
            n = sock.recv_into(view[got:], size - got)
            if n == 0:
                raise WireError(f"peer closed after {total + got} payload bytes")
            got += n
        total += size
    return total


# --- async framing on raw non-blocking sockets ---------------------------------------------------
async def recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise WireError("peer closed the connection" if got == 0 else "peer closed mid-frame")
        got += n
    return bytes(buf)


async def read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Frame:
    kind, room, body_bytes = unpack_header(await recv_exact(loop, sock, FRAME.size))
    body = await recv_exact(loop, sock, body_bytes) if body_bytes else b""
    return Frame(kind, room, body)


async def send_frame(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, kind: int, room: int, body: bytes = b""
) -> None:
    await loop.sock_sendall(sock, pack_frame(kind, room, body))


async def _wait_io(loop: asyncio.AbstractEventLoop, sock: socket.socket, write: bool) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def send_frame_fds(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, kind: int, room: int, body: bytes, fds: list[int]
) -> None:
    """Send one frame with ``fds`` attached to its first byte (Unix sockets only)."""
    data = pack_frame(kind, room, body)
    while True:
        try:
            sent = socket.send_fds(sock, [data], fds)
            break
        except BlockingIOError:
            await _wait_io(loop, sock, write=True)
    if sent < len(data):
        await loop.sock_sendall(sock, data[sent:])


async def read_frame_fds(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[Frame, list[int]]:
    """Read one frame and up to one descriptor sent with it (the caller must close it)."""
    while True:
        try:
            head, fds, _flags, _addr = socket.recv_fds(sock, FRAME.size, 1)
            break
        except BlockingIOError:
            await _wait_io(loop, sock, write=False)
    try:
        if not head:
            raise WireError("peer closed the connection")
        if len(head) < FRAME.size:
            head += await recv_exact(loop, sock, FRAME.size - len(head))
        kind, room, body_bytes = unpack_header(head)
        body = await recv_exact(loop, sock, body_bytes) if body_bytes else b""
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Frame(kind, room, body), list(fds)


# --- addresses -------------------------------------------------------------------------------------
def peer_process(sock: socket.socket) -> tuple[int, int | None] | None:
    """``(pid, start ticks)`` of a Unix socket's peer (``None`` elsewhere)."""
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    from pdplan.realrun.procfs import start_ticks

    pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[
        0
    ]
    return pid, start_ticks(pid)


def check_peer_user(sock: socket.socket) -> None:
    """On a Unix socket, the peer must run as this process's user (``SO_PEERCRED``).

    Raises:
        WireError: another user's process.
    """
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise WireError(f"peer process {pid} runs as uid {uid}, not this deployment's uid {os.getuid()}")


def unix_name(port: int) -> str:
    """The abstract Unix socket a prefill worker also listens on (Linux only)."""
    return f"\0pdplan-kv-{port}"


def has_abstract_unix() -> bool:
    return sys.platform.startswith("linux")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets for a prefill's bootstrap port: TCP, plus the abstract Unix
    socket when the host is a loopback address on Linux."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen(512)
    tcp.setblocking(False)
    out = [tcp]
    if has_abstract_unix() and is_loopback(host):
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(unix_name(port))
        unix.listen(512)
        unix.setblocking(False)
        out.append(unix)
    return out


async def connect(
    loop: asyncio.AbstractEventLoop, host: str, port: int, transport: str = "auto"
) -> socket.socket:
    """A connected non-blocking socket to a prefill's bootstrap port (``transport``: auto | tcp).

    ``auto`` tries the abstract Unix socket first when the host is a loopback address.
    """
    if transport == "auto" and has_abstract_unix() and is_loopback(host):
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.setblocking(False)
        try:
            await loop.sock_connect(unix, unix_name(port))
        except OSError:
            unix.close()
        else:
            try:
                check_peer_user(unix)
            except WireError:
                unix.close()
                raise
            return unix
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
    except OSError:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock

"""Authenticated KV hand-offs: a per-deployment secret and HMAC-SHA256 over every control frame.

Who may take part in a hand-off: only processes that hold the deployment's secret (``pdplan deploy``
draws 32 random bytes per deployment and hands them to its workers in the environment variable
:data:`SECRET_ENV`, readable only by the deployment's user). Both sides prove it before anything of
value moves, so a stand-in prefill never sees a decode worker's KV buffer and a stand-in decode
never receives a prefill's KV::

    CLAIM   decode → prefill   body | nonce_d (16 B) | HMAC(kind, room, body, nonce_d)
    ACCEPT  prefill → decode   nonce_p (16 B) | HMAC(kind, room, nonce_d, nonce_p)
    READY, KV, ACK             body | HMAC(kind, room, body, nonce_d, nonce_p)
    ABORT   (own connection)   reason | nonce (16 B) | HMAC(kind, room, reason, nonce)

The MACs cover the room and the sizes (READY's reservation, KV's shapes and payload bytes), and the
two nonces bind every later frame to this one connection, so nothing can be replayed from another.
The decode side sends READY — with its shared-memory descriptor — only after ACCEPT verified.
ERROR frames stay unauthenticated: they can only end a hand-off, never move data.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from pdplan.profiles.errors import ConfigError

#: Environment variable that carries the deployment's secret to its workers.
SECRET_ENV = "PDPLAN_KV_SECRET"
NONCE_BYTES = 16
MAC_BYTES = 32
MIN_SECRET_BYTES = 16


class AuthError(Exception):
    """A frame whose MAC does not verify (wrong secret, tampered or replayed)."""


def new_secret() -> str:
    """A fresh deployment secret (64 hex digits)."""
    return os.urandom(32).hex()


def secret_from_env(environ: dict[str, str] | None = None) -> bytes:
    """The deployment secret of this worker.

    Raises:
        ConfigError: unset or shorter than 16 bytes.
    """
    value = (os.environ if environ is None else environ).get(SECRET_ENV, "")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{SECRET_ENV} is {'unset' if not value else 'too short'}: prefill and decode workers "
            f"authenticate KV hand-offs with a per-deployment secret of at least {MIN_SECRET_BYTES} "
            "bytes (pdplan deploy sets it)"
        )
    return value.encode()


def _mac(key: bytes, kind: int, room: int, *parts: bytes) -> bytes:
    h = hmac.new(key, struct.pack("<HQ", kind, room), hashlib.sha256)
    for part in parts:
        h.update(struct.pack("<I", len(part)))
        h.update(part)
    return h.digest()


def _split(body: bytes, tail: int, what: str) -> tuple[bytes, bytes]:
    if len(body) < tail:
        raise AuthError(f"{what}: {len(body)} bytes cannot carry its {tail}-byte authentication")
    return body[: len(body) - tail], body[len(body) - tail :]


class Session:
    """One hand-off connection's keys: the secret and the two nonces once known."""

    def __init__(self, key: bytes, nonce_d: bytes | None = None) -> None:
        self.key = key
        self.nonce_d = nonce_d if nonce_d is not None else os.urandom(NONCE_BYTES)
        self.nonce_p = b""

    # --- CLAIM (decode side signs, prefill side verifies and learns nonce_d) -----------------------
    def seal_claim(self, kind: int, room: int, body: bytes) -> bytes:
        return body + self.nonce_d + _mac(self.key, kind, room, body, self.nonce_d)

    @classmethod
    def open_claim(cls, key: bytes, kind: int, room: int, sealed: bytes) -> tuple[Session, bytes]:
        rest, mac = _split(sealed, MAC_BYTES, "CLAIM")
        body, nonce_d = _split(rest, NONCE_BYTES, "CLAIM")
        if not hmac.compare_digest(mac, _mac(key, kind, room, body, nonce_d)):
            raise AuthError("CLAIM failed authentication (not a worker of this deployment)")
        return cls(key, nonce_d), body

    # --- ACCEPT (prefill side proves itself before the decode side reveals anything) --------------
    def accept_body(self, kind: int, room: int) -> bytes:
        self.nonce_p = os.urandom(NONCE_BYTES)
        return self.nonce_p + _mac(self.key, kind, room, self.nonce_d, self.nonce_p)

    def check_accept(self, kind: int, room: int, body: bytes) -> None:
        nonce_p, mac = _split(body, MAC_BYTES, "ACCEPT")
        if len(nonce_p) != NONCE_BYTES or not hmac.compare_digest(
            mac, _mac(self.key, kind, room, self.nonce_d, nonce_p)
        ):
            raise AuthError("ACCEPT failed authentication (the bootstrap port is not this deployment's)")
        self.nonce_p = nonce_p

    # --- every later frame of the connection -------------------------------------------------------
    def seal(self, kind: int, room: int, body: bytes = b"") -> bytes:
        assert self.nonce_p, "ACCEPT first"
        return body + _mac(self.key, kind, room, body, self.nonce_d, self.nonce_p)

    def open(self, kind: int, room: int, sealed: bytes) -> bytes:
        body, mac = _split(sealed, MAC_BYTES, "frame")
        if not self.nonce_p or not hmac.compare_digest(
            mac, _mac(self.key, kind, room, body, self.nonce_d, self.nonce_p)
        ):
            raise AuthError(f"frame kind {kind} of room {room} failed authentication")
        return body


def seal_abort(key: bytes, kind: int, room: int, reason: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return reason + nonce + _mac(key, kind, room, reason, nonce)


def open_abort(key: bytes, kind: int, room: int, sealed: bytes) -> bytes:
    rest, mac = _split(sealed, MAC_BYTES, "ABORT")
    reason, nonce = _split(rest, NONCE_BYTES, "ABORT")
    if not hmac.compare_digest(mac, _mac(key, kind, room, reason, nonce)):
        raise AuthError("ABORT failed authentication")
    return reason

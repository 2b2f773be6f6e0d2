"""Failure behaviour of real prefill and decode worker processes, driven the way the router drives them
(the same body, with the same bootstrap fields, to both): a KV hand-off that times out frees its
reservation on both sides and costs the prefill no compute, overload is a 503 with Retry-After from a
bounded queue, hand-offs are authenticated, and a prefill's prefix cache hit reaches the decode
side's reply (``meta_info.cached_tokens``) without changing a token.

Deterministic whatever the machine load: the decode worker's KV is held by a *stand-in prefill* run
by the test (a ``KvSender`` holding the test deployment's secret) that never delivers KV until the
test lets the room fail, so "the decode worker is full" is a state the test controls, not a race
against decode steps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from realrun_helpers import TEST_MODEL, TEST_SECRET, free_port, gauge, start_worker

pytest.importorskip("torch")

from pdplan.realrun import kv_wire as wire
from pdplan.realrun.kv_sender import KvSender
from pdplan.realrun.metrics import WorkerMetrics


class StandIn:
    """A KvSender on its own event loop thread (a prefill the test controls)."""

    def __init__(self, key: bytes) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.sender = KvSender(
            "127.0.0.1", self.port, "float32", WorkerMetrics("prefill"), key,
            bootstrap_timeout_s=60.0, kv_timeout_s=60.0,
        )  # fmt: skip
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.sender.start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def register(self, room: int, prompt: tuple[int, ...]) -> None:
        async def reg() -> None:
            self.sender.register(room, prompt).result.add_done_callback(lambda f: f.exception())

        self.call(reg())

    def fail(self, room: int) -> None:
        async def fail() -> None:
            self.sender.fail(room, "released by the test", 503)

        self.call(fail())

    def close(self) -> None:
        self.call(self.sender.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Impostor:
    """Listens where the decode worker expects a prefill, answers every CLAIM with an ACCEPT it cannot
    authenticate (it lacks the secret) and records whatever frames follow."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.received: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket) -> wire.Frame:
        head = conn.recv(wire.FRAME.size, socket.MSG_WAITALL)
        kind, room, size = wire.unpack_header(head)
        return wire.Frame(kind, room, conn.recv(size, socket.MSG_WAITALL) if size else b"")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    claim = self._read(conn)
                    self.received.append(claim.name)
                    conn.sendall(wire.pack_frame(wire.ACCEPT, claim.room, bytes(48)))
                    self.received.append(self._read(conn).name)
                except (OSError, wire.WireError, struct.error):
                    continue

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def deployment() -> Iterator[tuple[str, str, int, StandIn, Impostor]]:
    model = str(TEST_MODEL)
    stand_in = StandIn(TEST_SECRET.encode())
    impostor = Impostor()
    boot = free_port()
    prefill, p_url = start_worker(
        "--role", "prefill", "--model", model, "--bootstrap-port", str(boot), "--kv-timeout-s", "0.5",
        "--bootstrap-timeout-s", "2.0", "--prefix-cache", "--prefix-cache-page-tokens", "4",
    )  # fmt: skip
    peers = f"127.0.0.1:{boot},127.0.0.1:{stand_in.port},127.0.0.1:{impostor.port}"
    decode, d_url = start_worker(
        "--role", "decode", "--model", model, "--max-kv-tokens", "160", "--max-queue", "1",
        "--kv-timeout-s", "30", "--prefill-peers", peers,
    )  # fmt: skip
    try:
        yield p_url, d_url, boot, stand_in, impostor
    finally:
        for proc in (prefill, decode):
            proc.terminate()
            proc.wait(30)
        stand_in.close()
        impostor.close()


def _body(
    room: int, boot_port: int, prompt_len: int, new_tokens: int, stream: bool = False
) -> dict[str, Any]:
    return {
        "input_ids": list(range(10, 10 + prompt_len)),
        "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True},
        "stream": stream,
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": boot_port,
        "bootstrap_room": room,
    }


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/generate", json=body, timeout=60.0)


def _pair(p_url: str, d_url: str, body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
    """POST the same body to prefill and decode at once, as the router does."""
    replies: dict[str, httpx.Response] = {}

    def post(name: str, url: str) -> None:
        replies[name] = _post(url, body)

    threads = [threading.Thread(target=post, args=(n, u)) for n, u in (("p", p_url), ("d", d_url))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return replies["p"], replies["d"]


def _background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(r=fn()))
    thread.start()
    return thread, out


def _wait(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_full_decode_times_out_handoff_frees_kv_and_overload_is_503_with_retry_after(
    deployment: tuple[str, str, int, StandIn, Impostor],
) -> None:
    p_url, d_url, boot, stand_in, _ = deployment
    prompt = tuple(range(10, 18))
    computed_before = gauge(p_url, "prefill_tokens_total")
    # A holds 8 + 150 of the decode worker's 160 KV tokens: its stand-in prefill never sends the KV.
    stand_in.register(1, prompt)
    a_thread, a = _background(lambda: _post(d_url, _body(1, stand_in.port, 8, 150)))
    _wait(lambda: gauge(d_url, "kv_used_tokens") == 158)
    # B (8 + 10 tokens) cannot get KV space on the decode side, so it never sends READY: the
    # prefill computes nothing for it, gives up after its 0.5 s KV timeout, and both sides say 504.
    b_prefill, b_decode = _pair(p_url, d_url, _body(2, boot, 8, 10))
    assert b_prefill.status_code == 504 and "no READY" in b_prefill.json()["error"]["message"]
    assert b_decode.status_code == 504, b_decode.text
    assert gauge(p_url, "prefill_tokens_total") == computed_before  # no work for a hand-off that failed
    assert gauge(p_url, "kv_used_tokens") == 0 and gauge(p_url, "open_rooms") == 0
    # B2 waits in the decode worker's one-slot admission queue (its stand-in room stays open) ...
    stand_in.register(3, prompt)
    b2_thread, b2 = _background(lambda: _post(d_url, _body(3, stand_in.port, 8, 10)))
    _wait(lambda: gauge(d_url, "queue_length") == 1)
    # ... so C is refused with 503 + Retry-After before any work, and its prefill room is aborted
    # (409, long before the prefill's 2 s bootstrap timeout could end it).
    c_prefill, c_decode = _pair(p_url, d_url, _body(4, boot, 8, 10))
    assert c_decode.status_code == 503 and c_decode.json()["error"]["type"] == "overloaded"
    assert c_decode.headers.get("Retry-After") == "1"
    assert c_prefill.status_code == 409, c_prefill.text
    assert gauge(p_url, "prefill_tokens_total") == computed_before
    # Release A and B2: every request ends with an explicit error and every KV token comes back.
    stand_in.fail(1)
    a_thread.join(30)
    assert a["r"].status_code == 503 and "released by the test" in a["r"].json()["error"]["message"]
    _wait(lambda: gauge(d_url, "kv_used_tokens") == 18)  # B2 got the space and sent READY
    stand_in.fail(3)
    b2_thread.join(30)
    assert b2["r"].status_code == 503
    _wait(lambda: gauge(d_url, "kv_used_tokens") == 0, 10.0)
    assert gauge(d_url, "queue_length") == 0


def test_handoff_works_after_failures_and_output_is_complete(
    deployment: tuple[str, str, int, StandIn, Impostor],
) -> None:
    p_url, d_url, boot, _, _ = deployment
    p, d = _pair(p_url, d_url, _body(10, boot, 12, 20))
    assert p.status_code == 200 and d.status_code == 200, (p.text, d.text)
    assert len(d.json()["output_ids"]) == 20 and d.json()["output_ids"][0] == p.json()["output_ids"][0]


def test_a_prefill_cache_hit_reaches_the_decode_reply_and_changes_no_token(
    deployment: tuple[str, str, int, StandIn, Impostor],
) -> None:
    p_url, d_url, boot, _, _ = deployment
    body = _body(30, boot, 16, 12) | {"input_ids": list(range(300, 316))}
    _, first = _pair(p_url, d_url, body)
    _, second = _pair(p_url, d_url, body | {"bootstrap_room": 31})
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    # the prefill cached the prompt's 4 pages of 4; the last token is always computed
    assert (first.json()["meta_info"]["cached_tokens"], second.json()["meta_info"]["cached_tokens"]) == (
        0,
        15,
    )
    assert second.json()["output_ids"] == first.json()["output_ids"]
    flushed = httpx.post(f"{p_url}/flush_cache", timeout=10)
    assert flushed.status_code == 200 and flushed.text.startswith("flushed ")
    _, third = _pair(p_url, d_url, body | {"bootstrap_room": 32})
    assert third.json()["meta_info"]["cached_tokens"] == 0


def test_decode_refuses_bootstrap_addresses_outside_its_deployment(
    deployment: tuple[str, str, int, StandIn, Impostor],
) -> None:
    _, d_url, _, _, _ = deployment
    with socket.socket() as trap:  # a port the decode worker must never connect to
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        reply = _post(d_url, _body(20, trap.getsockname()[1], 8, 4))
        assert reply.status_code == 403 and reply.json()["error"]["type"] == "forbidden"
        with pytest.raises(BlockingIOError):
            trap.accept()
    assert gauge(d_url, "kv_used_tokens") == 0


def test_stand_in_prefill_without_the_secret_gets_no_kv_buffer(
    deployment: tuple[str, str, int, StandIn, Impostor],
) -> None:
    """The spoofed hand-off of the issue: a process at a bootstrap address the decode worker trusts,
    but without the deployment's secret, gets neither READY nor the shared KV buffer."""
    _, d_url, _, _, impostor = deployment
    reply = _post(d_url, _body(30, impostor.port, 8, 4))
    assert reply.status_code == 502 and "authentication" in reply.json()["error"]["message"]
    assert impostor.received[:1] == ["CLAIM"] and "READY" not in impostor.received
    assert gauge(d_url, "kv_used_tokens") == 0


def test_prefill_refuses_unauthenticated_claims(deployment: tuple[str, str, int, StandIn, Impostor]) -> None:
    """A local process that claims a room without the secret gets no ACCEPT and no KV; the room's
    real request is unaffected."""
    p_url, d_url, boot, _, _ = deployment
    failures = gauge(p_url, "kv_auth_failures_total")
    with socket.create_connection(("127.0.0.1", boot), timeout=5) as sock:
        body = wire.pack_claim(8, wire.prompt_digest(list(range(10, 18)))) + bytes(48)
        sock.sendall(wire.pack_frame(wire.CLAIM, 40, body))
        assert sock.recv(1024) == b""  # closed without a word
    _wait(lambda: gauge(p_url, "kv_auth_failures_total") == failures + 1, 10.0)
    p, d = _pair(p_url, d_url, _body(40, boot, 8, 4))
    assert p.status_code == 200 and d.status_code == 200


def test_the_decode_reply_times_the_first_token_path_and_the_workers_log_their_forwards(
    deployment: tuple[str, str, int, StandIn, Impostor],
) -> None:
    p_url, d_url, boot, _, _ = deployment
    prompt = list(range(400, 421))  # no other test's prompt: the prefix cache holds none of it
    p, d = _pair(p_url, d_url, _body(50, boot, 21, 3, stream=True) | {"input_ids": prompt})
    assert p.status_code == 200 and d.status_code == 200, (p.text, d.text)
    events = [json.loads(line[6:]) for line in d.text.splitlines() if line.startswith("data: {")]
    times = events[-1]["meta_info"]["pdplan"]
    # causal order across the two workers (one host, one clock)
    path = [
        "prefill_arrival_ts", "prefill_queued_ts", "prefill_start_ts", "prefill_end_ts", "kv_received_ts",
        "first_token_ts", "first_token_sent_ts",
    ]  # fmt: skip
    assert all(isinstance(times[k], float) for k in [*path, "arrival_ts", "handoff_ready_ts"]), times
    assert [times[k] for k in path] == sorted(times[k] for k in path), times
    assert times["arrival_ts"] <= times["handoff_ready_ts"] <= times["prefill_queued_ts"]
    # the prefill worker's forward of this prompt, in its log with the same start time
    state = httpx.get(f"{p_url}/server_info", timeout=10).json()["internal_states"][0]
    mine = [b for b in state["recent_prefill_batches"] if b["start_s"] == times["prefill_start_ts"]]
    assert len(mine) == 1 and mine[0]["new_tokens"] == [21] and mine[0]["prior_tokens"] == [0], mine
    assert mine[0]["step_ms"] > 0 and mine[0]["cpu_ms"] > 0
    steps = httpx.get(f"{d_url}/server_info", timeout=10).json()["internal_states"][0]["recent_decode_steps"]
    assert steps and all(s["cpu_ms"] >= 0 for s in steps)

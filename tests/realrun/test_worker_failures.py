"""Failure behaviour of real prefill and decode worker processes, driven the way the router drives them
(the same body, with the same bootstrap fields, to both): a KV hand-off that times out frees its
reservation on both sides, and overload is a 503 from a bounded queue, never unbounded waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from realrun_helpers import TEST_MODEL, free_port, gauge, start_worker

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[str, str, int]]:
    model = str(TEST_MODEL)
    prefill, p_url = start_worker(
        "--role", "prefill", "--model", model, "--bootstrap-port", str(free_port()), "--kv-timeout-s", "0.5",
        "--bootstrap-timeout-s", "2.0",
    )  # fmt: skip
    decode, d_url = start_worker(
        "--role", "decode", "--model", model, "--max-kv-tokens", "160", "--max-queue", "1",
        "--kv-timeout-s", "5",
    )  # fmt: skip
    info = httpx.get(f"{p_url}/server_info").json()
    try:
        yield p_url, d_url, int(info["bootstrap_port"])
    finally:
        for proc in (prefill, decode):
            proc.terminate()
            proc.wait(30)


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


def _pair(p_url: str, d_url: str, body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
    """POST the same body to prefill and decode at once, as the router does."""
    replies: dict[str, httpx.Response] = {}

    def post(name: str, url: str) -> None:
        replies[name] = httpx.post(f"{url}/generate", json=body, timeout=60.0)

    threads = [threading.Thread(target=post, args=(n, u)) for n, u in (("p", p_url), ("d", d_url))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return replies["p"], replies["d"]


def _wait(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_handoff_timeout_frees_kv_on_both_sides_and_overload_is_503(workers: tuple[str, str, int]) -> None:
    p_url, d_url, boot = workers
    # A holds 8 + 150 of the decode worker's 160 KV tokens for 150 decode steps.
    a: dict[str, httpx.Response] = {}
    a_thread = threading.Thread(
        target=lambda: a.update(zip("pd", _pair(p_url, d_url, _body(1, boot, 8, 150)), strict=True))
    )
    a_thread.start()
    _wait(lambda: gauge(d_url, "running_batch") == 1)
    # B (8 + 10 tokens) waits for KV space on the decode side, so it never sends READY; the prefill
    # gives up after its 0.5 s KV timeout and says so; both sides must free B's KV.
    b: dict[str, httpx.Response] = {}
    b_thread = threading.Thread(
        target=lambda: b.update(zip("pd", _pair(p_url, d_url, _body(2, boot, 8, 10)), strict=True))
    )
    b_thread.start()
    _wait(lambda: gauge(d_url, "queue_length") == 1)
    # C finds the decode worker's one queue slot taken: 503 at once, and its prefill room is aborted
    # (409 well before the prefill's 2 s bootstrap timeout).
    start = time.monotonic()
    c_prefill, c_decode = _pair(p_url, d_url, _body(3, boot, 8, 10))
    assert c_decode.status_code == 503 and c_decode.json()["error"]["type"] == "overloaded"
    assert c_prefill.status_code == 409 and time.monotonic() - start < 1.8
    b_thread.join(30)
    assert b["d"].status_code == 504 and "timed out" in b["d"].json()["error"]["message"]
    assert b["p"].status_code == 504
    a_thread.join(120)
    assert a["d"].status_code == 200 and len(a["d"].json()["output_ids"]) == 150
    assert a["p"].status_code == 200 and len(a["p"].json()["output_ids"]) == 1
    _wait(lambda: gauge(d_url, "kv_used_tokens") == 0, 5.0)
    assert gauge(p_url, "kv_used_tokens") == 0 and gauge(p_url, "open_rooms") == 0

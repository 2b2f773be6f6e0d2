"""A worker's HTTP API under hostile and OpenAI-style clients: bad bodies get 4xx JSON (never 500
plain text), slow clients and connection floods are bounded, chat completions work streamed and not,
and /v1/models names the model, not a file path. One colocated worker process, loopback only."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from realrun_helpers import TEST_MODEL, start_worker

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def worker() -> Iterator[str]:
    proc, url = start_worker(
        "--role", "colocated", "--model", str(TEST_MODEL), "--max-connections", "8",
        "--header-timeout-s", "1", "--body-timeout-s", "1",
    )  # fmt: skip
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"text": "\\ud800 lone", "sampling_params": {"max_new_tokens": 2}}', 400, "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (b'{"input_ids": [1, 2], "sampling_params": {"max_new_tokens": NaN}}', 400, "max_new_tokens"),
    ],
    ids=["lone-surrogate", "deep-nesting", "nan"],
)
def test_bad_bodies_get_4xx_json(worker: str, content: bytes, status: int, message: str) -> None:
    reply = httpx.post(f"{worker}/generate", content=content, timeout=30)
    assert reply.status_code == status
    assert message in reply.json()["error"]["message"]


def test_huge_body_is_413_json(worker: str) -> None:
    reply = httpx.post(f"{worker}/generate", content=b" " * (33 * 1024 * 1024), timeout=60)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == 413


def test_slow_body_gets_408_and_slow_headers_are_dropped(worker: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(worker)), timeout=10) as slow_body:
        slow_body.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        reply = slow_body.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408")
    with socket.create_connection(("127.0.0.1", _port(worker)), timeout=10) as slow_head:
        slow_head.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        start = time.monotonic()
        assert slow_head.recv(4096) == b""  # closed by the worker, not by our 10 s timeout
        assert time.monotonic() - start < 9


def test_connections_beyond_the_limit_get_503_with_retry_after(worker: str) -> None:
    held = [socket.create_connection(("127.0.0.1", _port(worker)), timeout=10) for _ in range(8)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", _port(worker)), timeout=10) as extra:
            reply = extra.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply
    finally:
        for sock in held:
            sock.close()
    time.sleep(1.5)  # the held connections are gone: the worker serves again
    assert httpx.get(f"{worker}/health", timeout=10).status_code == 200


def test_models_names_the_model(worker: str) -> None:
    card = httpx.get(f"{worker}/v1/models", timeout=10).json()["data"][0]
    assert card["id"] == "pd-test-llama" and "/" not in card["id"]


def test_chat_completions_plain_and_streamed(worker: str) -> None:
    body = {
        "model": "pd-test-llama",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": 0,
        "ignore_eos": True,
    }
    reply = httpx.post(f"{worker}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["object"] == "chat.completion" and data["choices"][0]["message"]["role"] == "assistant"
    assert data["usage"]["completion_tokens"] == 5
    text = data["choices"][0]["message"]["content"]
    events = []
    with httpx.stream(
        "POST", f"{worker}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line:
                assert line.startswith("data: "), line  # every line is a well-formed SSE event
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    bad = httpx.post(f"{worker}/v1/chat/completions", json={"messages": []}, timeout=10)
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]

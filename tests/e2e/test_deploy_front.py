"""The public port of a real local deployment (gateway + sglang-router + 1 prefill + 1 decode worker)
under overload and hostile clients, and its OpenAI surface: overload is 503 with Retry-After (never
502, never a cut stream), bad bodies get 4xx JSON, /metrics and /v1/models answer on the public port,
chat completions stream through the PD pair."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_helpers import Deployment, start_deploy, write_plan

pytest.importorskip("torch")
pytest.importorskip("sglang_router")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, pdplan_script: Path) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("front")
    plan = write_plan(
        tmp / "plan.yaml",
        prefill={"instances": 1, "tp": 1, "max_batch_tokens": 512, "max_batch_size": 4},
        decode={"instances": 1, "tp": 1, "max_batch_size": 2, "max_kv_tokens": 4096},
    )
    dep = start_deploy(pdplan_script, plan, tmp / "run", extra=("--max-queue", "2"))
    try:
        yield dep
    finally:
        os.killpg(dep.proc.pid, signal.SIGTERM)
        dep.proc.wait(60)


def _stream(url: str, body: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
    """(status, how it ended: done | error-event | cut | json-error | other, headers)."""
    try:
        with httpx.stream("POST", url, json=body, timeout=120) as reply:
            if reply.status_code != 200:
                text = reply.read().decode()
                try:
                    ok = "error" in json.loads(text)
                except ValueError:
                    ok = False
                return reply.status_code, "json-error" if ok else f"other: {text[:80]}", dict(reply.headers)
            last = ""
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    last = line[6:]
            ended = "done" if last == "[DONE]" else "error-event" if last.startswith('{"error"') else "cut"
            return 200, ended, dict(reply.headers)
    except httpx.HTTPError as err:
        return -1, f"cut: {err!r}", {}


def test_overload_is_503_with_retry_after_never_502(deployment: Deployment) -> None:
    # 64 tokens a stream (200 before): the 40 arrive together, so the same 4 are served and 36
    # refused either way; the served ones just finish sooner.
    body = {"input_ids": list(range(10, 42)), "stream": True,
            "sampling_params": {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}}  # fmt: skip
    url = f"{deployment.endpoint}/generate"
    results: list[tuple[int, str, dict[str, str]]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(40)

    def client() -> None:
        barrier.wait(30)
        result = _stream(url, body)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=client) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 40
    ok = [r for r in results if r[:2] == (200, "done")]
    refused = [r for r in results if r[:2] == (503, "json-error") and r[2].get("retry-after") == "1"]
    assert len(ok) + len(refused) == 40, [r[:2] for r in results if r not in ok and r not in refused]
    assert ok and refused  # 40 at once on a deployment that holds 4: most are refused, the rest served


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b'{"text": "\\ud800", "sampling_params": {"max_new_tokens": 2}}', 400),
        (b"[" * 5000 + b"]" * 5000, 400),
        (b"{not json", 400),
        (b" " * (20 * 1024 * 1024), 413),
    ],
    ids=["lone-surrogate", "deep-nesting", "not-json", "20-MiB"],
)
def test_bad_bodies_on_the_public_port_get_4xx_json(
    deployment: Deployment, content: bytes, status: int
) -> None:
    reply = httpx.post(f"{deployment.endpoint}/generate", content=content, timeout=60)
    assert reply.status_code == status
    assert reply.json()["error"]["message"]


def test_metrics_and_models_on_the_public_port(deployment: Deployment) -> None:
    httpx.post(
        f"{deployment.endpoint}/generate",
        json={"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 3}},
        timeout=60,
    )
    text = httpx.get(f"{deployment.endpoint}/metrics", timeout=30).text
    assert "pdplan_gateway_requests_total" in text
    assert "sglang:time_to_first_token_seconds_count" in text and "pdplan_worker_ttft_seconds_count" in text
    assert "sglang:num_running_reqs" in text
    models = httpx.get(f"{deployment.endpoint}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == "pd-test-llama"


def test_chat_completions_through_the_pd_pair(deployment: Deployment) -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    reply = httpx.post(f"{deployment.endpoint}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 4
    status, ended, _ = _stream(f"{deployment.endpoint}/v1/chat/completions", {**body, "stream": True})
    assert (status, ended) == (200, "done")

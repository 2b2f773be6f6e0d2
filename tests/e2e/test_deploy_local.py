"""``pdplan deploy --target local`` end to end: real worker processes behind the real sglang-router.

One disaggregated deployment (1 prefill + 2 decode workers, the untied test model with seeded random
weights, CPU) serves every test in this module, in order; the last two kill a decode worker and
stop the deployment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deploy_helpers import (
    TEST_MODEL,
    Deployment,
    alive,
    group_members,
    start_deploy,
    stream_events,
    write_plan,
)

pytest.importorskip("torch")
pytest.importorskip("sglang_router")

PROMPTS = [[17, 923, 411, 250, 77, 1000, 3], [5, 6, 7], [400, 401, 402, 403, 404, 405, 406, 407, 408]]


def _greedy(n: int) -> dict[str, Any]:
    return {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def deployment(pdplan_script: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deploy")
    plan = write_plan(
        root / "plan.yaml",
        prefill={"instances": 1, "tp": 1, "max_batch_tokens": 256, "max_batch_size": 8},
        decode={"instances": 2, "tp": 1, "max_batch_size": 8, "max_kv_tokens": 4096},
    )
    dep = start_deploy(pdplan_script, plan, root / "run", ("--kv-timeout-s", "20"))
    yield dep
    if dep.proc.poll() is None:  # a failed test left it running: stop it the same way a user would
        subprocess.run([str(pdplan_script), "deploy", "--stop", str(dep.out)], check=False, timeout=60)
        dep.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60.0) as c:
        yield c


def test_non_streamed_generate_returns_exact_token_count(
    deployment: Deployment, client: httpx.Client
) -> None:
    reply = client.post(
        f"{deployment.endpoint}/generate", json={"input_ids": PROMPTS[0], "sampling_params": _greedy(5)}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["output_ids"]) == 5
    meta = body["meta_info"]
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (len(PROMPTS[0]), 5)
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    times = meta["pdplan"]  # the prefill's timestamps crossed over with the KV
    assert (
        times["prefill_start_ts"] <= times["prefill_end_ts"] <= times["first_token_ts"] <= times["finish_ts"]
    )


def test_streamed_generate_sends_one_event_per_token(deployment: Deployment, client: httpx.Client) -> None:
    body = {"input_ids": PROMPTS[1], "sampling_params": _greedy(6), "stream": True}
    events, done = stream_events(client, f"{deployment.endpoint}/generate", body)
    assert done and len(events) == 6
    assert [len(e["output_ids"]) for e in events] == [1, 2, 3, 4, 5, 6]  # cumulative, as SGLang streams
    assert [e["meta_info"]["finish_reason"] for e in events[:-1]] == [None] * 5
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 6}


def test_streamed_completions_with_a_text_prompt(deployment: Deployment, client: httpx.Client) -> None:
    body = {
        "model": "any",
        "prompt": "hello",
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    events, done = stream_events(client, f"{deployment.endpoint}/v1/completions", body)
    chunks = [e for e in events if e.get("choices")]
    assert done and len(chunks) == 4
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    reply = client.post(f"{deployment.endpoint}/v1/completions", json={**body, "stream": False})
    assert reply.json()["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 4,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},  # OpenAI's field; no prefix cache here
    }


def test_disaggregated_greedy_equals_a_single_process(deployment: Deployment, client: httpx.Client) -> None:
    import torch

    from pdplan.profiles.executor import Executor
    from pdplan.profiles.model_spec import load_model_spec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        executor = Executor(load_model_spec(str(TEST_MODEL)), seed=0)
        expected = []
        for prompt in PROMPTS:
            logits, caches = executor.prefill([prompt])
            out = [int(logits.argmax(-1)[0])]
            while len(out) < 8:
                out.append(int(executor.decode([out[-1]], caches).argmax(-1)[0]))
            expected.append(out)
    finally:
        torch.set_num_threads(threads)
    results: list[list[int]] = [[] for _ in PROMPTS]

    def ask(i: int) -> None:
        reply = client.post(
            f"{deployment.endpoint}/generate", json={"input_ids": PROMPTS[i], "sampling_params": _greedy(8)}
        )
        results[i] = reply.json()["output_ids"]

    threads_ = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join(60)
    assert results == expected


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"input_ids": [1, 2, 999999], "sampling_params": _greedy(2)}, 400),
        ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 100000}}, 400),
        ({"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2, "frequency_penalty": 0.5}}, 400),
    ],
    ids=["token-out-of-vocab", "too-many-new-tokens", "unsupported-sampling"],
)
def test_malformed_requests_through_the_router_get_4xx_json(
    deployment: Deployment, client: httpx.Client, body: dict[str, Any], status: int
) -> None:
    reply = client.post(f"{deployment.endpoint}/generate", json=body)
    assert reply.status_code == status
    assert reply.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", "/generate", b"{not json", 400),
        ("POST", "/generate", b'{"input_ids": [1], "stream": "maybe"}', 400),
        ("POST", "/nowhere", b"{}", 404),
        ("GET", "/generate", b"", 405),
    ],
)
def test_malformed_requests_to_a_worker_get_4xx_json(
    deployment: Deployment, client: httpx.Client, method: str, path: str, content: bytes, status: int
) -> None:
    url = deployment.process("decode-1")["url"]
    reply = client.request(method, f"{url}{path}", content=content)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == status


def test_workers_expose_metrics_and_step_times(deployment: Deployment, client: httpx.Client) -> None:
    text = client.get(f"{deployment.process('prefill-0')['url']}/metrics").text
    # Two CPU workers on one host: the KV went into the decode workers' shared memory, in place.
    sent = [line for line in text.splitlines() if line.startswith("pdplan_worker_kv_transfer_bytes_total")]
    assert any('path="shared_memory"' in line and float(line.split()[-1]) > 0 for line in sent), sent
    info = client.get(f"{deployment.process('decode-0')['url']}/server_info").json()
    assert info["disaggregation_mode"] == "decode" and info["threads"] >= 1
    assert info["internal_states"][0]["recent_decode_steps"]


def _gauge(client: httpx.Client, url: str, name: str) -> float:
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"pdplan_worker_{name}{{"):
            return float(line.split()[-1])
    return 0.0


#: Tokens per stream while a decode worker is killed: the victim is killed within ~0.1 s of its
#: first decode step, far inside 100 steps; the survivor's streams must still finish them all
#: (300 before: ~10 s more of decoding on a loaded 2-core machine, checking nothing more).
STREAM_TOKENS = 100


def test_killed_decode_worker_ends_its_streams_and_the_rest_keep_serving(
    deployment: Deployment, client: httpx.Client
) -> None:
    outcomes: list[tuple[int, bool, str]] = []
    lock = threading.Lock()

    def stream(i: int) -> None:
        body = {
            "input_ids": PROMPTS[i % len(PROMPTS)],
            "sampling_params": _greedy(STREAM_TOKENS),
            "stream": True,
        }
        try:
            events, done = stream_events(client, f"{deployment.endpoint}/generate", body)
            result = (len(events), done, "error event" if events and "error" in events[-1] else "")
        except httpx.HTTPError as err:
            result = (-1, False, type(err).__name__)
        with lock:
            outcomes.append(result)

    streams = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in streams:
        t.start()
    # Kill a decode worker that is running some of the streams (the router's policy decides which).
    victim: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while not victim and time.monotonic() < deadline:
        for name in ("decode-0", "decode-1"):
            proc = deployment.process(name)
            if _gauge(client, proc["url"], "running_batch") > 0:
                victim = proc
                break
        time.sleep(0.1)
    assert victim, "no decode worker started the streams"
    os.kill(victim["pid"], signal.SIGKILL)
    start = time.monotonic()
    for t in streams:
        t.join(120)
    assert not any(t.is_alive() for t in streams), "a client hung after its decode worker died"
    complete = [o for o in outcomes if o[1] and o[0] == STREAM_TOKENS]
    failed = [o for o in outcomes if not o[1]]
    assert len(complete) + len(failed) == 4, outcomes  # each stream finished, or failed visibly
    assert failed, outcomes  # the victim's streams ended visibly, never as a silent success
    # ... with an explicit error event (the gateway adds it where the router just cuts the stream).
    assert all(o[2] == "error event" for o in failed), outcomes
    # The router keeps serving from the surviving decode worker.
    for prompt in PROMPTS:
        reply = client.post(
            f"{deployment.endpoint}/generate", json={"input_ids": prompt, "sampling_params": _greedy(3)}
        )
        assert reply.status_code == 200 and len(reply.json()["output_ids"]) == 3
    assert time.monotonic() - start < 90
    # The supervisor saw the death, restarted the worker on its ports, and the deployment is whole
    # again once the new process answers /health.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record, fresh = deployment.record(), deployment.process(victim["name"])
        if fresh["restarts"] >= 1 and record["status"] == "ready":
            break
        time.sleep(0.2)
    assert fresh["restarts"] >= 1 and fresh["pid"] != victim["pid"] and record["status"] == "ready"
    assert "restarted" in deployment.output.read_text()
    # The router polls /health every 2 s, then routes to it again: every worker is healthy in its
    # readiness (the loop waited for 4 of these 3 workers before, so always its whole 30 s).
    workers = sum(1 for p in record["processes"] if p["role"] in ("prefill", "decode"))
    deadline, readiness = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        readiness = client.get(f"{deployment.endpoint}/readiness").json()
        if readiness.get("healthy_workers") == workers:
            break
        time.sleep(0.5)
    assert readiness.get("healthy_workers") == workers == 3, readiness
    reply = client.post(
        f"{fresh['url']}/generate", json={"input_ids": PROMPTS[0], "sampling_params": _greedy(2)}
    )
    assert reply.status_code == 400  # alive (a decode worker needs bootstrap fields)


def test_stop_leaves_no_processes(deployment: Deployment, pdplan_script: Path) -> None:
    record = deployment.record()
    done = subprocess.run(
        [str(pdplan_script), "deploy", "--stop", str(deployment.out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert deployment.proc.wait(timeout=30) == 0
    assert deployment.record()["status"] == "stopped"
    for p in record["processes"]:
        assert not alive(p["pid"]), p["name"]
        assert group_members(p["pgid"]) == [], p["name"]
    assert "stopped" in deployment.output.read_text()

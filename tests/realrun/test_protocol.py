"""Parsing SGLang /generate and OpenAI /v1/completions bodies: what is accepted, and every 4xx."""

from __future__ import annotations

from typing import Any

import pytest

from pdplan.realrun.protocol import Limits, RequestError, parse_completion, parse_generate
from pdplan.realrun.tokenizer import ByteTokenizer

LIMITS = Limits(vocab_size=4096, max_total_tokens=64, max_prompt_tokens=32)
ENCODE = ByteTokenizer(4096).encode

#: What sglang-router 0.3.2 forwards for {"input_ids": [1, 2, 3], "sampling_params": {...}} (observed).
ROUTED = {
    "model": None,
    "input_ids": [1, 2, 3],
    "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    "return_text_in_logprobs": False,
    "stream": False,
    "log_metrics": True,
    "return_hidden_states": False,
    "background": False,
    "no_logs": False,
    "return_bytes": False,
    "return_entropy": False,
    "bootstrap_host": "127.0.0.1",
    "bootstrap_port": 18501,
    "bootstrap_room": 2878237350083234529,
}


def test_router_body_parses_with_its_bootstrap_fields() -> None:
    (req,) = parse_generate(ROUTED, LIMITS, ENCODE)
    assert req.input_ids == (1, 2, 3)
    assert req.sampling.max_new_tokens == 4 and req.sampling.is_greedy and req.sampling.ignore_eos
    assert req.bootstrap is not None
    assert (req.bootstrap.host, req.bootstrap.port, req.bootstrap.room) == (
        "127.0.0.1",
        18501,
        2878237350083234529,
    )


def test_router_batch_has_one_room_per_prompt() -> None:
    body = {
        **ROUTED,
        "input_ids": [[1, 2], [3]],
        "bootstrap_host": ["127.0.0.1"] * 2,
        "bootstrap_port": [18501] * 2,
        "bootstrap_room": [11, 12],
    }
    reqs = parse_generate(body, LIMITS, ENCODE)
    assert [r.input_ids for r in reqs] == [(1, 2), (3,)]
    assert [r.bootstrap.room for r in reqs if r.bootstrap] == [11, 12]


def test_text_is_encoded_and_defaults_follow_sglang() -> None:
    (req,) = parse_generate({"text": "hi"}, LIMITS, ENCODE)
    assert req.input_ids == tuple(ENCODE("hi"))
    assert req.sampling.max_new_tokens == 16 and req.sampling.temperature == 1.0 and req.bootstrap is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({}, "exactly one of input_ids or text"),
        ({"input_ids": [1], "text": "a"}, "exactly one of input_ids or text"),
        ({"input_ids": []}, "non-empty list"),
        ({"input_ids": [1, 4096]}, r"input_ids\[1\]=4096"),
        ({"input_ids": [1, True]}, r"input_ids\[1\]=True"),
        ({"input_ids": [1, "2"]}, r"input_ids\[1\]='2'"),
        ({"input_ids": list(range(33))}, "at most 32"),
        (
            {"input_ids": [1], "sampling_params": {"max_new_tokens": 64}},
            r"max_new_tokens=64; expected an integer in \[1, 63\]",
        ),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": 0}}, "max_new_tokens=0"),
        ({"input_ids": [1], "sampling_params": {"temperature": -1}}, "temperature=-1"),
        ({"input_ids": [1], "sampling_params": {"top_p": 0}}, "top_p=0"),
        ({"input_ids": [1], "sampling_params": {"frobnicate": 1}}, "unknown keys"),
        ({"input_ids": [1], "sampling_params": {"stop": ["x"]}}, "stop=.* is not supported"),
        ({"input_ids": [1], "sampling_params": {"n": 2}}, "n=2 is not supported"),
        ({"input_ids": [1], "sampling_params": []}, "expected an object"),
        ({"input_ids": [1], "stream": "yes"}, "stream='yes'"),
        ({"input_ids": [1], "return_logprob": True}, "return_logprob"),
        ({"input_ids": [[1], [2]], "stream": True}, "batch of prompts"),
        ({**ROUTED, "bootstrap_port": 70000}, "bootstrap_port=70000"),
        ({**ROUTED, "bootstrap_room": -1}, "bootstrap_room=-1"),
        ({**ROUTED, "bootstrap_host": ""}, "bootstrap_host"),
        ({"input_ids": [1], "rid": 5}, "rid=5"),
    ],
)
def test_malformed_generate_bodies_are_4xx(body: Any, message: str) -> None:
    with pytest.raises(RequestError, match=message) as err:
        parse_generate(body, LIMITS, ENCODE)
    assert 400 <= err.value.status < 500


def test_text_without_tokenizer_is_refused() -> None:
    with pytest.raises(RequestError, match="need a tokenizer"):
        parse_generate({"text": "hi"}, LIMITS, None)


def test_completion_with_token_ids_and_usage() -> None:
    req = parse_completion(
        {"model": "m", "prompt": [5, 6], "max_tokens": 3, "temperature": 0, "stream": True,
         "stream_options": {"include_usage": True}},
        LIMITS, None,
    )  # fmt: skip
    assert (req.input_ids, req.sampling.max_new_tokens, req.stream, req.include_usage) == (
        (5, 6),
        3,
        True,
        True,
    )
    assert req.api == "completions" and req.model == "m"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "hi"}, "need a tokenizer"),
        ({"prompt": [[1], [2]]}, "one prompt per request"),
        ({"prompt": [1], "echo": True}, "echo"),
        ({"prompt": [1], "logprobs": 2}, "logprobs"),
        ({"prompt": [1], "n": 3}, "n=3"),
        ({"prompt": [1], "max_tokens": 100}, "max_new_tokens=100"),
    ],
)
def test_malformed_completion_bodies_are_4xx(body: Any, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_completion(body, LIMITS, None)


def test_byte_tokenizer_is_lossless_for_any_id() -> None:
    tok = ByteTokenizer(4096)
    assert tok.decode(tok.encode("héllo")) == "héllo"
    assert tok.decode([3 + ord("a"), 4000, 3 + ord("b")]) == "a<4000>b"

"""Reply bodies: SGLang's ``/generate`` output, OpenAI's completion objects, errors, and SSE framing.

SGLang's ``/generate`` stream (default, non-incremental mode) sends one ``data: {...}`` event per
step whose ``text`` and ``output_ids`` are *cumulative*, then ``data: [DONE]``; ``meta_info`` carries
``id``, ``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` (``None`` until the end, then
``{"type": "length", "length": n}``, ``{"type": "stop", "matched": id}`` or ``{"type": "abort",
"message": ...}``). OpenAI completion chunks carry the *new* text only. Workers emit one event per
token, so a client counts tokens by counting events.

``meta_info["cached_tokens"]`` is the prompt tokens the worker's prefix cache supplied (SGLang's
field, set by its scheduler from ``req.cached_tokens``, ``python/sglang/srt/managers/
scheduler_output_processor_mixin.py``); OpenAI usage carries the same count as
``usage.prompt_tokens_details.cached_tokens`` (OpenAI's field; SGLang's
``entrypoints/openai/usage_processor.py`` fills it with ``--enable-cache-report``). Always
present here, 0 without a cache.

``meta_info["pdplan"]`` adds the worker-side timeline (UNIX seconds) the benchmark needs to fill
``prefill_start_s``, ``prefill_end_s`` and ``decode_start_s`` of ``requests.csv``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Finish:
    """Why a request ended: ``length``, ``stop`` (``matched`` = the stop/EOS id) or ``abort``."""

    kind: str
    length: int = 0
    matched: int | None = None
    message: str = ""

    def sglang(self) -> dict[str, Any]:
        if self.kind == "length":
            return {"type": "length", "length": self.length}
        if self.kind == "stop":
            return {"type": "stop", "matched": self.matched}
        return {"type": "abort", "message": self.message}

    def openai(self) -> str:
        return "length" if self.kind == "length" else "stop"


@dataclass
class Timeline:
    """Worker-side times of one request (UNIX seconds; ``None`` where the worker did not see it).

    The first-token path, in order (a disaggregated request's decode worker reports them all; the
    prefill worker's own times come in the KV header): ``prefill_arrival`` (the prefill worker got
    the request), ``prefill_queued`` (it queued the prompt for its engine: the decode side had sent
    READY), ``prefill_start`` / ``prefill_end`` (the forward that completed the prompt),
    ``handoff_ready`` (the decode worker reserved KV and sent READY), ``kv_received`` (the KV is in
    the decode worker's cache; the request goes to its engine), ``first_token`` (the engine emitted
    the first token — a decode engine does so when it takes the request in, between two steps),
    ``first_token_sent`` (the HTTP server began writing the first token's event), ``decode_start``
    (the request joined the running batch).
    """

    arrival: float = field(default_factory=time.time)
    prefill_arrival: float | None = None
    prefill_queued: float | None = None
    prefill_start: float | None = None
    prefill_end: float | None = None
    handoff_ready: float | None = None
    kv_received: float | None = None
    decode_start: float | None = None
    first_token: float | None = None
    first_token_sent: float | None = None
    finish: float | None = None
    #: prompt tokens whose KV came from the prefix cache (the prefill worker's, in PD mode)
    cached_tokens: int = 0

    def to_dict(self) -> dict[str, float | None]:
        return {
            "arrival_ts": self.arrival,
            "prefill_arrival_ts": self.prefill_arrival,
            "prefill_queued_ts": self.prefill_queued,
            "prefill_start_ts": self.prefill_start,
            "prefill_end_ts": self.prefill_end,
            "handoff_ready_ts": self.handoff_ready,
            "kv_received_ts": self.kv_received,
            "decode_start_ts": self.decode_start,
            "first_token_ts": self.first_token,
            "first_token_sent_ts": self.first_token_sent,
            "finish_ts": self.finish,
        }


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_body(message: str, status: int, kind: str) -> dict[str, Any]:
    """The JSON error every worker endpoint answers with (OpenAI's shape, as SGLang uses)."""
    return {"error": {"message": message, "type": kind, "code": status}}


def generate_body(
    rid: str,
    prompt_tokens: int,
    output_ids: list[int],
    text: str,
    finish: Finish | None,
    timeline: Timeline,
) -> dict[str, Any]:
    """SGLang's ``/generate`` output object (also each cumulative stream event)."""
    return {
        "text": text,
        "output_ids": list(output_ids),
        "meta_info": {
            "id": rid,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(output_ids),
            "cached_tokens": timeline.cached_tokens,
            "finish_reason": None if finish is None else finish.sglang(),
            "e2e_latency": time.time() - timeline.arrival,
            "pdplan": timeline.to_dict(),
        },
    }


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's ``usage`` object, with ``prompt_tokens_details.cached_tokens``."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(
    rid: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    text: str,
    finish: Finish | None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """OpenAI's ``text_completion`` object (non-streamed) with usage."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": None if finish is None else finish.openai(),
            }
        ],
        "usage": usage_body(prompt_tokens, completion_tokens, cached_tokens),
    }


def completion_chunk(
    rid: str, model: str, delta: str, finish: Finish | None, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One streamed OpenAI completion chunk (``delta`` = the new text)."""
    chunk = completion_body(rid, model, 0, 0, delta, finish)
    del chunk["usage"]
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_body(
    rid: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    text: str,
    finish: Finish | None,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """OpenAI's ``chat.completion`` object (non-streamed) with usage."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": None if finish is None else finish.openai(),
            }
        ],
        "usage": usage_body(prompt_tokens, completion_tokens, cached_tokens),
    }


def chat_chunk(
    rid: str,
    model: str,
    delta: str,
    finish: Finish | None,
    first: bool = False,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk`` (the first one also carries the assistant role)."""
    part: dict[str, Any] = {"role": "assistant", "content": delta} if first else {"content": delta}
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": part,
                "logprobs": None,
                "finish_reason": None if finish is None else finish.openai(),
            }
        ],
    }
    if usage is not None:
        chunk["usage"] = usage
        chunk["choices"] = []
    return chunk

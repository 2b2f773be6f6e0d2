"""What the benchmark client sends and how it reads the streamed reply, per API.

Three APIs, each streamed as server-sent events (``data: {...}`` lines, then ``data: [DONE]``):

- ``sglang-generate``: SGLang's ``POST /generate`` with ``input_ids`` (exact prompt length) and
  ``sampling_params: {max_new_tokens, ignore_eos: true}``; events carry the *cumulative*
  ``output_ids``, so the token count of an event is the growth of that list, and ``meta_info``
  carries ``prompt_tokens`` / ``completion_tokens`` (and pdplan's worker timeline).
- ``openai-completions``: ``POST /v1/completions`` with the prompt as token ids (vLLM, SGLang and
  pdplan's workers accept a list of ids), ``max_tokens``, ``ignore_eos`` (a vLLM/SGLang extension)
  and ``stream_options: {include_usage: true}`` so the last chunk carries ``usage``.
- ``openai-chat``: ``POST /v1/chat/completions``; a chat message must be text, so the prompt is
  made of words that most tokenizers encode as one token each, or built from a local tokenizer
  (``--tokenizer DIR``); the prompt length comes from the server's ``usage``.

Prompts that share prefixes: when the request list names each prompt's prefix blocks
(``Requests.prefix``: a Mooncake trace's ``hash_ids``, a CSV's ``prefix_hashes``, a workload's
``prefix:``), block ``j`` of a prompt is made of token ids drawn from the block's id alone
(:func:`block_ids`), so two prompts that share blocks share exactly those tokens — the prefix a
server's cache can reuse — and nothing else (a block covers ``block_tokens`` tokens; the tokens
past a prompt's listed blocks are its own, as without prefixes).

One event is one "chunk" in the sense of SGLang's ``bench_serving`` and vLLM's
``benchmark_serving``: its arrival time is a token time, and the gaps between chunks are the ITL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

APIS = ("sglang-generate", "openai-completions", "openai-chat")
PATHS = {
    "sglang-generate": "/generate",
    "openai-completions": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
}
#: Token ids the prompts are made of: small ids exist in every vocabulary, and avoiding 0–2 keeps
#: clear of the usual pad/BOS/EOS ids.
_FIRST_ID, _NUM_IDS = 3, 250
_CHAT_WORD = " the"  # one token in the Llama, Qwen and Mistral vocabularies


def prompt_ids(req_id: int, length: int, blocks: Sequence[int] = (), block_tokens: int = 1) -> list[int]:
    """A deterministic prompt of exactly ``length`` token ids. Without ``blocks`` it differs per
    request (no two prompts share a prefix, so a prefix cache cannot shorten a prefill); with
    them, its first ``len(blocks) × block_tokens`` tokens are the blocks' own (:func:`block_ids`)."""
    start = (req_id * 7919) % _NUM_IDS
    ids = [_FIRST_ID + (start + i) % _NUM_IDS for i in range(length)]
    for j, block in enumerate(blocks):
        lo = j * block_tokens
        if lo >= length:
            break
        hi = min(lo + block_tokens, length)
        ids[lo:hi] = block_ids(block, hi - lo)
    return ids


_MASK64 = (1 << 64) - 1


def block_ids(block: int, count: int) -> list[int]:
    """The first ``count`` token ids of prefix block ``block``: a SplitMix64 stream seeded by the
    block id (Steele, Lea & Flood, OOPSLA 2014), so different blocks differ from their first
    tokens on (two blocks agree on their first 16 tokens with probability 250^-16)."""
    with np.errstate(over="ignore"):
        seed = np.uint64(block & _MASK64)
        z = seed + np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (np.uint64(_FIRST_ID) + z % np.uint64(_NUM_IDS)).astype(np.int64).tolist()


@dataclass(frozen=True)
class ApiSpec:
    """How to talk to the endpoint: ``api`` (one of ``APIS``), the ``model`` name the OpenAI APIs
    need, and an optional ``encode``/``decode`` pair from a local tokenizer (chat prompts)."""

    api: str
    model: str = ""
    decode_text: Callable[[Sequence[int]], str] | None = None

    @property
    def path(self) -> str:
        return PATHS[self.api]

    def payload(
        self,
        req_id: int,
        prompt_tokens: int,
        output_tokens: int,
        blocks: Sequence[int] = (),
        block_tokens: int = 1,
    ) -> dict[str, Any]:
        """The JSON body of one streamed request (``blocks``: its prefix block ids, if any)."""
        ids = prompt_ids(req_id, prompt_tokens, blocks, block_tokens)
        if self.api == "sglang-generate":
            return {
                "input_ids": ids,
                "sampling_params": {
                    "max_new_tokens": output_tokens,
                    "ignore_eos": True,
                    "temperature": 0.0,
                },
                "stream": True,
            }
        common: dict[str, Any] = {
            "model": self.model,
            "max_tokens": output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.api == "openai-completions":
            return {"prompt": ids, **common}
        text = self.decode_text(ids) if self.decode_text is not None else _CHAT_WORD * prompt_tokens
        return {"messages": [{"role": "user", "content": text}], **common}

    def new_reader(self) -> StreamReader:
        return StreamReader(self.api)


class StreamReader:
    """Reads one reply's events: how many tokens each event delivers, and the usage counts."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.output_ids = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        #: prompt tokens the server's prefix cache supplied (``None``: it did not say)
        self.cached_tokens: int | None = None
        self.error: str | None = None
        self.worker: dict[str, Any] | None = None
        #: the server's own send time of the last event (``sent_s``, perf_counter seconds), when it
        #: stamps events as ``pdplan.realrun.token_server`` does: lets the client measure its lag
        self.sent_s: float | None = None

    def feed(self, data: bytes) -> int:
        """Parse one event's payload (after ``data:``); returns the tokens it delivers (0 for a
        usage-only or empty event). Sets ``error`` on an error event or an abort."""
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            self.error = f"malformed stream event: {data[:80]!r}"
            return 0
        if not isinstance(event, dict):
            self.error = f"unexpected stream event: {data[:80]!r}"
            return 0
        sent = event.get("sent_s")
        self.sent_s = float(sent) if isinstance(sent, (int, float)) else None
        if "error" in event:
            err = event["error"]
            self.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return 0
        if self.api == "sglang-generate":
            return self._generate(event)
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
            self.completion_tokens = _int_or_none(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                self.cached_tokens = _int_or_none(details.get("cached_tokens"))
        choices = event.get("choices") or []
        if not choices:
            return 0
        choice = choices[0]
        if self.api == "openai-completions":
            text = choice.get("text")
        else:
            text = (choice.get("delta") or {}).get("content")
        # One chunk is one token event; an empty chunk that only closes the stream is not (a token
        # whose text is still an incomplete UTF-8 sequence arrives with empty text, and counts).
        return 0 if not text and choice.get("finish_reason") else 1

    def _generate(self, event: dict[str, Any]) -> int:
        ids = event.get("output_ids")
        meta = event.get("meta_info") or {}
        self.prompt_tokens = _int_or_none(meta.get("prompt_tokens"))
        self.completion_tokens = _int_or_none(meta.get("completion_tokens"))
        if "cached_tokens" in meta:
            self.cached_tokens = _int_or_none(meta.get("cached_tokens"))
        if isinstance(meta.get("pdplan"), dict):
            self.worker = meta["pdplan"]
        finish = meta.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":
            self.error = f"aborted: {finish.get('message', '')}"
        if isinstance(ids, list):
            new = len(ids) - self.output_ids
            self.output_ids = len(ids)
            return max(new, 0)
        count = self.completion_tokens or 0  # no ids: count from meta_info
        new = count - self.output_ids
        self.output_ids = max(count, self.output_ids)
        return max(new, 0)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

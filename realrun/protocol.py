"""Request bodies of SGLang's ``/generate`` and OpenAI's ``/v1/completions`` as typed values.

What the production ``sglang-router`` (0.3.x) sends, observed on the wire: the client's body plus
``bootstrap_host`` (the prefill URL's host), ``bootstrap_port`` (the port given after the prefill URL
on the router's command line) and ``bootstrap_room`` (a random u63), identical to the prefill and the
decode worker; for a batch (``input_ids`` as a list of lists) the three fields are lists. It also adds
SGLang's top-level defaults (``return_text_in_logprobs``, ``log_metrics``, ``background`` …), so
unknown *top-level* keys are ignored, while unknown or unsupported *sampling* settings are rejected:
a worker never silently ignores an instruction that would change the output.

Every rejection is a :class:`RequestError` carrying the HTTP status (4xx) and a message that names the
field, the value and what was expected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

U64_MAX = 2**64 - 1

#: Sampling settings accepted only at their neutral value (anything else changes the output).
_NEUTRAL = {
    "n": 1,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "min_p": 0.0,
    "stop": None,
    "regex": None,
    "json_schema": None,
    "ebnf": None,
}
_SAMPLING_KEYS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "ignore_eos",
    "stop_token_ids",
    "sampling_seed",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    *_NEUTRAL,
)


class RequestError(Exception):
    """A request the worker refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy; ``top_k == -1`` disables top-k."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class Bootstrap:
    """Where the decode side fetches a request's KV: the prefill's bootstrap address and the room."""

    host: str
    port: int
    room: int


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt to serve. ``api`` is ``generate`` or ``completions`` (it sets the reply format)."""

    rid: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams
    stream: bool
    api: str
    bootstrap: Bootstrap | None = None
    model: str | None = None
    include_usage: bool = False


@dataclass(frozen=True)
class Limits:
    """What a worker accepts: ids below ``vocab_size``, prompt + new tokens within ``max_total_tokens``,
    a prompt within ``max_prompt_tokens``."""

    vocab_size: int
    max_total_tokens: int
    max_prompt_tokens: int


Encode = Callable[[str], list[int]]


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{field}={value!r}; expected an integer in [{lo}, {hi}]")
    return value


def _float(value: Any, field: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError(f"{field}={value!r}; expected a number in [{lo}, {hi}]")
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{field}={value!r}; expected true or false")
    return value


def _token_ids(value: Any, field: str, limits: Limits) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(f"{field}: expected a non-empty list of token ids")
    if len(value) > limits.max_prompt_tokens:
        raise RequestError(
            f"{field}: {len(value)} tokens; this worker accepts at most {limits.max_prompt_tokens}"
        )
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < limits.vocab_size:
            raise RequestError(f"{field}[{i}]={token!r}; expected a token id in [0, {limits.vocab_size - 1}]")
    return tuple(value)


def parse_sampling(raw: Any, limits: Limits, prompt_tokens: int) -> SamplingParams:
    """SGLang's ``sampling_params`` object (absent = SGLang's defaults: 16 new tokens, T = 1)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RequestError(f"sampling_params={raw!r}; expected an object")
    unknown = sorted(set(raw) - set(_SAMPLING_KEYS))
    if unknown:
        raise RequestError(f"sampling_params: unknown keys {unknown}; valid: {sorted(_SAMPLING_KEYS)}")
    for key, neutral in _NEUTRAL.items():
        value = raw.get(key, neutral)
        if value not in (neutral, [], ""):
            raise RequestError(
                f"sampling_params.{key}={value!r} is not supported by pdplan workers; "
                f"expected {neutral!r} or absent"
            )
    room = limits.max_total_tokens - prompt_tokens
    if room < 1:
        raise RequestError(
            f"prompt of {prompt_tokens} tokens leaves no room for output "
            f"(context limit {limits.max_total_tokens} tokens)"
        )
    stop_ids = raw.get("stop_token_ids") or []
    if not isinstance(stop_ids, list):
        raise RequestError(f"sampling_params.stop_token_ids={stop_ids!r}; expected a list of ids")
    seed = raw.get("sampling_seed")
    return SamplingParams(
        max_new_tokens=_int(raw.get("max_new_tokens", 16), "sampling_params.max_new_tokens", 1, room),
        temperature=_float(raw.get("temperature", 1.0), "sampling_params.temperature", 0.0, 100.0),
        top_p=_float(raw.get("top_p", 1.0), "sampling_params.top_p", 1e-6, 1.0),
        top_k=_top_k(raw.get("top_k", -1), limits.vocab_size),
        ignore_eos=_bool(raw.get("ignore_eos", False), "sampling_params.ignore_eos"),
        stop_token_ids=tuple(
            _int(t, "sampling_params.stop_token_ids[]", 0, limits.vocab_size - 1) for t in stop_ids
        ),
        seed=None if seed is None else _int(seed, "sampling_params.sampling_seed", 0, U64_MAX),
    )


def _top_k(value: Any, vocab_size: int) -> int:
    if value == -1:
        return -1
    return _int(value, "sampling_params.top_k", 1, vocab_size)


def _bootstrap(body: dict[str, Any], index: int | None) -> Bootstrap | None:
    fields = [body.get(k) for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room")]
    if all(v is None for v in fields):
        return None
    if index is not None:
        for key, value in zip(("bootstrap_host", "bootstrap_port", "bootstrap_room"), fields, strict=True):
            if not isinstance(value, list) or len(value) <= index:
                raise RequestError(f"{key}={value!r}; a batch needs one entry per prompt")
        fields = [v[index] for v in fields]  # type: ignore[index]
    host, port, room = fields
    if not isinstance(host, str) or not host or len(host) > 255:
        raise RequestError(f"bootstrap_host={host!r}; expected a host name or address")
    return Bootstrap(
        host=host.strip("[]"),
        port=_int(port, "bootstrap_port", 1, 65535),
        room=_int(room, "bootstrap_room", 0, U64_MAX),
    )


def _rid(body: dict[str, Any], index: int | None) -> str:
    rid = body.get("rid")
    if isinstance(rid, list) and index is not None and index < len(rid):
        rid = rid[index]
    if rid is None or isinstance(rid, list):
        return uuid.uuid4().hex
    if not isinstance(rid, str) or not 0 < len(rid) <= 256:
        raise RequestError(f"rid={rid!r}; expected a string of 1 to 256 characters")
    return rid if index is None else f"{rid}-{index}"


def parse_generate(body: Any, limits: Limits, encode: Encode | None) -> list[GenerateRequest]:
    """``POST /generate``: one request, or one per prompt of a batch (``input_ids`` list of lists or
    ``text`` list). ``encode`` turns ``text`` into ids; ``None`` rejects ``text``.

    Raises:
        RequestError: anything malformed or unsupported (the message names the field).
    """
    if not isinstance(body, dict):
        raise RequestError("request body: expected a JSON object")
    if body.get("return_logprob"):
        raise RequestError("return_logprob=true is not supported by pdplan workers")
    stream = _bool(body.get("stream", False), "stream")
    ids, text = body.get("input_ids"), body.get("text")
    if (ids is None) == (text is None):
        raise RequestError("expected exactly one of input_ids or text")
    if text is not None:
        if encode is None:
            raise RequestError("text prompts need a tokenizer; send input_ids")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("text: expected a string or a non-empty list of strings")
        prompts: list[Any] = [encode(t) for t in texts]
        batched = not isinstance(text, str)
    else:
        batched = isinstance(ids, list) and bool(ids) and isinstance(ids[0], list)
        prompts = list(ids or []) if batched else [ids]
    if batched and stream:
        raise RequestError("stream=true with a batch of prompts is not supported; send one per request")
    params = body.get("sampling_params")
    out = []
    for i, prompt in enumerate(prompts):
        index = i if batched else None
        input_ids = _token_ids(prompt, "input_ids" if index is None else f"input_ids[{i}]", limits)
        raw = params[i] if isinstance(params, list) and i < len(params) else params
        out.append(
            GenerateRequest(
                rid=_rid(body, index),
                input_ids=input_ids,
                sampling=parse_sampling(raw, limits, len(input_ids)),
                stream=stream,
                api="generate",
                bootstrap=_bootstrap(body, index),
            )
        )
    return out


def parse_completion(body: Any, limits: Limits, encode: Encode | None) -> GenerateRequest:
    """``POST /v1/completions`` with one prompt: a string (needs ``encode``) or a list of token ids.

    Raises:
        RequestError: anything malformed or unsupported.
    """
    if not isinstance(body, dict):
        raise RequestError("request body: expected a JSON object")
    unsupported = {
        "echo": bool(body.get("echo")),
        "logprobs": body.get("logprobs") is not None,
        "best_of": body.get("best_of") not in (None, 1),
        "suffix": bool(body.get("suffix")),
    }
    for key, is_set in unsupported.items():
        if is_set:
            raise RequestError(f"{key}={body[key]!r} is not supported by pdplan workers")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if encode is None:
            raise RequestError("string prompts need a tokenizer; send the prompt as token ids")
        prompt = encode(prompt)
    elif not (isinstance(prompt, list) and prompt and not isinstance(prompt[0], list | str)):
        raise RequestError("prompt: expected a string or a list of token ids (one prompt per request)")
    input_ids = _token_ids(prompt, "prompt", limits)
    raw = {
        "max_new_tokens": body.get("max_tokens", 16),
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "top_k": body.get("top_k", -1),
        "ignore_eos": body.get("ignore_eos", False),
        "n": body.get("n", 1),
        "stop": body.get("stop"),
        "frequency_penalty": body.get("frequency_penalty", 0.0),
        "presence_penalty": body.get("presence_penalty", 0.0),
        "stop_token_ids": body.get("stop_token_ids"),
        "sampling_seed": body.get("seed"),
    }
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(f"stream_options={options!r}; expected an object")
    model = body.get("model")
    return GenerateRequest(
        rid=_rid(body, None),
        input_ids=input_ids,
        sampling=parse_sampling(raw, limits, len(input_ids)),
        stream=_bool(body.get("stream", False), "stream"),
        api="completions",
        bootstrap=_bootstrap(body, None),
        model=model if isinstance(model, str) else None,
        include_usage=_bool(options.get("include_usage", False), "stream_options.include_usage"),
    )


CHAT_ROLES = ("system", "user", "assistant", "developer", "tool")


def chat_messages(body: Any) -> list[dict[str, str]]:
    """OpenAI chat ``messages`` as ``[{"role", "content"}]`` with text content (a string, or a list of
    ``{"type": "text", "text": ...}`` parts, joined).

    Raises:
        RequestError: missing, empty, or with a role or content it cannot take.
    """
    if not isinstance(body, dict):
        raise RequestError("request body: expected a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}]: expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise RequestError(f"messages[{i}].role={role!r}; expected one of {list(CHAT_ROLES)}")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    raise RequestError(f"messages[{i}].content[{j}]: only text parts are supported")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content: expected a string or a list of text parts")
        out.append({"role": role, "content": content})
    return out


def parse_chat(body: Any, prompt: str, limits: Limits, encode: Encode | None) -> GenerateRequest:
    """``POST /v1/chat/completions`` once its messages became ``prompt`` (the chat template's text):
    the same sampling fields as completions, ``max_completion_tokens`` as an alias of ``max_tokens``.

    Raises:
        RequestError: anything malformed or unsupported.
    """
    assert isinstance(body, dict)
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            raise RequestError(f"{key} is not supported by pdplan workers")
    if body.get("logprobs"):
        raise RequestError("logprobs=true is not supported by pdplan workers")
    fields = {k: v for k, v in body.items() if k not in ("messages", "logprobs", "top_logprobs")}
    if "max_completion_tokens" in fields and "max_tokens" not in fields:
        fields["max_tokens"] = fields.pop("max_completion_tokens")
    fields.pop("max_completion_tokens", None)
    fields["prompt"] = prompt
    return replace(parse_completion(fields, limits, encode), api="chat")

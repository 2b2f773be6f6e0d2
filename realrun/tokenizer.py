"""Tokenizers a worker can use: a Hugging Face tokenizer directory, or a byte-level fallback.

Workers serving seeded random weights have no vocabulary of their own. So that ``text`` prompts (and
the router's ``/v1/completions``, which only accepts string prompts) still work, the fallback maps
UTF-8 bytes to ids ``3..258`` (0..2 are the usual pad/bos/eos slots) and renders any other id as
``<id>``. It is lossless for every id, so token counts survive the round trip through text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pdplan.profiles.errors import ConfigError

#: First id of the byte range of :class:`ByteTokenizer` (ids 0, 1, 2 are left to pad/bos/eos).
BYTE_OFFSET = 3


class Tokenizer(Protocol):
    """What a worker needs from a tokenizer."""

    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes ↔ ids ``BYTE_OFFSET + byte``; ids outside that range decode as ``<id>``."""

    name = "bytes"

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < BYTE_OFFSET + 256:
            raise ConfigError(
                f"byte tokenizer: vocab_size={vocab_size}; expected at least {BYTE_OFFSET + 256}"
            )
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [BYTE_OFFSET + b for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        parts: list[str] = []
        pending = bytearray()
        for token in ids:
            if BYTE_OFFSET <= token < BYTE_OFFSET + 256:
                pending.append(token - BYTE_OFFSET)
                continue
            if pending:
                parts.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            parts.append(f"<{token}>")
        if pending:
            parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)


def plain_chat_prompt(messages: list[dict[str, str]]) -> str:
    """A chat as one prompt where the model has no chat template (the byte-level fallback): each
    message as ``<|role|>`` and its text on the next line, then ``<|assistant|>`` to answer."""
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


class HFTokenizer:
    """A ``transformers`` tokenizer loaded from a local directory (never downloads)."""

    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"tokenizer directory {str(directory)!r} is not loadable: {err}") from None
        self.name = str(directory)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True))

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's own chat template when the tokenizer has one, else the plain one."""
        if getattr(self._tok, "chat_template", None):
            return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return plain_chat_prompt(messages)


def load_tokenizer(source: str, vocab_size: int) -> Tokenizer:
    """``"bytes"`` for the byte-level fallback, otherwise a local tokenizer directory.

    Raises:
        ConfigError: the directory does not exist or holds no loadable tokenizer.
    """
    if source == "bytes":
        return ByteTokenizer(vocab_size)
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"--tokenizer {source!r}: expected 'bytes' or a tokenizer directory")
    return HFTokenizer(path)

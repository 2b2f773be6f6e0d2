"""The boundary for user input: every file a command reads and every number it takes passes here.

Files: ``read_text`` opens a regular file of bounded size as UTF-8 text; ``load_yaml`` and
``load_json`` parse it and bound its nesting and entry count, and report a syntax error on one line
with the line and column. Values: ``number`` and ``integer`` check the type, finiteness and a
stated physical range. Every error is a ``ConfigError`` that names the file or field, the value and
what was expected. The limits below are stated in the README ("Bad input").
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pdplan.profiles.errors import ConfigError

MIB = 1 << 20
#: A YAML or JSON file (config.json, profile.yaml, plan.yaml, a workload): at most this many bytes.
MAX_FILE_BYTES = 16 * MIB
#: A trace file (CSV or JSONL).
MAX_TRACE_BYTES = 4096 * MIB
#: Mappings and lists nested at most this deep in a YAML or JSON file.
MAX_DEPTH = 32
#: Entries (keys, list items, scalars) in one YAML or JSON file, aliases counted each time used.
MAX_NODES = 2_000_000
#: Requests in one workload or trace (the simulator's tested range is 1M; memory grows linearly).
MAX_REQUESTS = 10_000_000
#: Tokens in one prompt or one output.
MAX_TOKENS = 10_000_000
#: Arrival rate, requests per second.
MAX_RATE_RPS = 1e6
#: Time a trace or a workload may span, seconds (one leap year).
MAX_SPAN_S = 366 * 86400.0


def describe(path: str | Path, what: str = "") -> str:
    """``what 'path'`` as errors name a file."""
    return f"{what} {str(path)!r}" if what else repr(str(path))


def read_bytes(path: Path, what: str = "", *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The content of a regular file of at most ``max_bytes`` bytes.

    Raises:
        ConfigError: no such file, not a regular file (a directory, a device, a FIFO), too large,
            or unreadable (permissions).
    """
    name = describe(path, what)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{name}: cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"{name}: is {kind}; expected a file")
    if info.st_size > max_bytes:
        raise ConfigError(f"{name}: {info.st_size} bytes; the limit is {max_bytes} bytes")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(f"{name}: cannot read ({err.strerror or err})") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{name}: more than {max_bytes} bytes")
    return data


def read_text(path: Path, what: str = "", *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """``read_bytes`` decoded as UTF-8 text (a leading BOM is dropped).

    Raises:
        ConfigError: as ``read_bytes``, or binary / non-UTF-8 content.
    """
    data = read_bytes(path, what, max_bytes=max_bytes)
    name = describe(path, what)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{name}: binary content (NUL byte at offset {nul}); expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name}: not UTF-8 text (invalid byte at offset {err.start})") from None


def load_yaml(path: Path, what: str = "") -> Any:
    """Parsed YAML (safe loader: plain data only) of ``path``.

    Raises:
        ConfigError: as ``read_text``; a syntax error or a python/unknown tag (one line with the line
            and column); nesting deeper than ``MAX_DEPTH`` or more than ``MAX_NODES`` entries.
    """
    text = read_text(path, what)
    name = describe(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(str(err.problem or err.context or "not valid YAML").split())
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{name}: not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: not valid YAML ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested deeper than {MAX_DEPTH} levels") from None
    check_shape(data, name)
    return data


def load_json(path: Path, what: str = "") -> Any:
    """Parsed JSON of ``path``; ``NaN``, ``Infinity`` and numbers that overflow a float are refused.

    Raises:
        ConfigError: as ``read_text``; a syntax error (line and column); a non-finite number;
            nesting deeper than ``MAX_DEPTH`` or more than ``MAX_NODES`` entries.
    """
    text = read_text(path, what)
    name = describe(path, what)

    def constant(token: str) -> Any:
        raise ConfigError(f"{name}: {token} is not a number JSON allows; expected a finite number")

    try:
        data = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{name}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except RecursionError:
        raise ConfigError(f"{name}: nested deeper than {MAX_DEPTH} levels") from None
    check_shape(data, name)
    return data


def check_shape(data: Any, name: str) -> None:
    """Bound the nesting depth and entry count of parsed YAML/JSON, and refuse non-finite floats.

    Walks iteratively (a deep document cannot overflow the stack) and stops at ``MAX_NODES``
    visits (so YAML aliases cannot blow up the walk).
    """
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    nodes = 0
    while stack:
        value, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{name}: more than {MAX_NODES} entries; that is the limit")
        if isinstance(value, float) and not math.isfinite(value):
            field = ".".join(where) or "the document"
            raise ConfigError(f"{name}: {field}={value!r}; expected a finite number")
        if isinstance(value, (Mapping, list, tuple)):
            if len(where) >= MAX_DEPTH:
                raise ConfigError(f"{name}: nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            stack.extend((item, (*where, str(key))) for key, item in items)


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '≥'} {low:g}")
    if high is not None:
        parts.append(f"≤ {high:g}")
    return " and ".join(parts)


def number(
    field: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    """``value`` as a finite float in the range (``low`` excluded when ``low_open``).

    Raises:
        ConfigError: ``field=value; expected a number ≥ low and ≤ high``.
    """
    expected = f"expected a finite number {_range_text(low, high, low_open)}".rstrip()
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not _is_numpy_number(value)):
        raise ConfigError(f"{field}={value!r}; {expected}")
    try:
        out = float(value)
    except OverflowError:
        raise ConfigError(f"{field}={value!r}; {expected}") from None
    too_low = low is not None and (out <= low if low_open else out < low)
    if not math.isfinite(out) or too_low or (high is not None and out > high):
        raise ConfigError(f"{field}={value!r}; {expected}")
    return out


def integer(field: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (a bool or a float is not an integer).

    Raises:
        ConfigError: ``field=value; expected an integer ≥ low and ≤ high``.
    """
    expected = f"expected an integer {_range_text(low, high, False)}".rstrip()
    if isinstance(value, bool) or not (isinstance(value, int) or _is_numpy_integer(value)):
        raise ConfigError(f"{field}={value!r}; {expected}")
    out = int(value)
    if (low is not None and out < low) or (high is not None and out > high):
        raise ConfigError(f"{field}={value!r}; {expected}")
    return out


def mapping(field: str, value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{field}: expected a mapping, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_numpy_number(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.number) and not isinstance(value, np.complexfloating)


def _is_numpy_integer(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.integer)

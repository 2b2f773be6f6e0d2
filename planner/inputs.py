"""Reading what a command simulates: profiles per role, the request list, its description.

The simulator takes values; this module opens the files. Shared by ``pdplan simulate`` (one plan)
and the SLO search.

Profiles per role: ``--profile DIR`` may be given several times, one per TP; each role of the plan
takes the profile whose ``tp`` equals the role's (so a plan with prefill tp=1 and decode tp=2
needs two profiles). ``--model M --hardware H`` instead builds an analytic profile per TP; with
neither, the plan's own ``model`` and ``hardware`` are used that way.

Workloads: a workload YAML (DESIGN.md) is either synthetic (``arrival``, ``prompt_tokens``,
``output_tokens``; an ``empirical`` distribution may name ``path`` + ``column`` of a CSV instead of
``values``) or a trace (``trace: {path, format, time_scale}``); relative paths are relative to the
YAML file. ``--trace F`` replays a trace directly. ``--rate R`` sets the mean arrival rate: the
arrival process's rate for synthetic workloads, a rescaling of the arrival times for traces.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdplan.profiles.errors import ConfigError, choices_error
from pdplan.profiles.profile import Profile, load_profile
from pdplan.profiles.validate import (
    MAX_RATE_RPS,
    MAX_REQUESTS,
    MAX_TOKENS,
    MAX_TRACE_BYTES,
    load_yaml,
    number,
)
from pdplan.sim.closed_loop import ClosedLoop
from pdplan.sim.requests import Requests
from pdplan.sim.traces import TRACE_FORMATS, detect_format, parse_azure, parse_canonical, parse_mooncake
from pdplan.sim.workload import Workload, draw_requests, workload_from_dict

log = logging.getLogger(__name__)
_TRACE_KEYS = ("path", "format", "time_scale")


@dataclass(frozen=True)
class RequestSource:
    """The request list to simulate and a description of where it came from (for ``plan.yaml``)."""

    requests: Requests
    description: dict[str, Any]
    workload: Workload | None = None  # the synthetic workload drawn (None for a trace)
    closed_loop: ClosedLoop | None = None


def read_yaml(path: Path, what: str) -> Any:
    """Parsed YAML of ``path`` (through ``pdplan.profiles.validate``: size, nesting, one-line errors).

    Raises:
        ConfigError: the file is missing, too large, not UTF-8 text or not YAML.
    """
    return load_yaml(path, what)


def read_trace(path: Path, fmt: str | None = None) -> Requests:
    """Requests from a trace file (``fmt`` = csv | azure | mooncake; guessed when ``None``).

    Raises:
        ConfigError: missing file, unknown format, unreadable or malformed content, no requests,
            more than ``MAX_REQUESTS`` requests.
    """
    if fmt is not None and fmt not in TRACE_FORMATS:
        raise choices_error("--trace-format", fmt, TRACE_FORMATS)
    source = str(path)
    if not path.exists():
        raise ConfigError(f"trace {source!r}: no such file")
    size = _trace_size(path)
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
            fmt = fmt or detect_format(path.name, first)
            if fmt == "mooncake":
                fh.seek(0)
                requests = parse_mooncake(fh, source=source)
            else:
                frame = pd.read_csv(path, nrows=MAX_REQUESTS + 1)
                if len(frame) > MAX_REQUESTS:
                    raise ConfigError(f"trace {source!r}: more than {MAX_REQUESTS} requests (the limit)")
                parse = parse_azure if fmt == "azure" else parse_canonical
                requests = parse(frame, source=source)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        why = " ".join(str(err).split())[:200]
        raise ConfigError(f"trace {source!r}: not readable as {fmt or 'a trace'} ({why})") from None
    if len(requests) == 0:
        raise ConfigError(f"trace {source!r}: no requests ({size} bytes); expected at least one")
    if len(requests) > MAX_REQUESTS:
        raise ConfigError(f"trace {source!r}: {len(requests)} requests; the limit is {MAX_REQUESTS}")
    return requests


def _trace_size(path: Path) -> int:
    """The trace's size in bytes, once it is known to be a regular file within the limit."""
    import os
    import stat

    try:
        info = os.stat(path)
    except OSError as err:
        raise ConfigError(f"trace {str(path)!r}: cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"trace {str(path)!r}: not a regular file; expected a trace file")
    if info.st_size > MAX_TRACE_BYTES:
        raise ConfigError(f"trace {str(path)!r}: {info.st_size} bytes; the limit is {MAX_TRACE_BYTES} bytes")
    return info.st_size


def load_workload(path: Path, *, seed: int | None = None, rate_rps: float | None = None) -> RequestSource:
    """The request list a workload YAML describes (``seed`` and ``rate_rps`` override its own).

    Raises:
        ConfigError: anything wrong in the file or the files it names (one line, naming the key).
    """
    data = read_yaml(path, "--workload")
    if not isinstance(data, Mapping):
        raise ConfigError(f"--workload {str(path)!r}: expected a mapping")
    if "trace" in data:
        return _trace_workload(path, data, rate_rps)
    data = dict(data)
    for key in ("prompt_tokens", "output_tokens"):
        data[key] = _resolve_empirical(path, key, data.get(key))
    try:
        spec = workload_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"--workload {str(path)!r}: {err}") from None
    if seed is not None:
        spec = replace(spec, seed=seed)
    if rate_rps is not None:
        spec = spec.with_rate(check_rate(rate_rps))
    if spec.closed_loop is not None:
        loop = spec.closed_loop
        closed = {"path": str(path), "seed": spec.seed, "arrival": "closed", "concurrency": loop.concurrency}
        closed["think_time_s"] = loop.think_time_s
        return RequestSource(draw_requests(spec), closed, closed_loop=loop)
    described = {
        "path": str(path),
        "seed": spec.seed,
        "rate_rps": spec.arrival.rate_rps,
        "arrival": spec.arrival.process,
    }
    return RequestSource(draw_requests(spec), described, spec)


def load_trace(path: Path, fmt: str | None = None, *, rate_rps: float | None = None) -> RequestSource:
    """The request list of ``--trace`` (rescaled to ``rate_rps`` when given)."""
    requests = read_trace(path, fmt)
    if rate_rps is not None:
        requests = requests.at_rate(check_rate(rate_rps))
    return RequestSource(requests, {"trace": str(path), "format": fmt or "auto", "rate_rps": _rate(requests)})


def check_rate(rate_rps: float) -> float:
    return number("--rate", rate_rps, low=0, low_open=True, high=MAX_RATE_RPS)


def role_profiles(
    tps: Mapping[str, int],
    profile_dirs: Sequence[Path] = (),
    model: str | None = None,
    hardware: str | None = None,
    dtype: str | None = None,
    kv_dtype: str | None = None,
    pps: Mapping[str, int] | None = None,
) -> dict[str, Profile]:
    """A profile for every role (``{"prefill": 1, "decode": 2}`` → profiles at those TPs, with
    ``pps`` pipeline stages per role, default 1).
    Analytic profiles (``model``/``hardware``, weights in ``dtype``, KV in ``kv_dtype``) take the
    layout the search takes at that TP (``pdplan.profiles.layouts.choose_layout``: expert
    parallelism / DP attention for MoE models), so a search's plan replays as it was searched.

    Raises:
        ConfigError: no profile source, a role whose TP has no profile, two profiles at one TP.
        ProfileError: a profile that cannot be read, or a model that does not fit.
    """
    if profile_dirs and (model or hardware or dtype or kv_dtype):
        raise ConfigError("give either --profile or --model/--hardware (with --dtype, --kv-dtype), not both")
    if profile_dirs:
        by_tp: dict[int, Profile] = {}
        for folder in profile_dirs:
            profile = load_profile(folder)
            if profile.tp in by_tp:
                raise ConfigError(f"two --profile directories have tp={profile.tp}; give one per TP")
            by_tp[profile.tp] = profile
        out = {}
        for role, tp in tps.items():
            if tp not in by_tp:
                raise ConfigError(
                    f"the plan's {role}.tp={tp} has no matching --profile (given tp: "
                    f"{sorted(by_tp)}); profile that TP or use --model/--hardware"
                )
            pp = (pps or {}).get(role, 1)
            if by_tp[tp].pp != pp:
                raise ConfigError(
                    f"the plan's {role} runs pp={pp} but the tp={tp} --profile was made at pp={by_tp[tp].pp}"
                )
            out[role] = by_tp[tp]
        return out
    if not (model and hardware):
        raise ConfigError("need --profile DIR, or --model M with --hardware H (or a plan that names both)")
    from pdplan.profiles.hardware import get_hardware
    from pdplan.profiles.layouts import choose_layout
    from pdplan.profiles.model_spec import load_model_spec

    spec = load_model_spec(model, kv_dtype=kv_dtype)
    hw = get_hardware(hardware)
    cache: dict[tuple[int, int], Profile] = {}
    keys = {role: (tp, (pps or {}).get(role, 1)) for role, tp in tps.items()}
    for tp, pp in keys.values():
        if (tp, pp) not in cache:
            cache[(tp, pp)] = choose_layout(spec, hw, tp, dtype, pp=pp).profile
    return {role: cache[key] for role, key in keys.items()}


def _trace_workload(path: Path, data: Mapping[str, Any], rate_rps: float | None) -> RequestSource:
    unknown = [k for k in data if k not in ("trace", "name")]
    if unknown:
        raise ConfigError(
            f"--workload {str(path)!r}: unknown keys {unknown} beside trace; valid: ['trace', 'name']"
        )
    spec = data["trace"]
    if not isinstance(spec, Mapping) or "path" not in spec:
        raise ConfigError(
            f"--workload {str(path)!r}: trace needs a mapping with 'path' (keys {list(_TRACE_KEYS)})"
        )
    bad = [k for k in spec if k not in _TRACE_KEYS]
    if bad:
        raise ConfigError(f"--workload {str(path)!r}: trace: unknown keys {bad}; valid: {list(_TRACE_KEYS)}")
    trace_path = path.parent / str(spec["path"])
    requests = read_trace(trace_path, spec.get("format"))
    where = f"--workload {str(path)!r}: trace.time_scale"
    scale = number(where, spec.get("time_scale", 1.0), low=1e-6, high=1e6)
    requests = requests.scaled(scale)
    if rate_rps is not None:
        requests = requests.at_rate(check_rate(rate_rps))
    described = {
        "path": str(path),
        "trace": str(trace_path),
        "time_scale": float(scale),
        "rate_rps": _rate(requests),
    }
    return RequestSource(requests, described)


def _resolve_empirical(path: Path, key: str, raw: Any) -> Any:
    """``{dist: empirical, path, column}`` → ``{dist: empirical, values: [...]}``."""
    if not (isinstance(raw, Mapping) and raw.get("dist") == "empirical" and "path" in raw):
        return raw
    bad = [k for k in raw if k not in ("dist", "path", "column")]
    if bad:
        raise ConfigError(
            f"--workload {str(path)!r}: {key} (empirical): unknown keys {bad}; valid: "
            "['dist', 'path', 'column'] or ['dist', 'values']"
        )
    csv = path.parent / str(raw["path"])
    column = str(raw.get("column", key))
    if not csv.is_file():
        raise ConfigError(f"--workload {str(path)!r}: {key}.path {str(csv)!r}: no such file")
    _trace_size(csv)
    try:
        values = pd.read_csv(csv, usecols=[column], nrows=MAX_REQUESTS)[column]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise ConfigError(f"--workload {str(path)!r}: {key}: {str(csv)!r} is not a readable CSV") from None
    except ValueError:
        raise ConfigError(f"--workload {str(path)!r}: {key}: {str(csv)!r} has no column {column!r}") from None
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.floor(numbers)) | (numbers > MAX_TOKENS)
    if bad.any():
        row = int(np.argmax(bad))
        raise ConfigError(
            f"--workload {str(path)!r}: {key}: {str(csv)!r} column {column!r} row {row} is "
            f"{values.iloc[row]!r}; expected integers in [1, {MAX_TOKENS}]"
        )
    return {"dist": "empirical", "values": numbers.astype(np.int64).tolist()}


def _rate(requests: Requests) -> float | None:
    try:
        return round(requests.mean_rate_rps, 6)
    except ConfigError:
        return None

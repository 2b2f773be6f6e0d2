"""``Profile``: the measured or analytic cost tables of one model on one device, and their files.

A profile directory holds ``profile.yaml`` (metadata), ``prefill.csv`` (num_seqs, seq_len,
latency_ms, + spread), ``decode.csv`` (batch_size, context_len, latency_ms, + spread) and optionally
``ops.csv`` (an op-level breakdown). The latency model is fitted when a profile is built or loaded,
and its leave-one-out error is written into ``profile.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pdplan.profiles.atomic import replacing_dir, write_file
from pdplan.profiles.errors import ConfigError, ProfileError
from pdplan.profiles.latency_model import LatencyModel
from pdplan.profiles.model_spec import WEIGHT_BITS, ModelSpec
from pdplan.profiles.moe_cost import ExpertReads
from pdplan.profiles.pipeline import PipelineSend, kv_bytes_per_token_per_gpu, stage_weight_bytes
from pdplan.profiles.validate import (
    MAX_FILE_BYTES,
    MAX_TOKENS,
    integer,
    load_yaml,
    mapping,
    number,
    read_bytes,
)

SCHEMA_VERSION = 1
PREFILL_COLUMNS = ("num_seqs", "seq_len", "latency_ms")
DECODE_COLUMNS = ("batch_size", "context_len", "latency_ms")
META_KEYS = (
    "schema_version",
    "method",
    "model",
    "hardware",
    "dtype",
    "tp",
    "kv_bytes_per_token",
    "weight_bytes",
    "versions",
    "created_at",
    "latency_model",
    "notes",
    "calibration",
    "engine",
    "ep",
    "attention_dp",
    "pp",
    "pp_send",
)
#: ``calibrated``: a measured or analytic profile whose tables ``pdplan calibrate`` adjusted to
#: measured runs; ``calibration`` in ``profile.yaml`` then says how (pdplan.planner.calibrate).
METHODS = ("measured", "analytic", "calibrated")


@dataclass(frozen=True)
class Profile:
    """One profile: metadata plus tables; ``latency`` is fitted on construction.

    ``hardware`` holds at least ``name`` and ``memory_bytes`` (per GPU), plus ``device`` (the
    detected device string) when measured. ``weight_bytes`` is per GPU (the TP shard).
    """

    method: str
    model: ModelSpec
    hardware: dict[str, Any]
    dtype: str
    tp: int
    prefill: pd.DataFrame
    decode: pd.DataFrame
    ops: pd.DataFrame | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    notes: str = ""
    calibration: dict[str, Any] | None = None
    #: the serving engine whose overheads and KV sizing the profile assumes (``pdplan.profiles.engine``)
    engine: str = "vllm"
    #: expert parallelism and data-parallel attention inside the TP group (written when not 1)
    ep: int = 1
    attention_dp: int = 1
    #: pipeline stages (``pdplan.profiles.pipeline``): the tables are then whole-instance latencies
    #: (a prefill batch through every stage, a decode round), ``pp_send`` the stage-to-stage sends
    pp: int = 1
    pp_send: PipelineSend | None = None
    latency: LatencyModel = field(init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ProfileError(
                f"profile method {self.method!r}; expected measured or analytic (or calibrated, "
                "written by pdplan calibrate)"
            )
        if self.calibration is not None and not isinstance(self.calibration, dict):
            raise ProfileError(f"profile calibration: expected a mapping, got {self.calibration!r}")
        if (self.method == "calibrated") != (self.calibration is not None):
            raise ProfileError("a calibrated profile needs a calibration section (and only it may have one)")
        if (self.pp > 1) != (self.pp_send is not None):
            raise ProfileError(f"pp={self.pp}: a pipelined profile needs pp_send (and only it may have one)")
        for name, table, cols in (
            ("prefill", self.prefill, PREFILL_COLUMNS),
            ("decode", self.decode, DECODE_COLUMNS),
        ):
            missing = [c for c in cols if c not in table.columns]
            if missing:
                raise ProfileError(f"{name}.csv lacks columns {missing}; expected {list(cols)}")
        latency = LatencyModel.fit(
            (self.prefill["num_seqs"], self.prefill["seq_len"], self.prefill["latency_ms"]),
            (self.decode["batch_size"], self.decode["context_len"], self.decode["latency_ms"]),
            experts=ExpertReads.of(self.model, self.tp, self.dtype, self.pp),
            # CPU BLAS's one-row GEMV vs packed GEMM (latency_model's small-batch ramp) is a CPU
            # kernel regime; GPU tables keep the plain form (and every GPU figure its value).
            small_batch="cpu_threads" in self.hardware,
        )
        object.__setattr__(self, "latency", latency)

    @property
    def memory_bytes(self) -> int:
        return int(self.hardware["memory_bytes"])

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token held by *one* GPU of a TP group.

        KV heads are split across ranks; when TP exceeds the KV head count each rank keeps one
        (replicated) head, as vLLM and SGLang do; MLA's latent is held whole by every rank
        (``ModelSpec.kv_bytes_per_token_per_rank``).
        """
        return kv_bytes_per_token_per_gpu(self.model, self.tp, self.pp, self.dtype, self.attention_dp)

    @property
    def weight_bytes(self) -> int:
        """Weight bytes on one GPU of a TP group (of the heaviest pipeline stage)."""
        return stage_weight_bytes(self.model, self.dtype, self.pp) // self.tp

    def metadata(self) -> dict[str, Any]:
        return (
            {
                "schema_version": SCHEMA_VERSION,
                "method": self.method,
                "model": self.model.to_dict(),
                "hardware": dict(self.hardware),
                "dtype": self.dtype,
                "tp": self.tp,
                "kv_bytes_per_token": self.kv_bytes_per_token,
                "weight_bytes": self.weight_bytes,
                "versions": dict(self.versions),
                "created_at": self.created_at,
                "latency_model": self.latency.to_dict(),
                "notes": self.notes,
                "engine": self.engine,
            }
            | ({"calibration": self.calibration} if self.calibration is not None else {})
            | {key: getattr(self, key) for key in ("ep", "attention_dp", "pp") if getattr(self, key) != 1}
            | ({"pp_send": self.pp_send.to_dict()} if self.pp_send is not None else {})
        )


def save_profile(profile: Profile, out_dir: str | Path) -> Path:
    """Write the profile directory atomically: files go to a sibling temp dir that is renamed in.

    An existing ``out_dir`` is replaced only once the new one is complete.

    Raises:
        ProfileError: ``out_dir`` cannot be written.
    """
    out = Path(out_dir)
    try:
        with replacing_dir(out) as staging:
            write_profile_files(profile, staging)
    except ConfigError as err:
        raise ProfileError(f"cannot write profile: {err}") from None
    return out


def write_profile_files(profile: Profile, folder: Path) -> None:
    """Write ``profile.yaml`` and the tables into the existing directory ``folder``."""
    write_file(folder / "profile.yaml", lambda fh: yaml.safe_dump(profile.metadata(), fh, sort_keys=False))
    write_file(folder / "prefill.csv", lambda fh: profile.prefill.to_csv(fh, index=False))
    write_file(folder / "decode.csv", lambda fh: profile.decode.to_csv(fh, index=False))
    if profile.ops is not None:
        ops = profile.ops
        write_file(folder / "ops.csv", lambda fh: ops.to_csv(fh, index=False))


def load_profile(path: str | Path) -> Profile:
    """Read a profile directory (strict: unknown keys in ``profile.yaml`` are an error).

    Raises:
        ProfileError: missing files, bad YAML, unknown keys, wrong schema version, bad tables.
    """
    folder = Path(path)
    meta_path = folder / "profile.yaml"
    if not meta_path.is_file():
        raise ProfileError(f"{str(folder)!r} is not a profile directory (no profile.yaml)")
    try:
        meta = load_yaml(meta_path)
    except ConfigError as err:
        raise ProfileError(str(err)) from None
    if not isinstance(meta, dict):
        raise ProfileError(f"{meta_path}: expected a mapping")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ProfileError(f"{meta_path}: unknown keys {unknown}; valid: {list(META_KEYS)}")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ProfileError(
            f"{meta_path}: schema_version {meta.get('schema_version')!r}; expected {SCHEMA_VERSION}"
        )
    for key in ("method", "model", "hardware", "dtype", "tp"):
        if key not in meta:
            raise ProfileError(f"{meta_path}: missing key {key!r}")
    tables: dict[str, pd.DataFrame | None] = {}
    for name in ("prefill", "decode", "ops"):
        csv = folder / f"{name}.csv"
        if not csv.is_file():
            if name == "ops":
                tables[name] = None
                continue
            raise ProfileError(f"{str(folder)!r}: missing {name}.csv")
        try:
            read_bytes(csv, max_bytes=MAX_FILE_BYTES)  # a regular file of bounded size
            tables[name] = pd.read_csv(csv)
        except ConfigError as err:
            raise ProfileError(str(err)) from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ProfileError(f"{csv}: not a readable CSV ({' '.join(str(err).split())})") from None
    for name, cols in (("prefill", PREFILL_COLUMNS), ("decode", DECODE_COLUMNS)):
        _check_table(folder / f"{name}.csv", _required(tables[name]), cols)
    try:
        model = ModelSpec.from_dict(dict(mapping(f"{meta_path}: model", meta["model"])))
        hardware = dict(mapping(f"{meta_path}: hardware", meta["hardware"]))
        number(f"{meta_path}: hardware.memory_bytes", hardware.get("memory_bytes"), low=0, low_open=True)
        tp = integer(f"{meta_path}: tp", meta["tp"], low=1, high=1024)
    except (ConfigError, TypeError) as err:
        raise ProfileError(f"{meta_path}: {err}" if str(meta_path) not in str(err) else str(err)) from None
    if not isinstance(meta["dtype"], str) or meta["dtype"] not in WEIGHT_BITS:
        raise ProfileError(f"{meta_path}: dtype={meta['dtype']!r}; expected one of {', '.join(WEIGHT_BITS)}")
    return Profile(
        method=meta["method"],
        model=model,
        hardware=hardware,
        dtype=meta["dtype"],
        tp=tp,
        prefill=_required(tables["prefill"]),
        decode=_required(tables["decode"]),
        ops=tables["ops"],
        versions=dict(meta.get("versions") or {}),
        created_at=str(meta.get("created_at") or ""),
        notes=str(meta.get("notes") or ""),
        calibration=meta.get("calibration"),
        engine=_engine(meta.get("engine"), meta_path),
        ep=_parallel(meta, "ep", tp, meta_path),
        attention_dp=_parallel(meta, "attention_dp", tp, meta_path),
        pp=_pp(meta, meta_path),
        pp_send=_pp_send(meta.get("pp_send"), meta_path),
    )


def _pp(meta: dict[str, Any], meta_path: Path) -> int:
    """``pp`` of ``profile.yaml``: 1 when absent."""
    try:
        return integer(f"{meta_path}: pp", meta.get("pp", 1), low=1, high=1024)
    except ConfigError as err:
        raise ProfileError(str(err)) from None


def _pp_send(raw: object, meta_path: Path) -> PipelineSend | None:
    """``pp_send: {latency_ms, ms_per_token}`` of ``profile.yaml`` (strict keys), None when absent."""
    if raw is None:
        return None
    keys = ("latency_ms", "ms_per_token")
    if not isinstance(raw, dict) or sorted(raw) != sorted(keys):
        raise ProfileError(f"{meta_path}: pp_send={raw!r}; expected a mapping with keys {list(keys)}")
    try:
        values = [number(f"{meta_path}: pp_send.{k}", raw[k], low=0, high=1e6) for k in keys]
    except ConfigError as err:
        raise ProfileError(str(err)) from None
    return PipelineSend(float(values[0]), float(values[1]))


def _parallel(meta: dict[str, Any], key: str, tp: int, meta_path: Path) -> int:
    """``ep`` / ``attention_dp`` of ``profile.yaml``: 1 when absent, else a divisor of ``tp``."""
    try:
        value = integer(f"{meta_path}: {key}", meta.get(key, 1), low=1, high=tp)
    except ConfigError as err:
        raise ProfileError(str(err)) from None
    if tp % value:
        raise ProfileError(f"{meta_path}: {key}={value} does not divide tp={tp}")
    return value


def _check_table(csv: Path, table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Every listed column present, numeric, finite; counts integers ≥ 1, latencies > 0."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ProfileError(f"{csv} lacks columns {missing}; expected {list(columns)}")
    if table.empty:
        raise ProfileError(f"{csv}: no rows; expected measured points")
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        latency = column == "latency_ms"
        bad = ~np.isfinite(values) | (values <= 0)
        if not latency:
            bad |= (values != np.floor(values)) | (values > MAX_TOKENS)
        if bad.any():
            row = int(np.argmax(bad))
            expected = "a positive number of ms" if latency else f"an integer in [1, {MAX_TOKENS}]"
            value = table[column].iloc[row]
            raise ProfileError(f"{csv}: row {row + 1} {column}={value!r}; expected {expected}")


def _engine(value: object, meta_path: Path) -> str:
    from pdplan.profiles.engine import ENGINES

    if value is None:
        return "vllm"  # profiles written before the field existed assumed vLLM's defaults
    if value not in ENGINES:
        raise ProfileError(f"{meta_path}: engine {value!r}; expected one of {list(ENGINES)}")
    return str(value)


def _required(table: pd.DataFrame | None) -> pd.DataFrame:
    assert table is not None, "required tables are checked while reading"
    return table

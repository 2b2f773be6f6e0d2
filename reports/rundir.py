"""Reading a run directory (notes: RUNDIR.md) into one ``RunData`` value.

Every file is optional. A file that is absent leaves its field ``None``; a file that exists but
cannot be read (bad YAML, missing columns, an unloadable profile) also leaves it ``None`` and records
why in ``problems``, so the report shows the reason instead of failing. A bench run's
``predicted/`` sub-directory is read as a nested ``RunData``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pdplan.profiles.errors import PdplanError
from pdplan.profiles.profile import Profile, load_profile
from pdplan.profiles.validate import load_yaml
from pdplan.sim.records import REQUEST_COLUMNS
from pdplan.sim.timeseries import TIMESERIES_COLUMNS

log = logging.getLogger(__name__)

# The search's files (written by pdplan.planner, which reports may not import: DESIGN.md's arrows).
CANDIDATE_COLUMNS = (
    "candidate_id",
    "mode",
    "prefill_instances",
    "prefill_tp",
    "prefill_pp",
    "decode_instances",
    "decode_tp",
    "decode_pp",
    "colocated_instances",
    "colocated_tp",
    "colocated_pp",
    "policy",
    "max_batch_size",
    "max_batch_tokens",
    "chunk_tokens",
    "gpus",
    "goodput_rps",
    "goodput_rps_per_gpu",
    "status",
    "reason",
)
PROBE_COLUMNS = (
    "candidate_id",
    "rate_rps",
    "attainment",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "tpot_p50_ms",
    "tpot_p90_ms",
    "tpot_p99_ms",
    "output_tokens_per_s",
    "meets_slo",
)
#: Columns that hold text; every other listed column is read as a number.
#: Columns a run written by an older pdplan lacks, read as 1 (candidates.csv had no pp before
#: pipeline parallelism).
_DEFAULT_ONE_COLUMNS = ("prefill_pp", "decode_pp", "colocated_pp")
_TEXT_COLUMNS = (
    "status",
    "role",
    "mode",
    "policy",
    "reason",
    "candidate_id",
    "req_id",
    "meets_slo",
)
#: Files that make a directory a run directory (``pdplan report`` refuses a directory with none).
KNOWN_FILES = (
    "run.yaml",
    "plan.yaml",
    "summary.yaml",
    "requests.csv",
    "timeseries.csv",
    "candidates.csv",
    "probes.csv",
    "profile.yaml",
    "deploy.json",
)


@dataclass(frozen=True)
class RunData:
    """Everything one run directory holds; ``None`` where a file is absent or unreadable."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    requests: pd.DataFrame | None = None
    timeseries: pd.DataFrame | None = None
    candidates: pd.DataFrame | None = None
    probes: pd.DataFrame | None = None
    profile: Profile | None = None
    predicted: RunData | None = None
    deploy: dict[str, Any] | None = None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the report names this run: its directory name."""
        return self.path.name or str(self.path)

    @property
    def kind(self) -> str:
        """``run.yaml``'s kind, or a kind inferred from the files when it is absent."""
        kind = self.meta.get("kind")
        if isinstance(kind, str) and kind:
            return kind
        if self.deploy is not None:
            return "deploy"
        if self.candidates is not None:
            return "search"
        if self.profile is not None:
            return "profile"
        if self.plan is not None:
            return "simulate"
        if self.requests is not None:
            return "bench"
        return "unknown"

    def why_absent(self, *files: str) -> str:
        """One sentence on why ``files`` gave no data: unreadable (with the reason) or absent."""
        broken = [
            f"{name} could not be read ({self.problems[name]})" for name in files if name in self.problems
        ]
        if broken:
            return f"{self.label}: " + "; ".join(broken)
        return f"{self.label} has no {' / '.join(files)}"


def has_run_files(path: Path) -> bool:
    """True when ``path`` holds at least one file this module knows how to read."""
    return any((path / name).is_file() for name in KNOWN_FILES)


def load_run(path: str | Path) -> RunData:
    """Read every file of the run directory that exists; never raises for bad or missing files.

    Args:
        path: the run directory (its absence is the caller's to check; here it reads as empty).
    """
    folder = Path(path)
    problems: dict[str, str] = {}
    meta = _read_yaml(folder / "run.yaml", problems) or {}
    plan = _read_yaml(folder / "plan.yaml", problems)
    summary = _read_yaml(folder / "summary.yaml", problems)
    requests = _read_table(folder / "requests.csv", REQUEST_COLUMNS, problems)
    if requests is not None:
        requests = requests.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    timeseries = _read_table(folder / "timeseries.csv", TIMESERIES_COLUMNS, problems)
    candidates = _read_table(folder / "candidates.csv", CANDIDATE_COLUMNS, problems)
    probes = _read_table(folder / "probes.csv", PROBE_COLUMNS, problems)
    if probes is not None:
        probes["meets_slo"] = probes["meets_slo"].map(_truthy)
    profile = None
    if (folder / "profile.yaml").is_file():
        try:
            profile = load_profile(folder)
        except PdplanError as err:
            problems["profile.yaml"] = str(err)
    deploy = _read_json(folder / "deploy.json", problems)
    predicted = None
    if (folder / "predicted").is_dir() and has_run_files(folder / "predicted"):
        predicted = load_run(folder / "predicted")
    for name, why in problems.items():
        log.warning("report: %s/%s skipped: %s", folder, name, why)
    return RunData(
        path=folder,
        meta=meta if isinstance(meta, dict) else {},
        plan=plan,
        summary=summary,
        requests=requests,
        timeseries=timeseries,
        candidates=candidates,
        probes=probes,
        profile=profile,
        predicted=predicted,
        deploy=deploy,
        problems=problems,
    )


def _read_yaml(path: Path, problems: dict[str, str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:  # the input boundary: bounded size and nesting, one-line errors with line and column
        data = load_yaml(path)
    except PdplanError as err:
        problems[path.name] = str(err).removeprefix(f"{str(path)!r}: ")
        return None
    if not isinstance(data, dict):
        problems[path.name] = f"expected a mapping, got {type(data).__name__}"
        return None
    return data


def _read_json(path: Path, problems: dict[str, str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as err:
        problems[path.name] = f"not valid JSON: {str(err).splitlines()[0]}"
        return None
    if not isinstance(data, dict):
        problems[path.name] = f"expected an object, got {type(data).__name__}"
        return None
    return data


def _read_table(path: Path, columns: tuple[str, ...], problems: dict[str, str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={c: "string" for c in _TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, UnicodeDecodeError) as err:
        problems[path.name] = f"not a readable CSV: {str(err).splitlines()[0]}"
        return None
    for col in _DEFAULT_ONE_COLUMNS:  # runs written before pipeline parallelism: one stage
        if col in columns and col not in table.columns:
            table[col] = 1
    missing = [c for c in columns if c not in table.columns]
    if missing:
        problems[path.name] = f"missing columns {missing}; expected {list(columns)}"
        return None
    for col in columns:
        if col in _TEXT_COLUMNS:
            table[col] = table[col].fillna("").astype(str)
        else:
            table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not pd.isna(value)
    except (TypeError, ValueError):
        return False

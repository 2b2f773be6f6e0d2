"""Building the sections of a report from run directories and writing ``report.html`` atomically.

The page is one self-contained file: inline CSS, inline SVG figures, no script, no URL, and a
Content-Security-Policy that forbids the browser to fetch anything even if a figure tried to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from pdplan.profiles.atomic import write_file
from pdplan.profiles.errors import ConfigError
from pdplan.reports.inputs import build_inputs
from pdplan.reports.operating import build_operating
from pdplan.reports.profile_fit import build_profile
from pdplan.reports.rundir import RunData, has_run_files, load_run
from pdplan.reports.search import build_search
from pdplan.reports.section import Section
from pdplan.reports.summary import build_summary
from pdplan.reports.validation import build_validation

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
BUILDERS: tuple[tuple[str, str, Callable[[Sequence[RunData]], Section]], ...] = (
    ("summary", "Summary", build_summary),
    ("search", "Search", build_search),
    ("operating", "Operating point", build_operating),
    ("profile", "Profile", build_profile),
    ("validation", "Validation", build_validation),
    ("inputs", "Inputs", build_inputs),
)
FAILED_MARK = "could not be rendered"


def build_sections(runs: Sequence[RunData], *, strict: bool = False) -> list[Section]:
    """Every section, in report order.

    A section whose builder raises is rendered as a section that names the error (and the error is
    logged with its traceback), so one bad figure cannot cost the user the rest of the report after
    a long search. ``strict`` re-raises instead; the tests use it.
    """
    sections = []
    for key, title, builder in BUILDERS:
        try:
            section = builder(runs)
            if key == "search":
                section = _with_fleet(section, runs)
            sections.append(section)
        except Exception as err:
            if strict:
                raise
            log.exception("report section %r failed", key)
            sections.append(
                Section(
                    key,
                    title,
                    absent=(
                        f"This section {FAILED_MARK}: {type(err).__name__}: {err} (a pdplan bug; the "
                        "log has the traceback)."
                    ),
                )
            )
    return sections


def _with_fleet(section: Section, runs: Sequence[RunData]) -> Section:
    """The Search section with the hardware search and the cluster policies of ``runs``
    (``pdplan.reports.fleet``), when any run holds them."""
    from dataclasses import replace

    from pdplan.reports.fleet import fleet_items

    items, notes = fleet_items(runs)
    if not items and not notes:
        return section
    if section.absent:
        return (
            replace(section, items=tuple(items), absent=None, notes=(*section.notes, *notes))
            if items
            else section
        )
    return replace(section, items=(*section.items, *items), notes=(*section.notes, *notes))


def default_title(runs: Sequence[RunData]) -> str:
    """E.g. 'pdplan search report: llama-3.1-8b on h100-sxm'; runs of different models or hardware
    are all named ('… report: tiny-llama on cpu + llama-3.1-8b on h100-sxm'), never the first alone."""
    kinds = " + ".join(dict.fromkeys(run.kind for run in runs))
    setups: dict[tuple[str, str | None], None] = {}
    for run in runs:
        setup = run_setup(run)
        if setup is not None:
            setups[setup] = None
    # a run that names only the model joins a run that names the same model with its hardware
    named = [s for s in setups if s[1] is not None or not any(o[0] == s[0] and o[1] for o in setups)]
    title = f"pdplan {kinds} report"
    if named:
        title += ": " + " + ".join(model + (f" on {hw}" if hw else "") for model, hw in named)
    return title


def run_setup(run: RunData) -> tuple[str, str | None] | None:
    """(model, hardware) of one run: from its profile, else its plan.yaml; None when neither says."""
    model = hardware = None
    if run.profile is not None:
        model = run.profile.model.name
        hardware = _name(run.profile.hardware.get("name"))
    if run.plan is not None:
        model = model or _name(run.plan.get("model"))
        hardware = hardware or _name(run.plan.get("hardware"))
    if model is None and run.predicted is not None:
        return run_setup(run.predicted)
    return (model, hardware) if model else None


def _name(value: object) -> str | None:
    if isinstance(value, dict) and "name" not in value:  # hardware per pool (plan.yaml)
        value = " + ".join(f"{role} {hw}" for role, hw in value.items())
    if isinstance(value, dict):
        value = value.get("name")
    return str(value) if value else None


def render_html(runs: Sequence[RunData], title: str | None = None, *, strict: bool = False) -> str:
    """The report page for these runs, as text."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    sections = build_sections(runs, strict=strict)
    try:
        version = metadata.version("pdplan")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return env.get_template(TEMPLATE).render(
        title=title or default_title(runs),
        sections=sections,
        runs=runs,
        version=version,
    )


def write_html(html: str, out_file: Path) -> Path:
    """Write ``html`` to ``out_file`` atomically (temp file in the same folder, then rename).

    Raises:
        ConfigError: ``out_file`` is not a regular file (a directory, ``/dev/null``) or cannot be written.
    """
    return write_file(out_file, html)


def load_runs(run_dirs: Sequence[str | Path], *, require_files: bool) -> list[RunData]:
    """Load each run directory.

    Raises:
        ConfigError: a path is not a directory, or (``require_files``) holds no run file at all.
    """
    if not run_dirs:
        raise ConfigError("no run directory given; expected at least one")
    runs = []
    for entry in run_dirs:
        path = Path(entry)
        if not path.is_dir():
            raise ConfigError(f"run directory {str(path)!r} does not exist or is not a directory")
        if require_files and not has_run_files(path):
            raise ConfigError(
                f"{str(path)!r} holds no run files; expected one of run.yaml, "
                "plan.yaml, summary.yaml, requests.csv, candidates.csv, profile.yaml"
            )
        runs.append(load_run(path))
    return runs


def write_combined_report(
    run_dirs: Sequence[str | Path],
    out_file: str | Path,
    *,
    title: str | None = None,
    strict: bool = False,
) -> Path:
    """Render one report over several run directories (e.g. profile + search + bench).

    Raises:
        ConfigError: a directory is missing or holds no run file.
    """
    started = time.perf_counter()
    runs = load_runs(run_dirs, require_files=True)
    path = write_html(render_html(runs, title, strict=strict), Path(out_file))
    log.debug("report written to %s in %.1f s", path, time.perf_counter() - started)
    return path


def write_run_report(out_dir: str | Path, *, title: str | None = None) -> Path:
    """``report.html`` inside one run directory; absent data only makes sections say so.

    Raises:
        ConfigError: ``out_dir`` does not exist.
    """
    runs = load_runs([out_dir], require_files=False)
    return write_html(render_html(runs, title), Path(out_dir) / "report.html")

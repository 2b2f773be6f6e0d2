"""``pdplan profile``: measure a model on this machine (CPU or CUDA), or model it for a catalog GPU.

Measured: ``pdplan profile --model M [--device cpu|cuda|cuda:N] [--tp N] [--quick] [--dtype D]
[--weights DIR] --out DIR``. Analytic (roofline, no device needed): ``pdplan profile --analytic
--model M --hardware H [--tp N] [--dtype D] --out DIR``. Either writes the Profile directory
(atomically), ``run.yaml``, and ``report.html`` once ``pdplan.reports.write_report`` exists.

Nothing heavy is imported at module level: ``pdplan --help`` loads this module.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pdplan.profiles.profile import Profile

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
_MEASURED_ONLY = ("--device", "--quick", "--weights")


def profile(
    model: Annotated[
        str, typer.Option("--model", help="Catalog name (e.g. llama-3.1-8b), config.json, or HF dir.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Profile directory to write (replaced whole).")],
    analytic: Annotated[
        bool, typer.Option("--analytic", help="Roofline model of --hardware instead of measuring.")
    ] = False,
    hardware: Annotated[
        str | None,
        typer.Option(
            "--hardware", help="GPU for --analytic: a catalog name (pdplan hardware list) or a .yaml file."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Measured runs: cpu (default), cuda or cuda:N.")
    ] = None,
    tp: Annotated[int, typer.Option("--tp", help="Tensor parallelism: profile one GPU's shard.")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="Measured runs: a smaller grid.")] = False,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="Weights: float32, float16 or bfloat16 (default: float32 on CPU, bfloat16 on CUDA; "
            "analytic: the config's); --analytic also fp8 (W8A8) and int4 (weight-only).",
        ),
    ] = None,
    kv_dtype: Annotated[
        str | None,
        typer.Option(
            "--kv-dtype", help="KV cache dtype for --analytic: fp8 halves KV bytes (default: 16-bit)."
        ),
    ] = None,
    ep: Annotated[
        int, typer.Option("--ep", help="--analytic: expert-parallel ranks inside the TP group (MoE models).")
    ] = 1,
    attention_dp: Annotated[
        int, typer.Option("--attention-dp", help="--analytic: data-parallel attention groups (SGLang --dp).")
    ] = 1,
    pp: Annotated[
        int,
        typer.Option(
            "--pp",
            help="--analytic: pipeline stages of --tp GPUs each (SGLang --pp-size; tables per instance).",
        ),
    ] = 1,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Measured runs: HF directory with safetensors weights."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an --out that holds another kind of pdplan run.")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="Serving engine whose step overhead and KV sizing apply: vllm, sglang, trtllm."
        ),
    ] = "vllm",
) -> None:
    """Measure (or model, with --analytic) prefill and decode step costs into a Profile."""
    from pdplan.planner.rundir import claim_out, replacing_dir, write_run_yaml
    from pdplan.profiles.model_spec import DTYPE_BYTES, load_model_spec
    from pdplan.profiles.profile import write_profile_files

    start = time.perf_counter()
    _check_options(analytic, hardware, device, quick, weights)
    from pdplan.profiles.errors import ConfigError, choices_error
    from pdplan.profiles.model_spec import WEIGHT_BITS

    if dtype is not None and dtype not in WEIGHT_BITS:
        raise choices_error("--dtype", dtype, WEIGHT_BITS)
    if not analytic and dtype is not None and dtype not in DTYPE_BYTES:
        raise ConfigError(
            f"--dtype {dtype} is priced by --analytic profiles only; a measured run computes in "
            f"{', '.join(DTYPE_BYTES)}"
        )
    if not analytic and (kv_dtype or ep != 1 or attention_dp != 1):
        raise ConfigError("--kv-dtype, --ep and --attention-dp apply to --analytic profiles only")
    if not analytic and pp != 1:
        raise ConfigError(f"--pp {pp}: the executor runs no pipeline stages; --pp applies to --analytic only")
    if not 1 <= tp <= 1024:
        raise ConfigError(f"--tp {tp}; expected an integer in [1, 1024]")
    from pdplan.profiles.engine import get_engine

    get_engine(engine)  # an unknown engine is a ConfigError listing the choices
    spec = load_model_spec(model, kv_dtype=kv_dtype)  # the weight dtype is the profile's
    claim_out(out, "profile", force=force)
    if analytic:
        from pdplan.profiles.analytic import analytic_profile

        assert hardware is not None, "checked by _check_options"
        result = analytic_profile(
            spec, hardware, tp=tp, dtype=dtype, engine=engine, ep=ep, attention_dp=attention_dp, pp=pp
        )
    else:
        result = _measure(spec, device or "cpu", tp=tp, dtype=dtype, quick=quick, weights=weights)
        if engine != result.engine:  # measured costs are the executor's; the engine sets KV sizing
            from dataclasses import replace

            result = replace(result, engine=engine)
    with replacing_dir(out) as staging:  # the profile directory is written whole or not at all
        write_profile_files(result, staging)
        write_run_yaml(staging, "profile")
    _print_summary(result, out, time.perf_counter() - start)
    try:
        from pdplan.reports import write_report  # type: ignore[attr-defined]
    except ImportError:
        log.debug("pdplan.reports.write_report is not available yet; no report.html")
    else:
        write_report(out)


def _check_options(
    analytic: bool, hardware: str | None, device: str | None, quick: bool, weights: Path | None
) -> None:
    from pdplan.profiles.errors import ConfigError
    from pdplan.profiles.hardware import hardware_names

    if analytic:
        if hardware is None:
            raise ConfigError(f"--analytic needs --hardware; valid: {', '.join(hardware_names())}")
        given = [
            flag
            for flag, value in zip(_MEASURED_ONLY, (device, quick, weights), strict=True)
            if value not in (None, False)
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to measured runs, not to --analytic")
        return
    if hardware is not None:
        raise ConfigError(
            f"--hardware {hardware} applies to --analytic profiles only; a measured run detects "
            "its hardware from --device (cpu, cuda, cuda:N)"
        )
    if device is not None and not _DEVICE_RE.match(device):
        raise ConfigError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if weights is not None and not weights.is_dir():
        raise ConfigError(f"--weights {str(weights)!r}: not a directory")


def _measure(
    spec: Any, device: str, *, tp: int, dtype: str | None, quick: bool, weights: Path | None
) -> Profile:
    """Run the profiler on ``device`` with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pdplan.profiles.errors import ProfileError
    from pdplan.profiles.hardware import detect_cpu, detect_cuda
    from pdplan.profiles.model_spec import shard_spec

    shard_spec(spec, tp)  # fail on a bad --tp before any measuring
    if device == "cpu":
        hw = detect_cpu().to_dict()
        hw["device"] = f"cpu {hw.pop('description', '')}".strip()
    else:
        hw = detect_cuda(device)
    try:
        from pdplan.profiles.profiler import measure_profile
    except ModuleNotFoundError as err:
        if err.name not in ("torch", "transformers", "safetensors"):
            raise
        raise ProfileError(f"measured profiles need {err.name}: pip install 'pdplan[torch]'") from None
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(f"profiling {spec.name} on {device}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return measure_profile(
            spec,
            hardware=hw,
            device=device,
            tp=tp,
            dtype=dtype,
            quick=quick,
            weights=weights,
            link_bandwidth_gbps=hw.get("link_bandwidth_gbps"),
            progress=progress,
        )


def _print_summary(result: Profile, out: Path, wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    lat = result.latency
    table = Table(
        title=f"{result.method} profile: {result.model.name} on "
        f"{result.hardware.get('name')} (tp={result.tp}{_pp_note(result.pp)}, {result.dtype})",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row("points", f"prefill {len(result.prefill)}, decode {len(result.decode)}")
    fitted = lat.to_dict()  # the coefficients and knees as profile.yaml names them
    for phase, loo in (("prefill", lat.prefill_loo), ("decode", lat.decode_loo)):
        terms = fitted[phase]
        assert isinstance(terms, dict)
        table.add_row(f"{phase} fit", ", ".join(f"{t}={c:.4g}" for t, c in terms.items()))
        if loo is not None:
            table.add_row(
                f"{phase} LOO error", f"median {loo.median:.1%}, max {loo.max:.1%} ({loo.num_points} points)"
            )
    table.add_row("wall time", f"{wall_s:.1f} s")
    console = Console()
    console.print(table)
    console.print(f"written to {out}", soft_wrap=True, highlight=False)


def _pp_note(pp: int) -> str:
    return f", pp={pp}" if pp > 1 else ""

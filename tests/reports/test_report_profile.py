"""Profile section: fitted curves against measurements, the roofline and how it degrades."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.profile import Profile
from pdplan.reports.profile_fit import build_profile, error_figure, fit_errors, fit_figure, ops_figure
from pdplan.reports.roofline import Roofline, decode_work, roofline_for
from pdplan.reports.rundir import RunData


def _profile(hardware: dict, latency: float | None = None, dtype: str = "bfloat16") -> Profile:
    spec = load_model_spec("llama-3.1-8b")
    pre = pd.DataFrame(
        [(s, n, latency or 2 + 0.01 * s * n) for s in (1, 2) for n in (128, 512, 2048)],
        columns=["num_seqs", "seq_len", "latency_ms"],
    )
    dec = pd.DataFrame(
        [(b, c, latency or 5 + 0.05 * b + 1e-5 * b * c) for b in (1, 8, 64) for c in (512, 4096)],
        columns=["batch_size", "context_len", "latency_ms"],
    )
    return Profile("measured", spec, hardware, dtype, 1, pre, dec)


H100 = {"name": "h100-sxm", "memory_bytes": 80 * 2**30}


def test_fitted_lines_follow_the_latency_model_and_dots_the_table() -> None:
    profile = _profile(H100)
    roofline, why = roofline_for(profile)
    assert roofline is not None and why == "" and roofline.peak_tflops == pytest.approx(989.4)
    fig = fit_figure(profile, roofline)
    pre_ax, dec_ax = fig.axes
    dots = [line for line in pre_ax.lines if line.get_marker() == "o"]
    assert [d.get_label() for d in dots] == ["1 seq", "2 seq"]
    assert list(dots[1].get_ydata()) == pytest.approx(
        list(profile.prefill[profile.prefill.num_seqs == 2].latency_ms)
    )
    fitted = [
        line for line in pre_ax.lines if line.get_linestyle() == "-" and line.get_marker() in ("None", "")
    ]
    grid = np.asarray(fitted[1].get_xdata())
    expected = [profile.latency.prefill_ms([int(n)] * 2) for n in grid]
    assert np.asarray(fitted[1].get_ydata()) == pytest.approx(expected)
    roofs = [line for line in dec_ax.lines if line.get_linestyle() == "--"]
    assert len(roofs) == 2  # one per context length
    # decode at batch 1 is memory bound: the weight shard read once at 3350 GB/s
    assert roofs[0].get_ydata()[0] == pytest.approx(
        1000 * (profile.weight_bytes + 512 * profile.kv_bytes_per_token) / 3350e9, rel=1e-6
    )
    assert pre_ax.get_xscale() == "log" and pre_ax.get_yscale() == "log"


def test_roofline_is_below_every_measurement_of_a_physical_profile() -> None:
    profile = _profile(H100)
    roofline, _ = roofline_for(profile)
    assert roofline is not None
    bound = roofline.time_ms(*decode_work(profile, profile.decode.batch_size, profile.decode.context_len))
    assert np.all(bound > 0)
    roof = Roofline(1.0, 1.0, "test")
    assert roof.time_ms(np.array([2e12]), np.array([1e9])) == pytest.approx([2000.0])  # compute bound


def test_roofline_degrades_gracefully(monkeypatch: pytest.MonkeyPatch) -> None:
    roofline, why = roofline_for(_profile({"name": "cpu", "memory_bytes": 2**34}))
    assert roofline is None and "cpu peaks are detected when profiling" in why
    recorded = {"name": "cpu", "memory_bytes": 2**34, "peak_bf16_tflops": 0.5, "mem_bandwidth_gbps": 20.0}
    roofline, _ = roofline_for(_profile(recorded))
    assert roofline is not None and roofline.mem_bandwidth_gbps == 20.0 and "profile.yaml" in roofline.source
    roofline, why = roofline_for(_profile({"name": "tpu-v9", "memory_bytes": 2**34}))
    assert roofline is None and "'tpu-v9' has no catalog entry" in why

    real_import = importlib.import_module

    def no_catalog(name: str, *args, **kwargs):
        if name == "pdplan.profiles.hardware":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_catalog)
    roofline, why = roofline_for(_profile(H100))
    assert roofline is None and "not available" in why
    fig = fit_figure(_profile(H100), None)
    assert not [line for ax in fig.axes for line in ax.lines if line.get_linestyle() == "--"]


def test_constant_profile_has_zero_fit_error() -> None:
    profile = _profile({"name": "cpu", "memory_bytes": 2**34}, latency=7.0)
    pre_err, dec_err = fit_errors(profile)
    assert np.allclose(pre_err, 0) and np.allclose(dec_err, 0)
    fig = error_figure(profile)
    assert "median |error| 0.0%" in fig.axes[0].get_title()


def test_ops_breakdown_shares_sum_to_100() -> None:
    ops = pd.DataFrame(
        [
            ("prefill", 1, 128, "gemm", 3.0),
            ("prefill", 1, 128, "attention", 1.0),
            ("decode", 8, 512, "gemm", 1.0),
            ("decode", 8, 512, "other", 1.0),
        ],
        columns=["phase", "num_seqs", "seq_len", "op", "latency_ms"],
    )
    fig = ops_figure(ops)
    pre_ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in pre_ax.patches)
    assert heights == [25.0, 75.0]
    assert sorted(round(p.get_height(), 6) for p in fig.axes[1].patches) == [50.0, 50.0]


def test_ops_breakdown_reads_the_profiler_layout() -> None:
    """ops.csv as pdplan profile writes it: both shape column pairs, blank where not applicable."""
    ops = pd.DataFrame(
        {
            "phase": ["prefill", "prefill", "decode", "decode", "decode"],
            "num_seqs": [2, 2, None, None, None],
            "seq_len": [256, 256, None, None, None],
            "batch_size": [None, None, 16, 16, 16],
            "context_len": [None, None, 1024, 1024, 1024],
            "op": ["gemm", "attention", "gemm", "attention", "allreduce"],
            "latency_ms": [9.0, 1.0, 2.0, 1.0, 1.0],
        }
    )
    fig = ops_figure(ops)
    assert [ax.get_title() for ax in fig.axes] == [
        "prefill (num_seqs × seq_len)",
        "decode (batch_size × context_len)",
    ]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["16×1024"]
    assert sorted(round(p.get_height(), 6) for p in fig.axes[1].patches) == [25.0, 25.0, 50.0]


def test_profile_section(profile_run) -> None:
    folder, profile = profile_run
    run = RunData(path=folder, profile=profile)
    section = build_profile([run])
    assert section.figure_keys == ("profile-fit", "profile-error", "profile-ops")
    intro = section.items[0].text
    assert "Measured profile of llama-3.1-8b" in intro and "h100-sxm catalog entry" in intro
    table = next(i for i in section.items if i.kind == "table")
    assert [row[0] for row in table.rows] == ["prefill", "decode"]
    assert table.rows[0][4] == str(len(profile.prefill))


def test_profile_section_absent_explains(tmp_path: Path) -> None:
    run = RunData(path=tmp_path / "search", problems={"profile.yaml": "missing key 'tp'"})
    section = build_profile([run])
    assert (
        section.absent is not None and "profile.yaml could not be read (missing key 'tp')" in section.absent
    )


def test_an_analytic_profile_is_not_called_measured(tmp_path: Path) -> None:
    measured = _profile(H100)
    analytic = Profile("analytic", measured.model, H100, "bfloat16", 1, measured.prefill, measured.decode)
    section = build_profile([RunData(path=tmp_path / "p8b", profile=analytic)])
    captions = " ".join(getattr(i, "caption", "") for i in section.items)
    assert "Analytic model latency (dots)" in captions and "Measured" not in captions
    assert "each analytic model point" in captions
    assert section.items[0].text.startswith("Analytic profile of llama-3.1-8b")
    fig = error_figure(analytic)
    assert {ax.get_xlabel() for ax in fig.axes} == {"analytic model latency (ms)"}
    measured_section = build_profile([RunData(path=tmp_path / "p", profile=measured)])
    assert "Measured latency (dots)" in " ".join(getattr(i, "caption", "") for i in measured_section.items)


def test_the_model_table_prints_coefficients_without_exponents(profile_run) -> None:
    folder, profile = profile_run
    table = next(i for i in build_profile([RunData(path=folder, profile=profile)]).items if i.kind == "table")
    formulas = [row[1] for row in table.rows]
    assert all("e-" not in f and "e+" not in f for f in formulas), formulas
    assert all(f.split(" + ")[0].endswith(("ms", "µs", "ns")) for f in formulas)
    assert "per token" in formulas[0] and "per context token" in formulas[1]

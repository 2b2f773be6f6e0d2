"""Profile files: save/load round trip, atomic writes, strict loading, per-GPU sizes under TP."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pdplan.profiles.errors import ProfileError
from pdplan.profiles.model_spec import load_model_spec
from pdplan.profiles.profile import Profile, load_profile, save_profile


def _linear(s: int, n: int) -> float:
    return 1.0 + 0.01 * s * n + 1e-6 * s * n * n


def _decode(b: int, c: int) -> float:
    return 2.0 + 0.1 * b + 1e-4 * b * c


def test_round_trip_keeps_tables_metadata_and_fit(tmp_path: Path, make_profile) -> None:
    profile = make_profile(_linear, _decode)
    ops = pd.DataFrame(
        {"phase": ["prefill"], "num_seqs": [1], "seq_len": [16], "op": ["gemm"], "latency_ms": [0.5]}
    )
    profile = Profile(**{**_fields(profile), "ops": ops, "notes": "hand-made"})
    out = save_profile(profile, tmp_path / "p")
    assert sorted(p.name for p in out.iterdir()) == ["decode.csv", "ops.csv", "prefill.csv", "profile.yaml"]
    back = load_profile(out)
    pd.testing.assert_frame_equal(back.prefill, profile.prefill)
    pd.testing.assert_frame_equal(back.decode, profile.decode)
    pd.testing.assert_frame_equal(back.ops, ops)
    assert back.model == profile.model and back.hardware == profile.hardware
    assert (back.method, back.dtype, back.tp, back.notes) == ("measured", "float32", 1, "hand-made")
    assert back.latency.prefill_coef == pytest.approx(profile.latency.prefill_coef)
    assert back.latency.decode_coef == pytest.approx(profile.latency.decode_coef)
    meta = yaml.safe_load((out / "profile.yaml").read_text())
    assert meta["latency_model"]["loo_error"]["decode"]["num_points"] == 9
    assert meta["weight_bytes"] == profile.model.weight_bytes("float32")


def _fields(profile: Profile) -> dict:
    return {
        k: getattr(profile, k)
        for k in (
            "method",
            "model",
            "hardware",
            "dtype",
            "tp",
            "prefill",
            "decode",
            "ops",
            "versions",
            "created_at",
            "notes",
        )
    }


def _fail_on_second_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    original = pd.DataFrame.to_csv
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", flaky)


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, make_profile, monkeypatch) -> None:
    profile = make_profile(_linear, _decode)
    _fail_on_second_csv(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        save_profile(profile, tmp_path / "p")
    assert list(tmp_path.iterdir()) == []  # neither the profile nor a temp dir


def test_a_failed_write_keeps_the_old_profile(tmp_path: Path, make_profile, monkeypatch) -> None:
    old = save_profile(make_profile(_linear, _decode), tmp_path / "p")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    _fail_on_second_csv(monkeypatch)
    with pytest.raises(OSError):
        save_profile(make_profile(lambda s, n: 9.0, lambda b, c: 9.0), tmp_path / "p")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_saving_again_replaces_the_profile(tmp_path: Path, make_profile) -> None:
    save_profile(make_profile(_linear, _decode), tmp_path / "p")
    save_profile(make_profile(lambda s, n: 9.0, lambda b, c: 3.0), tmp_path / "p")
    assert load_profile(tmp_path / "p").latency.decode_coef == (3.0, 0.0, 0.0)
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_unwritable_destination_is_a_profile_error(tmp_path: Path, make_profile) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProfileError, match="cannot write profile"):
        save_profile(make_profile(_linear, _decode), tmp_path / "file" / "p")


@pytest.fixture
def saved(tmp_path: Path, make_profile) -> Path:
    return save_profile(make_profile(_linear, _decode), tmp_path / "p")


def _edit_meta(folder: Path, **changes) -> None:
    meta = yaml.safe_load((folder / "profile.yaml").read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (folder / "profile.yaml").write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flops": 1}, r"unknown keys \['flops'\]; valid: \['schema_version'"),
        ({"schema_version": 2}, "schema_version 2; expected 1"),
        ({"tp": None}, "missing key 'tp'"),
        ({"method": "guessed"}, "method 'guessed'; expected measured or analytic"),
    ],
)
def test_loading_is_strict(saved: Path, change: dict, message: str) -> None:
    _edit_meta(saved, **change)
    with pytest.raises(ProfileError, match=message):
        load_profile(saved)


def test_missing_files_and_columns_are_named(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a profile directory"):
        load_profile(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    pd.read_csv(broken / "decode.csv").drop(columns="context_len").to_csv(broken / "decode.csv", index=False)
    with pytest.raises(ProfileError, match=r"decode.csv lacks columns \['context_len'\]"):
        load_profile(broken)
    (broken / "prefill.csv").unlink()
    with pytest.raises(ProfileError, match=r"missing prefill\.csv"):
        load_profile(broken)
    (saved / "profile.yaml").write_text("method: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(saved)


def test_per_gpu_sizes_under_tensor_parallelism(make_profile) -> None:
    spec = load_model_spec("llama-3.1-8b")
    base = make_profile(_linear, _decode)
    for tp, kv in ((1, 131_072), (2, 65_536), (8, 16_384), (16, 16_384)):
        profile = Profile(**{**_fields(base), "model": spec, "dtype": "bfloat16", "tp": tp})
        assert profile.kv_bytes_per_token == kv  # beyond 8 KV heads, one replicated head per rank
        assert profile.weight_bytes == spec.weight_bytes() // tp

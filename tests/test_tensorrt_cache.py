"""The engine cache key, the staleness check and engines/manifest.json (no GPU needed)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from latent_ddpm.export.tensorrt_write import write_manifest
from latent_ddpm.files import atomic_write
from latent_ddpm.runtime import BundleError
from latent_ddpm.runtime.backends.tensorrt_cache import (
    KEY_FIELDS,
    Environment,
    describe_mismatch,
    engine_fields,
    engine_key,
    environment_fields,
    runnable_fields,
    stale_reason,
)
from latent_ddpm.runtime.backends.tensorrt_manifest import (
    MANIFEST_FILE,
    BuildSettings,
    EngineRecord,
    Manifest,
    read_manifest,
    rebuild_command,
)

A10G = Environment(tensorrt_version="10.3.0", device_name="NVIDIA A10G", compute_capability=(8, 6))
H100 = Environment(tensorrt_version="10.7.0", device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0))
PROFILE = {
    "sample": {"min": [1, 4, 8, 8], "opt": [16, 4, 8, 8], "max": [32, 4, 8, 8]},
    "timestep": {"min": [1], "opt": [16], "max": [32]},
}


def _fields(env: Environment = A10G, **changes: Any) -> dict[str, Any]:
    fields = engine_fields(
        onnx_sha256="a" * 64,
        external_data_sha256=None,
        environment=env,
        profile=PROFILE,
        precision="fp16",
        builder={"typing": "weak", "flags": ["FP16"], "cleared_flags": []},
    )
    fields.update(changes)
    return fields


def _record(fields: dict[str, Any], plan: bytes = b"plan") -> EngineRecord:
    return EngineRecord(
        file="unet.plan",
        key=engine_key(fields),
        fields=fields,
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        plan_bytes=len(plan),
        build_seconds=12.5,
        built_at="2026-01-01T00:00:00+00:00",
    )


# ---------------------------------------------------------------------- key


def test_key_is_a_stable_sha256_independent_of_dict_order() -> None:
    fields = _fields()
    reordered = dict(reversed(list(fields.items())))
    reordered["profile"] = dict(reversed(list(PROFILE.items())))
    key = engine_key(fields)
    assert len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    assert engine_key(reordered) == key
    assert engine_key(json.loads(json.dumps(fields))) == key  # survives the manifest round trip


def test_key_is_the_same_in_a_fresh_interpreter() -> None:
    code = (
        "import json,sys; from latent_ddpm.runtime.backends.tensorrt_cache import engine_key; "
        "print(engine_key(json.loads(sys.stdin.read())))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(_fields()), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == engine_key(_fields())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("key_version", 2),
        ("tensorrt_version", "10.7.0"),
        ("compute_capability", "9.0"),
        ("device_name", "NVIDIA L4"),
        ("onnx_sha256", "b" * 64),
        ("external_data_sha256", "c" * 64),
        ("profile", {**PROFILE, "sample": {**PROFILE["sample"], "max": [64, 4, 8, 8]}}),
        ("precision", "bf16"),
        ("builder", {"typing": "weak", "flags": ["BF16"], "cleared_flags": []}),
    ],
)
def test_every_field_changes_the_key(field: str, value: Any) -> None:
    assert engine_key(_fields(**{field: value})) != engine_key(_fields())


def test_the_parametrized_fields_are_all_the_key_fields() -> None:
    assert set(KEY_FIELDS) == set(_fields())


def test_key_refuses_incomplete_fields() -> None:
    fields = _fields()
    del fields["tensorrt_version"]
    with pytest.raises(ValueError, match="tensorrt_version"):
        engine_key(fields)


# ---------------------------------------------------------------------- explanations


def test_mismatch_names_tensorrt_and_compute_capability() -> None:
    text = describe_mismatch("engines/unet.plan", "unet.onnx", _fields(A10G), _fields(H100))
    assert text == (
        "engines/unet.plan was built for TensorRT 10.3.0 on compute capability 8.6 (NVIDIA A10G); "
        "this is TensorRT 10.7.0 on compute capability 9.0 (NVIDIA H100 80GB HBM3)"
    )


def test_mismatch_names_the_graph_and_the_request() -> None:
    now = _fields(
        onnx_sha256="b" * 64, precision="fp32", builder={"typing": "strong", "flags": [], "cleared_flags": []}
    )
    text = describe_mismatch("engines/unet.plan", "unet.onnx", _fields(), now)
    assert (
        "was built for unet.onnx with sha256 aaaaaaaaaaaa...; this is unet.onnx with sha256 bbbbbbbbbbbb..."
        in text
    )
    assert "was built with precision fp16, weak typing with flags FP16; now asked for precision fp32" in text


def test_mismatch_of_device_only_and_of_profile() -> None:
    same_cc = Environment(tensorrt_version="10.3.0", device_name="NVIDIA A40", compute_capability=(8, 6))
    text = describe_mismatch("engines/unet.plan", "unet.onnx", _fields(A10G), _fields(same_cc))
    assert text == "engines/unet.plan was built for the NVIDIA A10G; this is the NVIDIA A40"
    bigger = {**PROFILE, "sample": {**PROFILE["sample"], "max": [64, 4, 8, 8]}}
    text = describe_mismatch("engines/unet.plan", "unet.onnx", _fields(), _fields(profile=bigger))
    assert "sample [1, 4, 8, 8]..[32, 4, 8, 8]" in text and "sample [1, 4, 8, 8]..[64, 4, 8, 8]" in text


def test_stale_reason_cases() -> None:
    fields = _fields()
    record = _record(fields, b"plan")
    good = hashlib.sha256(b"plan").hexdigest()
    plan = "engines/unet.plan"
    assert stale_reason(plan, "unet.onnx", record, fields, good) is None
    assert "has not been built yet" in stale_reason(plan, "unet.onnx", None, fields, None)
    assert "listed in the manifest but missing" in stale_reason(plan, "unet.onnx", record, fields, None)
    assert "sha256 differs" in stale_reason(
        plan, "unet.onnx", record, fields, hashlib.sha256(b"trunc").hexdigest()
    )
    hand_edited = EngineRecord(**{**record.__dict__, "fields": _fields(tensorrt_version="10.7.0")})
    assert "does not match its own key" in stale_reason(plan, "unet.onnx", hand_edited, fields, good)
    gutted = EngineRecord(**{**record.__dict__, "fields": {"precision": "fp16"}})
    assert "does not match its own key" in stale_reason(plan, "unet.onnx", gutted, fields, good)
    moved = stale_reason(plan, "unet.onnx", record, _fields(H100), good)
    assert moved.startswith("engines/unet.plan was built for TensorRT 10.3.0 on compute capability 8.6")


def test_the_runtime_runs_a_plan_as_built_and_checks_only_where_it_runs() -> None:
    built = _fields(precision="fp32", builder={"typing": "strong", "flags": [], "cleared_flags": ["TF32"]})
    here = environment_fields(onnx_sha256="a" * 64, external_data_sha256=None, environment=A10G)
    assert engine_key(runnable_fields(built, here)) == engine_key(built)
    moved = runnable_fields(
        built, environment_fields(onnx_sha256="b" * 64, external_data_sha256=None, environment=H100)
    )
    text = describe_mismatch("engines/unet.plan", "unet.onnx", built, moved)
    assert text.startswith("engines/unet.plan was built for TensorRT 10.3.0 on compute capability 8.6")
    assert "unet.onnx with sha256 bbbbbbbbbbbb" in text and "asked for" not in text


def test_rebuild_command_repeats_every_setting_as_build_engines_reads_it() -> None:
    from latent_ddpm.cli import build_parser

    settings = BuildSettings(precision="bf16", min_batch=2, opt_batch=3, max_batch=5, workspace_gb=1.5)
    command = rebuild_command(Path("/data/my bundle"), settings, force=True)
    assert command.startswith("latent-ddpm build-engines '/data/my bundle' --precision bf16 --min-batch 2")
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == "build-engines" and args.bundle == Path("/data/my bundle") and args.force
    assert {name: getattr(args, name) for name in asdict(settings)} == asdict(settings)
    default = build_parser().parse_args(shlex.split(rebuild_command(Path("b"), BuildSettings()))[1:])
    assert {name: getattr(default, name) for name in asdict(settings)} == asdict(BuildSettings())
    assert not default.force


# ---------------------------------------------------------------------- manifest


def _manifest() -> Manifest:
    return Manifest(
        settings=BuildSettings(precision="fp16", min_batch=1, opt_batch=4, max_batch=8, workspace_gb=2.0),
        engines={"unet": _record(_fields())},
        timing_cache={"file": "timing.cache", **A10G.to_json()},
        created_by="latent-ddpm 0.1.0",
    )


def test_manifest_round_trip(tmp_path: Path) -> None:
    written = write_manifest(tmp_path / "engines", _manifest())
    assert written == tmp_path / "engines" / MANIFEST_FILE
    back = read_manifest(tmp_path / "engines")
    assert back == _manifest()
    assert back.engines["unet"].key == engine_key(back.engines["unet"].fields)
    raw = json.loads(written.read_text())
    assert raw["format"] == "latent-ddpm-engines" and raw["format_version"] == 1
    assert raw["engines"]["unet"]["fields"]["compute_capability"] == "8.6"
    assert [p.name for p in (tmp_path / "engines").iterdir()] == [MANIFEST_FILE]  # no temporary left behind


def test_no_manifest_is_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


def _corrupt(tmp_path: Path, edit: Any) -> Path:
    raw = _manifest().to_json()
    edited = edit(copy.deepcopy(raw))
    (tmp_path / MANIFEST_FILE).write_text(edited if isinstance(edited, str) else json.dumps(edited))
    return tmp_path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: json.dumps(raw)[:-20], r"engines/manifest\.json: not valid JSON"),
        (lambda raw: [raw], r"expected a JSON object, got list"),
        (lambda raw: {**raw, "format": "other"}, r"'format' is 'other'"),
        (lambda raw: {**raw, "format_version": 99}, r"format_version 99 is not 1"),
        (lambda raw: {k: v for k, v in raw.items() if k != "engines"}, r"missing key 'engines'"),
        (lambda raw: {**raw, "settings": {**raw["settings"], "max_batch": 0}}, r"bad settings.*max_batch"),
        (lambda raw: {**raw, "settings": {**raw["settings"], "speed": "max"}}, r"bad settings"),
        (
            lambda raw: {**raw, "engines": {"unet": {**raw["engines"]["unet"], "plan_bytes": "9"}}},
            r"'plan_bytes'",
        ),
        (
            lambda raw: {**raw, "engines": {"unet": {**raw["engines"]["unet"], "file": "../x.plan"}}},
            r"plain file",
        ),
        (lambda raw: {**raw, "engines": {"unet": "unet.plan"}}, r"engines\.unet: expected a JSON object"),
    ],
)
def test_corrupt_manifest_errors(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        read_manifest(_corrupt(tmp_path, edit))


def test_atomic_write_keeps_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "unet.plan"
    atomic_write(target, b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["unet.plan"]

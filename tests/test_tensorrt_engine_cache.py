"""The engine cache and the tensorrt backend's data path, run against CPU stand-ins for TensorRT and
cuda-python (tests/fake_tensorrt.py): what build-engines rebuilds when and what it keeps, what the runtime
refuses and the command it names, what the errors say, and that buffers are allocated once and copies stay
in bounds. The GPU tests in test_tensorrt_backend.py run the same paths against the real libraries."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bundle_factory import make_bundle
from fake_tensorrt import install, make_cudart, make_tensorrt

from latent_ddpm.cli import main
from latent_ddpm.export import tensorrt_builder
from latent_ddpm.export.tensorrt_build import build_engines
from latent_ddpm.runtime import BackendUnavailableError, BundleError, InputError, Pipeline
from latent_ddpm.runtime.backends.tensorrt_manifest import BuildSettings, read_manifest

SMALL = {"min_batch": 1, "opt_batch": 2, "max_batch": 4}


def _fake(
    monkeypatch: pytest.MonkeyPatch, version: str = "10.7.0", weak_typing: bool = True, **device
) -> SimpleNamespace:
    cudart = make_cudart(**device)
    trt = make_tensorrt(cudart, version=version, weak_typing=weak_typing)
    install(monkeypatch, trt, cudart)
    return SimpleNamespace(trt=trt, cudart=cudart)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "b")


def _engines(bundle: Path) -> dict:
    return json.loads((bundle / "engines" / "manifest.json").read_text())["engines"]


def _files(bundle: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under the bundle with its size, mtime and bytes: a refused load must change none of them."""
    return {
        str(p.relative_to(bundle)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    }


def _refused(bundle: Path) -> str:
    """Load the bundle with the tensorrt backend, expecting a refusal that writes nothing; the message."""
    before = _files(bundle)
    with pytest.raises(BundleError) as info:
        Pipeline.from_bundle(bundle, backend="tensorrt")
    assert _files(bundle) == before  # the runtime never writes into a bundle
    return str(info.value)


def _command(message: str) -> list[str]:
    """The build-engines command a refusal names, as argv for ``latent-ddpm`` (it must run as printed)."""
    argv = shlex.split(message.split(" with: ", 1)[1])
    assert argv[:2] == ["latent-ddpm", "build-engines"]
    return argv[1:]


def test_build_writes_plans_manifest_and_timing_cache(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    fake = _fake(monkeypatch)
    messages: list[str] = []
    manifest = build_engines(bundle, precision="fp16", progress=messages.append, **SMALL)
    files = sorted(p.name for p in (bundle / "engines").iterdir())
    assert files == [
        ".build.lock",
        "manifest.json",
        "timing.cache",
        "unet.plan",
        "vae_decoder.plan",
        "vae_encoder.plan",
    ]
    unet = manifest.engines["unet"].fields
    assert unet["profile"]["sample"] == {"min": [1, 4, 8, 8], "opt": [4, 4, 8, 8], "max": [8, 4, 8, 8]}
    assert unet["builder"] == {"typing": "weak", "flags": ["FP16"], "cleared_flags": []}
    assert unet["device_name"] == "Fake GPU" and unet["compute_capability"] == "8.6"
    assert [flags for _, flags, strong in fake.trt.builds] == [["FP16", "TF32"]] * 3
    assert any(
        m.startswith("building engines/unet.plan from unet.onnx: fp16, batch 1..8 (opt 4)") for m in messages
    )
    assert "  TensorRT: Building engine" in messages
    assert read_manifest(bundle / "engines") == manifest


def test_build_engines_json_lists_the_plans(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake(monkeypatch)
    argv = ["build-engines", str(bundle), "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # the document alone: the summary and progress went to stderr
    assert "engines in" in captured.err and "building engines/unet.plan" in captured.err
    engines = bundle / "engines"
    assert doc["written"] == {
        "engines": str(engines),
        "manifest": str(engines / "manifest.json"),
        "plans": [str(engines / f"{role}.plan") for role in ("unet", "vae_decoder", "vae_encoder")],
    }
    assert doc["settings"] == {"precision": "fp16", "workspace_gb": None, **SMALL}
    assert doc["engines"] == _engines(bundle) and doc["seconds"] > 0


def test_valid_plans_are_kept_force_and_new_settings_rebuild(
    monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    fake = _fake(monkeypatch)
    build_engines(bundle, **SMALL)
    before = _engines(bundle)
    build_engines(bundle, **SMALL)
    assert len(fake.trt.builds) == 3 and _engines(bundle) == before
    build_engines(bundle, force=True, **SMALL)
    assert len(fake.trt.builds) == 6
    messages: list[str] = []
    build_engines(bundle, precision="fp32", progress=messages.append, **SMALL)
    assert len(fake.trt.builds) == 9 and fake.trt.builds[-1][1:] == ([], True)  # strongly typed, TF32 cleared
    assert any(
        "was built with precision fp16, weak typing with flags FP16; now asked for precision fp32" in m
        for m in messages
    )
    assert read_manifest(bundle / "engines").settings == BuildSettings(precision="fp32", **SMALL)


def test_tensorrt_backend_samples_exactly_like_onnxruntime(
    monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    fake = _fake(monkeypatch)
    build_engines(bundle, **SMALL)
    pipe = Pipeline.from_bundle(bundle, backend="tensorrt")
    ref = Pipeline.from_bundle(bundle)
    assert pipe.backend == "tensorrt" and pipe.providers == ["TensorRT 10.7.0 fp16 on Fake GPU (sm 8.6)"]
    allocated = dict(fake.cudart.allocations)
    for n in (4, 1, 3):  # shapes change between calls; the buffers do not
        out = pipe.generate(num_images=n, steps=4, seed=n, guidance_scale=2.0)
        want = ref.generate(num_images=n, steps=4, seed=n, guidance_scale=2.0)
        np.testing.assert_array_equal(out.latents, want.latents)
        np.testing.assert_array_equal(out.images, want.images)
    assert fake.cudart.allocations == allocated
    again = pipe.img2img(out.images, strength=0.5, steps=4, seed=0, class_labels=2)
    np.testing.assert_array_equal(
        again.latents, ref.img2img(out.images, strength=0.5, steps=4, seed=0, class_labels=2).latents
    )
    assert fake.cudart.copies["h2d"] > 0 and fake.cudart.copies["d2h"] > 0
    for engine in (pipe.unet, pipe.decoder, pipe.encoder):
        engine.close()
    assert fake.cudart.allocations == {}


def test_batch_beyond_the_profile_is_an_input_error(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    _fake(monkeypatch)
    build_engines(bundle, **SMALL)
    pipe = Pipeline.from_bundle(bundle, backend="tensorrt")
    with pytest.raises(
        InputError, match=r"unet\.plan: input 'sample' has batch 10, but .* batches 1\.\.8 \(with class"
    ):
        pipe.generate(num_images=5, steps=2, seed=0, guidance_scale=2.0)
    with pytest.raises(
        InputError, match=r"vae_decoder\.plan: input 'latent' has batch 5, .* batches 1\.\.4; make"
    ):
        pipe.generate(num_images=5, steps=2, seed=0, guidance_scale=1.0)  # the U-Net takes 5; the decoder not


def test_missing_engines_are_refused_with_the_command_that_builds_them(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    fake = _fake(monkeypatch)
    message = _refused(bundle)
    assert message.startswith(
        "engines/unet.plan has not been built yet (no entry in the manifest); build it with: latent-ddpm "
        f"build-engines {bundle.resolve()} --precision fp16 --min-batch 1 --opt-batch 8 --max-batch 16"
    )
    assert len(fake.trt.builds) == 0 and not (bundle / "engines").exists()
    assert main(_command(message) + ["--quiet"]) == 0, capsys.readouterr().err
    assert len(fake.trt.builds) == 3
    assert read_manifest(bundle / "engines").settings == BuildSettings()
    Pipeline.from_bundle(bundle, backend="tensorrt")  # loads now


def test_new_tensorrt_is_refused_and_says_why_and_how_to_rebuild(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    _fake(monkeypatch, version="10.3.0")
    build_engines(bundle, **SMALL)
    assert json.loads((bundle / "engines" / "timing.cache").read_text())["version"] == "10.3.0"
    fake = _fake(monkeypatch, version="10.7.0")
    message = _refused(bundle)
    assert message == (
        "engines/unet.plan was built for TensorRT 10.3.0; this is TensorRT 10.7.0; rebuild it with: "
        f"latent-ddpm build-engines {bundle.resolve()} --precision fp16 --min-batch 1 --opt-batch 2 --max-batch 4"
    )
    assert len(fake.trt.builds) == 0
    assert main(_command(message) + ["--quiet"]) == 0, capsys.readouterr().err  # the command, as printed
    assert len(fake.trt.builds) == 3
    assert {e["fields"]["tensorrt_version"] for e in _engines(bundle).values()} == {"10.7.0"}
    # the old timing cache was measured by another TensorRT: it was dropped, not fed to the new builder
    assert json.loads((bundle / "engines" / "timing.cache").read_text()) == {
        "version": "10.7.0",
        "entries": 3,
    }
    assert read_manifest(bundle / "engines").settings == BuildSettings(**SMALL)  # rebuilt as first asked
    Pipeline.from_bundle(bundle, backend="tensorrt")


def _built_then_upgraded(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> bytes:
    """Plans built on TensorRT 10.3 / a compute capability 8.6 GPU, then the machine is 10.7 on an H100."""
    _fake(monkeypatch, version="10.3.0")
    build_engines(bundle, **SMALL)
    plan = (bundle / "engines" / "unet.plan").read_bytes()
    _fake(monkeypatch, version="10.7.0", name="Fake H100", cc=(9, 0))
    return plan


def test_stale_plan_is_refused_naming_every_field(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    plan = _built_then_upgraded(monkeypatch, bundle)
    assert _refused(bundle).startswith(
        "engines/unet.plan was built for TensorRT 10.3.0 on compute capability 8.6 (Fake GPU); "
        "this is TensorRT 10.7.0 on compute capability 9.0 (Fake H100); rebuild it with: latent-ddpm build-engines "
    )
    assert (bundle / "engines" / "unet.plan").read_bytes() == plan


def test_build_engines_on_a_read_only_bundle_names_every_field(
    monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    plan = _built_then_upgraded(monkeypatch, bundle)
    monkeypatch.setattr(tensorrt_builder.os, "access", lambda path, mode: False)
    with pytest.raises(BundleError) as info:
        build_engines(bundle, **SMALL)
    assert str(info.value).startswith(
        "engines/unet.plan was built for TensorRT 10.3.0 on compute capability 8.6 (Fake GPU); "
        "this is TensorRT 10.7.0 on compute capability 9.0 (Fake H100), and it cannot be rebuilt here: "
    )
    assert "is not writable" in str(info.value)
    assert (bundle / "engines" / "unet.plan").read_bytes() == plan


def test_a_runtime_without_builder_loads_valid_plans_and_cannot_rebuild(
    monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    _fake(monkeypatch, version="10.3.0")
    build_engines(bundle, **SMALL)
    lean = _fake(monkeypatch, version="10.3.0")
    del lean.trt.Builder
    Pipeline.from_bundle(bundle, backend="tensorrt").generate(num_images=1, steps=2, seed=0)
    fake = _fake(monkeypatch, version="10.7.0")
    del fake.trt.Builder
    assert "this is TensorRT 10.7.0; rebuild it with: " in _refused(bundle)
    with pytest.raises(
        BundleError, match=r"this is TensorRT 10\.7\.0, and it cannot be rebuilt here: .* has no builder"
    ):
        build_engines(bundle, **SMALL)


def test_replaced_plan_and_corrupt_manifest_are_refused_until_rebuilt(
    monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    fake = _fake(monkeypatch)
    build_engines(bundle, **SMALL)
    (bundle / "engines" / "unet.plan").write_bytes(b"truncated")
    message = _refused(bundle)
    assert "engines/unet.plan is not the file the manifest recorded (sha256 differs" in message
    assert message.endswith("--precision fp16 --min-batch 1 --opt-batch 2 --max-batch 4")
    build_engines(bundle, **SMALL)
    assert len(fake.trt.builds) == 4
    Pipeline.from_bundle(bundle, backend="tensorrt")
    (bundle / "engines" / "manifest.json").write_text("{")
    message = _refused(bundle)
    assert message.startswith("engines/manifest.json: not valid JSON")
    assert "; rebuild the engines with: latent-ddpm build-engines " in message
    build_engines(bundle, **SMALL)
    Pipeline.from_bundle(bundle, backend="tensorrt").generate(num_images=1, steps=2, seed=0)
    assert len(fake.trt.builds) == 7 and set(_engines(bundle)) == {"unet", "vae_decoder", "vae_encoder"}


def test_plan_tensorrt_refuses_despite_a_matching_key(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    fake = _fake(monkeypatch)
    build_engines(bundle, **SMALL)
    # Same version string, different serialization (a library swapped underneath): the key cannot see it.
    path = bundle / "engines" / "manifest.json"
    raw = json.loads(path.read_text())
    plan = json.loads((bundle / "engines" / "unet.plan").read_bytes())
    plan["tag"] = "10.7.0-other-build"
    data = json.dumps(plan).encode()
    (bundle / "engines" / "unet.plan").write_bytes(data)
    raw["engines"]["unet"]["plan_sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(raw))
    message = _refused(bundle)
    assert re.match(r"engines/unet\.plan: TensorRT 10\.7\.0 cannot deserialize it \(.*Version tag", message)
    assert message.endswith("--max-batch 4 --force")  # the key matches, so only a forced rebuild replaces it
    assert main(_command(message) + ["--quiet"]) == 0
    assert len(fake.trt.builds) == 6
    Pipeline.from_bundle(bundle, backend="tensorrt")


def test_tensorrt_11_needs_fp32_or_an_fp16_bundle(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    _fake(monkeypatch, version="10.7.0")
    build_engines(bundle, precision="fp16", **SMALL)
    fake = _fake(monkeypatch, version="11.0.0", weak_typing=False)
    assert "this is TensorRT 11.0.0; rebuild it with: " in _refused(bundle)
    with pytest.raises(
        InputError, match=r"engines/unet\.plan cannot be built here: TensorRT 11\.0\.0 builds strongly"
    ):
        build_engines(bundle, precision="fp16", **SMALL)
    with pytest.raises(InputError, match=r"export --precision fp16\) or build with precision 'fp32'"):
        build_engines(bundle, precision="fp16", **SMALL)
    build_engines(bundle, precision="fp32", **SMALL)
    assert [strong for *_, strong in fake.trt.builds] == [True] * 3
    Pipeline.from_bundle(bundle, backend="tensorrt").generate(num_images=2, steps=2, seed=0)


def test_plans_of_removed_models_are_dropped(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    _fake(monkeypatch)
    build_engines(bundle, **SMALL)
    (bundle / "vae_encoder.onnx").unlink()
    make_bundle(bundle, with_encoder=False)
    messages: list[str] = []
    build_engines(bundle, progress=messages.append, **SMALL)
    assert set(_engines(bundle)) == {"unet", "vae_decoder"}
    assert not (bundle / "engines" / "vae_encoder.plan").exists()
    assert "engines/vae_encoder.plan: removed (the bundle has no vae_encoder model)" in messages


def test_no_gpu_through_the_pipeline(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    _fake(monkeypatch, devices=0)
    with pytest.raises(BackendUnavailableError, match=r"needs an NVIDIA GPU, and CUDA reports none usable"):
        Pipeline.from_bundle(bundle, backend="tensorrt")
    assert not (bundle / "engines").exists()

"""The tensorrt backend and `latent-ddpm build-engines`: clear errors without TensorRT or a GPU here,
and the real thing on a machine that has both (the GPU class skips elsewhere, saying why)."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bundle_factory import make_bundle

from latent_ddpm.cli import main
from latent_ddpm.runtime import BackendUnavailableError, BundleError, InputError, Pipeline, load_bundle
from latent_ddpm.runtime.backends import EngineRequest
from latent_ddpm.runtime.backends.tensorrt_backend import open_engine
from latent_ddpm.runtime.backends.tensorrt_cuda import cuda_check, current_device, import_cudart

EXTRA = "pip install 'latent-ddpm[tensorrt]'"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("trt") / "b")


@pytest.fixture()
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import tensorrt` fail even where it is installed (None in sys.modules blocks the import)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_build_engines_cli_names_the_extra(
    bundle: Path, no_tensorrt: None, capsys: pytest.CaptureFixture
) -> None:
    assert main(["build-engines", str(bundle), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-ddpm build-engines: error: TensorRT engines need NVIDIA TensorRT")
    assert EXTRA in err and "\n" not in err
    assert not (bundle / "engines").exists()  # nothing half-written


def test_build_engines_cli_checks_settings_first(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build-engines", str(bundle), "--min-batch", "8", "--opt-batch", "4"]) == 2
    assert "min <= opt <= max, got min_batch=8, opt_batch=4, max_batch=16" in capsys.readouterr().err


def test_build_engines_cli_checks_the_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build-engines", str(tmp_path / "missing")]) == 2
    assert "bundle directory not found" in capsys.readouterr().err


def test_pipeline_backend_tensorrt_names_the_extra(bundle: Path, no_tensorrt: None) -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install 'latent-ddpm\[tensorrt\]'"):
        Pipeline.from_bundle(bundle, backend="tensorrt")


def test_missing_cuda_python_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendUnavailableError, match=r"cuda-python.*pip install 'latent-ddpm\[tensorrt\]'"):
        import_cudart()


def test_providers_are_refused_with_a_pointer_to_onnxruntime(bundle: Path) -> None:
    b = load_bundle(bundle)
    with pytest.raises(InputError, match=r"backend='onnxruntime', providers=\['TensorrtExecutionProvider'\]"):
        open_engine(EngineRequest(b, b.models["unet"], providers=["CUDAExecutionProvider"]))


class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


def _fake_cudart(**calls: object) -> SimpleNamespace:
    """Stands in for cuda-python's runtime module: the same (error, value) tuples, no GPU."""
    return SimpleNamespace(
        cudaError_t=_Err, cudaGetErrorName=lambda e: (_Err.cudaSuccess, e.name.encode()), **calls
    )


def test_no_gpu_is_a_clear_error() -> None:
    cudart = _fake_cudart(cudaGetDeviceCount=lambda: (_Err.cudaErrorNoDevice, 0))
    with pytest.raises(
        BackendUnavailableError, match=r"needs an NVIDIA GPU.*\(cudaErrorNoDevice\).*onnxruntime"
    ):
        current_device(cudart)
    cudart = _fake_cudart(cudaGetDeviceCount=lambda: (_Err.cudaErrorInsufficientDriver, 0))
    with pytest.raises(BackendUnavailableError, match=r"cudaErrorInsufficientDriver"):
        current_device(cudart)
    cudart = _fake_cudart(cudaGetDeviceCount=lambda: (_Err.cudaSuccess, 0))
    with pytest.raises(BackendUnavailableError, match=r"\(no devices\)"):
        current_device(cudart)
    cudart = _fake_cudart(
        cudaGetDeviceCount=lambda: (_Err.cudaSuccess, 2), cudaGetDevice=lambda: (_Err.cudaSuccess, 1)
    )
    assert current_device(cudart) == 1


def test_cuda_check_unwraps_and_names_the_call() -> None:
    cudart = _fake_cudart()
    assert cuda_check(cudart, (_Err.cudaSuccess,), "cudaFree") is None
    assert cuda_check(cudart, (_Err.cudaSuccess, 1234), "cudaMalloc") == 1234
    assert cuda_check(cudart, (_Err.cudaSuccess, 1, 2), "x") == (1, 2)
    with pytest.raises(
        BackendUnavailableError, match=r"CUDA call cudaMalloc\(64\) failed: cudaErrorNoDevice"
    ):
        cuda_check(cudart, (_Err.cudaErrorNoDevice, 0), "cudaMalloc(64)")


# ---------------------------------------------------------------------- on a GPU with TensorRT


def _gpu_skip_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return f"needs TensorRT and an NVIDIA GPU: tensorrt is not installed ({EXTRA})"
    try:
        current_device(import_cudart())
    except BackendUnavailableError as exc:
        return f"needs an NVIDIA GPU: {exc}"
    return None


GPU_SKIP = _gpu_skip_reason()


@pytest.mark.gpu
@pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
class TestOnGPU:
    """Builds real engines from the factory bundle and samples with them against ONNX Runtime."""

    @pytest.fixture(scope="class")
    def built(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        from latent_ddpm.export.tensorrt_build import build_engines

        root = make_bundle(tmp_path_factory.mktemp("gpu") / "b")
        manifest = build_engines(root, precision="fp32", min_batch=1, opt_batch=2, max_batch=4)
        assert set(manifest.engines) == {"unet", "vae_decoder", "vae_encoder"}
        return root

    def test_engines_match_onnxruntime(self, built: Path) -> None:
        ref = Pipeline.from_bundle(built).generate(num_images=3, steps=5, seed=0, class_labels=[1, 2, 3])
        pipe = Pipeline.from_bundle(built, backend="tensorrt")
        out = pipe.generate(num_images=3, steps=5, seed=0, class_labels=[1, 2, 3])
        assert pipe.backend == "tensorrt" and "TensorRT" in pipe.providers[0]
        np.testing.assert_allclose(out.latents, ref.latents, atol=1e-4, rtol=1e-4)
        recon = pipe.img2img(out.images, strength=0.5, steps=4, seed=1, class_labels=1)
        ref_recon = Pipeline.from_bundle(built).img2img(
            out.images, strength=0.5, steps=4, seed=1, class_labels=1
        )
        np.testing.assert_allclose(recon.latents, ref_recon.latents, atol=1e-4, rtol=1e-4)

    def test_valid_plans_are_kept(self, built: Path) -> None:
        from latent_ddpm.export.tensorrt_build import build_engines

        before = json.loads((built / "engines" / "manifest.json").read_text())
        build_engines(built, precision="fp32", min_batch=1, opt_batch=2, max_batch=4)
        after = json.loads((built / "engines" / "manifest.json").read_text())
        assert {r: e["built_at"] for r, e in after["engines"].items()} == {
            r: e["built_at"] for r, e in before["engines"].items()
        }

    def test_stale_plan_is_refused_on_load_and_rebuilt_by_build_engines(self, built: Path) -> None:
        from latent_ddpm.export.tensorrt_build import build_engines
        from latent_ddpm.runtime.backends.tensorrt_cache import engine_key

        path = built / "engines" / "manifest.json"
        raw = json.loads(path.read_text())
        rec = raw["engines"]["vae_decoder"]
        rec["fields"]["tensorrt_version"] = "0.0.1"
        rec["key"] = engine_key(rec["fields"])
        path.write_text(json.dumps(raw))
        edited = path.read_bytes()
        with pytest.raises(
            BundleError, match=r"built for TensorRT 0\.0\.1; .* rebuild it with: latent-ddpm "
        ):
            Pipeline.from_bundle(built, backend="tensorrt")
        assert path.read_bytes() == edited  # refused, not rebuilt: the runtime never writes into a bundle
        build_engines(built, precision="fp32", min_batch=1, opt_batch=2, max_batch=4)
        pipe = Pipeline.from_bundle(built, backend="tensorrt")
        assert pipe.decoder.record.fields["tensorrt_version"] != "0.0.1"
        assert json.loads(path.read_text())["engines"]["vae_decoder"]["fields"]["tensorrt_version"] != "0.0.1"

    def test_batch_beyond_the_profile_is_an_input_error(self, built: Path) -> None:
        pipe = Pipeline.from_bundle(built, backend="tensorrt")
        with pytest.raises(InputError, match=r"engines/unet\.plan: input 'sample' has batch 10.*1\.\.8"):
            pipe.generate(num_images=5, steps=2, seed=0, class_labels=1, guidance_scale=2.0)

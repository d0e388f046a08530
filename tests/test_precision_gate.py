"""`latent-ddpm validate-precision`: the bf16 gate records its result in the bundle, and the runtime runs bf16
only for a bundle whose record passed, for these graphs, on this backend, on a CPU with native bf16.

The bundle is tests/bundle_factory.py's: 1x32x32 digits with classes '0'..'9', so the digit classifier judges
it (its images are not digits, but the gate compares the two precisions' accuracies, whatever they are).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, rewrite_meta

pytest.importorskip("openvino")

from latent_ddpm.cli import main  # noqa: E402
from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError  # noqa: E402
from latent_ddpm.export import validate  # noqa: E402
from latent_ddpm.export.precision_gate import GateSettings, validate_precision  # noqa: E402
from latent_ddpm.runtime import Pipeline, load_bundle  # noqa: E402
from latent_ddpm.runtime.backends import openvino_backend  # noqa: E402

SMALL = GateSettings(images=20, batch=10, threads=1)
needs_bf16 = pytest.mark.skipif(not openvino_backend.native_bf16(), reason="this CPU has no native bf16")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_backend, "cpu_flags", lambda: ["avx2", "avx512f"])


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if not openvino_backend.native_bf16():
        pytest.skip("this CPU has no native bf16")
    root = make_bundle(tmp_path_factory.mktemp("gate") / "b")
    return root, validate_precision(root, settings=SMALL, log=lambda _: None)


def test_a_passed_gate_is_recorded_with_its_figures(gated: tuple[Path, dict]) -> None:
    root, report = gated
    assert report["passed"] and report["why"] is None
    assert report["sampling"]["psnr_db"] is None or report["sampling"]["psnr_db"] >= 35
    assert report["judge"]["accuracy_fp32"] is not None and abs(report["judge"]["change"]) <= 0.01
    assert "img2img" in report and report["settings"]["sampler"] == "ddim"
    bundle = load_bundle(root)
    record = bundle.precision_gates["bf16"]
    assert record.passed and record.backend == "openvino"
    assert dict(record.models) == {role: m.sha256 for role, m in bundle.models.items()}
    assert record.summary["images"] == 20 and "accuracy_bf16" in record.summary
    validation = json.loads((root / "validation.json").read_text())
    assert validation["precision_gates"]["bf16"]["sampling"] == report["sampling"]


def test_the_runtime_runs_bf16_after_a_passed_gate(gated: tuple[Path, dict]) -> None:
    root, _ = gated
    args = {"num_images": 2, "steps": 3, "seed": 0, "class_labels": [1, 2], "guidance_scale": 2.0}
    bf16 = Pipeline.from_bundle(root, backend="openvino", precision="bf16", threads=1)
    assert bf16.providers == ["OpenVINO CPU (bf16)"]
    a, b = bf16.generate(**args), Pipeline.from_bundle(root, threads=1).generate(**args)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 8


def test_without_a_record_bf16_is_refused_with_the_command(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    with pytest.raises(
        BundleError, match=r"records no bf16 gate .* latent-ddpm validate-precision .* --precision bf16"
    ):
        Pipeline.from_bundle(root, backend="openvino", precision="bf16")


def test_a_record_for_other_graphs_is_refused(gated: tuple[Path, dict], tmp_path: Path) -> None:
    root = Path(shutil.copytree(gated[0], tmp_path / "copy"))
    meta = json.loads((root / "bundle.json").read_text())
    meta["precision_gates"]["bf16"]["models"]["unet"] = "0" * 64  # e.g. a bundle.json kept beside new graphs
    rewrite_meta(root, precision_gates=meta["precision_gates"])
    with pytest.raises(
        BundleError, match=r"run on other graphs than the ones it holds now; validate it again"
    ):
        Pipeline.from_bundle(root, backend="openvino", precision="bf16")


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("onnxruntime", r"precision='bf16' is available with the openvino backend only, not onnxruntime"),
        ("tensorrt", r"not tensorrt \(TensorRT plans carry their own precision: latent-ddpm build-engines"),
    ],
)
def test_bf16_on_other_backends_is_refused(tmp_path: Path, backend: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Pipeline.from_bundle(make_bundle(tmp_path / "b"), backend=backend, precision="bf16")
    with pytest.raises(InputError, match=r"precision 'fp8' is not one of fp32, bf16"):
        Pipeline.from_bundle(tmp_path / "b", backend="openvino", precision="fp8")


@needs_bf16
def test_a_failed_gate_is_recorded_exits_1_and_the_runtime_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_bundle(tmp_path / "b")
    monkeypatch.setattr(validate, "FP16_MIN_IMAGE_PSNR_DB", 1000.0)  # a bar no image can reach
    argv = ["validate-precision", str(root), "--images", "4", "--batch", "2", "--threads", "1"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "needs 1000" in out
    record = load_bundle(root).precision_gates["bf16"]
    assert not record.passed and "dB PSNR vs fp32" in record.why
    with pytest.raises(BundleError, match=r"failed its bf16 gate on .* \(sampling images reach"):
        Pipeline.from_bundle(root, backend="openvino", precision="bf16")


def test_a_cpu_without_native_bf16_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_bundle(tmp_path / "b")
    before = _files(root)
    _no_bf16(monkeypatch)
    assert main(["validate-precision", str(root)]) == 2
    assert "avx512_bf16 or amx_bf16" in capsys.readouterr().err
    assert _files(root) == before


def test_the_runtime_refuses_bf16_on_a_cpu_without_it(
    gated: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_bf16(monkeypatch)
    with pytest.raises(BackendUnavailableError, match=r"native bf16 .* use precision fp32"):
        Pipeline.from_bundle(gated[0], backend="openvino", precision="bf16")


@needs_bf16
def test_a_bundle_that_is_not_fp32_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_bundle(tmp_path / "b")
    meta = json.loads((root / "bundle.json").read_text())
    meta["models"]["unet"]["precision"] = "int8"
    rewrite_meta(root, models=meta["models"])
    before = _files(root)
    assert main(["validate-precision", str(root)]) == 2
    assert "bf16 is a way to run fp32 graphs; this bundle has {'unet': 'int8'}" in capsys.readouterr().err
    assert _files(root) == before


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        ({"fp8": {}}, r"unknown precision 'fp8'; gated precisions: bf16"),
        (
            {"bf16": {"backend": "openvino", "passed": True, "date": "d", "models": {"unet": "abc"}}},
            r"precision_gates.bf16.models.unet: not a lowercase hex sha256 digest",
        ),
        (
            {"bf16": {"backend": "openvino", "passed": "yes", "date": "d", "models": {}}},
            r"'passed' must be bool",
        ),
    ],
)
def test_malformed_records_are_refused_at_load(tmp_path: Path, gates: dict, message: str) -> None:
    root = make_bundle(tmp_path / "b")
    rewrite_meta(root, precision_gates=gates)
    with pytest.raises(BundleError, match=message):
        load_bundle(root)

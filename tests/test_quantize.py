"""`latent-ddpm quantize` on a tiny exported bundle: a loadable, validated int8 bundle, atomic and refusing.

A tiny random model is not a digits model, so whether each component passes the PSNR gate is not fixed
here; what is fixed is that bundle.json says int8 or says why the component stayed float32.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tiny_models import build_tiny_model  # noqa: E402

from latent_ddpm.cli import main  # noqa: E402
from latent_ddpm.export.errors import ExportError  # noqa: E402
from latent_ddpm.export.exporter import export_bundle  # noqa: E402
from latent_ddpm.export.quantize import QuantizeOptions, quantize_bundle  # noqa: E402
from latent_ddpm.files import OutputError  # noqa: E402
from latent_ddpm.runtime import Pipeline, load_bundle  # noqa: E402
from latent_ddpm.runtime.bundle import bundle_hash  # noqa: E402

FAST = QuantizeOptions(calibration_runs=1, calibration_batch=2, max_unet_feeds=8, validation_images=2)


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quantize")
    src = build_tiny_model("kl_cond", root / "src")
    return export_bundle(src, root / "fp32", validate=False, progress=False).path


@pytest.fixture(scope="module")
def int8_bundle(fp32_bundle: Path) -> Path:
    return quantize_bundle(fp32_bundle, fp32_bundle.parent / "int8", options=FAST, log=lambda _: None)


def test_int8_bundle_loads_and_says_what_it_is(int8_bundle: Path) -> None:
    bundle = load_bundle(int8_bundle)  # checks files, hashes and keys
    for role in ("unet", "vae_decoder"):
        model = bundle.models[role]
        assert model.precision in ("int8", "fp32")
        if model.precision == "int8":
            assert any("float32" in why for why in model.kept_fp32)
        else:
            assert any("stays float32" in why and "dB" in why for why in model.kept_fp32)
    encoder = bundle.models["vae_encoder"]
    assert encoder.precision == "fp32" and "img2img" in encoder.kept_fp32[0]
    images = Pipeline.from_bundle(int8_bundle).generate(num_images=2, steps=3, seed=0).images
    assert images.shape == (2, 16, 16, 1)


def test_validation_figures_are_recorded(int8_bundle: Path) -> None:
    meta = json.loads((int8_bundle / "bundle.json").read_text())
    summary = meta["validation"]["summary"]
    assert meta["validation"]["validated"] is True and meta["validation"]["report"] == "validation.json"
    assert summary["images"] == 2 and summary["max_abs"] >= 0
    report = json.loads((int8_bundle / "validation.json").read_text())
    trials = report["validation"]["trials"]
    assert [t["int8_components"][-1] for t in trials] == ["unet", "vae_decoder"]
    for trial in trials:
        assert trial["passed"] == (
            trial["images_vs_fp32"]["psnr_db"] is None or trial["images_vs_fp32"]["psnr_db"] >= 25.0
        )
    assert report["method"]["calibration"]["unet_feeds"] == 8
    assert (int8_bundle / "samples.png").is_file()
    assert not list(int8_bundle.parent.glob(".int8*")), "temporary folders left behind"


def test_refuses_existing_out_and_force_replaces(fp32_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    shutil.copytree(fp32_bundle, out)  # an older bundle: --force may replace it (and only a bundle)
    (out / "README.md").write_text("the old one")
    with pytest.raises(OutputError, match="already exists"):
        quantize_bundle(fp32_bundle, out, options=FAST, log=lambda _: None)
    assert (out / "README.md").read_text() == "the old one"
    assert main(["quantize", str(fp32_bundle), str(out)]) == 2
    assert (out / "README.md").read_text() == "the old one"
    quantize_bundle(fp32_bundle, out, force=True, options=FAST, log=lambda _: None)
    assert not (out / "README.md").exists() and load_bundle(out).name.endswith("-int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"], "temporary folders left behind"


def test_refuses_a_bundle_that_is_not_fp32(fp32_bundle: Path, tmp_path: Path) -> None:
    fp16 = tmp_path / "fp16"
    shutil.copytree(fp32_bundle, fp16)
    meta = json.loads((fp16 / "bundle.json").read_text())
    meta["models"]["unet"]["precision"] = "fp16"
    (fp16 / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="starts from an fp32 bundle"):
        quantize_bundle(fp16, tmp_path / "out", options=FAST, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_a_bundle_that_samples_nan_fails_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """NaN images all cast to the same black uint8 pixels: compared as images they looked identical
    ("inf dB", passed). The gate now looks at the graphs' float outputs."""
    from safetensors.torch import load_file, save_file

    src = build_tiny_model("kl_cond", tmp_path / "src")
    weights_file = src / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    weights["conv_out.bias"][:] = float("nan")
    save_file(weights, weights_file)
    fp32 = export_bundle(src, tmp_path / "fp32", validate=False, progress=False).path
    out = tmp_path / "int8"
    assert main(["quantize", str(fp32), str(out), "--calibration-runs", "1", "--validation-images", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{fp32}: the fp32 bundle itself samples NaN/Inf (unet output 'model_output'" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32", "src"]


@pytest.fixture(scope="module")
def all_int8_bundle(fp32_bundle: Path) -> Path:
    """Both components int8 whatever they cost (a tiny random model quantizes poorly: ~20 dB)."""
    options = dataclasses.replace(FAST, min_psnr_db=0.0)
    return quantize_bundle(fp32_bundle, fp32_bundle.parent / "all-int8", options=options, log=lambda _: None)


def test_openvino_runs_the_int8_bundle_in_int8_as_closely_as_onnxruntime(
    fp32_bundle: Path, all_int8_bundle: Path
) -> None:
    pytest.importorskip("openvino")
    from latent_ddpm.export.validate import image_metrics

    bundle = load_bundle(all_int8_bundle)
    assert {bundle.models[r].precision for r in ("unet", "vae_decoder")} == {"int8"}
    ov = Pipeline.from_bundle(all_int8_bundle, backend="openvino", threads=1)
    feed = {
        "sample": np.zeros((2, *bundle.latent_shape), np.float32),
        "timestep": np.array([1, 999]),
        "class_labels": np.array([0, 1]),
    }
    runtime = ov.unet.compiled_model(feed).get_runtime_model()
    convolutions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in runtime.get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    assert convolutions == {"u8"}, f"OpenVINO did not run the QDQ convolutions in int8: {convolutions}"

    args = {"num_images": 4, "steps": 5, "seed": 0, "class_labels": [0, 1, 2, 0]}
    fp32 = Pipeline.from_bundle(fp32_bundle, threads=1).generate(**args).images
    on_ov = ov.generate(**args).images
    on_ort = Pipeline.from_bundle(all_int8_bundle, threads=1).generate(**args).images
    assert on_ov.shape == fp32.shape
    # OpenVINO and ONNX Runtime round int8 differently; neither may stray further from fp32 than the other.
    ov_db, ort_db = image_metrics(on_ov, fp32)["psnr_db"], image_metrics(on_ort, fp32)["psnr_db"]
    assert ov_db >= ort_db - 3.0, (ov_db, ort_db)


def test_json_says_what_was_written_and_the_gate_figures(
    fp32_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8"
    argv = ["quantize", str(fp32_bundle), str(out), "--calibration-runs", "1", "--calibration-batch", "2"]
    assert main([*argv, "--validation-images", "2", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # the document alone: the progress lines went to stderr
    assert "calibrating on 1 sampling runs" in captured.err
    assert doc["command"] == "quantize" and doc["written"]["bundle"] == str(out.resolve())
    assert doc["written"]["files"] == sorted(p.name for p in out.iterdir())
    summary = json.loads((out / "bundle.json").read_text())["validation"]["summary"]
    assert doc["validation"] == {**summary, "seed": 0} and doc["validation"]["images"] == 2
    bundle = load_bundle(out)
    assert doc["hash"] == bundle_hash(bundle)
    assert {role: m["precision"] for role, m in doc["models"].items()} == {
        role: m.precision for role, m in bundle.models.items()
    }
    assert doc["seconds"] > 0

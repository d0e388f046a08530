"""fp16 export: float32 inputs/outputs, overflowing operators kept in float32, never a NaN.

``kl_overflow`` has one decoder convolution scaled by 1e6: exact in float32, Inf in float16. The second
test proves that, so the first cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import torch_single_thread  # noqa: E402

from latent_ddpm.export import validate  # noqa: E402
from latent_ddpm.export.exporter import export_bundle  # noqa: E402
from latent_ddpm.export.validate import GateSettings  # noqa: E402
from latent_ddpm.runtime import Pipeline, load_bundle  # noqa: E402

SMALL = GateSettings(batch_sizes=(1, 2), images=2, steps=8)


def _dtypes(path: Path) -> tuple[set[int], set[int]]:
    model = onnx.load(str(path))
    io = {t.type.tensor_type.elem_type for t in [*model.graph.input, *model.graph.output]}
    return io, {t.data_type for t in model.graph.initializer}


def test_overflowing_operators_stay_fp32_and_images_are_finite(exported_bundle: Callable) -> None:
    result = exported_bundle("kl_overflow", "fp16")
    bundle = load_bundle(result.path)
    decoder = bundle.models["vae_decoder"]
    assert decoder.precision == "mixed"
    # tiny_models.OVERFLOW_LAYER, as the exporter names its ONNX node
    assert any(line.startswith("/decoder/mid_block/resnets.0/conv1/Conv ") for line in decoder.kept_fp32)
    assert len(decoder.kept_fp32) < 10  # operators, not the whole graph
    for role in ("unet", "vae_encoder"):
        assert bundle.models[role].precision == "fp16" and bundle.models[role].kept_fp32 == ()
    for model in bundle.models.values():
        io_types, weight_types = _dtypes(model.path)
        assert onnx.TensorProto.FLOAT16 not in io_types  # callers keep feeding float32
        assert onnx.TensorProto.FLOAT16 in weight_types  # really converted
    assert result.report["passed"]
    psnr = result.report["sampling"]["psnr_db"]
    assert psnr is None or psnr >= 35.0
    pipe = Pipeline.from_bundle(result.path)
    out = pipe.generate(num_images=3, steps=6, seed=5)
    image = pipe.decoder.run({"latent": out.latents / np.float32(bundle.scaling_factor)})["image"]
    assert np.isfinite(out.latents).all() and np.isfinite(image).all()


def test_plain_fp16_conversion_of_that_decoder_overflows(tiny_model_dir: Callable, tmp_path: Path) -> None:
    """Converted without the block list, the scaled convolution's float16 output is Inf.

    The output is exposed as a graph output because ONNX Runtime on CPU runs float16 Conv in float32 and
    keeps float32 between such operators, which hides the overflow a GPU (float16 between operators) hits.
    """
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with torch_single_thread():
        fp32 = export_bundle(tiny_model_dir("kl_overflow"), tmp_path / "fp32", validate=False, progress=False)
    naive = convert_float_to_float16(onnx.load(str(fp32.path / "vae_decoder.onnx")), keep_io_types=True)
    conv = next(n for n in naive.graph.node if n.name == "/decoder/mid_block/resnets.0/conv1/Conv")
    naive.graph.output.append(
        onnx.helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT16, None)
    )
    session = ort.InferenceSession(naive.SerializeToString(), providers=["CPUExecutionProvider"])
    latent = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32) / 0.7
    _, conv_out = session.run(None, {"latent": latent})
    assert conv_out.dtype == np.float16 and not np.isfinite(conv_out).all()


def test_low_psnr_puts_whole_graphs_back_to_fp32(
    tiny_model_dir: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate that fp16 cannot meet: the U-Net and decoder fall back to fp32 one by one, then it passes."""
    monkeypatch.setattr(validate, "FP16_MIN_IMAGE_PSNR_DB", 1000.0)
    with torch_single_thread():
        result = export_bundle(
            tiny_model_dir("kl_cond"), tmp_path / "b", precision="fp16", settings=SMALL, progress=False
        )
    bundle = load_bundle(result.path)
    for role in ("unet", "vae_decoder"):
        model = bundle.models[role]
        assert model.precision == "fp32"
        assert len(model.kept_fp32) == 1 and model.kept_fp32[0].startswith("whole graph: with it in float16")
        assert onnx.TensorProto.FLOAT16 not in _dtypes(model.path)[1]
    assert bundle.models["vae_encoder"].precision == "fp16"  # not in the sampling loop: judged per graph
    assert result.report["passed"] and result.report["sampling"]["max_abs_diff"] == 0


def test_vq_codebook_lookup_stays_fp32(exported_bundle: Callable) -> None:
    result = exported_bundle("vq_uncond_v", "fp16")
    decoder = load_bundle(result.path).models["vae_decoder"]
    assert decoder.precision == "mixed"
    assert decoder.kept_fp32[0].startswith("/quantize/* (") and "codebook" in decoder.kept_fp32[0]
    model = onnx.load(str(decoder.path))
    argmin = next(n for n in model.graph.node if n.op_type == "ArgMin")
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types[argmin.input[0]] == onnx.TensorProto.FLOAT  # distances compared in float32
    psnr = result.report["sampling"]["psnr_db"]
    assert result.report["passed"] and (psnr is None or psnr >= 35.0)

"""Every kind of tiny source model exports to a bundle that passes the gate and samples like diffusers.

fp32 tolerance: the final uint8 images within 2/255 of the diffusers reference (the gate's own threshold);
the LDMPipeline test checks the same against diffusers' pipeline itself, outside the exporter's code.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import torch_single_thread  # noqa: E402

from latent_ddpm.runtime import Pipeline, load_bundle  # noqa: E402

FP32_KINDS = ("kl_cond", "vq_uncond_v", "kl_bin")
EXPECTED = {
    # kind: (vae class, latent shape, image shape, prediction type, scaling, shift)
    "kl_cond": ("AutoencoderKL", (4, 8, 8), (1, 16, 16), "epsilon", 0.7, 0.0),
    "vq_uncond_v": ("VQModel", (3, 8, 8), (3, 16, 16), "v_prediction", 0.8, 0.0),
    "kl_bin": ("AutoencoderKL", (4, 8, 8), (3, 16, 16), "epsilon", 1.3, 0.05),
}


@pytest.mark.parametrize("kind", FP32_KINDS)
def test_fp32_export_passes_gate_and_matches_diffusers(kind: str, exported_bundle: Callable) -> None:
    result = exported_bundle(kind)
    sampling = result.report["sampling"]
    assert result.report["passed"] and sampling["passed"]
    assert sampling["max_abs_diff"] <= 2 and sampling["nonfinite"] == 0 and sampling["images"] == 4
    for role, component in result.report["components"].items():
        assert component["passed"], role
        assert len(component["cases"]) == 4  # batch 1, 2, 3 and one image at twice the size
        assert component["worst"]["cosine"] > 0.9999 and component["worst"]["nonfinite"] == 0
    unet_cases = result.report["components"]["unet"]["cases"]
    assert {0, 999} <= {t for case in unet_cases for t in case["timestep"]}

    meta = json.loads((result.path / "bundle.json").read_text())
    assert meta["validation"]["validated"] and meta["validation"]["passed"]
    assert meta["validation"]["summary"]["sampling"]["max_abs_diff"] == sampling["max_abs_diff"]
    assert {"date", "versions", "thresholds", "precision"} <= set(meta["validation"]["summary"])
    assert (result.path / "validation.json").is_file() and (result.path / "samples.png").is_file()


@pytest.mark.parametrize("kind", FP32_KINDS)
def test_bundle_facts_come_from_the_model_configs(kind: str, exported_bundle: Callable) -> None:
    vae_class, latent, image, prediction, scaling, shift = EXPECTED[kind]
    bundle = load_bundle(exported_bundle(kind).path)
    assert bundle.raw["source"]["vae_class"] == vae_class
    assert bundle.latent_shape == latent and bundle.image_shape == image
    assert bundle.prediction_type == prediction
    assert bundle.scaling_factor == pytest.approx(scaling) and bundle.shift_factor == pytest.approx(shift)
    assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    assert set(bundle.models) == {"unet", "vae_decoder", "vae_encoder"}
    assert all(m.precision == "fp32" and m.kept_fp32 == () for m in bundle.models.values())


def test_conditioning_and_defaults(exported_bundle: Callable) -> None:
    with_meta = load_bundle(exported_bundle("kl_cond").path)  # latent_ddpm.json: names, null class, defaults
    assert with_meta.conditioning.class_names == ("zero", "one", "two")
    assert with_meta.conditioning.null_class == 3
    assert (with_meta.defaults.steps, with_meta.defaults.guidance_scale) == (20, 2.0)
    bare = load_bundle(exported_bundle("kl_bin").path)  # no latent_ddpm.json: str(i) names, no guidance
    assert bare.conditioning.class_names == ("0", "1", "2", "3", "4") and bare.conditioning.null_class is None
    assert (bare.defaults.sampler, bare.defaults.steps, bare.defaults.guidance_scale) == ("ddim", 50, 1.0)
    assert load_bundle(exported_bundle("vq_uncond_v").path).conditioning is None


def test_graphs_are_checked_named_and_dynamic(exported_bundle: Callable) -> None:
    bundle = load_bundle(exported_bundle("kl_cond").path)
    expected = {
        "unet": (["sample", "timestep", "class_labels"], ["model_output"]),
        "vae_decoder": (["latent"], ["image"]),
        "vae_encoder": (["image"], ["latent"]),
    }
    for role, (inputs, outputs) in expected.items():
        path = bundle.models[role].path
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == inputs and [o.name for o in graph.output] == outputs
        first = graph.input[0].type.tensor_type.shape.dim
        assert first[0].dim_param == "batch"
        assert {first[2].dim_param, first[3].dim_param} <= {"height", "width", "image_height", "image_width"}
        assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_vq_bundle_matches_ldmpipeline(exported_bundle: Callable, tiny_model_dir: Callable) -> None:
    """diffusers' own LDMPipeline on the source directory vs the bundle, from the same torch noise."""
    from diffusers import LDMPipeline

    pipe = LDMPipeline.from_pretrained(tiny_model_dir("vq_uncond_v"))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad(), torch_single_thread():
        expected = pipe(
            batch_size=3, generator=generator, num_inference_steps=15, eta=0.0, output_type="np"
        ).images
    latents = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(3)).numpy()
    ours = Pipeline.from_bundle(exported_bundle("vq_uncond_v").path).generate(
        latents=latents, sampler="ddim", steps=15, eta=0.0
    )
    diff = np.abs(ours.images.astype(int) - (expected * 255).round().astype(int))
    assert diff.max() <= 2

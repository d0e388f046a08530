"""Optimization profiles and builder options for TensorRT engines, from the bundle's specs (no GPU needed),
and the runtime's check of a feed against a loaded plan's profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import make_bundle

from latent_ddpm.export.tensorrt_options import BuilderOptions, builder_options
from latent_ddpm.export.tensorrt_profiles import ShapeRange, model_profile
from latent_ddpm.runtime import BundleError, InputError
from latent_ddpm.runtime.backends.tensorrt_backend import check_in_profile
from latent_ddpm.runtime.backends.tensorrt_manifest import BuildSettings
from latent_ddpm.runtime.bundle import Bundle, load_bundle, parse_bundle


@pytest.fixture(scope="module")
def guided(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(make_bundle(tmp_path_factory.mktemp("guided") / "b"))


@pytest.fixture(scope="module")
def unconditional_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("uncond") / "b", conditional=False)


def _edited(root: Path, edit: Any) -> Bundle:
    """The bundle at ``root`` with bundle.json changed in memory by ``edit(raw)`` (graphs untouched)."""
    raw = json.loads((root / "bundle.json").read_text())
    edit(raw)
    return parse_bundle(root.resolve(), raw, verify_hashes=False)


SETTINGS = BuildSettings(precision="fp16", min_batch=1, opt_batch=4, max_batch=8)


def test_guided_unet_covers_twice_the_batch(guided: Bundle) -> None:
    profile = model_profile(guided, guided.models["unet"], SETTINGS)
    assert profile["sample"] == ShapeRange(min=(1, 4, 8, 8), opt=(8, 4, 8, 8), max=(16, 4, 8, 8))
    assert profile["timestep"] == ShapeRange(min=(1,), opt=(8,), max=(16,))
    assert profile["class_labels"] == profile["timestep"]


def test_decoder_and_encoder_take_the_image_batch(guided: Bundle) -> None:
    dec = model_profile(guided, guided.models["vae_decoder"], SETTINGS)
    assert dec == {"latent": ShapeRange(min=(1, 4, 8, 8), opt=(4, 4, 8, 8), max=(8, 4, 8, 8))}
    enc = model_profile(guided, guided.models["vae_encoder"], SETTINGS)
    assert enc == {"image": ShapeRange(min=(1, 1, 32, 32), opt=(4, 1, 32, 32), max=(8, 1, 32, 32))}


def test_unconditional_unet_is_not_doubled(unconditional_root: Path) -> None:
    b = load_bundle(unconditional_root)
    profile = model_profile(b, b.models["unet"], SETTINGS)
    assert profile["sample"].max == (8, 4, 8, 8) and profile["sample"].opt == (4, 4, 8, 8)
    assert set(profile) == {"sample", "timestep"}


def test_guidance_off_by_default_tunes_for_unguided_but_allows_guided(guided: Bundle) -> None:
    def no_default_guidance(raw: dict) -> None:
        raw["defaults"]["guidance_scale"] = 1.0

    b = _edited(guided.root, no_default_guidance)
    r = model_profile(b, b.models["unet"], SETTINGS)["sample"]
    assert (r.min[0], r.opt[0], r.max[0]) == (1, 4, 16)


def test_class_conditional_without_null_class_is_not_doubled(guided: Bundle) -> None:
    def no_null(raw: dict) -> None:
        raw["conditioning"]["null_class"] = None
        raw["defaults"]["guidance_scale"] = 1.0

    b = _edited(guided.root, no_null)
    assert model_profile(b, b.models["unet"], SETTINGS)["sample"].max[0] == 8


def test_named_spatial_axes_take_the_bundle_sizes(guided: Bundle) -> None:
    def dynamic_spatial(raw: dict) -> None:
        raw["models"]["unet"]["inputs"][0]["shape"] = ["batch", "channels", "height", "width"]
        raw["models"]["vae_encoder"]["inputs"][0]["shape"] = ["batch", 1, "H", "W"]

    b = _edited(guided.root, dynamic_spatial)
    assert model_profile(b, b.models["unet"], SETTINGS)["sample"].max == (16, 4, 8, 8)
    assert model_profile(b, b.models["vae_encoder"], SETTINGS)["image"].min == (1, 1, 32, 32)


def test_fixed_dims_stay_fixed_and_a_fixed_batch_must_match(guided: Bundle) -> None:
    def fixed_batch(raw: dict) -> None:
        raw["models"]["vae_decoder"]["inputs"][0]["shape"] = [2, 4, 8, 8]

    b = _edited(guided.root, fixed_batch)
    two = BuildSettings(precision="fp32", min_batch=2, opt_batch=2, max_batch=2)
    assert model_profile(b, b.models["vae_decoder"], two)["latent"] == ShapeRange(*[(2, 4, 8, 8)] * 3)
    with pytest.raises(
        InputError, match=r"vae_decoder\.onnx: input 'latent' has a fixed batch of 2.*batches 1\.\.8"
    ):
        model_profile(b, b.models["vae_decoder"], SETTINGS)


def test_unplaceable_named_axis_is_a_bundle_error(guided: Bundle) -> None:
    def odd_axis(raw: dict) -> None:
        raw["models"]["unet"]["inputs"][1]["shape"] = ["batch", "tokens"]

    b = _edited(guided.root, odd_axis)
    with pytest.raises(BundleError, match=r"axis 1 \('tokens'\) of input 'timestep'"):
        model_profile(b, b.models["unet"], SETTINGS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"min_batch": 4, "opt_batch": 2, "max_batch": 8},
            r"min <= opt <= max, got min_batch=4, opt_batch=2",
        ),
        ({"min_batch": 1, "opt_batch": 9, "max_batch": 8}, r"opt_batch=9, max_batch=8"),
        ({"min_batch": 0}, r"min_batch must be an integer >= 1, got 0"),
        ({"max_batch": 2.5}, r"max_batch must be an integer >= 1, got 2\.5"),
        ({"precision": "int8"}, r"precision 'int8' is not one of fp32, fp16, bf16"),
        ({"workspace_gb": -1}, r"workspace_gb must be a positive number"),
    ],
)
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        BuildSettings(**kwargs)


def test_batch_outside_profile_names_the_range_and_guidance() -> None:
    check_in_profile("engines/unet.plan", "unet", "sample", (16, 4, 8, 8), (1, 4, 8, 8), (16, 4, 8, 8))
    with pytest.raises(
        InputError, match=r"has batch 17, but the engine was built for batches 1\.\.16 \(with class"
    ):
        check_in_profile("engines/unet.plan", "unet", "sample", (17, 4, 8, 8), (1, 4, 8, 8), (16, 4, 8, 8))
    with pytest.raises(InputError, match=r"batches 1\.\.8; make fewer images") as info:
        check_in_profile(
            "engines/vae_decoder.plan", "vae_decoder", "latent", (9, 4, 8, 8), (1, 4, 8, 8), (8, 4, 8, 8)
        )
    assert "guidance" not in str(info.value)
    with pytest.raises(InputError, match=r"shape \[1, 4, 9, 8\], but the engine takes \[1, 4, 8, 8\]"):
        check_in_profile("engines/unet.plan", "unet", "sample", (1, 4, 9, 8), (1, 4, 8, 8), (16, 4, 8, 8))


# ---------------------------------------------------------------------- builder options


def _options(
    graph: str, precision: str, *, weak: bool = True, cc: tuple[int, int] = (8, 6)
) -> BuilderOptions:
    return builder_options(
        "unet.onnx",
        graph,
        precision,
        tensorrt_version="10.7.0",
        weak_typing_available=weak,
        compute_capability=cc,
    )


def test_builder_options_for_fp32_graphs() -> None:
    assert _options("fp32", "fp32") == BuilderOptions(typing="strong", cleared_flags=("TF32",))
    assert _options("fp32", "fp16") == BuilderOptions(typing="weak", flags=("FP16",))
    assert _options("fp32", "bf16") == BuilderOptions(typing="weak", flags=("BF16",))
    assert _options("fp32", "fp32", weak=False) == BuilderOptions(typing="strong", cleared_flags=("TF32",))


def test_tensorrt_11_cannot_lower_an_fp32_graph() -> None:
    with pytest.raises(InputError, match=r"TensorRT 10\.7\.0 builds strongly typed.*export --precision fp16"):
        _options("fp32", "fp16", weak=False)


def test_reduced_precision_graphs_build_strongly_typed() -> None:
    assert _options("fp16", "fp16") == BuilderOptions(typing="strong")
    assert _options("mixed", "fp16", weak=False) == BuilderOptions(typing="strong")
    with pytest.raises(InputError, match=r"unet\.onnx is stored in fp16.*not 'fp32'"):
        _options("fp16", "fp32")
    with pytest.raises(InputError, match=r"stored in int8"):
        _options("int8", "fp16")


def test_bf16_needs_ampere() -> None:
    with pytest.raises(InputError, match=r"compute capability 8\.0 or newer.*this one is 7\.5"):
        _options("fp32", "bf16", cc=(7, 5))
    assert _options("fp32", "bf16", cc=(8, 0)).flags == ("BF16",)

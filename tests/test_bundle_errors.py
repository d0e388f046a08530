"""Bad bundles fail at load with a BundleError that names the file or key (never deep inside ONNX Runtime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bundle_factory import make_bundle, rewrite_meta

from latent_ddpm.runtime import BundleError, Pipeline, load_bundle


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "b")


def _meta(root: Path) -> dict:
    return json.loads((root / "bundle.json").read_text())


def test_good_bundle_loads(bundle: Path) -> None:
    b = load_bundle(bundle)
    assert b.latent_shape == (4, 8, 8) and b.image_shape == (1, 32, 32)
    assert set(b.models) == {"unet", "vae_decoder", "vae_encoder"}
    assert b.conditioning is not None and b.conditioning.null_class == 10
    assert b.scheduler_config["prediction_type"] == "epsilon"


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nope")


def test_missing_bundle_json(bundle: Path) -> None:
    (bundle / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"bundle\.json: missing"):
        load_bundle(bundle)


def test_invalid_json(bundle: Path) -> None:
    (bundle / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_unknown_format_version(bundle: Path) -> None:
    rewrite_meta(bundle, format_version=99)
    with pytest.raises(BundleError, match="unknown format_version 99"):
        load_bundle(bundle)


def test_wrong_format_name(bundle: Path) -> None:
    rewrite_meta(bundle, format="something-else")
    with pytest.raises(BundleError, match="'format' is 'something-else'"):
        load_bundle(bundle)


def test_missing_key_is_named(bundle: Path) -> None:
    meta = _meta(bundle)
    del meta["latent"]["scaling_factor"]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="missing key 'scaling_factor'"):
        load_bundle(bundle)


def test_wrong_type_is_named(bundle: Path) -> None:
    meta = _meta(bundle)
    meta["latent"]["channels"] = "four"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="key 'channels' must be int, got 'four'"):
        load_bundle(bundle)


def test_missing_model_file(bundle: Path) -> None:
    (bundle / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"vae_decoder\.onnx: missing"):
        load_bundle(bundle)


def test_missing_required_role(bundle: Path) -> None:
    meta = _meta(bundle)
    del meta["models"]["unet"]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="no 'unet' entry"):
        load_bundle(bundle)


def test_extra_file(bundle: Path) -> None:
    (bundle / "stray.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"stray\.onnx: unexpected file"):
        load_bundle(bundle)


def test_sha256_mismatch_corrupted_file(bundle: Path) -> None:
    with open(bundle / "unet.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"unet\.onnx: sha256 mismatch"):
        load_bundle(bundle)


def test_swapped_files(bundle: Path) -> None:
    shutil.copy(bundle / "vae_encoder.onnx", bundle / "vae_decoder.onnx")
    with pytest.raises(BundleError, match=r"vae_decoder\.onnx: sha256 mismatch"):
        load_bundle(bundle)


def test_path_leaving_bundle(bundle: Path, tmp_path: Path) -> None:
    shutil.copy(bundle / "unet.onnx", tmp_path / "outside.onnx")
    meta = _meta(bundle)
    meta["models"]["unet"]["file"] = "../outside.onnx"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="'../outside.onnx' leaves the bundle folder"):
        load_bundle(bundle)


def test_absolute_path_refused(bundle: Path) -> None:
    meta = _meta(bundle)
    meta["models"]["unet"]["file"] = str((bundle / "unet.onnx").resolve())
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        load_bundle(bundle)


def test_input_the_graph_does_not_have(bundle: Path) -> None:
    meta = _meta(bundle)
    meta["models"]["unet"]["inputs"][1]["name"] = "t"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"unet\.onnx: bundle\.json declares input 't'"):
        Pipeline.from_bundle(bundle)


def test_graph_input_not_declared(bundle: Path) -> None:
    meta = _meta(bundle)
    meta["models"]["unet"]["inputs"].pop()  # drop class_labels
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"graph inputs \['class_labels'\] are not declared"):
        Pipeline.from_bundle(bundle)


def test_not_an_onnx_file(bundle: Path) -> None:
    from latent_ddpm.runtime.bundle import sha256_file

    (bundle / "unet.onnx").write_bytes(b"this is not a model")
    meta = _meta(bundle)
    meta["models"]["unet"]["sha256"] = sha256_file(bundle / "unet.onnx")
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"unet\.onnx: ONNX Runtime cannot load it"):
        Pipeline.from_bundle(bundle)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (None, "prediction_type", "noise", "prediction_type 'noise' is not one of"),
        ("defaults", "sampler", "euler", "sampler 'euler' is not one of"),
        ("defaults", "steps", 5000, "steps 5000 is outside 1..1000"),
        ("conditioning", "null_class", 42, "null_class 42 is outside 0..10"),
        ("conditioning", "class_names", ["a", "b"], "has 2 names for 10 classes"),
        ("image", "value_range", [1.0, -1.0], "value_range must be"),
        ("latent", "scaling_factor", -1.0, "scaling_factor must be a positive number"),
    ],
)
def test_bad_values_are_named(
    bundle: Path, section: str | None, key: str, value: object, message: str
) -> None:
    meta = _meta(bundle)
    (meta if section is None else meta[section])[key] = value
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_guidance_default_on_unconditional_model(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "u", conditional=False)
    rewrite_meta(root, defaults={"sampler": "ddim", "steps": 10, "guidance_scale": 3.0})
    with pytest.raises(BundleError, match="guidance_scale 3.0 needs a class-conditional model"):
        load_bundle(root)


def test_engines_folder_and_dotfiles_are_allowed(bundle: Path) -> None:
    (bundle / "engines").mkdir()
    (bundle / "engines" / "manifest.json").write_text("{}")
    (bundle / ".DS_Store").write_bytes(b"")
    load_bundle(bundle)

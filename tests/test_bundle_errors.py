"""Bad bundles fail at load with a BundleError that names the file or key (never deep inside ONNX Runtime)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, rewrite_meta

from latent_ddpm.runtime import BundleError, Pipeline, load_bundle


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "b")


def _meta(root: Path) -> dict:
    return json.loads((root / "bundle.json").read_text())


def _refused(
    bundle: Path, edit: Callable[[dict], object], match: str, load: Callable[[Path], object] = load_bundle
) -> None:
    """With bundle.json changed by ``edit``, loading (or opening a Pipeline) fails naming ``match``."""
    meta = _meta(bundle)
    edit(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=match):
        load(bundle)


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
    _refused(bundle, lambda meta: meta["latent"].pop("scaling_factor"), "missing key 'scaling_factor'")


def test_wrong_type_is_named(bundle: Path) -> None:
    _refused(
        bundle, lambda meta: meta["latent"].update(channels="four"), "key 'channels' must be int, got 'four'"
    )


def test_missing_model_file(bundle: Path) -> None:
    (bundle / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"vae_decoder\.onnx: missing"):
        load_bundle(bundle)


def test_missing_required_role(bundle: Path) -> None:
    _refused(bundle, lambda meta: meta["models"].pop("unet"), "no 'unet' entry")


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
    outside = "../outside.onnx"
    _refused(
        bundle,
        lambda meta: meta["models"]["unet"].update(file=outside),
        f"'{outside}' leaves the bundle folder",
    )


def test_absolute_path_refused(bundle: Path) -> None:
    absolute = str((bundle / "unet.onnx").resolve())
    _refused(bundle, lambda meta: meta["models"]["unet"].update(file=absolute), "leaves the bundle folder")


def test_input_the_graph_does_not_have(bundle: Path) -> None:
    renamed = r"unet\.onnx: bundle\.json declares input 't'"
    _refused(
        bundle,
        lambda meta: meta["models"]["unet"]["inputs"][1].update(name="t"),
        renamed,
        Pipeline.from_bundle,
    )


def test_graph_input_not_declared(bundle: Path) -> None:
    undeclared = r"graph inputs \['class_labels'\] are not declared"
    _refused(bundle, lambda meta: meta["models"]["unet"]["inputs"].pop(), undeclared, Pipeline.from_bundle)


def test_the_runtime_feeds_the_names_the_bundle_declares(tmp_path: Path) -> None:
    """Tensor names come from bundle.json's specs (by their documented place), not from literals: a bundle
    whose graphs call their inputs x / t / y and their outputs eps / pixels samples like any other."""
    import onnx

    root = make_bundle(tmp_path / "renamed")
    meta = _meta(root)
    renames = {"sample": "x", "timestep": "t", "class_labels": "y", "model_output": "eps", "latent": "z"}
    for model in meta["models"].values():
        graph_model = onnx.load(root / model["file"])
        for node in graph_model.graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        for value in [*graph_model.graph.input, *graph_model.graph.output]:
            value.name = renames.get(value.name, value.name)
        onnx.save(graph_model, root / model["file"])
        for spec in model["inputs"] + model["outputs"]:
            spec["name"] = renames.get(spec["name"], spec["name"])
        from latent_ddpm.runtime.bundle import sha256_file

        model["sha256"] = sha256_file(root / model["file"])
    (root / "bundle.json").write_text(json.dumps(meta))
    names = load_bundle(root).unet_inputs
    assert (names.sample.name, names.timestep.name, names.class_labels.name) == ("x", "t", "y")
    renamed = Pipeline.from_bundle(root)
    original = Pipeline.from_bundle(make_bundle(tmp_path / "original"))
    kwargs = {"num_images": 2, "steps": 3, "seed": 1, "class_labels": 3, "guidance_scale": 2.0}
    np.testing.assert_array_equal(renamed.generate(**kwargs).images, original.generate(**kwargs).images)
    img = np.zeros((32, 32), np.uint8)
    np.testing.assert_array_equal(renamed.img2img(img, seed=0).images, original.img2img(img, seed=0).images)


@pytest.mark.parametrize(
    ("role", "change", "message"),
    [
        (
            "unet",
            lambda m: m["inputs"].__delitem__(slice(1, None)),
            r"models\.unet: declares 1 inputs .* takes \(sample, timestep",
        ),
        (
            "vae_decoder",
            lambda m: m["inputs"].append(dict(m["inputs"][0], name="extra")),
            "declares 2 inputs",
        ),
        ("vae_encoder", lambda m: m["outputs"].append(dict(m["outputs"][0], name="b")), "and 2 outputs"),
    ],
)
def test_a_role_with_the_wrong_number_of_tensors_is_refused_at_load(
    bundle: Path, role: str, change, message: str
) -> None:
    _refused(bundle, lambda meta: change(meta["models"][role]), message)


def test_can_guide_needs_a_null_class(tmp_path: Path) -> None:
    assert load_bundle(make_bundle(tmp_path / "cond")).can_guide
    assert not load_bundle(make_bundle(tmp_path / "uncond", conditional=False)).can_guide
    root = make_bundle(tmp_path / "nonull", defaults={"sampler": "ddim", "steps": 4})
    meta = _meta(root)
    meta["conditioning"]["null_class"] = None
    (root / "bundle.json").write_text(json.dumps(meta))
    assert not load_bundle(root).can_guide


def test_not_an_onnx_file(bundle: Path) -> None:
    from latent_ddpm.runtime.bundle import sha256_file

    (bundle / "unet.onnx").write_bytes(b"this is not a model")
    digest = sha256_file(bundle / "unet.onnx")
    unloadable = r"unet\.onnx: ONNX Runtime cannot load it"
    _refused(
        bundle, lambda meta: meta["models"]["unet"].update(sha256=digest), unloadable, Pipeline.from_bundle
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (None, "prediction_type", "noise", "prediction_type 'noise' is not one of"),
        ("defaults", "sampler", "euler", "sampler 'euler' is not one of"),
        ("defaults", "steps", 5000, "steps 5000 is outside 1..1000"),
        ("conditioning", "null_class", 42, "null_class 42 is outside 0..10"),
        ("conditioning", "class_names", ["a", "b"], "has 2 names for 10 classes"),
        ("image", "value_range", [1.0, -1.0], "value_range must be"),
        ("latent", "scaling_factor", -1.0, r"scaling_factor must be a number in 0\.001\.\.1000"),
    ],
)
def test_bad_values_are_named(
    bundle: Path, section: str | None, key: str, value: object, message: str
) -> None:
    _refused(bundle, lambda meta: (meta if section is None else meta[section]).update({key: value}), message)


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


# ---------------------------------------------------------------- refused at load, not at the first generate()


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        (
            {"beta_start": 0.5, "beta_end": 1.5, "beta_schedule": "linear"},
            r"beta\[\d+\] = 1(\.\d+)?; every beta",
        ),
        (
            {"beta_start": 0.0, "beta_end": 0.0, "beta_schedule": "linear"},
            r"beta\[0\] = 0; every beta must be in",
        ),
        ({"trained_betas": [0.01] * 999 + [1.0]}, r"beta\[999\] = 1; every beta must be in \(0, 1\)"),
        ({"trained_betas": [0.0] * 1000}, r"beta\[0\] = 0"),
        ({"beta_start": -0.1}, "beta_start=-0.1 is invalid, expected a finite number >= 0"),
        ({"beta_schedule": "quadratic"}, "beta_schedule='quadratic' is invalid"),
        (
            {"num_train_timesteps": 10**9},
            r"num_train_timesteps=1000000000 is invalid, expected an integer in 1\.\.100000",
        ),
        ({"timestep_spacing": "random"}, "timestep_spacing='random' is invalid"),
        ({"_use_default_values": 5}, "_use_default_values must be a list of keys"),
    ],
)
def test_bad_scheduler_is_refused_at_load(bundle: Path, scheduler: dict, message: str) -> None:
    """Every sampler is built once from the config at load: `latent-ddpm demo` refuses to start instead of
    serving black images (betas >= 1) or failing every request (an unknown schedule)."""
    from bundle_factory import SCHEDULER

    rewrite_meta(bundle, scheduler={**SCHEDULER, **scheduler})
    with pytest.raises(BundleError, match=r"bundle\.json: scheduler: .*" + message):
        load_bundle(bundle)


def test_zero_terminal_snr_keeps_its_final_beta_of_one(bundle: Path) -> None:
    from bundle_factory import SCHEDULER

    rewrite_meta(
        bundle, scheduler={**SCHEDULER, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    )
    assert load_bundle(bundle).scheduler_config["rescale_betas_zero_snr"] is True


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "latent",
            "shift_factor",
            float("nan"),
            r"latent\.shift_factor must be a number in -1000\.\.1000, got nan",
        ),
        ("latent", "shift_factor", float("inf"), r"shift_factor must be a number in -1000\.\.1000, got inf"),
        ("latent", "scaling_factor", 1e-30, r"scaling_factor must be a number in 0\.001\.\.1000 .*got 1e-30"),
        ("latent", "scaling_factor", 1e30, r"scaling_factor must be a number in 0\.001\.\.1000 .*got 1e\+30"),
        ("latent", "scaling_factor", float("nan"), "scaling_factor must be a number in"),
        ("latent", "height", 10**9, r"latent\.height must be in 1\.\.16384, got 1000000000"),
        ("image", "value_range", [-1.0, float("inf")], r"value_range must be \[low, high\], finite numbers"),
        ("image", "value_range", ["a", "b"], r"value_range must be \[low, high\].*got \['a', 'b'\]"),
        ("image", "value_range", ["0", "1"], r"value_range must be \[low, high\].*got \['0', '1'\]"),
        ("image", "channels", 2, "image.channels must be 1 .grey. or 3 .RGB., got 2"),
        (
            "defaults",
            "guidance_scale",
            1e30,
            r"defaults\.guidance_scale must be a number in 0\.\.20 .*got 1e\+30",
        ),
        ("defaults", "guidance_scale", float("nan"), r"defaults\.guidance_scale must be a number in 0\.\.20"),
        ("defaults", "eta", 1.5, r"defaults\.eta must be a number in 0\.\.1 .*got 1\.5"),
        ("defaults", "eta", -0.5, r"defaults\.eta must be a number in 0\.\.1"),
        ("conditioning", "num_classes", 10**7, r"num_classes must be in 1\.\.100000"),
    ],
)
def test_out_of_range_numbers_are_refused_at_load(
    bundle: Path, section: str, key: str, value: object, message: str
) -> None:
    # json writes NaN / Infinity, as Python reads them
    _refused(bundle, lambda meta: meta[section].update({key: value}), message)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"format": "latent-ddpm-bundle", "name": "\xff\xfe"}',
            r"bundle\.json: not UTF-8 text \(byte \d+\)",
        ),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", r"bundle\.json: JSON nested too deeply"),
        (
            b'{"format_version": ' + b"7" * 5000 + b"}",
            r"an integer of 5000 digits \(777777777777\.\.\.\) is out of range",
        ),
        (b'{"format_version": -' + b"7" * 30 + b"}", "an integer of 30 digits"),
    ],
)
def test_unreadable_bundle_json_is_one_clear_error(bundle: Path, content: bytes, message: str) -> None:
    (bundle / "bundle.json").write_bytes(content)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_a_huge_bundle_json_is_not_read(bundle: Path) -> None:
    with open(bundle / "bundle.json", "ab") as f:
        f.truncate(17 * 2**20)
    with pytest.raises(BundleError, match=r"bundle\.json: 17825792 bytes; a bundle\.json is a few kB"):
        load_bundle(bundle)


def test_num_classes_beyond_the_unets_embedding_table_is_refused_when_the_pipeline_is_built(
    tmp_path: Path,
) -> None:
    """The U-Net embeds labels with a Gather on a table of 11 rows (10 classes + null); bundle.json claiming
    12 classes used to load and then fail every request with ONNX Runtime's raw Gather error."""
    good = make_bundle(tmp_path / "good", class_table=11)
    Pipeline.from_bundle(good).generate(num_images=2, steps=2, seed=0, guidance_scale=2.0)
    bad = make_bundle(tmp_path / "bad", class_table=11)
    rewrite_meta(bad, conditioning={"num_classes": 12, "class_names": list("abcdefghijkl"), "null_class": 12})
    load_bundle(bad)  # bundle.json alone is consistent: only the graph can tell
    with pytest.raises(
        BundleError,
        match=r"conditioning declares 12 classes and null_class 12, but unet\.onnx cannot embed null_class 12 "
        r"\(is num_classes wrong\?\): unet\.onnx: ONNX Runtime failed to run it: .*Gather",
    ):
        Pipeline.from_bundle(bad)


@pytest.mark.parametrize(
    "name",
    ["unet\0.onnx", "u" * 300 + ".onnx", "/".join(["d"] * 600) + "/unet.onnx"],
    ids=["nul", "long-name", "long-path"],
)
def test_model_file_names_the_os_cannot_take_are_named(bundle: Path, name: str) -> None:
    invalid = r"models\.unet: '.*'(\.\.\.)? is not a valid file name"
    _refused(bundle, lambda meta: meta["models"]["unet"].update(file=name), invalid)

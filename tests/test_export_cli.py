"""`latent-ddpm export` from the command line: writes, refuses, replaces atomically, explains bad sources.

Failure cases check the exit code (2), a one-line message naming the bad file or class, and that nothing
was written: no OUT, no temporary folder beside it, an existing OUT byte-identical.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from conftest import torch_single_thread  # noqa: E402
from PIL import Image  # noqa: E402

from latent_ddpm.cli import main  # noqa: E402
from latent_ddpm.export import validate  # noqa: E402
from latent_ddpm.export.errors import GateFailedError  # noqa: E402
from latent_ddpm.export.exporter import export_bundle  # noqa: E402
from latent_ddpm.export.validate import GateSettings  # noqa: E402
from latent_ddpm.runtime import BundleError, Pipeline, load_bundle  # noqa: E402
from latent_ddpm.runtime.bundle import bundle_hash  # noqa: E402

SMALL = GateSettings(batch_sizes=(1, 2), images=2, steps=6)


def _export(*argv: str) -> int:
    with torch_single_thread():
        return main(["export", *argv, "--quiet"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _no_leftovers(out: Path) -> None:
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def cli_export(tiny_model_dir: Callable, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny bundle the CLI wrote, and the document its --json printed on stdout."""
    out = tmp_path_factory.mktemp("cli_export") / "tiny"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert _export(str(tiny_model_dir("kl_bin")), str(out), "--name", "tiny-bin", "--json") == 0
    return out, json.loads(stdout.getvalue())


@pytest.fixture(scope="module")
def cli_bundle(cli_export: tuple[Path, dict]) -> Path:
    return cli_export[0]


def test_json_says_what_was_written_and_the_gate_figures(cli_export: tuple[Path, dict]) -> None:
    out, doc = cli_export
    meta = json.loads((out / "bundle.json").read_text())
    assert doc["command"] == "export" and doc["written"]["bundle"] == str(out.resolve())
    assert doc["written"]["files"] == sorted(p.name for p in out.iterdir())
    assert doc["hash"] == bundle_hash(load_bundle(out))
    assert {"bundle.json", "unet.onnx", "vae_decoder.onnx", "validation.json"} <= set(doc["written"]["files"])
    assert {role: m["sha256"] for role, m in doc["models"].items()} == {
        role: m["sha256"] for role, m in meta["models"].items()
    }
    report = json.loads((out / "validation.json").read_text())
    assert doc["validation"]["passed"] is True and doc["validation"]["sampling"] == report["sampling"]
    assert doc["validation"]["sampling"]["max_abs_diff"] <= validate.FP32_MAX_IMAGE_DIFF
    assert "seed" in doc["validation"]["sampling"] and doc["seconds"] > 0
    assert set(doc["validation"]["components"]) == set(meta["models"])


def test_export_then_sample(cli_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = load_bundle(cli_bundle)
    assert bundle.name == "tiny-bin" and bundle.validation["passed"]
    png = tmp_path / "x.png"
    assert (
        main(
            [
                "sample",
                "--bundle",
                str(cli_bundle),
                "--out",
                str(png),
                "--num",
                "2",
                "--steps",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    with Image.open(png) as image:
        assert image.mode == "RGB" and image.size[0] > 2 * 16
    assert "wrote" in capsys.readouterr().out


def test_the_source_is_recorded_relative_to_the_bundle(cli_bundle: Path, tiny_model_dir: Callable) -> None:
    """No absolute path of the exporting machine in what a bundle ships; the path still finds the source."""
    source = load_bundle(cli_bundle).raw["source"]
    assert source["name"] == tiny_model_dir("kl_bin").name
    assert not Path(source["path"]).is_absolute()
    assert (cli_bundle / source["path"]).resolve() == tiny_model_dir("kl_bin").resolve()
    readme = (cli_bundle / "README.md").read_text(encoding="utf-8")
    assert f"exported from `{source['name']}`" in readme and str(cli_bundle.parent) not in readme


def test_refuses_existing_out_without_force(
    cli_bundle: Path, tiny_model_dir: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(cli_bundle)
    assert _export(str(tiny_model_dir("kl_bin")), str(cli_bundle)) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--force" in err and len(err.splitlines()) == 1
    assert _snapshot(cli_bundle) == before


def test_failed_gate_writes_nothing_and_keeps_old_out(
    cli_bundle: Path, tiny_model_dir: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "FP32_MAX_IMAGE_DIFF", -1)  # no export can pass this gate
    fresh = tmp_path / "fresh"
    with pytest.raises(GateFailedError, match="validation failed, nothing was written") as info:
        with torch_single_thread():
            export_bundle(tiny_model_dir("kl_cond"), fresh, settings=SMALL, progress=False)
    assert info.value.report["sampling"]["passed"] is False
    assert not fresh.exists()
    _no_leftovers(fresh)
    before = _snapshot(cli_bundle)
    assert _export(str(tiny_model_dir("kl_bin")), str(cli_bundle), "--force") == 2
    assert _snapshot(cli_bundle) == before
    load_bundle(cli_bundle)
    _no_leftovers(cli_bundle)


def test_force_replaces_and_no_validate_says_so(
    cli_bundle: Path, tiny_model_dir: Callable, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    shutil.copytree(cli_bundle, out)  # --force replaces a bundle (and only a bundle: test_output_safety.py)
    assert _export(str(tiny_model_dir("kl_cond")), str(out), "--force", "--no-validate") == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["validation"] == {"validated": False}
    assert not (out / "validation.json").exists()
    assert Pipeline.from_bundle(out).generate(num_images=1, steps=2, seed=0).images.shape == (1, 16, 16, 1)
    _no_leftovers(out)


def test_external_data_in_one_file_per_graph(tiny_model_dir: Callable, tmp_path: Path) -> None:
    """The >2 GB path, with the threshold at 0 bytes: weights beside each graph, fp16 conversion included."""
    with torch_single_thread():
        result = export_bundle(
            tiny_model_dir("kl_cond"),
            tmp_path / "ext",
            precision="fp16",
            settings=SMALL,
            external_data_threshold=0,
            progress=False,
        )
    bundle = load_bundle(result.path)
    for role, model in bundle.models.items():
        assert model.external_data == result.path / f"{role}.onnx.data"
        assert model.external_data.stat().st_mode & 0o044 == 0o044  # readable like the graph itself
        onnx.checker.check_model(str(model.path), full_check=True)
        locations = {
            entry.value
            for t in onnx.load(str(model.path), load_external_data=False).graph.initializer
            for entry in t.external_data
            if entry.key == "location"
        }
        assert locations == {f"{role}.onnx.data"}
    assert result.report["passed"] and bundle.models["unet"].precision == "fp16"
    images = Pipeline.from_bundle(result.path).generate(num_images=2, steps=3, seed=1).images
    assert images.shape == (2, 16, 16, 1) and images.std() > 0
    with open(bundle.models["unet"].external_data, "r+b") as f:  # corrupt the weights, not the graph
        f.seek(100)
        f.write(b"\xff\xfe")
    with pytest.raises(BundleError, match=r"unet\.onnx\.data: sha256 mismatch"):
        load_bundle(result.path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_key(path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(path)
    del weights["conv_in.bias"]
    save_file(weights, path)


def _text_unet(root: Path) -> None:
    from diffusers import UNet2DConditionModel

    shutil.rmtree(root / "unet")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing unet config": (lambda r: (r / "unet" / "config.json").unlink(), "unet/config.json: missing"),
    "bad scheduler json": (
        lambda r: (r / "scheduler" / "scheduler_config.json").write_text("{not json"),
        "scheduler/scheduler_config.json: not valid JSON",
    ),
    "truncated weights": (
        lambda r: _truncate(r / "unet" / "diffusion_pytorch_model.safetensors"),
        "unet/diffusion_pytorch_model.safetensors: truncated",
    ),
    "missing tensor": (
        lambda r: _drop_key(r / "unet" / "diffusion_pytorch_model.safetensors"),
        "conv_in.bias",
    ),
    "no weights": (lambda r: (r / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "vae: no weights"),
    "no autoencoder": (lambda r: shutil.rmtree(r / "vae"), "found neither"),
    "wrong image size": (
        lambda r: (r / "latent_ddpm.json").write_text(
            json.dumps({"class_names": ["a", "b", "c"], "image_size": [32, 32]})
        ),
        "latent_ddpm.json: image_size [32, 32]",
    ),
    "text-conditioned unet": (_text_unet, "unsupported U-Net class 'UNet2DConditionModel'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_source_gives_one_clear_line(
    case: str, tiny_model_dir: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt, expected = CORRUPTIONS[case]
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir("kl_cond"), src)
    corrupt(src)
    out = tmp_path / "out"
    assert _export(str(src), str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-ddpm export: error: ") and len(err.splitlines()) == 1
    assert expected in err, err
    assert not out.exists()
    _no_leftovers(out)


def test_old_opset_refused(
    tiny_model_dir: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _export(str(tiny_model_dir("kl_cond")), str(tmp_path / "o"), "--opset", "13") == 2
    assert "opset 13 is too old" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sampling_defaults_reach_the_runtime(cli_bundle: Path) -> None:
    """kl_bin has no latent_ddpm.json: ddim, 50 steps, no guidance, and the class labels 0..4 all work."""
    pipe = Pipeline.from_bundle(cli_bundle)
    out = pipe.generate(num_images=5, steps=3, seed=2, class_labels=[0, 1, 2, 3, 4])
    assert out.sampler == "ddim" and out.guidance_scale == 1.0 and np.isfinite(out.latents).all()


class _Payload:
    """Pickles to a call; torch.load(weights_only=True) must refuse it instead of running it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_weights_load_only_as_plain_tensors(
    tiny_model_dir: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir("kl_bin"), src)
    torch.save({"conv_in.weight": _Payload()}, src / "unet" / "diffusion_pytorch_model.bin")
    assert _export(str(src), str(tmp_path / "out")) == 2
    captured = capsys.readouterr()
    assert "weights_only=True" in captured.err and "unet/diffusion_pytorch_model.bin" in captured.err
    assert "this must never run" not in captured.out

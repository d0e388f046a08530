"""Every PNG `latent-ddpm sample` writes carries its generation parameters, and `--from-png` makes it again.

Subprocesses of the real command on factory bundles (ONNX Runtime): a grid and each --out-dir image come back
bit for bit (DDPM with drawn classes, so the per-image random streams matter; img2img from a picture that
moved); a PNG without the parameters, with bad ones, or with a different bundle is refused in one line and
nothing is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from PIL import Image, PngImagePlugin

from latent_ddpm.runtime import load_bundle
from latent_ddpm.runtime.bundle import bundle_hash


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("png") / "b")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "latent_ddpm", "sample", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


def _record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["latent-ddpm"])


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_grid_and_each_image_regenerate_bit_for_bit(bundle: Path, tmp_path: Path) -> None:
    grid, each = tmp_path / "grid.png", tmp_path / "each"
    args = ["--sampler", "ddpm", "--steps", "5", "--guidance", "2.5", "--num", "3", "--seed", "70"]
    _ok("--bundle", str(bundle), *args, "--scale", "2", "--out", str(grid), "--out-dir", str(each))
    record = _record(grid)
    assert record["bundle"] == {"name": "factory", "hash": bundle_hash(load_bundle(bundle))}
    assert (record["sampler"], record["steps"], record["guidance_scale"], record["eta"]) == (
        "ddpm",
        5,
        2.5,
        0,
    )
    assert record["seeds"] == [70, 71, 72] and record["class_labels"] is None  # drawn from each seed
    assert len(record["classes"]) == 3 and record["layout"] == "grid" and record["scale"] == 2
    assert record["img2img"] is None
    for k in range(3):
        own = _record(each / f"{k:04d}.png")
        assert (
            own["seeds"] == [70 + k] and own["layout"] == "image" and own["classes"] == [record["classes"][k]]
        )
    again = tmp_path / "again.png"
    proc = _ok("--bundle", str(bundle), "--from-png", str(grid), "--out", str(again), "--json")
    assert json.loads(proc.stdout)["parameters"] == record
    np.testing.assert_array_equal(_pixels(again), _pixels(grid))
    assert again.read_bytes() == grid.read_bytes()
    one = tmp_path / "one.png"
    _ok("--bundle", str(bundle), "--from-png", str(each / "0002.png"), "--out", str(one))
    assert _pixels(one).shape == (64, 64)  # one image, not a grid of one
    np.testing.assert_array_equal(_pixels(one), _pixels(each / "0002.png"))
    assert _record(one) == _record(each / "0002.png")


def test_img2img_regenerates_from_its_picture_where_it_moved(bundle: Path, tmp_path: Path) -> None:
    picture = tmp_path / "start.png"
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(picture)
    out = tmp_path / "i2i.png"
    args = ["--init-image", str(picture), "--strength", "0.5", "--class", "1", "--num", "2", "--seed", "4"]
    _ok(
        "--bundle", str(bundle), *args, "--steps", "6", "--eta", "0.5", "--sampler", "ddim", "--out", str(out)
    )
    record = _record(out)
    assert record["img2img"]["strength"] == 0.5 and record["img2img"]["path"] == str(picture)
    assert record["class_labels"] == [1, 1] and record["eta"] == 0.5
    moved = tmp_path / "moved.png"
    shutil.move(picture, moved)
    proc = _cli("--bundle", str(bundle), "--from-png", str(out), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and f"--init-image {picture}: no such file" in proc.stderr
    again = tmp_path / "again.png"
    _ok("--bundle", str(bundle), "--from-png", str(out), "--init-image", str(moved), "--out", str(again))
    np.testing.assert_array_equal(_pixels(again), _pixels(out))
    Image.new("L", (32, 32), 9).save(picture)  # another picture under the recorded name
    proc = _cli("--bundle", str(bundle), "--from-png", str(out), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"--init-image {picture} is not the picture {out} was made from" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_shipped_model_is_found_by_its_recorded_name(tmp_path: Path) -> None:
    out = tmp_path / "digits.png"
    _ok("--num", "2", "--steps", "2", "--seed", "1", "--out", str(out))
    again = tmp_path / "again.png"
    _ok("--from-png", str(out), "--out", str(again))  # no --bundle: "digits" is the shipped model
    assert again.read_bytes() == out.read_bytes()


def _png(path: Path, text: dict[str, str] | None) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    Image.new("L", (4, 4)).save(path, pnginfo=info)
    return path


GOOD = {
    "format": "latent-ddpm-sample",
    "version": 1,
    "bundle": {"name": "factory", "hash": "0" * 16},
    "sampler": "ddim",
    "steps": 3,
    "guidance_scale": 1.0,
    "eta": 0.0,
    "seeds": [1, 2],
    "class_labels": None,
    "img2img": None,
    "layout": "grid",
    "scale": 1,
}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "carries no generation parameters (latent-ddpm sample writes them into every PNG"),
        ({"latent-ddpm": "{not json"}, "bad generation parameters: Expecting property name"),
        ({"latent-ddpm": "[1]"}, "bad generation parameters: not a latent-ddpm-sample record"),
        ({"latent-ddpm": json.dumps(GOOD | {"version": 2})}, "version 2 is not 1; a newer latent-ddpm"),
        ({"latent-ddpm": json.dumps(GOOD | {"steps": "3"})}, "'steps' has the wrong type: '3'"),
        ({"latent-ddpm": json.dumps(GOOD | {"steps": 0})}, "'steps' must be at least 1, got 0"),
        ({"latent-ddpm": json.dumps(GOOD | {"sampler": "euler"})}, "'sampler' 'euler' is not one of"),
        ({"latent-ddpm": json.dumps(GOOD | {"seeds": [1, -2]})}, "seed[1] must be a non-negative integer"),
        ({"latent-ddpm": json.dumps(GOOD | {"seeds": []})}, "seed is an empty list"),
        ({"latent-ddpm": json.dumps(GOOD | {"guidance_scale": 1e9})}, "guidance_scale must be a number in"),
        ({"latent-ddpm": json.dumps(GOOD | {"eta": True})}, "'eta' has the wrong type: True"),
        ({"latent-ddpm": json.dumps(GOOD | {"class_labels": [1]})}, "one class index >= 0 per seed"),
        ({"latent-ddpm": json.dumps(GOOD | {"layout": "image"})}, "'image' with one seed, got 'image'"),
        ({"latent-ddpm": json.dumps(GOOD | {"scale": 99})}, "'scale' must be in 1..16, got 99"),
        ({"latent-ddpm": json.dumps({k: v for k, v in GOOD.items() if k != "eta"})}, "'eta' is missing"),
        (
            {
                "latent-ddpm": json.dumps(
                    GOOD | {"img2img": {"strength": 2, "path": "a.png", "sha256": "0" * 64}}
                )
            },
            "strength must be in [0, 1], got 2",
        ),
    ],
)
def test_png_without_or_with_bad_parameters_is_refused_in_one_line(
    bundle: Path, tmp_path: Path, text: dict[str, str] | None, message: str
) -> None:
    png = _png(tmp_path / "in.png", text)
    out = tmp_path / "out" / "x.png"
    proc = _cli("--bundle", str(bundle), "--from-png", str(png), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"--from-png {png}" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not out.parent.exists()


def test_what_from_png_cannot_use_is_refused_in_one_line(bundle: Path, tmp_path: Path) -> None:
    made = tmp_path / "made.png"
    _ok("--bundle", str(bundle), "--num", "2", "--steps", "2", "--seed", "3", "--out", str(made))
    other = make_bundle(tmp_path / "other", scaling_factor=0.25)  # same names, other images
    (tmp_path / "notes.txt").write_text("not a picture")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")
    cases = [
        (
            ["--from-png", str(tmp_path / "missing.png")],
            f"--from-png {tmp_path / 'missing.png'}: no such file",
        ),
        (["--from-png", str(tmp_path / "notes.txt")], "is not a PNG Pillow can read"),
        (
            ["--from-png", str(tmp_path / "photo.jpg")],
            "is a JPEG file, not a PNG written by latent-ddpm sample",
        ),
        (["--bundle", str(bundle), "--from-png", str(made), "--seed", "4"], "--from-png takes --seed from"),
        (
            ["--bundle", str(bundle), "--from-png", str(made), "--steps", "9", "--num", "2"],
            "--from-png takes --num, --steps from",
        ),
        (
            ["--bundle", str(bundle), "--from-png", str(made), "--init-image", str(made)],
            f"--init-image: {made} was not made from a picture (no img2img)",
        ),
        (
            ["--bundle", str(other), "--from-png", str(made)],
            f"was made with the bundle 'factory' of hash {bundle_hash(load_bundle(bundle))}; "
            f"{other} has hash {bundle_hash(load_bundle(other))}: pass the bundle that made it with --bundle",
        ),
        (
            ["--from-png", str(made)],
            "which is neither a folder here nor a shipped model: pass it with --bundle",
        ),
    ]
    out = tmp_path / "out" / "x.png"
    for args, message in cases:
        proc = _cli(*args, "--out", str(out))
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, (args, proc.stderr)
        assert not out.parent.exists()

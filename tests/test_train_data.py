"""Training data: the built-in digits and folders of images (class sub-folders or loose files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_ddpm.cli import main
from latent_ddpm.train.config import DataConfig
from latent_ddpm.train.data import load_images
from latent_ddpm.train.errors import ConfigError


def test_builtin_digits_are_padded_to_32():
    data = load_images(DataConfig(max_images=50), seed=0)
    assert data.images.shape == (50, 1, 32, 32) and data.images.dtype == np.uint8
    assert data.class_names == [str(d) for d in range(10)]
    assert len(set(data.labels.tolist())) > 5  # a random subset, not the first (all-zero) rows
    assert data.images[:, :, :2].max() == 0 and data.images[:, :, :, -2:].max() == 0  # 2px black border
    x = data.batch([0, 1])
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0


def _write(path: Path, size: tuple[int, int], mode: str, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_class_subfolders_become_classes(tmp_path: Path):
    root = tmp_path / "shapes"
    _write(root / "circle" / "a.png", (40, 20), "RGB", 200)
    _write(root / "circle" / "nested" / "b.jpg", (16, 16), "L", 100)
    _write(root / "square" / "c.png", (8, 8), "RGB", 50)
    (root / "square" / "notes.txt").write_text("not an image")

    data = load_images(DataConfig(source=str(root), image_size=16, channels=3, fit="pad"))
    assert data.class_names == ["circle", "square"]
    assert data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 3, 16, 16)
    wide = data.images[0]  # 40x20 shrunk to 16x8 and centred: black bars above and below
    assert wide[:, :4].max() == 0 and wide[0, 4:12].min() == 200 and wide[:, 12:].max() == 0
    small = data.images[2]  # 8x8 centred, not stretched
    assert small[:, :4].max() == 0 and small[0, 4:12, 4:12].min() == 50

    grey = load_images(DataConfig(source=str(root), image_size=16, channels=1, fit="resize"))
    assert grey.images.shape == (3, 1, 16, 16) and grey.images[2].min() > 0  # stretched to fill


def test_loose_images_are_unconditional_and_mixed_folders_refused(tmp_path: Path):
    for i in range(3):
        _write(tmp_path / "flat" / f"{i}.png", (32, 32), "L", 30 * i + 10)
    data = load_images(DataConfig(source=str(tmp_path / "flat"), channels=1))
    assert data.class_names == [] and not data.conditional

    _write(tmp_path / "flat" / "extra" / "x.png", (32, 32), "L", 1)
    with pytest.raises(ConfigError, match="both images and sub-folders"):
        load_images(DataConfig(source=str(tmp_path / "flat")))
    with pytest.raises(ConfigError, match="neither a built-in data set"):
        load_images(DataConfig(source=str(tmp_path / "missing")))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match="class folder 'a' holds no images"):
        load_images(DataConfig(source=str(tmp_path / "empty")))
    _write(tmp_path / "broken" / "ok.png", (8, 8), "L", 1)
    (tmp_path / "broken" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="bad.png"):
        load_images(DataConfig(source=str(tmp_path / "broken")))


def test_train_on_a_class_folder(tmp_path: Path):
    """An RGB folder data set through both stages: class names and geometry reach latent_ddpm.json."""
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs", "owls"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pets" / name / f"{i}.png")
    out = tmp_path / "run"
    knobs = [
        f"data.source={tmp_path / 'pets'}",
        "data.channels=3",
        "vae.sample_every=0",
        "unet.sample_every=0",
    ]
    args = ["train", "--config", "tiny", "--threads", "1", "--out", str(out)]
    assert main([*args, *[a for k in knobs for a in ("--set", k)]]) == 0
    meta = json.loads((out / "latent_ddpm.json").read_text())
    assert meta["class_names"] == ["cats", "dogs", "owls"] and meta["null_class"] == 3
    assert meta["image_channels"] == 3 and meta["image_size"] == [32, 32]
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 4
    assert Image.open(out / "samples" / "unet_final.png").mode == "RGB"

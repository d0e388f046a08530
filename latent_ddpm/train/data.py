"""Training images: a data set shipped in the package (`mnist_5k` digits, `emoji_32`) or any folder of images.

A folder with one sub-folder per class makes the model class-conditional (class names = folder names,
sorted); a folder of loose images makes it unconditional. Images are fitted to the recipe's size
(`pad`: shrink to fit if larger, then centre on black; `resize`: stretch; `crop`: shrink the short side
to fit, then centre-crop) and scaled to [-1, 1], the range diffusers' autoencoders use.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from latent_ddpm.train.config import DataConfig
from latent_ddpm.train.errors import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Arrays in latent_ddpm/data (`images` N x H x W [x 3] uint8, `labels`); the class names are the array's own
# `class_names` (emoji_32, made by train/datasets/emoji.py) or, for the digits, listed here.
BUILTIN = {"mnist_5k": [str(d) for d in range(10)], "emoji_32": None}


@dataclass
class ImageSet:
    """All training images in memory as uint8 (N, C, H, W); labels index `class_names` (empty if none)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def conditional(self) -> bool:
        return len(self.class_names) > 0

    def batch(self, indices):  # -> torch.Tensor in [-1, 1]
        import torch

        x = torch.from_numpy(self.images[np.asarray(indices)]).float()
        return x / 127.5 - 1.0


def load_images(cfg: DataConfig, seed: int = 0) -> ImageSet:
    return _load_builtin(cfg, seed) if cfg.source in BUILTIN else _load_folder(cfg, seed)


def _subset(n: int, cfg: DataConfig, seed: int) -> np.ndarray:
    """Indices of the images to use: all, or a random (not leading: files are sorted by class) subset."""
    if not cfg.max_images or cfg.max_images >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[: cfg.max_images])


def _load_builtin(cfg: DataConfig, seed: int) -> ImageSet:
    with resources.as_file(resources.files("latent_ddpm.data") / f"{cfg.source}.npz") as path:
        npz = np.load(path)
        raw, labels = npz["images"], npz["labels"].astype(np.int64)
        names = BUILTIN[cfg.source] or npz["class_names"].tolist()
    keep = _subset(len(raw), cfg, seed)
    images = np.stack([_fit(Image.fromarray(im), cfg) for im in raw[keep]])
    return ImageSet(images, labels[keep], names)


def _load_folder(cfg: DataConfig, seed: int) -> ImageSet:
    root = Path(cfg.source)
    if not root.is_dir():
        raise ConfigError(
            f"data.source = {cfg.source!r} is neither a built-in data set ({', '.join(BUILTIN)}) nor a folder"
        )
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if loose and class_dirs:
        raise ConfigError(
            f"data.source {root}: holds both images and sub-folders; use either one sub-folder per class "
            f"or only images (e.g. move {loose[0].name} into a class folder)"
        )
    if class_dirs:
        files, labels = [], []
        for label, d in enumerate(class_dirs):
            found = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"data.source {root}: class folder {d.name!r} holds no images")
            files += found
            labels += [label] * len(found)
        names = [d.name for d in class_dirs]
    else:
        files, labels, names = loose, [0] * len(loose), []
    if not files:
        raise ConfigError(f"data.source {root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    keep = _subset(len(files), cfg, seed)
    files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    images = []
    for path in files:
        try:
            with Image.open(path) as im:
                images.append(_fit(im, cfg))
        except OSError as exc:
            raise ConfigError(f"data.source: cannot read image {path}: {exc}") from exc
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), names)


def _fit(im: Image.Image, cfg: DataConfig) -> np.ndarray:
    """One image -> uint8 (C, size, size) in the recipe's colour mode and fit."""
    size = cfg.image_size
    im = im.convert("L" if cfg.channels == 1 else "RGB")
    w, h = im.size
    if cfg.fit == "resize":
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    elif cfg.fit == "crop":
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
    else:  # pad
        if max(w, h) > size:
            scale = size / max(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        canvas = Image.new(im.mode, (size, size))
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        im = canvas
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

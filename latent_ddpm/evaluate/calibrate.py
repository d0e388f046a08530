"""What cFID numbers mean: the same figures for real images and for known degradations of them.

No sampling: real images from the judge's training split (the diffusion model trained on these too),
blurred, noised, shifted, or collapsed to one image per class. Read a model's cFID against this scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.frechet import fit_gaussian, frechet_distance
from latent_ddpm.evaluate.measure import RealReference


def _blur(images: np.ndarray, per_class: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    blur = ImageFilter.GaussianBlur(1.0)
    flat = images[..., 0] if images.shape[-1] == 1 else images  # Pillow takes (H, W) grey or (H, W, 3)
    return np.stack([np.asarray(Image.fromarray(im).filter(blur)) for im in flat]).reshape(images.shape)


def _noise(images: np.ndarray, per_class: int) -> np.ndarray:
    noisy = images + np.random.default_rng(0).normal(0.0, 40.0, images.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def _shift(images: np.ndarray, per_class: int) -> np.ndarray:
    return np.roll(images, (3, 3), axis=(1, 2))


def _collapse(images: np.ndarray, per_class: int) -> np.ndarray:
    """Images come in class blocks of ``per_class``: keep each block's first, repeated."""
    return np.repeat(images[::per_class], per_class, axis=0)


DEGRADATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "real images (training split)": lambda x, _: x,
    "blurred (Gaussian, radius 1 px)": _blur,
    "noisy (Gaussian, sigma 40 of 255)": _noise,
    "shifted 3 px right and down": _shift,
    "collapsed: one image per class, repeated": _collapse,
}


def calibration(judge: Judge, reference: RealReference, per_class: int) -> list[dict]:
    """``per_class`` training images of every class (fewer where the smallest class has fewer)."""
    data = judge.data
    images, labels = data.load()
    train = data.split(labels).train
    by_class = [train[labels[train] == c] for c in range(data.num_classes)]
    per_class = min(per_class, *(len(idx) for idx in by_class))
    picked = np.concatenate([idx[:per_class] for idx in by_class])
    floor, _ = reference.floor(per_class)
    rows = []
    for name, degrade in DEGRADATIONS.items():
        logits, features = judge.run(degrade(images[picked], per_class))
        rows.append(
            {
                "name": name,
                "num_images": len(picked),
                "accuracy": float((logits.argmax(1) == labels[picked]).mean()),
                "cfid": frechet_distance(reference.gaussian_a, fit_gaussian(features)),
                "cfid_floor": floor,
            }
        )
    return rows

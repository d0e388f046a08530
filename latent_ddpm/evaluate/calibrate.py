"""What cFID numbers mean: the same figures for real digits and for known degradations of them.

No sampling: real digits from the classifier's training split (the diffusion model trained on these too),
blurred, noised, shifted, or collapsed to one digit per class. Read a model's cFID against this scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from latent_ddpm.evaluate.classifier import DigitClassifier
from latent_ddpm.evaluate.digits import NUM_CLASSES, load_digits, split
from latent_ddpm.evaluate.frechet import fit_gaussian, frechet_distance
from latent_ddpm.evaluate.measure import RealReference


def _blur(images: np.ndarray, per_class: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0))) for im in images])


def _noise(images: np.ndarray, per_class: int) -> np.ndarray:
    noisy = images + np.random.default_rng(0).normal(0.0, 40.0, images.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def _shift(images: np.ndarray, per_class: int) -> np.ndarray:
    return np.roll(images, (3, 3), axis=(1, 2))


def _collapse(images: np.ndarray, per_class: int) -> np.ndarray:
    """Images come in class blocks of ``per_class``: keep each block's first, repeated."""
    return np.repeat(images[::per_class], per_class, axis=0)


DEGRADATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "real digits (training split)": lambda x, _: x,
    "blurred (Gaussian, radius 1 px)": _blur,
    "noisy (Gaussian, sigma 40 of 255)": _noise,
    "shifted 3 px right and down": _shift,
    "collapsed: one digit per class, repeated": _collapse,
}


def calibration(classifier: DigitClassifier, reference: RealReference, per_class: int) -> list[dict]:
    images, labels = load_digits()
    train = split(labels).train
    picked = np.concatenate([train[labels[train] == c][:per_class] for c in range(NUM_CLASSES)])
    floor, _ = reference.floor(min(per_class, len(reference.features_a) // NUM_CLASSES))
    rows = []
    for name, degrade in DEGRADATIONS.items():
        logits, features = classifier.run(degrade(images[picked], per_class))
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

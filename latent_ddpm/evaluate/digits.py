"""The shipped MNIST digits and the fixed, seeded split the digit classifier is trained and judged on.

Both the training script and ``latent-ddpm eval`` derive the split from the same seed, and the classifier's
json records a hash of the held-out indices, so a change in the split is caught instead of silently
leaking training images into the reference set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

NUM_CLASSES = 10
IMAGE_SIZE = 32  # the training pipeline pads the 28x28 digits by 2 px of black on each side
SPLIT_SEED = 0
HELD_OUT_PER_CLASS = 200  # of 500: 2 x 1,000 held-out images, so the real-vs-real floor can use 1,000 a side


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the 5,000 digits
    held_out: np.ndarray

    @property
    def held_out_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.held_out, dtype="<i8").tobytes()).hexdigest()


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits as uint8 (N, 32, 32), white on black, and their int64 labels."""
    with (
        resources.as_file(resources.files("latent_ddpm.data") / "mnist_5k.npz") as path,
        np.load(path) as npz,
    ):
        images, labels = npz["images"], npz["labels"].astype(np.int64)
    return pad_to_32(images), labels


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) -> (N, 32, 32) centred on black, exactly as the training data pipeline fits them."""
    pad = (IMAGE_SIZE - images.shape[-1]) // 2
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad)))


def split(labels: np.ndarray, seed: int = SPLIT_SEED, held_out_per_class: int = HELD_OUT_PER_CLASS) -> Split:
    """Stratified: ``held_out_per_class`` images of every class held out, the rest for training."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[:held_out_per_class])
        train.append(idx[held_out_per_class:])
    return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(held)))


def halves(indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split held-out indices into two class-balanced halves (alternating within each class)."""
    a, b = [], []
    for c in range(NUM_CLASSES):
        idx = indices[labels[indices] == c]
        a.append(idx[0::2])
        b.append(idx[1::2])
    return np.concatenate(a), np.concatenate(b)

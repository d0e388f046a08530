"""The data sets whose samples the package can judge, one spec each: images, the fixed split, the judge.

A bundle is judged by the data set whose classes it draws (class names, in any order) and whose image shape
it makes: grey 32x32 digits '0'..'9', or the 9 RGB emoji groups. The judge (a small CNN shipped as ONNX) is
trained on the *train* part of a fixed, seeded, stratified split and measured on the *held-out* part; its
json records a hash of the held-out indices, so a change in the split is caught instead of silently leaking
training images into the reference set (tests re-derive it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from latent_ddpm.errors import InputError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
IMAGE_SIZE = 32  # every judged data set is 32x32; MNIST's 28x28 digits are padded as training pads them
SPLIT_SEED = 0


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the data set
    held_out: np.ndarray

    @property
    def held_out_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.held_out, dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class JudgedData:
    name: str  # what `train_classifier --data` and reports call it
    judge: str  # file stem of the judge in latent_ddpm/data: <judge>.onnx and <judge>.json
    source: str  # the .npz in latent_ddpm/data (the training data of the shipped model)
    describe: str  # one line for the judge's json
    channels: int
    held_out_per_class: int  # per class, so the reference set and its halves are class-balanced
    feature_dim: (
        int  # the judge's penultimate width; below the reference set's size, so its covariance is full
    )
    accuracy_goal: float  # the conditional accuracy a model at its defaults should reach
    background: int  # the value around the content: padding and augmentation fill with it
    sizes: tuple[int, ...] = (IMAGE_SIZE,)  # image sizes the judge takes; smaller ones are padded to 32

    @property
    def classifier_onnx(self) -> Path:
        return DATA_DIR / f"{self.judge}.onnx"

    @property
    def classifier_json(self) -> Path:
        return self.classifier_onnx.with_suffix(".json")

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """The data set's own names if it stores them (emoji groups), else its labels as text ('0'..'9')."""
        with self._open() as npz:
            if "class_names" in npz:
                return tuple(str(n) for n in npz["class_names"])
            return tuple(str(k) for k in range(int(npz["labels"].max()) + 1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All images as uint8 (N, 32, 32, C) and their int64 labels."""
        with self._open() as npz:
            images, labels = npz["images"], npz["labels"].astype(np.int64)
        if images.ndim == 3:
            images = images[..., None]
        return pad_to(images, IMAGE_SIZE, self.background), labels

    def split(self, labels: np.ndarray, seed: int = SPLIT_SEED) -> Split:
        """Stratified: ``held_out_per_class`` images of every class held out, the rest for training."""
        rng = np.random.default_rng(seed)
        train, held = [], []
        for c in range(self.num_classes):
            idx = rng.permutation(np.flatnonzero(labels == c))
            held.append(idx[: self.held_out_per_class])
            train.append(idx[self.held_out_per_class :])
        return Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(held)))

    def halves(self, indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split held-out indices into two class-balanced halves (alternating within each class)."""
        a, b = [], []
        for c in range(self.num_classes):
            idx = indices[labels[indices] == c]
            a.append(idx[0::2])
            b.append(idx[1::2])
        return np.concatenate(a), np.concatenate(b)

    def _open(self):  # -> np.lib.npyio.NpzFile, closed by the caller's `with`
        return np.load(resources.files("latent_ddpm.data") / self.source)


DIGITS = JudgedData(
    name="digits",
    judge="digit_classifier",
    source="mnist_5k.npz",
    describe="latent_ddpm/data/mnist_5k.npz (5,000 MNIST digits, 500 per class), padded 28->32",
    channels=1,
    held_out_per_class=200,  # of 500: 2 x 1,000 held-out images, so the floor can use 1,000 a side
    feature_dim=64,
    accuracy_goal=0.97,
    background=0,
    sizes=(28, IMAGE_SIZE),  # MNIST's own 28 px too
)
EMOJI = JudgedData(
    name="emoji",
    judge="emoji_classifier",
    source="emoji_32.npz",
    describe="latent_ddpm/data/emoji_32.npz (1,861 Noto Color Emoji, 9 Unicode groups, 85 to 362 each)",
    channels=3,
    held_out_per_class=30,  # the smallest group (Activities, 85) keeps 55 to learn from; halves of 135
    feature_dim=32,
    accuracy_goal=0.80,
    background=128,  # the data set's flat grey
)
JUDGED = (DIGITS, EMOJI)


def pad_to(images: np.ndarray, size: int, value: int) -> np.ndarray:
    """(N, h, w, C) -> (N, size, size, C) centred on ``value``, as the training data pipeline fits them."""
    top, left = (size - images.shape[1]) // 2, (size - images.shape[2]) // 2
    pads = ((0, 0), (top, size - images.shape[1] - top), (left, size - images.shape[2] - left), (0, 0))
    return np.pad(images, pads, constant_values=value)


def judged_data_for(image_shape: Sequence[int], class_names: Sequence[str] | None, what: str) -> JudgedData:
    """The data set a model's samples are judged against: same channels, and the same classes if it has them
    (an unconditional model is judged by its channels alone). Refused, naming both, when none fits."""
    c, h, w = image_shape
    for data in JUDGED:
        if c == data.channels and h == w and h in data.sizes:
            if class_names is None or sorted(class_names) == sorted(data.class_names):
                return data
    judged = "; ".join(
        f"{d.channels}x{IMAGE_SIZE}x{IMAGE_SIZE} with classes {', '.join(d.class_names)}" for d in JUDGED
    )
    classes = "no classes" if class_names is None else f"classes {', '.join(map(repr, class_names))}"
    raise InputError(
        f"{what} makes {c}x{h}x{w} images (channels x height x width) with {classes}; the judges know "
        f"only {judged}"
    )

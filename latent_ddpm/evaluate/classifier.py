"""The digit classifier on ONNX Runtime: uint8 digits in, logits and penultimate features out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError
from latent_ddpm.evaluate.digits import IMAGE_SIZE, NUM_CLASSES, pad_to_32

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
CLASSIFIER_ONNX = DATA_DIR / "digit_classifier.onnx"
CLASSIFIER_JSON = "digit_classifier.json"
FEATURE_DIM = 64
# Image sizes the classifier takes: its own 32x32, and MNIST's 28x28 (padded to 32 as in training).
ACCEPTED_SIZES = (28, IMAGE_SIZE)


def check_image_shape(shape: Sequence[int], what: str) -> None:
    """Refuse anything but grey 28x28 / 32x32 digits before any time is spent generating them."""
    c, h, w = shape
    if c != 1 or h != w or h not in ACCEPTED_SIZES:
        raise InputError(
            f"{what} makes {c}x{h}x{w} images (channels x height x width); the digit classifier judges "
            f"grey digits of 1x28x28 or 1x32x32 only"
        )


class DigitClassifier:
    def __init__(self, path: str | Path = CLASSIFIER_ONNX, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "the digit classifier needs onnxruntime: pip install 'latent-ddpm[cpu]'"
            ) from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"digit classifier not found: {self.path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        meta_path = self.path.with_name(CLASSIFIER_JSON)
        self.meta: dict[str, Any] = (
            json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        )

    @property
    def held_out_accuracy(self) -> float | None:
        return self.meta.get("held_out_accuracy")

    def run(self, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W) or (N, H, W, 1) with H = W in 28/32 -> (logits (N, 10), features (N, 64))."""
        x = self._prepare(images)
        logits, features = [], []
        for i in range(0, len(x), batch):
            out = self._session.run(["logits", "features"], {"image": x[i : i + batch]})
            logits.append(out[0])
            features.append(out[1])
        return np.concatenate(logits), np.concatenate(features)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
        """Overall and per-class share of ``images`` read as ``labels``."""
        pred = self.run(images)[0].argmax(1)
        hit = pred == labels
        per_class = [float(hit[labels == c].mean()) for c in range(NUM_CLASSES)]
        return float(hit.mean()), per_class

    @staticmethod
    def _prepare(images: np.ndarray) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InputError(
                f"the digit classifier takes uint8 arrays, got {getattr(images, 'dtype', images)!r}"
            )
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or len(images) == 0:
            raise InputError(
                f"expected (N, H, W) or (N, H, W, 1) grey images, got shape {list(images.shape)}"
            )
        check_image_shape((1, *images.shape[1:]), "the input")
        if images.shape[-1] != IMAGE_SIZE:
            images = pad_to_32(images)
        return (images.astype(np.float32) / 255.0)[:, None]

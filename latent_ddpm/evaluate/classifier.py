"""A data set's judge on ONNX Runtime: uint8 images in, logits and penultimate features out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError
from latent_ddpm.evaluate.judged import DIGITS, IMAGE_SIZE, JudgedData, judged_data_for, pad_to


class Judge:
    """The classifier trained on ``data``'s train split (default: the one shipped in latent_ddpm/data)."""

    def __init__(self, data: JudgedData = DIGITS, path: str | Path | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "the judge needs onnxruntime: pip install 'latent-ddpm[cpu]'"
            ) from exc
        self.data = data
        self.path = Path(path) if path is not None else data.classifier_onnx
        if not self.path.is_file():
            raise BundleError(f"{data.name} judge not found: {self.path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        meta_path = self.path.with_suffix(".json")
        self.meta: dict[str, Any] = (
            json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        )

    @classmethod
    def for_model(
        cls, image_shape: Sequence[int], class_names: Sequence[str] | None, what: str, threads: int | None
    ) -> Judge:
        """The judge of the data set a model draws (refused in one line when there is none)."""
        return cls(judged_data_for(image_shape, class_names, what), threads=threads)

    @property
    def held_out_accuracy(self) -> float | None:
        return self.meta.get("held_out_accuracy")

    def class_index(self, class_names: Sequence[str]) -> np.ndarray:
        """The judge's class for each of a model's classes (a model may list them in another order)."""
        ours = {n: k for k, n in enumerate(self.data.class_names)}
        unknown = [n for n in class_names if n not in ours]
        if unknown:
            raise InputError(
                f"classes {', '.join(map(repr, unknown))} are not among the {self.data.name} judge's: "
                f"{', '.join(self.data.class_names)}"
            )
        return np.asarray([ours[n] for n in class_names], dtype=np.int64)

    def run(self, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, C), or (N, H, W) when grey -> (logits (N, classes), features (N, feature_dim))."""
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
        per_class = [float(hit[labels == c].mean()) for c in range(self.data.num_classes)]
        return float(hit.mean()), per_class

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InputError(
                f"the {self.data.name} judge takes uint8 arrays, got {getattr(images, 'dtype', images)!r}"
            )
        if images.ndim == 3 and self.data.channels == 1:
            images = images[..., None]
        c = self.data.channels
        if images.ndim != 4 or len(images) == 0 or images.shape[-1] != c:
            raise InputError(
                f"the {self.data.name} judge takes (N, H, W, {c}) images, got shape {list(images.shape)}"
            )
        h, w = images.shape[1:3]
        if h != w or h not in self.data.sizes:
            sizes = " or ".join(f"{s}x{s}" for s in self.data.sizes)
            raise InputError(f"the {self.data.name} judge takes {sizes} images, got {h}x{w}")
        if images.shape[1] != IMAGE_SIZE:
            images = pad_to(images, IMAGE_SIZE, self.data.background)
        return np.ascontiguousarray((images.astype(np.float32) / 255.0).transpose(0, 3, 1, 2))

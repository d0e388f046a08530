"""img2img's pictures: shapes are never guessed, empty images and oversized batches are refused up front.

An (H, W, 2) array used to become H grey images of W x 2 pixels and a (4, 4, 3) array four 4 x 3 images:
"successful" garbage. Now a 3-D array is always one HxWxC image with a known channel count and a batch
needs its explicit N axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from PIL import Image

from latent_ddpm.runtime import InputError, Pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_bundle(make_bundle(tmp_path_factory.mktemp("img") / "b"))


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            np.zeros((32, 32, 2), np.uint8),
            r"image array has shape \[32, 32, 2\]: expected HxW, HxWxC or NxHxWxC",
        ),
        (np.zeros((5, 32, 32), np.uint8), r"shape \[5, 32, 32\].*a batch of grey images is NxHxWx1"),
        (np.zeros((2, 32, 32, 2), np.uint8), r"shape \[2, 32, 32, 2\]"),
        (np.zeros((0, 0), np.uint8), r"shape \[0, 0\]: an image needs at least one pixel"),
        (np.zeros((0, 5, 3), np.uint8), r"shape \[0, 5, 3\]: an image needs at least one pixel"),
        (np.zeros((2, 0, 4, 1), np.uint8), r"shape \[2, 0, 4, 1\]: an image needs at least one pixel"),
        ([np.zeros((32, 32, 2), np.uint8)], r"image 0 has shape \[32, 32, 2\]"),
        ([np.zeros((2, 32, 32, 1), np.uint8)], r"image 0 has shape \[2, 32, 32, 1\]"),
        (Image.new("L", (0, 0)), "image 0 is 0x0 pixels"),
        ([Image.new("RGB", (7, 0))], "image 0 is 7x0 pixels"),
        (np.zeros((32, 32), np.float32), "expected uint8 pixels, got float32"),
        ([np.zeros((32, 32), np.uint8)] * 1025, "1025 images is more than the limit of 1024 per call"),
        (np.zeros((1025, 32, 32, 1), np.uint8), "1025 images is more than the limit of 1024 per call"),
    ],
)
def test_bad_images_are_refused_before_encoding(pipe: Pipeline, images: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        pipe.img2img(images, strength=0.5, steps=4, seed=0, class_labels=1)


@pytest.mark.parametrize(
    ("images", "count"),
    [
        (np.zeros((4, 4, 3), np.uint8), 1),  # one 4x4 RGB picture (was: four 4x3 grey ones)
        (np.zeros((4, 4, 1), np.uint8), 1),
        (np.zeros((3, 3, 4), np.uint8), 1),  # RGBA, composited on black
        (np.zeros((4, 4), np.uint8), 1),
        (np.zeros((3, 4, 4, 3), np.uint8), 3),
        (np.zeros((2, 32, 32, 1), np.uint8), 2),
        ([np.zeros((4, 4, 3), np.uint8), Image.new("L", (9, 5))], 2),
    ],
)
def test_unambiguous_shapes_are_accepted(pipe: Pipeline, images: object, count: int) -> None:
    assert pipe.img2img(images, strength=0.5, steps=4, seed=0, class_labels=1).images.shape == (
        count,
        32,
        32,
        1,
    )


def test_labels_are_checked_before_the_pictures_are_encoded(pipe: Pipeline, tmp_path: Path) -> None:
    calls = []

    class Recording:
        def __init__(self, engine) -> None:
            self.engine, self.model, self.backend, self.providers = engine, engine.model, "x", []

        def run(self, feed):
            calls.append(feed)
            return self.engine.run(feed)

    spy = Pipeline(pipe.bundle, pipe.unet, pipe.decoder, Recording(pipe.encoder))
    with pytest.raises(InputError, match="class_labels must be a class index"):
        spy.img2img(np.zeros((32, 32), np.uint8), class_labels=3.0)
    with pytest.raises(InputError, match="got 3 class labels for 2 images"):
        spy.img2img(np.zeros((2, 32, 32, 1), np.uint8), class_labels=[1, 2, 3])
    assert calls == []

"""The shipped digit classifier: as accurate as its json says, on the split it says, and strict on input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latent_ddpm.errors import InputError
from latent_ddpm.evaluate.classifier import CLASSIFIER_JSON, CLASSIFIER_ONNX, FEATURE_DIM, DigitClassifier
from latent_ddpm.evaluate.digits import load_digits, split

META = json.loads(CLASSIFIER_ONNX.with_name(CLASSIFIER_JSON).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return DigitClassifier()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits()


def test_recorded_accuracy_meets_the_bar_and_is_small() -> None:
    assert META["held_out_accuracy"] >= 0.97
    assert min(META["held_out_accuracy_per_class"]) >= 0.9
    assert CLASSIFIER_ONNX.stat().st_size < 1_000_000


def test_split_is_the_recorded_one(digits) -> None:
    _, labels = digits
    parts = split(labels, META["split"]["seed"])
    assert parts.held_out_sha256 == META["split"]["held_out_sha256"]
    assert len(parts.held_out) == META["split"]["held_out"] and len(parts.train) == META["split"]["train"]
    assert not set(parts.held_out) & set(parts.train)
    assert np.bincount(labels[parts.held_out]).tolist() == [len(parts.held_out) // 10] * 10


def test_remeasured_held_out_accuracy_matches_json(classifier, digits) -> None:
    images, labels = digits
    held = split(labels, META["split"]["seed"]).held_out
    accuracy, _ = classifier.accuracy(images[held], labels[held])
    # One image of slack: another CPU's float rounding may flip a borderline digit.
    assert accuracy == pytest.approx(META["held_out_accuracy"], abs=1.0 / len(held))


def test_outputs_and_28px_input(classifier, digits) -> None:
    images, _ = digits
    logits, features = classifier.run(images[:7])
    assert logits.shape == (7, 10) and features.shape == (7, FEATURE_DIM)
    raw28 = np.ascontiguousarray(images[:7, 2:-2, 2:-2])  # the original MNIST 28x28
    np.testing.assert_allclose(classifier.run(raw28[..., None])[1], features, atol=1e-5)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((2, 64, 64), np.uint8), "1x28x28 or 1x32x32 only"),
        (np.zeros((2, 32, 32, 3), np.uint8), "grey images"),
        (np.zeros((2, 32, 32), np.float32), "uint8"),
        (np.zeros((0, 32, 32), np.uint8), "grey images"),
    ],
)
def test_bad_images_are_refused(classifier, images, match) -> None:
    with pytest.raises(InputError, match=match):
        classifier.run(images)

"""The shipped judges: as accurate as their json says, on the split it says, and strict on input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latent_ddpm.errors import InputError
from latent_ddpm.evaluate.classifier import Judge
from latent_ddpm.evaluate.judged import DIGITS, EMOJI, JUDGED, judged_data_for

# the bar each shipped judge must clear on its held-out images, overall and in its worst class
BARS = {"digits": (0.97, 0.9), "emoji": (0.65, 0.2)}  # emoji: 9 semantic groups from 1,591 images


@pytest.fixture(scope="module", params=JUDGED, ids=lambda d: d.name)
def judged(request):
    data = request.param
    images, labels = data.load()
    meta = json.loads(data.classifier_json.read_text(encoding="utf-8"))
    return data, Judge(data), images, labels, meta


def test_recorded_accuracy_meets_the_bar_and_is_small(judged) -> None:
    data, _, _, _, meta = judged
    overall, worst = BARS[data.name]
    assert meta["held_out_accuracy"] >= overall
    assert min(meta["held_out_accuracy_per_class"]) >= worst
    assert meta["classes"] == list(data.class_names) if "classes" in meta else data is DIGITS
    assert data.classifier_onnx.stat().st_size < 1_500_000


def test_split_is_the_recorded_one(judged) -> None:
    data, _, _, labels, meta = judged
    parts = data.split(labels, meta["split"]["seed"])
    assert parts.held_out_sha256 == meta["split"]["held_out_sha256"]
    assert len(parts.held_out) == meta["split"]["held_out"] and len(parts.train) == meta["split"]["train"]
    assert not set(parts.held_out) & set(parts.train)
    assert np.bincount(labels[parts.held_out]).tolist() == [data.held_out_per_class] * data.num_classes


def test_remeasured_held_out_accuracy_matches_json(judged) -> None:
    data, judge, images, labels, meta = judged
    held = data.split(labels, meta["split"]["seed"]).held_out
    accuracy, _ = judge.accuracy(images[held], labels[held])
    # One image of slack: another CPU's float rounding may flip a borderline image.
    assert accuracy == pytest.approx(meta["held_out_accuracy"], abs=1.0 / len(held))


def test_outputs(judged) -> None:
    data, judge, images, _, _ = judged
    logits, features = judge.run(images[:7])
    assert logits.shape == (7, data.num_classes) and features.shape == (7, data.feature_dim)
    assert np.isfinite(features).all() and features.std() > 0


def test_digits_also_take_mnist_28px() -> None:
    judge = Judge(DIGITS)
    images, _ = DIGITS.load()
    features = judge.run(images[:7])[1]
    raw28 = np.ascontiguousarray(images[:7, 2:-2, 2:-2])  # the original MNIST 28x28
    np.testing.assert_allclose(judge.run(raw28)[1], features, atol=1e-5)
    np.testing.assert_allclose(judge.run(raw28[..., 0])[1], features, atol=1e-5)


def test_emoji_class_names_are_the_data_sets_in_label_order() -> None:
    with np.load("latent_ddpm/data/emoji_32.npz") as npz:
        assert list(EMOJI.class_names) == npz["class_names"].tolist()
    assert list(DIGITS.class_names) == [str(d) for d in range(10)]


@pytest.mark.parametrize(
    ("data", "images", "match"),
    [
        (DIGITS, np.zeros((2, 64, 64), np.uint8), "28x28 or 32x32 images, got 64x64"),
        (DIGITS, np.zeros((2, 32, 32, 3), np.uint8), r"\(N, H, W, 1\)"),
        (DIGITS, np.zeros((2, 32, 32), np.float32), "uint8"),
        (DIGITS, np.zeros((0, 32, 32), np.uint8), r"\(N, H, W, 1\)"),
        (EMOJI, np.zeros((2, 32, 32), np.uint8), r"\(N, H, W, 3\)"),
        (EMOJI, np.zeros((2, 28, 28, 3), np.uint8), "32x32 images, got 28x28"),
    ],
)
def test_bad_images_are_refused(data, images, match) -> None:
    with pytest.raises(InputError, match=match):
        Judge(data).run(images)


@pytest.mark.parametrize(
    ("shape", "classes", "expected"),
    [
        ((1, 32, 32), [str(d) for d in range(10)], "digits"),
        ((1, 28, 28), [str(d) for d in reversed(range(10))], "digits"),
        ((1, 32, 32), None, "digits"),
        ((3, 32, 32), None, "emoji"),
    ],
)
def test_a_model_is_judged_by_its_data_set(shape, classes, expected) -> None:
    assert judged_data_for(shape, classes, "m").name == expected


def test_emoji_groups_are_judged_by_the_emoji_judge() -> None:
    judge = Judge.for_model((3, 32, 32), list(reversed(EMOJI.class_names)), "m", threads=1)
    assert judge.data is EMOJI
    assert judge.class_index(list(reversed(EMOJI.class_names))).tolist() == list(range(8, -1, -1))


@pytest.mark.parametrize(
    ("shape", "classes"),
    [
        ((3, 32, 32), [str(d) for d in range(10)]),  # colour digits
        ((1, 32, 32), ["cat", "dog"]),
        ((1, 64, 64), None),
        ((3, 32, 32), list(EMOJI.class_names)[:5]),
    ],
)
def test_a_model_no_judge_knows_is_refused_in_one_line(shape, classes) -> None:
    with pytest.raises(InputError, match="the judges know only") as exc:
        judged_data_for(shape, classes, "bundle m")
    assert "\n" not in str(exc.value) and "bundle m makes" in str(exc.value)

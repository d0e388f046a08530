"""The memorisation check against hand-computed distances and a brute-force nearest neighbour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latent_ddpm.errors import InputError
from latent_ddpm.evaluate.memorisation import (
    closest_pairs_picture,
    memorisation,
    nearest,
    share_below_in_features,
    training_threshold,
)


def _random_images(
    rng: np.random.Generator, count: int, channels: int, low: int = 0, high: int = 256
) -> np.ndarray:
    return rng.integers(low, high, (count, 8, 6, channels), dtype=np.uint8)


def _constant(values: list[int], channels: int) -> np.ndarray:
    """8x8 images of one colour each: grey ``v``, or the RGB (v, 255 - v, 7) no caption or frame can produce."""
    colours = [[v] if channels == 1 else [v, 255 - v, 7] for v in values]
    return np.array(colours, dtype=np.uint8)[:, None, None, :].repeat(8, axis=1).repeat(8, axis=2)


def _brute_force(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(N, M) RMS distances on [0, 1], the direct way."""
    q = queries.reshape(len(queries), -1).astype(np.float64) / 255
    r = references.reshape(len(references), -1).astype(np.float64) / 255
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).mean(axis=2))


@pytest.mark.parametrize("channels", [1, 3])
def test_noisy_copies_of_training_images_all_score_below(channels: int) -> None:
    rng = np.random.default_rng(0)
    training = _random_images(rng, 30, channels)
    copied = np.array([3, 17, 0, 29, 17])
    noise = rng.integers(-3, 4, training[copied].shape)
    generated = np.clip(training[copied].astype(int) + noise, 0, 255).astype(np.uint8)
    labels = np.array([1, 0, 1, 1, 0])
    result = memorisation(generated, training, labels, ["zero", "one"])
    assert result.share_below == 1.0
    np.testing.assert_array_equal(result.nearest_index, copied)
    assert result.nearest_distance.max() <= 3 / 255
    assert result.threshold > 0.2  # independent uniform images lie far apart
    assert result.per_class_share == {"zero": 1.0, "one": 1.0}
    assert (result.num_generated, result.num_training) == (5, 30)
    assert memorisation(generated, training, threshold=result.threshold).share_below == 1.0


@pytest.mark.parametrize("channels", [1, 3])
def test_images_far_from_the_training_set_score_zero(channels: int) -> None:
    rng = np.random.default_rng(1)
    training = _random_images(rng, 40, channels, high=60)
    generated = _random_images(rng, 12, channels, low=190)
    result = memorisation(generated, training, np.arange(12) % 3)
    assert result.share_below == 0.0
    assert result.per_class_share == {"0": 0.0, "1": 0.0, "2": 0.0}
    assert result.median_nearest > result.threshold
    document = json.loads(json.dumps(result.to_json()))
    assert document["share_below"] == 0.0 and document["num_training"] == 40
    assert "nearest_index" not in document


def test_per_class_share_counts_each_class_apart() -> None:
    rng = np.random.default_rng(2)
    training = _random_images(rng, 20, 3)
    far = np.zeros((3, *training.shape[1:]), dtype=np.uint8)  # RMS ~0.58 from uniform images, ~0.41 apart
    generated = np.concatenate([training[:4], far])
    result = memorisation(generated, training, np.array([2, 2, 2, 2, 0, 0, 0]), ["a", "b", "c"])
    assert result.per_class_share == {"a": 0.0, "c": 1.0}
    assert result.share_below == pytest.approx(4 / 7)


def test_threshold_excludes_each_image_by_index_so_duplicates_count() -> None:
    images = _constant([40, 40, 140, 200], channels=1)
    index, distance = nearest(images, images, exclude_self=True)
    np.testing.assert_array_equal(index, [1, 0, 3, 2])
    np.testing.assert_allclose(distance, [0.0, 0.0, 60 / 255, 60 / 255], rtol=1e-12)
    assert distance[0] == 0.0  # exact: integer pixels in float64 leave no round-off
    # median of (0, 0, 60, 60) / 255; excluding "distance 0" instead of "itself" would give 80 / 255
    assert training_threshold(images) == pytest.approx(30 / 255, rel=1e-12)


def test_below_means_strictly_closer_than_the_threshold() -> None:
    training = _constant([40, 40, 140, 200, 250], channels=1)  # nearest others 0, 0, 60, 50, 50: median 50
    result = memorisation(_constant([90, 91], channels=1), training)  # 50 from training 0; 49 from training 2
    assert result.threshold == result.nearest_distance[0] == pytest.approx(50 / 255)
    assert result.share_below == 0.5


def test_distance_is_per_pixel_rms_on_the_unit_range() -> None:
    black = np.zeros((1, 2, 2, 1), dtype=np.uint8)
    one_white = black.copy()
    one_white[0, 0, 0, 0] = 255  # L2 = 1 on [0, 1] over 4 pixels: RMS = 1 / sqrt(4)
    grey = np.full((1, 2, 2, 1), 51, dtype=np.uint8)  # 0.2 everywhere: RMS 0.2
    _, distance = nearest(black, np.concatenate([one_white, grey]))
    assert distance[0] == pytest.approx(0.2, rel=1e-12)
    _, distance = nearest(black, one_white)
    assert distance[0] == pytest.approx(0.5, rel=1e-12)
    rgb = np.zeros((1, 1, 1, 3), dtype=np.uint8)
    _, distance = nearest(rgb, np.array([[[[255, 255, 0]]]], dtype=np.uint8))
    assert distance[0] == pytest.approx(np.sqrt(2 / 3), rel=1e-12)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, None])
@pytest.mark.parametrize("channels", [1, 3])
def test_chunks_match_brute_force(chunk_rows: int | None, channels: int) -> None:
    rng = np.random.default_rng(3)
    references = _random_images(rng, 17, channels)
    references[12] = references[2]  # a tie across chunks goes to the lower index
    queries = np.concatenate([_random_images(rng, 22, channels), references[2:3]])
    expected = _brute_force(queries, references)
    index, distance = nearest(queries, references, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(index, expected.argmin(axis=1))
    np.testing.assert_allclose(distance, expected.min(axis=1), rtol=1e-12, atol=1e-15)
    assert index[-1] == 2 and distance[-1] == 0.0

    itself = _brute_force(references, references)
    np.fill_diagonal(itself, np.inf)
    index, distance = nearest(references, references, exclude_self=True, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(index, itself.argmin(axis=1))
    np.testing.assert_allclose(distance, itself.min(axis=1), rtol=1e-12, atol=1e-15)


def _box(picture: np.ndarray, colour: np.ndarray) -> tuple[int, int, int, int, int]:
    """(pixel count, top, left, bottom, right) of the pixels of exactly ``colour``."""
    ys, xs = np.nonzero((picture == colour).all(axis=2))
    return len(ys), ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


@pytest.mark.parametrize("channels", [1, 3])
def test_picture_shows_the_closest_pair_enlarged_one_above_the_other(channels: int) -> None:
    training = _constant([40, 45, 140, 150], channels)  # nearest others 5, 5, 10, 10 apart
    generated = _constant([95, 42], channels)  # 95: 45 from training 2; 42: 2 from training 0
    result = memorisation(generated, training)
    assert result.threshold == pytest.approx(7.5 / 255 * (1 if channels == 1 else np.sqrt(2 / 3)))
    assert result.share_below == 0.5
    np.testing.assert_array_equal(result.nearest_index, [2, 0])

    picture = closest_pairs_picture(generated, training, result, count=1)
    assert picture.mode == "RGB"
    pixels = np.asarray(picture)
    # grey 95 is darker than anything the canvas, frames and captions draw
    rgb = _constant([42, 40, 95], 3)[:, 0, 0] if channels == 3 else np.array([[42] * 3, [40] * 3, [95] * 3])
    count, top, left, bottom, right = _box(pixels, rgb[0])
    assert (count, bottom - top, right - left) == (64 * 64, 64, 64)  # 8x8 enlarged to 64 px, grey stays grey
    count, below, left_below, _, _ = _box(pixels, rgb[1])
    assert count == 64 * 64 and below > bottom and left_below == left
    assert not (pixels == rgb[2]).all(axis=2).any()  # the farther pair is left out

    both = np.asarray(closest_pairs_picture(generated, training, result, count=16))
    assert _box(both, rgb[2])[0] == 64 * 64 and _box(both, rgb[2])[1] == top  # both pairs, in one row


def test_picture_refuses_a_result_of_other_images() -> None:
    rng = np.random.default_rng(4)
    training = _random_images(rng, 6, 3)
    result = memorisation(training[:2], training)
    with pytest.raises(InputError, match="2 generated and 6 training"):
        closest_pairs_picture(training[:3], training, result)
    with pytest.raises(InputError, match="count must be at least 1"):
        closest_pairs_picture(training[:2], training, result, count=0)


GOOD = np.zeros((2, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("generated", "training", "named"),
    [
        (GOOD.astype(np.float32), GOOD, "generated float32 (2, 8, 8, 3)"),
        (GOOD[:, :, :, 0], GOOD, "generated uint8 (2, 8, 8)"),
        (GOOD, GOOD[:, :, :4], "training uint8 (2, 8, 4, 3)"),
        (GOOD[..., :1], GOOD, "generated uint8 (2, 8, 8, 1) and training uint8 (2, 8, 8, 3)"),
        (np.zeros((2, 8, 8, 2), np.uint8), np.zeros((2, 8, 8, 2), np.uint8), "uint8 (2, 8, 8, 2)"),
        (GOOD[:0], GOOD, "generated uint8 (0, 8, 8, 3)"),
        (GOOD, GOOD[:1], "training uint8 (1, 8, 8, 3)"),
        (GOOD[:, :0], GOOD[:, :0], "generated uint8 (2, 0, 8, 3)"),
        (GOOD.tolist(), GOOD, "generated list"),
    ],
)
def test_bad_images_are_refused_naming_both(generated: np.ndarray, training: np.ndarray, named: str) -> None:
    with pytest.raises(InputError, match="memorisation needs uint8 arrays") as caught:
        memorisation(generated, training)
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_bad_labels_are_refused() -> None:
    with pytest.raises(InputError, match=r"labels must be 2 integer classes >= 0.*float64 \(2,\)"):
        memorisation(GOOD, GOOD, np.array([0.0, 1.0]))
    with pytest.raises(InputError, match="labels must be 2 integer"):
        memorisation(GOOD, GOOD, np.array([0, 1, 1]))
    with pytest.raises(InputError, match="labels must be 2 integer"):
        memorisation(GOOD, GOOD, np.array([0, -1]))
    with pytest.raises(InputError, match="label 2 has no name: 2 class names given"):
        memorisation(GOOD, GOOD, np.array([0, 2]), ["a", "b"])


def test_feature_share_sees_copies_and_new_points() -> None:
    rng = np.random.default_rng(0)
    training = rng.normal(size=(200, 8))
    copies = training[:50] + rng.normal(scale=1e-3, size=(50, 8))
    far = rng.normal(size=(50, 8)) + 100.0
    assert share_below_in_features(copies, training) == 1.0
    assert share_below_in_features(far, training) == 0.0


def test_feature_share_refuses_mismatched_vectors() -> None:
    with pytest.raises(InputError, match=r"\(N, D\) and \(M, D\)"):
        share_below_in_features(np.zeros((3, 4)), np.zeros((5, 6)))

"""The Fréchet distance against closed forms (no scipy: the project does not depend on it)."""

from __future__ import annotations

import numpy as np
import pytest

from latent_ddpm.errors import InputError
from latent_ddpm.evaluate.frechet import (
    Gaussian,
    fit_gaussian,
    frechet_distance,
    frechet_distance_features,
    psd_sqrt,
)


def _random_cov(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_identical_feature_sets_are_zero_apart() -> None:
    x = np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_covariances_match_closed_form() -> None:
    # For diagonal S1, S2: d^2 = |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    rng = np.random.default_rng(1)
    s1, s2 = rng.uniform(0.1, 5.0, 32), rng.uniform(0.1, 5.0, 32)
    m1, m2 = rng.standard_normal(32), rng.standard_normal(32)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance(Gaussian(m1, np.diag(s1), 2), Gaussian(m2, np.diag(s2), 2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_scaled_full_covariance_matches_closed_form() -> None:
    # S2 = c^2 S1 (non-diagonal): tr((S1^1/2 S2 S1^1/2)^1/2) = c tr(S1), so d^2 = |dmu|^2 + (1 - c)^2 tr(S1).
    rng = np.random.default_rng(2)
    s1 = _random_cov(rng, 48)
    mean = rng.standard_normal(48)
    c = 1.7
    got = frechet_distance(Gaussian(np.zeros(48), s1, 2), Gaussian(mean, c**2 * s1, 2))
    assert got == pytest.approx(mean @ mean + (1 - c) ** 2 * np.trace(s1), rel=1e-9)


def test_singular_covariances_and_symmetry() -> None:
    # Rank-deficient covariances (more dimensions than samples, as with few generated images) stay finite,
    # non-negative and symmetric in the two arguments.
    rng = np.random.default_rng(3)
    a = Gaussian(rng.standard_normal(64), _random_cov(rng, 64, rank=10), 11)
    b = Gaussian(rng.standard_normal(64), _random_cov(rng, 64, rank=20), 21)
    d_ab, d_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert np.isfinite(d_ab) and d_ab > 0
    assert d_ab == pytest.approx(d_ba, rel=1e-8)


def test_psd_sqrt_squares_back() -> None:
    s = _random_cov(np.random.default_rng(4), 16)
    root = psd_sqrt(s)
    np.testing.assert_allclose(root @ root, s, atol=1e-10)
    np.testing.assert_allclose(root, root.T, atol=1e-12)


def test_distance_grows_with_mean_shift() -> None:
    x = np.random.default_rng(5).standard_normal((500, 8))
    near = frechet_distance_features(x, x + 0.1)
    far = frechet_distance_features(x, x + 1.0)
    assert near == pytest.approx(8 * 0.01, rel=1e-6) and far == pytest.approx(8.0, rel=1e-6)


def test_bad_feature_shapes_are_refused() -> None:
    with pytest.raises(InputError, match="at least 2 feature vectors"):
        fit_gaussian(np.zeros((1, 8)))
    with pytest.raises(InputError, match="dimensions differ: 8 vs 4"):
        rng = np.random.default_rng(6)
        frechet_distance_features(rng.random((10, 8)), rng.random((10, 4)))

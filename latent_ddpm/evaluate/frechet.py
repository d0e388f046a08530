"""Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017), in NumPy only.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

The cross term is usually written tr((S1 S2)^1/2), but S1 S2 is not symmetric, and scipy's general sqrtm
on it can return complex noise. S1^1/2 S2 S1^1/2 is similar to S1 S2 (same eigenvalues) and symmetric
positive semi-definite, so two symmetric eigendecompositions give the trace exactly, with no scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from latent_ddpm.errors import InputError


@dataclass(frozen=True)
class Gaussian:
    mean: np.ndarray
    cov: np.ndarray
    count: int

    @cached_property
    def sqrt_cov(self) -> np.ndarray:
        """Kept, so that comparing many sets against one reference decomposes the reference once."""
        return psd_sqrt(self.cov)


def fit_gaussian(features: np.ndarray) -> Gaussian:
    """Mean and unbiased covariance of (N, D) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"need at least 2 feature vectors of shape (N, D), got shape {list(x.shape)}")
    return Gaussian(x.mean(axis=0), np.cov(x, rowvar=False), x.shape[0])


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negatives among the eigenvalues become 0."""
    sym = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    if a.mean.shape != b.mean.shape:
        raise InputError(f"feature dimensions differ: {a.mean.shape[0]} vs {b.mean.shape[0]}")
    middle = a.sqrt_cov @ b.cov @ a.sqrt_cov
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = a.mean - b.mean
    d2 = diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * cross
    return float(max(d2, 0.0))  # round-off can take identical sets a hair below 0


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    return frechet_distance(fit_gaussian(x), fit_gaussian(y))

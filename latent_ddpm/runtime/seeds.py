"""Seeds and random streams, one per image, so that an image never depends on what else shares its batch.

Every image has its own seed and its own ``numpy.random.Generator`` (``default_rng(seed)``), which draws, in
this order: its initial noise (``generate`` without ``latents=``; img2img: the noise that takes the encoded
picture to the first step it runs), its class when none was given, then one noise array per stochastic step
(DDPM; DDIM with eta > 0). A request with one int ``seed`` and N images gives image k the seed ``seed + k``;
a list gives each image its own. So image k of a batch is, bit for bit in everything the runtime draws, the
one-image request with seed ``seed + k``; and with one image the streams are those of ``default_rng(seed)``
drawn for the whole request, as before per-image seeds (a one-image request's pictures did not change).
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.schedulers.common import normal_per_image

# Seeds are non-negative integers below 2**63 (NumPy takes any; a bound keeps them storable in JSON and
# int64 columns). A random seed, drawn when the caller gives none, is below 2**31 so that it can be typed.
MAX_SEED = 2**63 - 1
RANDOM_SEED_BOUND = 2**31

__all__ = ["MAX_SEED", "check_seeds", "image_generators", "image_seeds", "normal_per_image"]


def _check_one(seed: Any, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"{what} must be a non-negative integer (at most 2**63 - 1), got {seed!r}")
    return int(seed)


def check_seeds(seed: Any, num_images: int | None) -> tuple[int, tuple[int, ...]]:
    """(the request's seed, one seed per image) from an int, a list of ints (one per image) or None.

    ``num_images`` None: a list decides the count; an int or None seed then means one image.
    """
    if isinstance(seed, (list, tuple)) or (isinstance(seed, np.ndarray) and seed.ndim == 1):
        seeds = tuple(_check_one(s, f"seed[{i}]") for i, s in enumerate(seed))
        if not seeds:
            raise InputError("seed is an empty list; give one seed per image")
        if num_images is not None and len(seeds) != num_images:
            raise InputError(
                f"got {len(seeds)} seeds for {num_images} images (one seed per image, or one int)"
            )
        return seeds[0], seeds
    base = secrets.randbelow(RANDOM_SEED_BOUND) if seed is None else _check_one(seed, "seed")
    n = 1 if num_images is None else num_images
    if base + n - 1 > MAX_SEED:
        raise InputError(f"seed {base} + {n - 1} (the last image's seed) is beyond 2**63 - 1")
    return base, image_seeds(base, n)


def image_seeds(seed: int, num_images: int) -> tuple[int, ...]:
    """The per-image seeds of a request with one int seed: ``seed, seed + 1, ..., seed + num_images - 1``."""
    return tuple(range(seed, seed + num_images))


def image_generators(seeds: Sequence[int]) -> list[np.random.Generator]:
    """One generator per image: ``numpy.random.default_rng(seed)`` (PCG64), identical on every machine."""
    return [np.random.default_rng(s) for s in seeds]

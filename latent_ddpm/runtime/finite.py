"""The guard that keeps NaN and Inf from becoming "successful" black or white images.

``to_uint8`` casts NaN to 0 and clips Inf to 255, so an overflowing model would otherwise return plausible
looking uint8 arrays. Every tensor a sampling run produces (each U-Net output, each step's latents, every
decoded or encoded batch) passes through ``check_finite``; the first bad one stops the run with its name.
"""

from __future__ import annotations

import numpy as np

from latent_ddpm.errors import NumericalError


def check_finite(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` unchanged, or NumericalError naming ``what`` (e.g. "the U-Net output at step 3/10 (t=701)")."""
    if not np.isfinite(array).all():
        raise NumericalError(
            f"{what} holds NaN or Inf: the model overflowed at these settings (or its weights are broken); "
            "no images were returned"
        )
    return array

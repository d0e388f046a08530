"""How close two sets of images are: the one PSNR of the export gate, the precision gate and quantization.

No torch here, so that quantization (ONNX Runtime only) and the gates share it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def psnr_db(peak_sq: float, mse: float) -> float | None:
    """PSNR in dB; None stands for infinity (identical outputs), which JSON cannot hold."""
    return None if mse == 0 else 10.0 * math.log10(max(peak_sq, 1e-30) / mse)


def image_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Max and mean absolute difference and PSNR (uint8 peak 255) of two uint8 image batches."""
    diff = np.abs(out.astype(np.int32) - ref.astype(np.int32))
    return {
        "max_abs_diff": int(diff.max(initial=0)),
        "mean_abs_diff": float(diff.mean()),
        "psnr_db": psnr_db(255.0**2, float(np.mean(diff.astype(np.float64) ** 2))),
    }

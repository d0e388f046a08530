"""FLOPs of one U-Net call, counted once by PyTorch's FlopCounterMode on the meta device (no compute).

FlopCounterMode counts the matrix work (convolutions, matmuls, attention) as 2 FLOPs per multiply-add and
ignores elementwise ops, the usual convention for "achieved GFLOP/s" against a GEMM peak.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def unet_flops(
    unet_config: Mapping[str, Any], batch: int, sample_shape: tuple[int, int, int], conditional: bool
) -> dict[str, Any]:
    """FLOPs of ``UNet2DModel(**unet_config)`` on a (batch, *sample_shape) input, with a per-op breakdown."""
    import torch
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = UNet2DModel.from_config(config).eval()
        sample = torch.zeros((batch, *sample_shape))
        timestep = torch.zeros((batch,), dtype=torch.long)
        kwargs = {"class_labels": torch.zeros((batch,), dtype=torch.long)} if conditional else {}
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(sample, timestep, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {"batch": batch, "flops": int(counter.get_total_flops()), "by_op": by_op}

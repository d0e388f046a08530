"""FLOPs of one U-Net call, counted once by PyTorch's FlopCounterMode on the meta device (no compute).

FlopCounterMode counts the matrix work (convolutions, matmuls, attention) as 2 FLOPs per multiply-add and
ignores elementwise ops, the usual convention for "achieved GFLOP/s" against a GEMM peak. It also counts
the multiplications of a 3x3 convolution with its zero padding; on small feature maps that is a large
share (at 2x2, 5 of every 9 taps fall in the padding) which a direct convolution kernel skips, so the
padding share is measured too and achieved GFLOP/s can be stated without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _valid_taps(size: int, kernel: int, stride: int, padding: int) -> int:
    """Sum over output positions of the kernel taps that land inside the input, along one axis."""
    out = (size + 2 * padding - kernel) // stride + 1
    return sum(sum(1 for j in range(kernel) if 0 <= o * stride - padding + j < size) for o in range(out))


def unet_flops(
    unet_config: Mapping[str, Any], batch: int, sample_shape: tuple[int, int, int], conditional: bool
) -> dict[str, Any]:
    """FLOPs of ``UNet2DModel(**unet_config)`` on a (batch, *sample_shape) input, with a per-op breakdown."""
    import torch
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    conv = {"counted": 0, "padding": 0}

    def on_conv(module: torch.nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        n, cin, h, w = inputs[0].shape
        (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
        macs_per_tap = n * module.out_channels * cin // module.groups
        full = output.shape[2] * output.shape[3] * kh * kw
        valid = _valid_taps(h, kh, sh, ph) * _valid_taps(w, kw, sw, pw)
        conv["counted"] += 2 * macs_per_tap * full
        conv["padding"] += 2 * macs_per_tap * (full - valid)

    with torch.device("meta"):
        model = UNet2DModel.from_config(config).eval()
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(on_conv)
        sample = torch.zeros((batch, *sample_shape))
        timestep = torch.zeros((batch,), dtype=torch.long)
        kwargs = {"class_labels": torch.zeros((batch,), dtype=torch.long)} if conditional else {}
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(sample, timestep, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    total = int(counter.get_total_flops())
    return {"batch": batch, "flops": total, "padding_flops": conv["padding"], "by_op": by_op}

"""Latent vs pixel diffusion per step: the LDM U-Net on 3x64x64 latents against the same U-Net on 3x256x256.

Rombach et al. (2022) argue that diffusing in a 4x-downsampled latent space costs far less per step than in
pixel space. The prediction here is the FLOP ratio of the two U-Net calls (counted, not estimated); the
measurement is their latency ratio in eager PyTorch at batch 1. A pixel-space call takes minutes on two
cores, so it is timed over a few single calls, not sampling loops. ONNX Runtime is not run in pixel space:
the exported attention would materialise the full score matrix, heads x (128*128)^2 floats at the first
attention level, which does not fit in this machine's memory (PyTorch's fused CPU attention never builds it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from latent_ddpm.bench.flops import unet_flops
from latent_ddpm.bench.stats import Samples

Log = Callable[[str], None]


def attention_scores_bytes(unet_config: dict[str, Any], size: int) -> int:
    """Bytes of the largest materialised attention score tensor (batch 1, fp32) in an exported graph."""
    worst = 0
    for level, (block, channels) in enumerate(
        zip(unet_config["down_block_types"], unet_config["block_out_channels"], strict=True)
    ):
        if "Attn" in block:
            tokens = (size // 2**level) ** 2
            heads = channels // unet_config["attention_head_dim"]
            worst = max(worst, heads * tokens * tokens * 4)
    return worst


def measure(
    latent_config: dict[str, Any],
    pixel_config: dict[str, Any],
    threads: int,
    warmup: int,
    calls: int,
    latent_calls: int,
    log: Log,
) -> dict[str, Any]:
    import torch
    from diffusers import UNet2DModel

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "batch": 1}
    for name, config, n in (("latent", latent_config, latent_calls), ("pixel", pixel_config, calls)):
        channels, size = config["in_channels"], config["sample_size"]
        shape = (channels, size, size)
        flops = unet_flops(config, 1, shape, conditional=False)
        torch.manual_seed(0)
        model = UNet2DModel(**config).eval().requires_grad_(False)
        x, t = torch.randn(1, *shape), torch.tensor([500])
        seconds = Samples()
        with torch.inference_mode():
            for i in range(warmup + n):
                t0 = time.perf_counter()
                model(x, t)
                if i >= warmup:
                    seconds.add(time.perf_counter() - t0)
        del model
        out[name] = {
            "input_shape": list(shape),
            "flops": flops["flops"],
            "unet_call_s": seconds.to_json(),
            "gflops": flops["flops"] / seconds.median / 1e9,
        }
        log(f"  {name} {shape}: {flops['flops'] / 1e9:.0f} GFLOP, {seconds.median:.2f} s per U-Net call")
    out["predicted_ratio_flops"] = out["pixel"]["flops"] / out["latent"]["flops"]
    out["measured_ratio_latency"] = (
        out["pixel"]["unet_call_s"]["median"] / out["latent"]["unet_call_s"]["median"]
    )
    out["onnxruntime_skipped"] = (
        f"the exported pixel-space graph would hold a {attention_scores_bytes(pixel_config, pixel_config['sample_size']) / 2**30:.0f} GiB "
        "attention score tensor (one of several live at once); eager PyTorch uses a fused attention kernel"
    )
    return out

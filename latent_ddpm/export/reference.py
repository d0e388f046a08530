"""The diffusers reference for the whole-run gate: the source's own torch models and diffusers' DDIM loop.

This is LDMPipeline's loop (plus classifier-free guidance over class labels the way guided diffusers
pipelines do it: one batch ``[null; cond]``, ``uncond + g * (cond - uncond)``), started from given latents
so the bundle can be run from the very same noise.
"""

from __future__ import annotations

import numpy as np
import torch

from latent_ddpm.export.source import Source


@torch.no_grad()
def reference_images(
    source: Source, latents: np.ndarray, labels: np.ndarray | None, steps: int, guidance_scale: float
) -> np.ndarray:
    """Sample with DDIM (eta 0) from ``latents`` and decode as LDMPipeline does; returns NHWC uint8."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(
        {**source.scheduler_config, "prediction_type": source.prediction_type}
    )
    scheduler.set_timesteps(steps)
    x = torch.from_numpy(latents) * scheduler.init_noise_sigma
    y = None if labels is None else torch.from_numpy(labels)
    guided = guidance_scale != 1.0
    if guided:
        null = torch.full_like(y, source.conditioning.null_class)
        y = torch.cat([null, y])
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        if guided:
            model_input = torch.cat([model_input, model_input])
        out = source.unet(model_input, t, class_labels=y).sample
        if guided:
            uncond, cond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(out, t, x, eta=0.0).prev_sample
    x = x / source.scaling_factor + (source.shift_factor or 0.0)
    image = source.vae.decode(x).sample
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (image * 255).round().astype(np.uint8)

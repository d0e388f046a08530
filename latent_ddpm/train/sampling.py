"""Reference sampling with diffusers' own DDIMScheduler and classifier-free guidance (for preview grids).

Guidance mixes the conditional and the null-class prediction, `uncond + g * (cond - uncond)`, on the
model output whatever it parameterises (epsilon, x0 or v): all three are linear in it at a fixed z_t.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def ddim_sample(
    unet,
    vae,
    scheduler_config: dict,
    labels: torch.Tensor | None,
    null_class: int | None,
    num_samples: int,
    steps: int = 50,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1]; `labels` (N,) class indices, or None for an unconditional model."""
    from diffusers import DDIMScheduler

    device = next(unet.parameters()).device
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    shape = (num_samples, unet.config.in_channels, size, size)
    latents = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    guided = labels is not None and guidance_scale != 1.0
    if labels is not None:
        labels = labels.to(device)
        both = torch.cat([labels, torch.full_like(labels, null_class)]) if guided else labels
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents]) if guided else latents
        out = unet(model_in, t, class_labels=both if labels is not None else None).sample
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(out, t, latents, eta=eta, generator=generator).prev_sample
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)

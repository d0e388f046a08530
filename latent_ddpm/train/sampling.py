"""Preview grids during training: DDIM with classifier-free guidance through the project's torch reference
sampler (``latent_ddpm.export.reference``), from noise drawn with the caller's torch generator.

Guidance mixes the conditional and the null-class prediction, `uncond + g * (cond - uncond)`, on the
model output whatever it parameterises (epsilon, x0 or v): all three are linear in it at a fixed z_t.
"""

from __future__ import annotations

import torch

from latent_ddpm.export.reference import Run, decode, generate, make_scheduler, unet_model


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
    device = next(unet.parameters()).device
    size = unet.config.sample_size
    shape = (num_samples, unet.config.in_channels, size, size)
    noise = torch.randn(shape, generator=generator).to(device)
    latents = generate(
        unet_model(unet),
        make_scheduler("ddim", scheduler_config),
        noise,
        steps,
        Run(
            labels=labels,
            null_class=null_class,
            guidance_scale=guidance_scale,
            eta=eta,
            # diffusers' DDIM draws its eta noise on the generator's device and moves it: the same numbers
            step_noise=lambda step_shape: torch.randn(step_shape, generator=generator),
        ),
    )
    shift = getattr(vae.config, "shift_factor", None)
    return decode(vae, latents, vae.config.scaling_factor, shift).clamp(-1, 1)

"""Pipeline.img2img (SDEdit) against the same computation written with diffusers, on an exported tiny model.

Reference: the torch AutoencoderKL's posterior mean, scaled as the bundle says, then the project's torch
reference sampler (``latent_ddpm.export.reference.img2img``: diffusers' scheduler with diffusers' img2img
timestep rule, skipping the first ``steps - int(steps * strength)`` steps); the same noise; the same guidance;
decoded as LDMPipeline does. Tolerance: images within 2/255 (the export gate's fp32 budget).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from latent_ddpm.runtime import Pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _reference(
    model_dir, pixels: np.ndarray, strength: float, steps: int, sampler: str, labels, guidance, seed
):
    from conftest import torch_single_thread

    from latent_ddpm.export.reference import (
        Run,
        decode,
        img2img,
        make_scheduler,
        numpy_generators,
        numpy_step_noise,
        unet_model,
    )
    from latent_ddpm.runtime.seeds import normal_per_image

    vae = diffusers.AutoencoderKL.from_pretrained(model_dir / "vae").eval()
    unet = diffusers.UNet2DModel.from_pretrained(model_dir / "unet").eval()
    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    with torch.no_grad(), torch_single_thread():
        x = torch.from_numpy(pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 * 2.0 - 1.0)
        init = (vae.encode(x).latent_dist.mean - shift) * scale
        # each image's generator (seed + k) draws its img2img noise first, then its step noise
        generators = numpy_generators(seed, init.shape[0])
        noise = torch.from_numpy(normal_per_image(generators, tuple(init.shape)))
        latents, ran = img2img(
            unet_model(unet),
            make_scheduler(sampler, config),
            init,
            noise,
            steps,
            strength,
            Run(
                labels=torch.tensor(labels),
                null_class=unet.config.num_class_embeds - 1,
                guidance_scale=guidance,
                step_noise=numpy_step_noise(generators),
            ),
        )
        image = decode(vae, latents, scale, shift)
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return (image * 255).round().astype(np.uint8), ran


@pytest.mark.parametrize(
    ("sampler", "strength", "steps"), [("ddim", 0.6, 20), ("dpmsolver++", 0.8, 10), ("ddim", 1.0, 8)]
)
def test_img2img_matches_diffusers(
    tiny_model_dir, exported_bundle, sampler: str, strength: float, steps: int
) -> None:
    model_dir = tiny_model_dir("kl_cond")
    pipe = Pipeline.from_bundle(exported_bundle("kl_cond").path)
    _, h, w = pipe.bundle.image_shape
    pixels = np.random.default_rng(3).integers(0, 256, size=(2, h, w, 1), dtype=np.uint8)
    ours = pipe.img2img(
        pixels,
        strength=strength,
        steps=steps,
        sampler=sampler,
        class_labels=[0, 2],
        guidance_scale=2.0,
        seed=5,
    )
    ref, ref_steps = _reference(model_dir, pixels, strength, steps, sampler, [0, 2], 2.0, 5)
    assert ours.steps == ref_steps
    diff = np.abs(ours.images.astype(int) - ref.astype(int)).max()
    assert diff <= 2, f"max uint8 difference {diff} > 2"

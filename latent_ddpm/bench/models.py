"""The models the benchmark runs: diffusers source directories (what ``latent-ddpm export`` reads).

- ``digits``: the shipped model's architecture. With the training output (``runs/digits``) it is the real
  model; without it, the same architecture (``train/configs/digits.toml``) with random weights, which costs
  exactly the same per step: speed does not depend on the values of the weights.
- ``ldm-celebahq-256``: CompVis's LDM for CelebA-HQ 256 (configs/ldm_celebahq_256.py) with random weights,
  saved the way ``LDMPipeline.save_pretrained`` lays out the public checkpoint.
- ``pixel-256``: that U-Net applied in pixel space (3x256x256), to measure what latent diffusion saves
  per step; only its U-Net is ever built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latent_ddpm.bench.configs import ldm_celebahq_256 as ldm

MODELS = ("digits", "ldm-celebahq-256", "pixel-256")  # what `latent-ddpm bench --models` measures


def pixel_unet_config() -> dict[str, Any]:
    """The LDM U-Net at the image resolution: 3x256x256 in and out (the latents are 3-channel too)."""
    return {**ldm.UNET, "sample_size": ldm.IMAGE_SIZE}


def write_ldm_source(root: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(seed)
    scheduler = {k: v for k, v in ldm.SCHEDULER.items() if not k.startswith("_")}
    pipe = LDMPipeline(
        vqvae=VQModel(**ldm.VQVAE), unet=UNet2DModel(**ldm.UNET), scheduler=DDIMScheduler(**scheduler)
    )
    pipe.save_pretrained(root)
    return root


def write_digits_arch_source(root: Path, seed: int = 0) -> Path:
    """The digits recipe's autoencoder and U-Net, untrained, in the training's output layout."""
    from diffusers import DDIMScheduler

    from latent_ddpm.train.config import load_recipe
    from latent_ddpm.train.output import write_metadata
    from latent_ddpm.train.unet_stage import build_unet, noise_scheduler, sampling_scheduler_config
    from latent_ddpm.train.vae_stage import build_vae

    recipe, _ = load_recipe("digits", [f"seed={seed}"])
    vae = build_vae(recipe)
    vae.register_to_config(scaling_factor=1.0)
    levels = len(recipe.vae.block_out_channels) - 1
    latent_size = recipe.data.image_size // 2**levels
    class_names = [str(i) for i in range(10)]
    unet = build_unet(recipe, recipe.vae.latent_channels, latent_size, len(class_names))
    root.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    DDIMScheduler.from_config(sampling_scheduler_config(recipe, noise_scheduler(recipe))).save_pretrained(
        root / "scheduler"
    )
    write_metadata(
        root,
        class_names,
        recipe.data.image_size,
        recipe.data.channels,
        recipe.unet.sample_steps,
        recipe.unet.guidance_scale,
        {"note": "digits architecture with random weights (latent-ddpm bench)"},
    )
    return root

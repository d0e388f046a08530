"""Tiny random diffusers latent DDPMs, saved as source directories for `latent-ddpm export` (seconds on CPU).

Each kind covers a layout and a model family the exporter must handle:

- ``kl_cond``: AutoencoderKL (1-channel images), class-conditional U-Net (3 classes + a null class for
  guidance), epsilon prediction, written like our training (``vae/``, ``latent_ddpm.json``, no model_index).
- ``vq_uncond_v``: VQModel (RGB), unconditional U-Net, v-prediction, written by ``LDMPipeline.save_pretrained``
  (``vqvae/``, ``model_index.json``), the layout of the public CompVis checkpoints.
- ``kl_bin``: AutoencoderKL with a shift_factor, class-conditional without ``latent_ddpm.json`` (so no class
  names and no null class), ``.bin`` weights.
- ``kl_overflow``: ``kl_cond`` with one decoder convolution scaled so that its float16 activations overflow
  (> 65504) while float32 stays exact: the case the fp16 export must keep in float32.

Random weights are scaled so the decoded images span the whole value range; otherwise every image would
be flat grey and image comparisons would prove little.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

KINDS = ("kl_cond", "vq_uncond_v", "kl_bin", "kl_overflow")
CLASS_NAMES = ["zero", "one", "two"]
OVERFLOW_LAYER = "decoder.mid_block.resnets.0.conv1"
OVERFLOW_SCALE = 1e6

_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _unet(in_channels: int, num_class_embeds: int | None):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )


# the tiny encoder/decoder both autoencoders use: two 16x16 -> 8x8 blocks
_AUTOENCODER = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 16,
}


def _autoencoder_kl(channels: int, scaling_factor: float, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        latent_channels=4,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        **_AUTOENCODER,
    )


def _vq(channels: int):
    from diffusers import VQModel

    return VQModel(
        in_channels=channels,
        out_channels=channels,
        latent_channels=3,
        num_vq_embeddings=32,
        vq_embed_dim=3,
        scaling_factor=0.8,
        **_AUTOENCODER,
    )


@torch.no_grad()
def _spread(vae) -> None:
    """Scale the decoder's last convolution so random latents decode to the full [-1, 1] range."""
    vae.decoder.conv_out.weight.mul_(2.0)
    vae.decoder.conv_out.bias.zero_()


def _write_metadata(
    root: Path, class_names: list[str], image_size: int, channels: int, guidance: float
) -> None:
    meta = {
        "class_names": class_names,
        "null_class": len(class_names) if class_names else None,
        "image_size": [image_size, image_size],
        "image_channels": channels,
        "defaults": {"sampler": "ddim", "steps": 20, "guidance_scale": guidance, "eta": 0.0},
        "recipe": {"note": "tiny random model for tests"},
    }
    (root / "latent_ddpm.json").write_text(json.dumps(meta, indent=2))


def build_tiny_model(kind: str, root: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of ``kind`` (one of KINDS) as a diffusers directory at ``root``."""
    from diffusers import DDIMScheduler, LDMPipeline

    if kind not in KINDS:
        raise ValueError(f"unknown tiny model kind {kind!r}; one of {KINDS}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "vq_uncond_v":
        vae, unet = _vq(3), _unet(3, None)
        _spread(vae)
        with torch.no_grad():
            vae.quantize.embedding.weight.uniform_(-2.0, 2.0)  # diffusers' init puts every code near 0
            unet.conv_out.weight.mul_(0.1)  # a small v keeps each run near its own noise: distinct images
        scheduler = DDIMScheduler(**_SCHEDULER, prediction_type="v_prediction")
        LDMPipeline(vqvae=vae, unet=unet, scheduler=scheduler).save_pretrained(root)
        return root
    if kind == "kl_bin":
        vae, unet = _autoencoder_kl(3, scaling_factor=1.3, shift_factor=0.05), _unet(4, 5)
    else:
        vae, unet = _autoencoder_kl(1, scaling_factor=0.7), _unet(4, len(CLASS_NAMES) + 1)
    _spread(vae)
    if kind == "kl_overflow":
        with torch.no_grad():
            layer = vae.get_submodule(OVERFLOW_LAYER)
            layer.weight.mul_(OVERFLOW_SCALE)
            layer.bias.mul_(OVERFLOW_SCALE)
    safe = kind != "kl_bin"
    unet.save_pretrained(root / "unet", safe_serialization=safe)
    vae.save_pretrained(root / "vae", safe_serialization=safe)
    DDIMScheduler(**_SCHEDULER, prediction_type="epsilon").save_pretrained(root / "scheduler")
    if kind != "kl_bin":
        _write_metadata(root, CLASS_NAMES, 16, 1, guidance=2.0)
    return root

"""Stage 2: a class-conditional diffusers UNet2DModel that denoises the frozen autoencoder's scaled latents.

Latents: the whole data set is encoded once and the posterior mean and std of every image are cached;
each step draws z = mean + std * noise. That is exactly what encoding the batch and sampling the posterior
every step would give (the encoder is frozen), at none of the cost, and it keeps the posterior's small
noise as augmentation, matching what the decoder saw in training (`unet.latents = "mean"` uses the mean).

Noise, targets and schedules come from diffusers' own DDPMScheduler (`add_noise`, `get_velocity`), so the
saved scheduler config describes exactly the process the U-Net learned. Labels are dropped to the null
class (index num_classes of `num_class_embeds = num_classes + 1`) with probability `label_dropout`, which
trains the unconditional model that classifier-free guidance needs. The EMA weights are what is saved.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latent_ddpm.train.config import Recipe
from latent_ddpm.train.data import ImageSet
from latent_ddpm.train.determinism import derive_seed, init_seed
from latent_ddpm.train.errors import TrainError
from latent_ddpm.train.logs import save_grid
from latent_ddpm.train.loop import Stage
from latent_ddpm.train.output import replace_dir, write_metadata
from latent_ddpm.train.sampling import ddim_sample
from latent_ddpm.train.vae_stage import encode_dataset

GRID = 10  # preview grids: up to 10 classes (rows) x 10 samples


def load_frozen_vae(run_dir: Path, recipe: Recipe, device):
    from diffusers import AutoencoderKL

    path = run_dir / "vae"
    if not (path / "config.json").is_file():
        raise TrainError(f"no trained autoencoder at {path}; run `latent-ddpm train --stage vae` first")
    try:  # safetensors only, as training writes it: a .bin in a run folder is a pickle
        vae = AutoencoderKL.from_pretrained(path, use_safetensors=True, local_files_only=True)
    except Exception as exc:  # diffusers raises OSError/ValueError/RuntimeError/SafetensorError
        why = " ".join(str(exc).split())[:300]
        raise TrainError(
            f"{path}: cannot load the trained autoencoder ({type(exc).__name__}: {why})"
        ) from None
    vae = vae.to(device).eval().requires_grad_(False)
    if vae.config.in_channels != recipe.data.channels or vae.config.sample_size != recipe.data.image_size:
        raise TrainError(
            f"{path} encodes {vae.config.in_channels}-channel {vae.config.sample_size}px images but the recipe "
            f"asks for data.channels = {recipe.data.channels}, data.image_size = {recipe.data.image_size}"
        )
    return vae


def noise_scheduler(recipe: Recipe):
    from diffusers import DDPMScheduler

    cfg = recipe.unet
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=False,  # latents are not bounded to [-1, 1]
    )


def sampling_scheduler_config(recipe: Recipe, train_scheduler) -> dict:
    """The DDIM config that ships: the training schedule plus how to pick inference timesteps."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(
        train_scheduler.config,
        timestep_spacing=recipe.unet.timestep_spacing,
        steps_offset=0,
        set_alpha_to_one=True,  # the last step lands on the clean latent
        clip_sample=False,
    )
    return dict(ddim.config)


def build_unet(recipe: Recipe, latent_channels: int, latent_size: int, num_classes: int):
    from diffusers import UNet2DModel

    cfg = recipe.unet
    torch.manual_seed(init_seed(recipe.seed, "unet"))
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        num_class_embeds=num_classes + 1 if num_classes else None,
    )


def build_stage(recipe: Recipe, data: ImageSet, device, run_dir: Path) -> Stage:
    from diffusers import DDIMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    cfg = recipe.unet
    vae = load_frozen_vae(run_dir, recipe, device)
    mean, std = encode_dataset(vae, data, device)
    factor = vae.config.scaling_factor
    num_classes = len(data.class_names)
    null_class = num_classes if num_classes else None
    labels = torch.from_numpy(data.labels).to(device)
    scheduler = noise_scheduler(recipe)
    sample_config = sampling_scheduler_config(recipe, scheduler)
    unet = build_unet(recipe, mean.shape[1], mean.shape[2], num_classes).to(device)
    ema = EMAModel(
        unet.parameters(),
        decay=cfg.ema_decay,
        use_ema_warmup=True,
        power=cfg.ema_power,
        model_cls=UNet2DModel,
        model_config=unet.config,
    )

    def loss(model, indices: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        idx = torch.from_numpy(indices).to(device)
        b = len(indices)
        z0 = mean[idx]
        if cfg.latents == "posterior":
            z0 = z0 + std[idx] * torch.randn(z0.shape, generator=gen).to(device)
        z0 = z0 * factor
        noise = torch.randn(z0.shape, generator=gen).to(device)
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=gen).to(device)
        y = None
        if num_classes:
            drop = (torch.rand(b, generator=gen) < cfg.label_dropout).to(device)
            y = torch.where(drop, torch.full_like(labels[idx], null_class), labels[idx])
        zt = scheduler.add_noise(z0, noise, t)
        if cfg.prediction_type == "epsilon":
            target = noise
        elif cfg.prediction_type == "sample":
            target = z0
        else:
            target = scheduler.get_velocity(z0, noise, t)
        pred = model(zt, t, class_labels=y).sample
        return F.mse_loss(pred.float(), target.float())

    def sample_grid(path: Path) -> None:
        """EMA weights, DDIM with guidance: one row per class (up to 10), 10 samples each."""
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        try:
            gen = torch.Generator().manual_seed(derive_seed(recipe.seed, 97))
            rows = min(num_classes, GRID) if num_classes else GRID
            y = torch.arange(rows).repeat_interleave(GRID) if num_classes else None
            images = ddim_sample(
                unet, vae, sample_config, y, null_class, rows * GRID, cfg.sample_steps, cfg.guidance_scale,
                generator=gen,
            )  # fmt: skip
            save_grid(images, GRID, path)
        finally:
            ema.restore(unet.parameters())

    def finalize(run_dir: Path) -> None:
        final = UNet2DModel.from_config(unet.config)
        ema.copy_to(final.parameters())
        replace_dir(run_dir, "unet", lambda tmp: final.save_pretrained(tmp, safe_serialization=True))
        replace_dir(run_dir, "scheduler", DDIMScheduler.from_config(sample_config).save_pretrained)
        sample_grid(run_dir / "samples" / "unet_final.png")
        write_metadata(  # last: its presence marks the directory complete
            run_dir, data.class_names, recipe.data.image_size, recipe.data.channels, cfg.sample_steps,
            cfg.guidance_scale, recipe.to_dict(),
        )  # fmt: skip

    inputs = {"autoencoder": _fingerprint(run_dir / "vae")}
    return Stage("unet", cfg, unet, len(data), loss, sample_grid, finalize, ema=ema, inputs=inputs)


def _fingerprint(folder: Path) -> str:
    """sha256 over a folder's files: a U-Net checkpoint is only continued on the autoencoder it learned on."""
    from latent_ddpm.runtime.bundle import sha256_file

    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(f"{path.name}\0{sha256_file(path)}\0".encode())
    return h.hexdigest()

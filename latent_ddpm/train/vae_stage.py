"""Stage 1: a diffusers AutoencoderKL that compresses images into the latents the U-Net will model.

Loss = reconstruction (L1 or L2, mean per pixel) + `kl_weight` * KL(posterior || N(0, I)) (mean per latent
element). The small KL term keeps the latent space smooth without costing detail. When training ends the
latent scaling factor is measured on the data, 1 / std of posterior samples (Rombach et al. 2022, sec. 4.3 and
appendix G), and stored in the VAE's config, so the U-Net sees unit-variance latents like its N(0, I) prior.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latent_ddpm.train.config import Recipe
from latent_ddpm.train.data import ImageSet
from latent_ddpm.train.determinism import derive_seed, init_seed
from latent_ddpm.train.logs import save_grid
from latent_ddpm.train.loop import Stage
from latent_ddpm.train.output import replace_dir


class _VAEWithKL(torch.nn.Module):
    """Encode, sample the posterior, decode, in one forward(): DDP only synchronises gradients of forward()."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator)
        kl_per_element = posterior.kl() / z[0].numel()
        return self.vae.decode(z).sample, kl_per_element


def build_vae(recipe: Recipe):
    from diffusers import AutoencoderKL

    cfg, levels = recipe.vae, len(recipe.vae.block_out_channels)
    torch.manual_seed(init_seed(recipe.seed, "vae"))
    return AutoencoderKL(
        in_channels=recipe.data.channels,
        out_channels=recipe.data.channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=recipe.data.image_size,
    )


@torch.no_grad()
def encode_dataset(vae, data: ImageSet, device, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, (N, c, h, w) each, in unscaled latent units."""
    means, stds = [], []
    for i in range(0, len(data), batch):
        posterior = vae.encode(data.batch(np.arange(i, min(i + batch, len(data)))).to(device)).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def scaling_factor(mean: torch.Tensor, std: torch.Tensor, seed: int) -> float:
    """1 / std of posterior samples over the whole data set."""
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)).to(mean.device)
    return float(1.0 / (mean + std * noise).std())


def build_stage(recipe: Recipe, data: ImageSet, device) -> Stage:
    cfg = recipe.vae
    vae = build_vae(recipe)
    net = _VAEWithKL(vae).to(device)
    recon = F.l1_loss if cfg.recon_loss == "l1" else F.mse_loss
    rng = np.random.default_rng(derive_seed(recipe.seed, 99))
    shown = rng.choice(len(data), size=min(10, len(data)), replace=False)
    if data.conditional:  # one image per class where possible, so every class is shown
        firsts = [np.flatnonzero(data.labels == c)[0] for c in range(len(data.class_names))]
        shown = np.array(firsts[:10]) if len(firsts) >= 10 else shown

    def loss(model, indices: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        x = data.batch(indices).to(device)
        rec, kl = model(x, gen)
        return recon(rec.float(), x) + cfg.kl_weight * kl.float().mean()

    def preview(path: Path) -> None:
        x = data.batch(shown).to(device)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        save_grid(torch.cat([x, rec]), len(shown), path)  # top row: data, bottom row: reconstruction

    def finalize(run_dir: Path) -> None:
        mean, std = encode_dataset(vae, data, device)
        factor = scaling_factor(mean, std, derive_seed(recipe.seed, 98))
        vae.register_to_config(scaling_factor=factor)
        replace_dir(run_dir, "vae", lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))
        preview(run_dir / "samples" / "vae_final.png")
        print(f"vae: latent scaling factor {factor:.5f} (latent mean {mean.mean().item():+.4f})")

    return Stage("vae", cfg, net, len(data), loss, preview, finalize)

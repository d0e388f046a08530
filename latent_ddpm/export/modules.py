"""The torch modules that become the graphs: diffusers models behind the bundle's tensor contract.

Each wrapper computes exactly what the diffusers pipeline computes at that point, so the ONNX graph and the
reference in the validation gate are the same function by construction.
"""

from __future__ import annotations

from typing import Any

import torch

from latent_ddpm.export.source import Source


class UNetGraph(torch.nn.Module):
    """(sample, timestep[, class_labels]) -> model_output, as ``UNet2DModel(...).sample``."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.unet(sample, timestep, class_labels=class_labels, return_dict=False)[0]


class DecoderGraph(torch.nn.Module):
    """Unscaled latent -> image, as ``vae.decode(latent).sample`` (a VQModel looks up its codebook first)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


class EncoderGraph(torch.nn.Module):
    """Image -> scaled latent: ``(mean - shift) * scaling_factor``.

    The mean is the posterior mean for an AutoencoderKL and the pre-quantization latent
    (``encode().latents``) for a VQModel: deterministic, so img2img is repeatable.
    """

    def __init__(self, vae: Any, scaling_factor: float, shift_factor: float | None, is_vq: bool) -> None:
        super().__init__()
        self.vae, self.is_vq = vae, is_vq
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor or 0.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.is_vq:
            mean = self.vae.encode(image, return_dict=False)[0]
        else:
            mean = self.vae.encode(image, return_dict=False)[0].mean
        return (mean - self.shift_factor) * self.scaling_factor


def graph_module(role: str, source: Source) -> torch.nn.Module:
    if role == "unet":
        return UNetGraph(source.unet).eval()
    if role == "vae_decoder":
        return DecoderGraph(source.vae).eval()
    if role == "vae_encoder":
        return EncoderGraph(source.vae, source.scaling_factor, source.shift_factor, source.is_vq).eval()
    raise ValueError(f"unknown graph role {role!r}")

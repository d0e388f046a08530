"""What a sampling request returns: images, the numbers that made them, and where the time went."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Preview:
    """The decoded prediction of the clean image (``pred_original_sample``) at one step."""

    step_index: int
    timestep: int
    images: np.ndarray


@dataclass
class Timings:
    """Seconds spent on a request. Through a ``SamplingEngine`` the U-Net calls and steps are shared with the
    requests batched alongside, so each request counts the whole calls and ticks it took part in."""

    total_s: float = 0.0  # submission (or the call) to the result
    denoise_s: float = 0.0  # the denoising loop: U-Net calls, guidance, scheduler steps, checks, previews
    unet_s: float = 0.0  # inside the U-Net engine only
    decode_s: float = 0.0
    encode_s: float = 0.0
    queue_s: float = 0.0  # waiting in a SamplingEngine's queue for room in the batch
    steps: int = 0

    @property
    def per_step_ms(self) -> float:
        return 1000.0 * self.denoise_s / max(self.steps, 1)

    @property
    def loop_overhead(self) -> float:
        """Share of the denoising loop spent outside the U-Net (scheduler math, copies, guidance)."""
        return 1.0 - self.unet_s / self.denoise_s if self.denoise_s > 0 else 0.0


@dataclass
class GenerationResult:
    images: np.ndarray  # (N, H, W, C) uint8
    latents: np.ndarray  # (N, C, h, w) float32, the final latents before decoding
    seed: int | None  # the request's seed: the first image's (image k has seeds[k])
    class_labels: np.ndarray | None
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    timings: Timings
    previews: list[Preview] = field(default_factory=list)
    seeds: tuple[int, ...] = ()  # one per image: regenerate image k alone with seed=seeds[k]

    @property
    def settings(self) -> dict[str, Any]:
        """How the images were sampled, the bundle's defaults filled in: what a report records."""
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "eta": self.eta,
        }

"""The PyTorch side of the benchmark: diffusers' U-Net and autoencoder in the project's torch reference sampler.

It samples exactly what the bundle samples (same scheduler config, scaling, guidance and null class, all
read from the bundle's ``bundle.json``) from the weights the bundle was exported from, so the images of
the two agree and the timings compare the same work. Eager; ``compiled()`` gives a twin whose U-Net runs
under ``torch.compile``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.export import reference
from latent_ddpm.export.source import load_source
from latent_ddpm.runtime.bundle import Bundle
from latent_ddpm.runtime.images import to_uint8
from latent_ddpm.runtime.pipeline import Timings


class TorchReference:
    def __init__(self, source: Path, bundle: Bundle, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch, self.bundle = torch, bundle
        loaded = load_source(source)  # the exporter's loader: same folders, formats and checks
        self.unet = loaded.unet.requires_grad_(False)
        self.vae = loaded.vae.requires_grad_(False)
        self.forward = self.unet

    def compiled(self) -> TorchReference:
        """The same weights with the U-Net under ``torch.compile``; compiling happens on the first call."""
        twin = copy.copy(self)
        twin.forward = self.torch.compile(self.unet)
        return twin

    def unet_call(self, sample: np.ndarray, timestep: int, labels: np.ndarray | None) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            kwargs = {"class_labels": torch.from_numpy(labels)} if labels is not None else {}
            t = torch.full((sample.shape[0],), timestep, dtype=torch.long)
            return self.forward(torch.from_numpy(sample), t, **kwargs).sample.numpy()

    def generate(
        self,
        latents: np.ndarray,
        labels: np.ndarray | None,
        steps: int,
        guidance_scale: float,
        sampler: str = "ddim",
        callback: Callable[[int, int, Any], None] | None = None,
    ) -> tuple[np.ndarray, Timings]:
        """Sample from ``latents`` like the runtime's ``Pipeline.generate``; returns NHWC uint8 images.

        The loop is the project's torch reference sampler; ``timings.unet_s`` counts the U-Net calls alone.
        """
        torch, bundle = self.torch, self.bundle
        timings = Timings()
        start = time.perf_counter()
        scheduler = reference.make_scheduler(sampler, bundle.scheduler_config)

        def unet(sample: Any, t: Any, y: Any) -> Any:
            u0 = time.perf_counter()
            out = self.forward(sample, t, class_labels=y).sample
            timings.unet_s += time.perf_counter() - u0
            return out

        run = reference.Run.classes(labels, bundle.conditioning, guidance_scale, callback=callback)
        loop_start = time.perf_counter()
        x = reference.generate(unet, scheduler, torch.from_numpy(latents), steps, run)
        timings.denoise_s = time.perf_counter() - loop_start
        timings.steps = len(scheduler.timesteps)
        d0 = time.perf_counter()
        image = reference.decode(self.vae, x, bundle.scaling_factor, bundle.shift_factor)
        images = to_uint8(image.numpy(), bundle.value_range)
        timings.decode_s = time.perf_counter() - d0
        timings.total_s = time.perf_counter() - start
        return images, timings

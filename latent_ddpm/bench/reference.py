"""The PyTorch reference: diffusers' U-Net, autoencoder and scheduler in the plain loop of its pipelines.

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

from latent_ddpm.export.source import load_source
from latent_ddpm.runtime.bundle import Bundle
from latent_ddpm.runtime.images import to_uint8
from latent_ddpm.runtime.pipeline import Timings


def make_scheduler(sampler: str, config: dict[str, Any]):
    """diffusers' counterpart of ``latent_ddpm.runtime.schedulers.make_scheduler``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, solver_order=2, algorithm_type="dpmsolver++")
    raise ValueError(f"the reference runs the deterministic samplers ddim and dpmsolver++, not {sampler!r}")


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
        """Sample from ``latents`` like the runtime's ``Pipeline.generate``; returns NHWC uint8 images."""
        torch, bundle = self.torch, self.bundle
        timings = Timings()
        start = time.perf_counter()
        scheduler = make_scheduler(sampler, dict(bundle.scheduler_config))
        scheduler.set_timesteps(steps)
        guided = labels is not None and guidance_scale != 1.0
        step_kwargs = {"eta": 0.0} if sampler == "ddim" else {}
        with torch.inference_mode():
            x = torch.from_numpy(latents) * scheduler.init_noise_sigma
            y = None if labels is None else torch.from_numpy(labels)
            if guided:
                y = torch.cat([torch.full_like(y, bundle.conditioning.null_class), y])
            kwargs = {} if y is None else {"class_labels": y}
            loop_start = time.perf_counter()
            for i, t in enumerate(scheduler.timesteps):
                model_input = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
                u0 = time.perf_counter()
                out = self.forward(model_input, t, **kwargs).sample
                timings.unet_s += time.perf_counter() - u0
                if guided:
                    uncond, cond = out.chunk(2)
                    out = uncond + guidance_scale * (cond - uncond)
                x = scheduler.step(out, t, x, **step_kwargs).prev_sample
                if callback is not None:
                    callback(i, int(t), x)
            timings.denoise_s = time.perf_counter() - loop_start
            timings.steps = len(scheduler.timesteps)
            d0 = time.perf_counter()
            image = self.vae.decode(x / bundle.scaling_factor + bundle.shift_factor).sample
            images = to_uint8(image.numpy(), bundle.value_range)
            timings.decode_s = time.perf_counter() - d0
        timings.total_s = time.perf_counter() - start
        return images, timings

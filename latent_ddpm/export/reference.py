"""The torch reference sampler: diffusers' own schedulers in the loop of diffusers' pipelines.

The one torch sampling loop of the project: the export gate (a bundle against its source), the benchmark
(the runtime against PyTorch), training previews and the parity tests that hold the runtime's NumPy loop to
diffusers all sample through it. It does what ``latent_ddpm.runtime.pipeline.Pipeline`` does, in the same
order, so the two can be compared from the same numbers:

- the sampler by name (``SAMPLERS``: DDPM, DDIM, DPM-Solver++(2M)), built from the model's scheduler config
  as ``runtime.schedulers.make_scheduler`` builds its NumPy twin;
- classifier-free guidance (Ho & Salimans 2022, eq. 6) in one model call on the batch ``[null; cond]``,
  ``uncond + w (cond - uncond)``, on whatever the model predicts: epsilon, x0 and v are all linear in it;
- from given latents: ``generate`` scales N(0, I) noise by ``init_noise_sigma``; ``img2img`` noises encoded
  latents to the first step it runs (SDEdit, with diffusers' img2img rule for that step);
- with given step noise: DDPM's and stochastic DDIM's noise comes from ``step_noise``, called when the
  runtime draws from its generators, so ``numpy_step_noise(numpy_generators(seed, n))`` replays a seeded run
  whose latents and labels were given (one generator per image, ``latent_ddpm.runtime.seeds``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latent_ddpm.runtime.schedulers import SAMPLERS
from latent_ddpm.runtime.seeds import image_generators, image_seeds, normal_per_image

# model(sample, timestep, class_labels or None) -> the model output (epsilon, x0 or v)
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
StepNoise = Callable[[tuple[int, ...]], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]


def make_scheduler(sampler: str, config: Mapping[str, Any]) -> Any:
    """diffusers' scheduler for ``sampler``: the counterpart of ``latent_ddpm.runtime.schedulers.make_scheduler``."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddpm":
        return DDPMScheduler.from_config(dict(config))
    if sampler == "ddim":
        return DDIMScheduler.from_config(dict(config))
    if sampler == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            dict(config), solver_order=2, algorithm_type="dpmsolver++"
        )
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def unet_model(unet: Any) -> Model:
    """A diffusers ``UNet2DModel`` (or anything called like it) as the sampler's ``model``."""

    def model(sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return unet(sample, t, class_labels=labels).sample

    return model


def numpy_generators(seed: int | Sequence[int], num_images: int) -> list[np.random.Generator]:
    """The runtime's per-image generators for a request's ``seed`` (an int, or one per image)."""
    seeds = image_seeds(seed, num_images) if isinstance(seed, int) else tuple(seed)
    return image_generators(seeds)


def numpy_step_noise(generators: Sequence[np.random.Generator]) -> StepNoise:
    """Step noise as the runtime draws it: image k's float32 standard normals from ``generators[k]``, one
    array per noisy step (``numpy_generators`` makes them from a seed)."""
    return lambda shape: torch.from_numpy(normal_per_image(generators, shape))


@dataclass(frozen=True)
class Run:
    """What ``generate`` and ``img2img`` take besides the model, the schedule and where to start: the class
    labels and classifier-free guidance (the null class and the scale), DDIM's eta, the step noise (None:
    diffusers draws it) and a callback after every step."""

    labels: torch.Tensor | None = None
    null_class: int | None = None
    guidance_scale: float = 1.0
    eta: float = 0.0
    step_noise: StepNoise | None = None
    callback: StepCallback | None = None

    @classmethod
    def classes(cls, labels: np.ndarray | None, conditioning: Any, guidance_scale: float, **more: Any) -> Run:
        """From NumPy labels and a bundle's or source's ``conditioning`` (its null class; None: unconditional)."""
        return cls(
            labels=None if labels is None else torch.from_numpy(labels),
            null_class=None if conditioning is None else conditioning.null_class,
            guidance_scale=guidance_scale,
            **more,
        )


def generate(model: Model, scheduler: Any, noise: torch.Tensor, steps: int, run: Run = Run()) -> torch.Tensor:
    """Sample ``steps`` steps from the initial noise ``noise`` (N(0, I)); returns the final latents."""
    scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    return _denoise(model, scheduler, latents, scheduler.timesteps, run)


def img2img(
    model: Model,
    scheduler: Any,
    init_latents: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    strength: float,
    run: Run = Run(),
) -> tuple[torch.Tensor, int]:
    """SDEdit from encoded latents: of ``steps`` scheduled steps run the last ``int(steps * strength)``,
    starting from ``init_latents`` noised with ``noise`` to the first of them. Returns (latents, steps run)."""
    scheduler.set_timesteps(steps)
    begin = (steps - min(int(steps * strength), steps)) * scheduler.order
    timesteps = scheduler.timesteps[begin:]
    if len(timesteps) == 0:
        return init_latents, 0
    if hasattr(scheduler, "set_begin_index"):  # multistep schedulers count their steps from here
        scheduler.set_begin_index(begin)
    latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(init_latents.shape[0]))
    latents = _denoise(model, scheduler, latents, timesteps, run)
    return latents, len(timesteps)


def decode(
    vae: Any, latents: torch.Tensor, scaling_factor: float, shift_factor: float | None
) -> torch.Tensor:
    """Scaled latents -> the autoencoder's images (NCHW, its value range), undoing the scaling as
    LDMPipeline and the runtime's ``Pipeline.decode`` do."""
    with torch.inference_mode():
        return vae.decode(latents / scaling_factor + (shift_factor or 0.0)).sample


def _denoise(
    model: Model, scheduler: Any, latents: torch.Tensor, timesteps: torch.Tensor, run: Run
) -> torch.Tensor:
    labels, null_class, guidance_scale, eta = run.labels, run.null_class, run.guidance_scale, run.eta
    guided = labels is not None and guidance_scale != 1.0
    if guided and null_class is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs a null class (classifier-free guidance)")
    from diffusers import DDIMScheduler

    if eta != 0 and not isinstance(scheduler, DDIMScheduler):
        raise ValueError(f"eta={eta} applies to the ddim sampler only, not {type(scheduler).__name__}")
    y = None if labels is None else labels.to(latents.device)
    if guided:
        y = torch.cat([torch.full_like(y, null_class), y])  # [null; cond], as the runtime stacks it
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            if guided:
                model_input = torch.cat([model_input, model_input])
            out = model(model_input, t, y)
            if guided:
                uncond, cond = out.chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            latents = _step(scheduler, out, t, latents, eta, run.step_noise)
            if run.callback is not None:
                run.callback(i, int(t), latents)
    return latents


def _step(
    scheduler: Any,
    out: torch.Tensor,
    t: torch.Tensor,
    latents: torch.Tensor,
    eta: float,
    step_noise: StepNoise | None,
) -> torch.Tensor:
    """One scheduler step; the step's noise, where it has one, is ``step_noise``'s (if given)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    def noise() -> torch.Tensor:
        assert step_noise is not None
        return step_noise(tuple(latents.shape)).to(latents.device, latents.dtype)

    if isinstance(scheduler, DDIMScheduler):
        variance_noise = noise() if eta > 0 and step_noise is not None else None
        return scheduler.step(out, t, latents, eta=eta, variance_noise=variance_noise).prev_sample
    if isinstance(scheduler, DDPMScheduler) and step_noise is not None and int(t) > 0:
        with _ddpm_noise(noise()):
            return scheduler.step(out, t, latents).prev_sample
    return scheduler.step(out, t, latents).prev_sample


@contextlib.contextmanager
def _ddpm_noise(noise: torch.Tensor) -> Iterator[None]:
    """Make ``DDPMScheduler.step`` add ``noise``: unlike DDIM's, its step takes no ``variance_noise`` and draws
    with its module's ``randn_tensor``, which is swapped for the duration of one step."""
    from diffusers.schedulers import scheduling_ddpm

    original = scheduling_ddpm.randn_tensor
    scheduling_ddpm.randn_tensor = lambda *args, **kwargs: noise
    try:
        yield
    finally:
        scheduling_ddpm.randn_tensor = original

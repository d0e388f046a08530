"""The variance-preserving diffusion every sampler here integrates, set up once for all of them.

Training noised x_0 as x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4) with
alpha_bar_t = prod_{s <= t} (1 - beta_s); a sampler walks back along a subset of those timesteps. This base
holds what DDPM, DDIM and DPM-Solver share: the training schedule (``betas``, ``alphas``,
``alphas_cumprod``), the inference timesteps (``set_timesteps``, whose spacing DPM-Solver overrides), the
forward process (``add_noise``) and where a run starts (``set_begin_index``, for img2img). A subclass
precomputes its per-step coefficients in ``_precompute`` (called by ``set_timesteps``), so that ``step`` is
a handful of array operations.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.schedulers.common import (
    ONE,
    Generators,
    SchedulerOutput,
    StepNoise,
    add_noise_vp,
    check_num_inference_steps,
    cumprod_f32,
    spaced_timesteps,
    train_betas,
)
from latent_ddpm.runtime.schedulers.config import SchedulerBase

# diffusers' defaults of the config keys every sampler here reads; each adds its own (DEFAULTS).
VP_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "rescale_betas_zero_snr": False,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "steps_offset": 0,
    }
)
# DDIM's and DDPM's x_0 clipping (DPM-Solver++ only thresholds)
CLIP_DEFAULTS: Mapping[str, Any] = MappingProxyType({"clip_sample": True, "clip_sample_range": 1.0})


class VPScheduler(SchedulerBase):
    """Training schedule, inference timesteps and the forward process of a variance-preserving model."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.betas, self.alphas, self.alphas_cumprod = training_schedule(self.config)
        # Until set_timesteps, the full training chain T-1, ..., 0.
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(self.config["num_train_timesteps"], dtype=np.int64)[::-1].copy()
        self._begin_index: int | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the ``num_inference_steps`` timesteps to sample at (``config["timestep_spacing"]``)."""
        c = self.config
        n = check_num_inference_steps(num_inference_steps, c["num_train_timesteps"])
        self.num_inference_steps = n
        self.timesteps = spaced_timesteps(
            c["timestep_spacing"], c["num_train_timesteps"], n, c["steps_offset"]
        )
        self._begin_index = None
        self._precompute()

    def _precompute(self) -> None:
        """The per-step coefficients of ``self.timesteps``; subclasses fill them in."""

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (img2img), as diffusers' pipelines call it after set_timesteps.

        Every sampler takes it, so a loop never asks which sampler it drives; only multistep samplers, which
        count their own steps, need it.
        """
        if self.num_inference_steps is None:
            raise InputError(f"{type(self).__name__}.set_begin_index: call set_timesteps first")
        if not 0 <= begin_index <= len(self.timesteps):
            raise InputError(f"begin_index {begin_index} is outside 0..{len(self.timesteps)}")
        self._begin_index = int(begin_index)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        *,
        generator: Generators | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One reverse step from ``timestep`` (the sampler's ``_step``). Every sampler takes these arguments
        (k-diffusion's rule), so a loop never asks which one it drives; the noise of a stochastic step comes
        from ``generator`` (one, or one per image) or ``variance_noise``, and a deterministic one ignores both."""
        return self._step(model_output, timestep, sample, StepNoise(generator, variance_noise))

    def _step(
        self, model_output: np.ndarray, timestep: int, sample: np.ndarray, source: StepNoise
    ) -> SchedulerOutput:
        raise NotImplementedError(f"{type(self).__name__} is not a sampler")

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020, eq. 4), per batch item."""
        return add_noise_vp(self.alphas_cumprod, original_samples, noise, timesteps)


# The config keys the training schedule depends on.
_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)


def training_schedule(config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(betas, alphas, alphas_cumprod) of a checked config, read-only and computed once per config: every
    request builds its own scheduler, and the cosine schedule alone costs milliseconds to compute."""
    return _training_schedule(tuple((key, config[key]) for key in _SCHEDULE_KEYS))


@functools.lru_cache(maxsize=16)
def _training_schedule(key: tuple[tuple[str, Any], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    betas = train_betas(dict(key))
    alphas = ONE - betas
    alphas_cumprod = cumprod_f32(alphas)
    for array in (betas, alphas, alphas_cumprod):
        array.setflags(write=False)
    return betas, alphas, alphas_cumprod

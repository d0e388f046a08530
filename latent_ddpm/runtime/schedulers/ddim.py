"""DDIM (Song et al. 2021) in NumPy: diffusers' ``DDIMScheduler`` step for step."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.limits import check_eta
from latent_ddpm.runtime.schedulers.common import (
    ONE,
    SchedulerOutput,
    add_noise_vp,
    as_float32,
    check_num_inference_steps,
    check_same_shape,
    check_timestep,
    clip_or_threshold,
    cumprod_f32,
    draw_noise,
    predict_original_and_noise,
    spaced_timesteps,
    train_betas,
)
from latent_ddpm.runtime.schedulers.config import PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerBase


class DDIMScheduler(SchedulerBase):
    """The non-Markovian DDIM update (Song et al. 2021, eq. 12); ``eta`` = 0 is deterministic, 1 is DDPM-like.

    As in diffusers, the previous timestep is t - num_train_timesteps // num_inference_steps whatever the
    spacing, so with "linspace"/"trailing" spacing it can differ from the next scheduled timestep.
    """

    DEFAULTS = MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "trained_betas": None,
            "clip_sample": True,
            "set_alpha_to_one": True,
            "steps_offset": 0,
            "prediction_type": "epsilon",
            "thresholding": False,
            "dynamic_thresholding_ratio": 0.995,
            "clip_sample_range": 1.0,
            "sample_max_value": 1.0,
            "timestep_spacing": "leading",
            "rescale_betas_zero_snr": False,
        }
    )
    CHOICES = MappingProxyType({"prediction_type": PREDICTION_TYPES, "timestep_spacing": TIMESTEP_SPACINGS})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.betas = train_betas(self.config)
        self.alphas = ONE - self.betas
        self.alphas_cumprod = cumprod_f32(self.alphas)
        # alpha_bar "before" timestep 0, used by the last step: 1 (land on clean x_0) or alpha_bar_0.
        self.final_alpha_cumprod = ONE if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(self.config["num_train_timesteps"], dtype=np.int64)[::-1].copy()

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the ``num_inference_steps`` timesteps to sample at (``config["timestep_spacing"]``)."""
        c = self.config
        n = check_num_inference_steps(num_inference_steps, c["num_train_timesteps"])
        self.num_inference_steps = n
        self.timesteps = spaced_timesteps(
            c["timestep_spacing"], c["num_train_timesteps"], n, c["steps_offset"]
        )

    def _variance(self, alpha_prod_t: np.float32, alpha_prod_t_prev: np.float32) -> np.float32:
        """sigma_t(1)^2 = (1 - alpha_{t-1}) / (1 - alpha_t) * (1 - alpha_t / alpha_{t-1}) (Song et al. eq. 16)."""
        beta_prod_t = ONE - alpha_prod_t
        beta_prod_t_prev = ONE - alpha_prod_t_prev
        return (beta_prod_t_prev / beta_prod_t) * (ONE - alpha_prod_t / alpha_prod_t_prev)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: np.random.Generator | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t-1}. With ``eta`` > 0 it needs ``generator`` or ``variance_noise``.

        ``use_clipped_model_output`` re-derives eps from the clipped x_0 (as GLIDE does) before step 6.
        """
        if self.num_inference_steps is None:
            raise InputError("DDIMScheduler.step: call set_timesteps(num_inference_steps) first")
        eta = check_eta(eta)  # above 1, step 6 takes the square root of a negative number
        c = self.config
        timestep = check_timestep(timestep, c["num_train_timesteps"])
        model_output = as_float32(model_output, "model_output")
        sample = as_float32(sample, "sample")
        check_same_shape(model_output, sample)

        # 1. previous step value t - T // n (not necessarily the next entry of self.timesteps, see class doc)
        prev_timestep = timestep - c["num_train_timesteps"] // self.num_inference_steps

        # 2. alpha_t, alpha_{t-1} in DDIM's notation (diffusers' alphas_cumprod)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = ONE - alpha_prod_t

        # 3. "predicted x_0" f_theta(x_t) and eps_theta(x_t) (Song et al. eq. 12; Ho et al. eq. 15)
        pred_original_sample, pred_epsilon = predict_original_and_noise(
            model_output, sample, alpha_prod_t, c["prediction_type"]
        )

        # 4. clip or dynamically threshold x_0
        pred_original_sample = clip_or_threshold(pred_original_sample, c)

        # 5. sigma_t(eta) = eta * sqrt((1 - alpha_{t-1}) / (1 - alpha_t)) * sqrt(1 - alpha_t / alpha_{t-1}), eq. 16
        variance = self._variance(alpha_prod_t, alpha_prod_t_prev)
        std_dev_t = eta * np.sqrt(variance)

        if use_clipped_model_output:
            pred_epsilon = (sample - np.sqrt(alpha_prod_t) * pred_original_sample) / np.sqrt(beta_prod_t)

        # 6. "direction pointing to x_t": sqrt(1 - alpha_{t-1} - sigma_t^2) eps (Song et al. eq. 12)
        pred_sample_direction = np.sqrt(ONE - alpha_prod_t_prev - std_dev_t * std_dev_t) * pred_epsilon

        # 7. x_{t-1} without the random term: sqrt(alpha_{t-1}) x_0 + direction (Song et al. eq. 12)
        prev_sample = np.sqrt(alpha_prod_t_prev) * pred_original_sample + pred_sample_direction

        # 8. the random term sigma_t * eps_t of eq. 12
        if eta > 0:
            noise = draw_noise(sample.shape, generator, variance_noise, "DDIMScheduler.step with eta > 0")
            prev_sample = prev_sample + std_dev_t * noise

        return SchedulerOutput(prev_sample.astype(np.float32), pred_original_sample.astype(np.float32))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (Ho et al. 2020, eq. 4), per batch item."""
        return add_noise_vp(self.alphas_cumprod, original_samples, noise, timesteps)

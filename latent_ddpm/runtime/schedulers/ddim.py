"""DDIM (Song et al. 2021) in NumPy: diffusers' ``DDIMScheduler`` step for step."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.limits import check_eta
from latent_ddpm.runtime.schedulers.common import (
    ONE,
    SchedulerOutput,
    StepNoise,
    as_float32,
    check_same_shape,
    check_timestep,
    clip_or_threshold,
    draw_noise,
    predict_original_and_noise,
)
from latent_ddpm.runtime.schedulers.config import PREDICTION_TYPES, TIMESTEP_SPACINGS
from latent_ddpm.runtime.schedulers.variance_preserving import CLIP_DEFAULTS, VP_DEFAULTS, VPScheduler


@dataclass(frozen=True)
class DDIMCoefficients:
    """The float32 scalars of one DDIM step x_t -> x_{t-1}, in DDIM's notation (alpha = diffusers' alpha_bar)."""

    sqrt_alpha_prod_t: np.float32  # sqrt(alpha_t)
    sqrt_beta_prod_t: np.float32  # sqrt(1 - alpha_t)
    sqrt_alpha_prod_t_prev: np.float32  # sqrt(alpha_{t-1})
    std_dev_t: np.float32  # sigma_t(eta), eq. 16
    direction_coeff: np.float32  # sqrt(1 - alpha_{t-1} - sigma_t^2), eq. 12


class DDIMScheduler(VPScheduler):
    """The non-Markovian DDIM update (Song et al. 2021, eq. 12); ``eta`` = 0 is deterministic, 1 is DDPM-like.

    ``eta`` and ``use_clipped_model_output`` are sampling options, fixed when the scheduler is built (they
    are not diffusers config keys: ``DDIMScheduler.from_config(cfg, eta=0.5)``), so that ``step`` takes the
    same arguments as every other sampler's. As in diffusers, the previous timestep is
    t - num_train_timesteps // num_inference_steps whatever the spacing, so with "linspace"/"trailing"
    spacing it can differ from the next scheduled timestep.
    """

    DEFAULTS = MappingProxyType(
        {
            **VP_DEFAULTS,
            **CLIP_DEFAULTS,
            "set_alpha_to_one": True,
            "timestep_spacing": "leading",
        }
    )
    CHOICES = MappingProxyType({"prediction_type": PREDICTION_TYPES, "timestep_spacing": TIMESTEP_SPACINGS})
    SAMPLING_OPTIONS = ("eta", "use_clipped_model_output")

    def __init__(self, *, eta: float = 0.0, use_clipped_model_output: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.eta = check_eta(eta)  # above 1, step 6 takes the square root of a negative number
        self.use_clipped_model_output = bool(use_clipped_model_output)
        # alpha_bar "before" timestep 0, used by the last step: 1 (land on clean x_0) or alpha_bar_0.
        self.final_alpha_cumprod = ONE if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self._coefficients: dict[int, DDIMCoefficients] = {}

    def _precompute(self) -> None:
        self._coefficients = {int(t): self.coefficients(int(t)) for t in self.timesteps}

    def coefficients(self, timestep: int) -> DDIMCoefficients:
        """Stages 1, 2 and 5 of ``step``: everything that depends on the timestep alone."""
        assert self.num_inference_steps is not None
        # 1. previous step value t - T // n (not necessarily the next entry of self.timesteps, see class doc)
        prev_timestep = timestep - self.config["num_train_timesteps"] // self.num_inference_steps
        # 2. alpha_t, alpha_{t-1} in DDIM's notation (diffusers' alphas_cumprod)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = ONE - alpha_prod_t
        beta_prod_t_prev = ONE - alpha_prod_t_prev
        # 5. sigma_t(eta) = eta * sqrt((1 - alpha_{t-1}) / (1 - alpha_t)) * sqrt(1 - alpha_t / alpha_{t-1}), eq. 16
        variance = (beta_prod_t_prev / beta_prod_t) * (ONE - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = self.eta * np.sqrt(variance)
        return DDIMCoefficients(
            sqrt_alpha_prod_t=np.sqrt(alpha_prod_t),
            sqrt_beta_prod_t=np.sqrt(beta_prod_t),
            sqrt_alpha_prod_t_prev=np.sqrt(alpha_prod_t_prev),
            std_dev_t=np.float32(std_dev_t),
            direction_coeff=np.sqrt(ONE - alpha_prod_t_prev - std_dev_t * std_dev_t),
        )

    def _step(
        self, model_output: np.ndarray, timestep: int, sample: np.ndarray, source: StepNoise
    ) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t-1}. With ``eta`` > 0 it needs ``generator`` or ``variance_noise``.

        ``use_clipped_model_output`` re-derives eps from the clipped x_0 (as GLIDE does) before step 6.
        """
        if self.num_inference_steps is None:
            raise InputError("DDIMScheduler.step: call set_timesteps(num_inference_steps) first")
        c = self.config
        timestep = check_timestep(timestep, c["num_train_timesteps"])
        model_output = as_float32(model_output, "model_output")
        sample = as_float32(sample, "sample")
        check_same_shape(model_output, sample)

        # 1, 2, 5: the previous timestep, alpha_t, alpha_{t-1}, sigma_t(eta), precomputed by set_timesteps
        k = self._coefficients.get(timestep) or self.coefficients(timestep)

        # 3. "predicted x_0" f_theta(x_t) and eps_theta(x_t) (Song et al. eq. 12; Ho et al. eq. 15)
        pred_original_sample, pred_epsilon = predict_original_and_noise(
            model_output, sample, k.sqrt_alpha_prod_t, k.sqrt_beta_prod_t, c["prediction_type"]
        )
        assert pred_epsilon is not None

        # 4. clip or dynamically threshold x_0
        pred_original_sample = clip_or_threshold(pred_original_sample, c)

        if self.use_clipped_model_output:  # eps = (x_t - sqrt(alpha_t) x_0) / sqrt(1 - alpha_t)
            pred_epsilon = np.multiply(pred_original_sample, k.sqrt_alpha_prod_t)
            np.subtract(sample, pred_epsilon, out=pred_epsilon)
            np.divide(pred_epsilon, k.sqrt_beta_prod_t, out=pred_epsilon)

        # 6. "direction pointing to x_t": sqrt(1 - alpha_{t-1} - sigma_t^2) eps (Song et al. eq. 12)
        pred_sample_direction = np.multiply(pred_epsilon, k.direction_coeff)

        # 7. x_{t-1} without the random term: sqrt(alpha_{t-1}) x_0 + direction (Song et al. eq. 12)
        prev_sample = np.multiply(pred_original_sample, k.sqrt_alpha_prod_t_prev)
        prev_sample += pred_sample_direction

        # 8. the random term sigma_t * eps_t of eq. 12
        if self.eta > 0:
            noise = draw_noise(
                sample.shape, source.generator, source.variance_noise, "DDIMScheduler.step with eta > 0"
            )
            np.multiply(noise, k.std_dev_t, out=pred_sample_direction)
            prev_sample += pred_sample_direction

        return SchedulerOutput(prev_sample, pred_original_sample)

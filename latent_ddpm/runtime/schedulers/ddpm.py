"""DDPM ancestral sampling (Ho et al. 2020) in NumPy: diffusers' ``DDPMScheduler`` step for step."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
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
from latent_ddpm.runtime.schedulers.config import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS
from latent_ddpm.runtime.schedulers.variance_preserving import CLIP_DEFAULTS, VP_DEFAULTS, VPScheduler

LEARNED = ("learned", "learned_range")


@dataclass(frozen=True)
class DDPMCoefficients:
    """The float32 scalars of one DDPM step between two scheduled timesteps (Ho et al. 2020, eqs. 6-7)."""

    prev_timestep: int  # -1 after the last one
    alpha_prod_t: np.float32  # alpha_bar_t
    alpha_prod_t_prev: np.float32  # alpha_bar_{t-1}
    current_beta_t: np.float32  # 1 - alpha_bar_t / alpha_bar_{t-1}, the effective beta_t of the step
    sqrt_alpha_prod_t: np.float32
    sqrt_beta_prod_t: np.float32
    pred_original_sample_coeff: np.float32  # of x_0 in mu_tilde, eq. 7
    current_sample_coeff: np.float32  # of x_t in mu_tilde, eq. 7
    std: np.float32 | None  # sigma_t of a fixed variance_type; None for a learned one (it needs the model)


class DDPMScheduler(VPScheduler):
    """Samples x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), the posterior of Ho et al. 2020 eqs. 6-7, at every step.

    With ``set_timesteps(n)`` for n < num_train_timesteps the posterior is taken between consecutive
    scheduled timesteps (diffusers' ``previous_timestep``), not between t and t - 1.
    """

    DEFAULTS = MappingProxyType(
        {
            **VP_DEFAULTS,
            **CLIP_DEFAULTS,
            "variance_type": "fixed_small",
            "timestep_spacing": "leading",
        }
    )
    # variance_type None (a DPM-Solver config's default) falls through diffusers' branches to fixed_small.
    CHOICES = MappingProxyType(
        {
            "prediction_type": PREDICTION_TYPES,
            "timestep_spacing": TIMESTEP_SPACINGS,
            "variance_type": (None, "fixed_small", "fixed_small_log", "fixed_large", *LEARNED),
        }
    )
    REFUSED = MappingProxyType(
        {
            ("variance_type", "fixed_large_log"): (
                "diffusers' DDPMScheduler.step takes the square root of this log-variance and returns NaN"
            )
        }
    )
    BETA_SCHEDULES = (*BETA_SCHEDULES, "sigmoid", "laplace")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.variance_type = self.config["variance_type"]
        self._previous: dict[int, int] = {}
        self._coefficients: dict[int, DDPMCoefficients] = {}

    def _precompute(self) -> None:
        self._previous = {}
        for t, after in zip(self.timesteps.tolist(), [*self.timesteps[1:].tolist(), -1], strict=True):
            self._previous.setdefault(t, after)  # a repeated timestep steps to what follows its first entry
        self._coefficients = {t: self.coefficients(t) for t in self.timesteps.tolist()}

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in the schedule, -1 after the last one."""
        if not self.num_inference_steps:
            return timestep - 1
        if timestep not in self._previous:
            raise InputError(f"timestep {timestep} is not in the schedule {self.timesteps.tolist()}")
        return self._previous[timestep]

    def coefficients(self, timestep: int) -> DDPMCoefficients:
        """Stages 1 and 4 of ``step`` (and 6's sigma for a fixed variance): what depends on the timestep alone."""
        prev_t = self.previous_timestep(timestep)
        # 1. alpha_bar_t, alpha_bar_{t-1} and the effective beta_t between the two scheduled timesteps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else ONE
        beta_prod_t = ONE - alpha_prod_t
        beta_prod_t_prev = ONE - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = ONE - current_alpha_t
        fixed = self.variance_type not in LEARNED
        return DDPMCoefficients(
            prev_timestep=prev_t,
            alpha_prod_t=alpha_prod_t,
            alpha_prod_t_prev=alpha_prod_t_prev,
            current_beta_t=current_beta_t,
            sqrt_alpha_prod_t=np.sqrt(alpha_prod_t),
            sqrt_beta_prod_t=np.sqrt(beta_prod_t),
            # 4. coefficients of x_0 and x_t in the posterior mean mu_tilde (Ho et al. 2020, eq. 7)
            pred_original_sample_coeff=(np.sqrt(alpha_prod_t_prev) * current_beta_t) / beta_prod_t,
            current_sample_coeff=np.sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t,
            std=self._std(current_beta_t, alpha_prod_t, alpha_prod_t_prev, None) if fixed else None,
        )

    def _step(
        self, model_output: np.ndarray, timestep: int, sample: np.ndarray, source: StepNoise
    ) -> SchedulerOutput:
        """One reverse step x_t -> x_{t-1}; noise comes only from ``generator`` or ``variance_noise``."""
        c = self.config
        t = check_timestep(timestep, c["num_train_timesteps"])
        k = self._coefficients.get(t) or self.coefficients(t)  # 1, 4: precomputed by set_timesteps
        model_output = as_float32(model_output, "model_output")
        sample = as_float32(sample, "sample")

        # 0. A learned-variance model outputs [mean prediction, variance] stacked along channels.
        predicted_variance = None
        if self.variance_type in LEARNED:
            if model_output.ndim < 2 or model_output.shape[1] != 2 * sample.shape[1]:
                raise InputError(
                    f"variance_type={self.variance_type!r} needs a model_output with 2x the sample's "
                    f"channels, got {model_output.shape} for sample {sample.shape}"
                )
            model_output, predicted_variance = np.split(model_output, 2, axis=1)
        check_same_shape(model_output, sample)

        # 2. predicted x_0 (Ho et al. 2020, eq. 15 for epsilon)
        pred_original_sample, _ = predict_original_and_noise(
            model_output, sample, k.sqrt_alpha_prod_t, k.sqrt_beta_prod_t, c["prediction_type"], False
        )

        # 3. clip or dynamically threshold x_0
        pred_original_sample = clip_or_threshold(pred_original_sample, c)

        # 5. posterior mean mu_tilde(x_t, x_0) (Ho et al. 2020, eq. 7)
        pred_prev_sample = np.multiply(pred_original_sample, k.pred_original_sample_coeff)
        pred_prev_sample += np.multiply(sample, k.current_sample_coeff)

        # 6. add sigma_t z with the posterior variance beta_tilde (Ho et al. 2020, eqs. 6-7), except at t = 0
        if t > 0:
            noise = draw_noise(sample.shape, source.generator, source.variance_noise, "DDPMScheduler.step")
            std = k.std
            if std is None:
                std = self._std(k.current_beta_t, k.alpha_prod_t, k.alpha_prod_t_prev, predicted_variance)
            pred_prev_sample += std * noise

        return SchedulerOutput(pred_prev_sample, pred_original_sample)

    def _std(
        self,
        current_beta_t: np.float32,
        alpha_prod_t: np.float32,
        alpha_prod_t_prev: np.float32,
        predicted_variance: np.ndarray | None,
    ) -> Any:
        """Standard deviation of the step's noise for each ``variance_type`` (diffusers' ``_get_variance``)."""
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (Ho et al. 2020, eq. 7), floored for log
        variance = (ONE - alpha_prod_t_prev) / (ONE - alpha_prod_t) * current_beta_t
        variance = np.maximum(variance, np.float32(1e-20))
        if self.variance_type == "fixed_small_log":
            return np.exp(0.5 * np.log(variance))
        if self.variance_type == "fixed_large":  # sigma_t^2 = beta_t, the other choice of Ho et al. Sec. 3.2
            return np.sqrt(current_beta_t)
        if self.variance_type == "learned":
            assert predicted_variance is not None  # step() splits it off a learned-variance output
            return np.sqrt(predicted_variance)
        if self.variance_type == "learned_range":
            assert predicted_variance is not None
            # Nichol & Dhariwal 2021, eq. 15: interpolate log-variance between beta_tilde_t and beta_t
            min_log = np.log(variance)
            max_log = np.log(current_beta_t)
            frac = (predicted_variance + 1) / 2
            return np.exp(0.5 * (frac * max_log + (1 - frac) * min_log))
        return np.sqrt(variance)  # "fixed_small" (and None)

"""Multistep DPM-Solver++ (Lu et al. 2022b) in NumPy: diffusers' ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"``, orders 1 and 2, step for step.

Notation (diffusers'): for a noise level ``sigma`` (= sqrt((1 - alpha_bar) / alpha_bar), the VE sigma),
alpha_t = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma * alpha_t are the VP signal and noise scales, so that
x_t = alpha_t x_0 + sigma_t eps; lambda_t = log(alpha_t / sigma_t) is half the log-SNR and h = lambda_t -
lambda_s the step size in lambda. DPM-Solver++ integrates the data prediction x_0.

diffusers' scheduler also has the noise-prediction solver ("dpmsolver", Lu et al. 2022a), stochastic
variants ("sde-dpmsolver", "sde-dpmsolver++") and a third order. The runtime refuses them: with classifier-free
guidance the data-prediction form is the stable one and the authors recommend its second order (Lu et al.
2022b, Secs. 1 and 4), the SDE variants pay off only at many more steps than the few this solver is for, and
each would be a sampler to hold to diffusers and to pass the export gate for no gain our users asked for.
"""

from __future__ import annotations

import math
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
    check_num_inference_steps,
    check_same_shape,
    dynamic_threshold,
)
from latent_ddpm.runtime.schedulers.config import PREDICTION_TYPES, TIMESTEP_SPACINGS
from latent_ddpm.runtime.schedulers.variance_preserving import VP_DEFAULTS, VPScheduler

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")  # diffusers' names
_REFUSED_WHY = "the runtime samples with DPM-Solver++ of order 1 or 2 only (see the module docstring)"
LEARNED = ("learned", "learned_range")
# diffusers maps DEIS's and UniPC's names onto its own when loading their configs
_ALIASES = {
    "algorithm_type": {"deis": "dpmsolver++"},
    "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
}

# sigma resamplings, in diffusers' order of precedence: (config key, name)
_SIGMA_SPACINGS = (
    ("use_karras_sigmas", "karras"),
    ("use_lu_lambdas", "lu_lambdas"),
    ("use_exponential_sigmas", "exponential"),
)


def sigma_to_alpha_sigma_t(sigma: np.float32 | np.ndarray) -> tuple[Any, Any]:
    """VE sigma -> (alpha_t, sigma_t) of the VP process with the same signal-to-noise ratio."""
    alpha_t = ONE / np.sqrt(sigma * sigma + ONE)
    return alpha_t, sigma * alpha_t


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma, by linear interpolation in log sigma (as diffusers)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigma.shape)


@dataclass(frozen=True)
class DPMSolverCoefficients:
    """The float32 scalars of one step from sigma_s = ``sigmas[i]`` to sigma_t = ``sigmas[i + 1]``."""

    alpha_s: np.float32  # signal scale at s: converts the model output to x_0
    sigma_s: np.float32  # noise scale at s
    sample_coeff: np.float32  # sigma_t / sigma_s
    d0_coeff: np.float32  # alpha_t (e^{-h} - 1), h = lambda_t - lambda_s
    d1_coeff: np.float32 | None  # of D1 in the second order (subtracted); None at the first step
    inverse_r0: np.float32 | None  # 1 / r0 = h / h_{i-1}; None at the first step


class DPMSolverMultistepScheduler(VPScheduler):
    """Multistep DPM-Solver++ reusing the last model output: 2M (Lu et al. 2022b, Alg. 2), or order 1.

    Keeps diffusers' state: ``model_outputs`` (the converted outputs of the last ``solver_order`` steps),
    ``lower_order_nums`` (how many are filled) and ``step_index``; ``set_timesteps`` resets all three.
    ``step`` must therefore see the timesteps in order, once each. Deterministic: ``step`` draws no noise.
    """

    DEFAULTS = MappingProxyType(
        {
            **VP_DEFAULTS,
            "solver_order": 2,
            "algorithm_type": "dpmsolver++",
            "solver_type": "midpoint",
            "lower_order_final": True,
            "euler_at_final": False,
            "use_karras_sigmas": False,
            "use_exponential_sigmas": False,
            "use_beta_sigmas": False,
            "use_lu_lambdas": False,
            "use_flow_sigmas": False,
            "flow_shift": 1.0,
            "final_sigmas_type": "zero",
            "lambda_min_clipped": -math.inf,
            "variance_type": None,
            "timestep_spacing": "linspace",
            "use_dynamic_shifting": False,
            "time_shift_type": "exponential",
        }
    )
    CHOICES = MappingProxyType(
        {
            "solver_order": (1, 2, 3),  # 3 is refused (REFUSED) with why, not as an unknown value
            "prediction_type": PREDICTION_TYPES,
            "algorithm_type": ALGORITHM_TYPES,
            "solver_type": ("midpoint", "heun"),
            "final_sigmas_type": ("zero", "sigma_min"),
            # Only "learned"/"learned_range" change anything; DDPM's values arrive with a DDPM config.
            "variance_type": (
                None,
                *LEARNED,
                "fixed_small",
                "fixed_small_log",
                "fixed_large",
                "fixed_large_log",
            ),
            "timestep_spacing": TIMESTEP_SPACINGS,
            "time_shift_type": ("exponential",),
        }
    )

    REFUSED = MappingProxyType(
        {
            ("use_beta_sigmas", True): "beta sigmas need scipy.stats.beta.ppf",
            ("use_flow_sigmas", True): "flow-matching sigmas are for flow models, not DDPM-trained U-Nets",
            ("use_dynamic_shifting", True): "dynamic shifting is for flow models, not DDPM-trained U-Nets",
            ("prediction_type", "flow_prediction"): "flow models are not DDPM-trained U-Nets",
            ("algorithm_type", "dpmsolver"): _REFUSED_WHY,
            ("algorithm_type", "sde-dpmsolver"): _REFUSED_WHY,
            ("algorithm_type", "sde-dpmsolver++"): _REFUSED_WHY,
            ("solver_order", 3): _REFUSED_WHY,
        }
    )

    def __init__(self, **options: Any) -> None:
        requested_algorithm = options.get("algorithm_type", self.DEFAULTS["algorithm_type"])
        for key, aliases in _ALIASES.items():
            if isinstance(options.get(key), str) and options[key] in aliases:
                options[key] = aliases[options[key]]
        super().__init__(**options)
        c = self.config
        if c["use_karras_sigmas"] and c["use_exponential_sigmas"]:
            raise InputError(
                "DPMSolverMultistepScheduler: use_karras_sigmas and use_exponential_sigmas exclude each other"
            )
        # diffusers checks the name it was given, so a DEIS config ("deis") needs sigma_min too
        if requested_algorithm != "dpmsolver++" and c["final_sigmas_type"] == "zero":
            raise InputError(
                f"DPMSolverMultistepScheduler: final_sigmas_type='zero' is not supported with "
                f"algorithm_type={requested_algorithm!r}; use 'sigma_min'"
            )
        if c["rescale_betas_zero_snr"]:
            # alpha_bar_T = 0 would make sigma_T infinite; diffusers uses the smallest fp16 subnormal instead
            self.alphas_cumprod = self.alphas_cumprod.copy()  # the shared schedule is read-only
            self.alphas_cumprod[-1] = np.float32(2**-24)
        # half log-SNR of each training timestep, lambda_t = log(alpha_t) - log(sigma_t)
        self.lambdas = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(ONE - self.alphas_cumprod))
        self.sigmas = self._train_sigmas()
        self._coefficients: list[DPMSolverCoefficients] = []
        self._reset_state()

    def _train_sigmas(self) -> np.ndarray:
        return np.sqrt((ONE - self.alphas_cumprod) / self.alphas_cumprod)

    def _reset_state(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config["solver_order"]
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._begin_index = None

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step`` (None until the first)."""
        return self._step_index

    # ------------------------------------------------------------------ the schedule

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose timesteps and their sigmas (plus a final sigma), reset the multistep state, precompute."""
        c = self.config
        n = check_num_inference_steps(num_inference_steps, c["num_train_timesteps"])
        # Clip the smallest lambda for numerical stability (critical for the cosine schedule).
        clipped_idx = int(np.searchsorted(self.lambdas[::-1], c["lambda_min_clipped"]))
        last_timestep = c["num_train_timesteps"] - clipped_idx
        timesteps = self._spaced_timesteps(n, last_timestep)

        sigmas = self._train_sigmas()
        log_sigmas = np.log(sigmas)
        spacing = self._sigma_spacing()
        if spacing is not None:
            sigmas = self._resampled_sigmas(spacing, sigmas, log_sigmas, n)
            timesteps = _sigma_to_t(sigmas, log_sigmas)
            if spacing != "exponential" and c["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)

        if c["final_sigmas_type"] == "sigma_min":
            sigma_last = np.sqrt((ONE - self.alphas_cumprod[0]) / self.alphas_cumprod[0])
        else:  # "zero": the last step lands on x_0
            sigma_last = np.float32(0)
        self.sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_state()
        self._coefficients = [self.coefficients(i) for i in range(len(self.timesteps))]

    def _spaced_timesteps(self, n: int, last_timestep: int) -> np.ndarray:
        """Lin et al. 2024, Table 2 spacings over n + 1 points, dropping the last (as diffusers' DPM-Solver)."""
        c = self.config
        spacing = c["timestep_spacing"]
        if spacing == "linspace":
            return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        if spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].astype(np.int64) + c["steps_offset"]
        step_ratio = c["num_train_timesteps"] / n  # "trailing"
        return np.arange(last_timestep, 0, -step_ratio).round().astype(np.int64) - 1

    def _sigma_spacing(self) -> str | None:
        """Which resampling of the sigmas is on; diffusers' precedence when several are set."""
        return next((name for key, name in _SIGMA_SPACINGS if self.config[key]), None)

    def _resampled_sigmas(
        self, spacing: str, sigmas: np.ndarray, log_sigmas: np.ndarray, n: int
    ) -> np.ndarray:
        """n sigmas from sigma_max down to sigma_min, spaced as Karras et al. 2022 eq. 5 (rho = 7) or uniformly
        in log sigma = -lambda: "lu_lambdas" (Lu et al. 2022a's uniform-lambda steps) and "exponential" are
        the same spacing, but only "lu_lambdas" rounds its timesteps."""
        ramp = np.linspace(0, 1, n)
        if spacing == "lu_lambdas":
            log_sigma_min, log_sigma_max = log_sigmas[0].item(), log_sigmas[-1].item()
            return np.exp(log_sigma_max + ramp * (log_sigma_min - log_sigma_max))
        sigmas = np.flip(sigmas).copy()
        sigma_min, sigma_max = sigmas[-1].item(), sigmas[0].item()
        if spacing == "exponential":
            return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
        rho = 7.0
        min_inv_rho = sigma_min ** (1 / rho)
        max_inv_rho = sigma_max ** (1 / rho)
        return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho

    def index_for_timestep(self, timestep: int) -> int:
        """Position of ``timestep`` in the schedule; of repeated entries the second (as diffusers)."""
        candidates = np.flatnonzero(self.timesteps == timestep)
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return int(candidates[1] if len(candidates) > 1 else candidates[0])

    # ------------------------------------------------------------------ one step

    def _alpha_sigma_lambda(self, index: int) -> tuple[np.float32, np.float32, np.float32]:
        alpha, sigma = sigma_to_alpha_sigma_t(self.sigmas[index])
        return alpha, sigma, np.log(alpha) - np.log(sigma)

    def coefficients(self, i: int) -> DPMSolverCoefficients:
        """What the step from ``sigmas[i]`` (s) to ``sigmas[i + 1]`` (t) needs besides the model outputs."""
        # lambda = +inf at a final sigma of 0 is intended (its r0 is never used: the last step is first order)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
            alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
            h = lambda_t - lambda_s0
            d1_coeff = inverse_r0 = None
            if i > 0:
                _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
                r0 = (lambda_s0 - lambda_s1) / h  # r0 = h_{i-1} / h_i
                inverse_r0 = ONE / r0
                if self.config["solver_type"] == "midpoint":
                    d1_coeff = 0.5 * (alpha_t * (np.exp(-h) - ONE))
                else:  # "heun": + alpha_t ((e^{-h} - 1) / h + 1) D1, written as a subtraction
                    d1_coeff = -(alpha_t * ((np.exp(-h) - ONE) / h + ONE))
        return DPMSolverCoefficients(
            alpha_s=alpha_s0,
            sigma_s=sigma_s0,
            sample_coeff=sigma_t / sigma_s0,
            d0_coeff=alpha_t * (np.exp(-h) - ONE),
            d1_coeff=d1_coeff,
            inverse_r0=inverse_r0,
        )

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The model's output as the data prediction x_0 that DPM-Solver++ integrates (a new array).

        A learned-variance model's variance channels are dropped (diffusers keeps the first 3 channels, which
        is the same thing for the 3-channel samples it works with).
        """
        c = self.config
        prediction_type = c["prediction_type"]
        if prediction_type == "epsilon" and c["variance_type"] in LEARNED:
            model_output = model_output[:, : sample.shape[1]]
        check_same_shape(model_output, sample)
        assert self._step_index is not None
        k = self._coefficients[self._step_index]
        if prediction_type == "epsilon":  # (x_s - sigma_s eps) / alpha_s
            x0_pred = np.multiply(model_output, k.sigma_s)
            np.subtract(sample, x0_pred, out=x0_pred)
            np.divide(x0_pred, k.alpha_s, out=x0_pred)
        elif prediction_type == "sample":
            x0_pred = model_output.copy()
        else:  # "v_prediction": alpha_s x_s - sigma_s v
            x0_pred = np.multiply(sample, k.alpha_s)
            x0_pred -= np.multiply(model_output, k.sigma_s)
        if c["thresholding"]:
            x0_pred = dynamic_threshold(x0_pred, c["dynamic_thresholding_ratio"], c["sample_max_value"])
        return x0_pred

    def _step(
        self, model_output: np.ndarray, timestep: int, sample: np.ndarray, source: StepNoise
    ) -> SchedulerOutput:
        """One multistep update x_s -> x_t. It draws no noise: ``generator`` and ``variance_noise`` are
        accepted (every sampler's ``step`` takes the same arguments) and unused.

        ``pred_original_sample`` is the step's x_0 estimate, the converted model output.
        """
        c = self.config
        if self.num_inference_steps is None:
            raise InputError(
                "DPMSolverMultistepScheduler.step: call set_timesteps(num_inference_steps) first"
            )
        if self._step_index is None:
            self._step_index = (
                self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
            )
        i, n = self._step_index, len(self.timesteps)
        if i >= n:
            raise InputError(
                f"DPMSolverMultistepScheduler.step: all {n} steps are done; call set_timesteps again"
            )
        model_output = as_float32(model_output, "model_output")
        sample = as_float32(sample, "sample")
        k = self._coefficients[i]

        # 1. Fall back to the first order at the end: it stabilises few-step sampling (and a final sigma of 0).
        lower_order_final = (i == n - 1) and (
            c["euler_at_final"] or (c["lower_order_final"] and n < 15) or c["final_sigmas_type"] == "zero"
        )

        # 2. Convert the model output and push it onto the history m_{i-1}, m_i.
        m0 = self.convert_model_output(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], m0]

        # 3. x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0 [- c D1]: DPM-Solver++(1) (Lu et al. 2022b,
        # eq. 9, DDIM in this parametrisation) while there is no history, else the multistep second order
        # (Alg. 2) with D0 = m_i and D1 = (m_i - m_{i-1}) / r0.
        prev_sample = np.multiply(sample, k.sample_coeff)
        prev_sample -= np.multiply(m0, k.d0_coeff)
        if not (c["solver_order"] == 1 or self.lower_order_nums < 1 or lower_order_final):
            assert k.d1_coeff is not None and k.inverse_r0 is not None
            m1 = self.model_outputs[-2]
            assert m1 is not None  # lower_order_nums >= 1: the previous step's output is there
            d1 = np.subtract(m0, m1)
            d1 *= k.inverse_r0
            d1 *= k.d1_coeff
            prev_sample -= d1
        if self.lower_order_nums < c["solver_order"]:
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample, m0)

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """x_t = alpha_t x_0 + sigma_t noise at the scheduled sigma of each timestep (after set_timesteps)."""
        if self.num_inference_steps is None:
            raise InputError(
                "DPMSolverMultistepScheduler.add_noise: call set_timesteps(num_inference_steps) first"
            )
        x0 = as_float32(original_samples, "original_samples")
        eps = as_float32(noise, "noise")
        if eps.shape != x0.shape:
            raise InputError(f"noise has shape {eps.shape} but original_samples has shape {x0.shape}")
        t = np.asarray(timesteps).reshape(-1)
        if self._begin_index is None:
            step_indices = [self.index_for_timestep(int(ti)) for ti in t]
        elif self._step_index is not None:  # after the first step (inpainting)
            step_indices = [self._step_index] * len(t)
        else:  # before the first step (img2img)
            step_indices = [self._begin_index] * len(t)
        sigma = self.sigmas[step_indices].reshape((-1,) + (1,) * (x0.ndim - 1))
        alpha_t, sigma_t = sigma_to_alpha_sigma_t(sigma)
        return (alpha_t * x0 + sigma_t * eps).astype(np.float32)

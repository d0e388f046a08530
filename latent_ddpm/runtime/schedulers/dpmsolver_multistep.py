"""Multistep DPM-Solver / DPM-Solver++ (Lu et al. 2022a, 2022b) in NumPy: diffusers'
``DPMSolverMultistepScheduler`` step for step.

Notation (diffusers'): for a noise level ``sigma`` (= sqrt((1 - alpha_bar) / alpha_bar), the VE sigma),
alpha_t = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma * alpha_t are the VP signal and noise scales, so that
x_t = alpha_t x_0 + sigma_t eps; lambda_t = log(alpha_t / sigma_t) is half the log-SNR and h = lambda_t -
lambda_s the step size in lambda. "dpmsolver++" integrates the data prediction x_0 (Lu et al. 2022b),
"dpmsolver" the noise prediction eps (Lu et al. 2022a); the "sde-" variants add noise at every step.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.schedulers.common import (
    ONE,
    SchedulerOutput,
    as_float32,
    check_num_inference_steps,
    check_same_shape,
    cumprod_f32,
    draw_noise,
    dynamic_threshold,
    train_betas,
)
from latent_ddpm.runtime.schedulers.config import PREDICTION_TYPES, TIMESTEP_SPACINGS, SchedulerBase

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
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


class DPMSolverMultistepScheduler(SchedulerBase):
    """Multistep DPM-Solver(++) of order 1-3 reusing the last model outputs; 2M (Lu et al. 2022b, Alg. 2) default.

    Keeps diffusers' state: ``model_outputs`` (the converted outputs of the last ``solver_order`` steps),
    ``lower_order_nums`` (how many are filled) and ``step_index``; ``set_timesteps`` resets all three.
    ``step`` must therefore see the timesteps in order, once each.
    """

    DEFAULTS = MappingProxyType(
        {
            "num_train_timesteps": 1000,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "trained_betas": None,
            "solver_order": 2,
            "prediction_type": "epsilon",
            "thresholding": False,
            "dynamic_thresholding_ratio": 0.995,
            "sample_max_value": 1.0,
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
            "steps_offset": 0,
            "rescale_betas_zero_snr": False,
            "use_dynamic_shifting": False,
            "time_shift_type": "exponential",
        }
    )
    CHOICES = MappingProxyType(
        {
            "solver_order": (1, 2, 3),
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
        if requested_algorithm not in ("dpmsolver++", "sde-dpmsolver++") and c["final_sigmas_type"] == "zero":
            raise InputError(
                f"DPMSolverMultistepScheduler: final_sigmas_type='zero' is not supported with "
                f"algorithm_type={requested_algorithm!r}; use 'sigma_min'"
            )
        self.betas = train_betas(c)
        self.alphas = ONE - self.betas
        self.alphas_cumprod = cumprod_f32(self.alphas)
        if c["rescale_betas_zero_snr"]:
            # alpha_bar_T = 0 would make sigma_T infinite; diffusers uses the smallest fp16 subnormal instead
            self.alphas_cumprod[-1] = np.float32(2**-24)
        # half log-SNR of each training timestep, lambda_t = log(alpha_t) - log(sigma_t)
        self.lambdas = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(ONE - self.alphas_cumprod))
        self.sigmas = self._train_sigmas()
        self.num_inference_steps: int | None = None
        self.timesteps = np.arange(c["num_train_timesteps"], dtype=np.int64)[::-1].copy()
        self._reset_state()

    def _train_sigmas(self) -> np.ndarray:
        return np.sqrt((ONE - self.alphas_cumprod) / self.alphas_cumprod)

    def _reset_state(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config["solver_order"]
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step`` (None until the first)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (img2img), as diffusers' pipelines call it after set_timesteps."""
        self._begin_index = int(begin_index)

    # ------------------------------------------------------------------ the schedule

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose timesteps and their sigmas (plus a final sigma) and reset the multistep state."""
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

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The model's output as what the solver integrates: x_0 for "dpmsolver++", eps for "dpmsolver".

        A learned-variance model's variance channels are dropped (diffusers keeps the first 3 channels, which
        is the same thing for the 3-channel samples it works with).
        """
        c = self.config
        prediction_type = c["prediction_type"]
        if prediction_type == "epsilon" and c["variance_type"] in LEARNED:
            model_output = model_output[:, : sample.shape[1]]
        check_same_shape(model_output, sample)
        alpha_t, sigma_t = sigma_to_alpha_sigma_t(self.sigmas[self._step_index])

        if c["algorithm_type"] in ("dpmsolver++", "sde-dpmsolver++"):
            if prediction_type == "epsilon":
                x0_pred = (sample - sigma_t * model_output) / alpha_t
            elif prediction_type == "sample":
                x0_pred = model_output
            else:  # "v_prediction"
                x0_pred = alpha_t * sample - sigma_t * model_output
            if c["thresholding"]:
                x0_pred = dynamic_threshold(x0_pred, c["dynamic_thresholding_ratio"], c["sample_max_value"])
            return x0_pred

        if prediction_type == "epsilon":
            epsilon = model_output
        elif prediction_type == "sample":
            epsilon = (sample - alpha_t * model_output) / sigma_t
        else:  # "v_prediction"
            epsilon = alpha_t * model_output + sigma_t * sample
        if c["thresholding"]:
            x0_pred = (sample - sigma_t * epsilon) / alpha_t
            x0_pred = dynamic_threshold(x0_pred, c["dynamic_thresholding_ratio"], c["sample_max_value"])
            epsilon = (sample - alpha_t * x0_pred) / sigma_t
        return epsilon

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        *,
        generator: np.random.Generator | None = None,
        variance_noise: np.ndarray | None = None,
    ) -> SchedulerOutput:
        """One multistep update x_s -> x_t; the "sde-" algorithms need ``generator`` or ``variance_noise``.

        ``pred_original_sample`` is the step's x_0 estimate (for "dpmsolver", derived from its eps).
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

        # 1. Fall back to lower orders at the end: it stabilises few-step sampling (and a final sigma of 0).
        lower_order_final = (i == n - 1) and (
            c["euler_at_final"] or (c["lower_order_final"] and n < 15) or c["final_sigmas_type"] == "zero"
        )
        lower_order_second = (i == n - 2) and c["lower_order_final"] and n < 15

        # 2. Convert the model output and push it onto the history m_{i-2}, m_{i-1}, m_i.
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], model_output]

        # 3. The SDE variants' noise z ~ N(0, I).
        noise = None
        if c["algorithm_type"] in ("sde-dpmsolver", "sde-dpmsolver++"):
            noise = draw_noise(
                sample.shape, generator, variance_noise, f"algorithm_type={c['algorithm_type']!r}"
            )

        # 4. The update of the highest order the history (and the end of the schedule) allows.
        with np.errstate(divide="ignore"):  # lambda = +inf at a final sigma of 0 is intended
            if c["solver_order"] == 1 or self.lower_order_nums < 1 or lower_order_final:
                prev_sample = self._first_order_update(model_output, sample, noise)
            elif c["solver_order"] == 2 or self.lower_order_nums < 2 or lower_order_second:
                prev_sample = self._second_order_update(sample, noise)
            else:
                prev_sample = self._third_order_update(sample, noise)
        if self.lower_order_nums < c["solver_order"]:
            self.lower_order_nums += 1

        # 5. x_0 estimate for previews.
        if c["algorithm_type"] in ("dpmsolver++", "sde-dpmsolver++"):
            pred_original_sample = model_output
        else:
            alpha_s, sigma_s = sigma_to_alpha_sigma_t(self.sigmas[i])
            pred_original_sample = (sample - sigma_s * model_output) / alpha_s
        self._step_index += 1
        return SchedulerOutput(prev_sample.astype(np.float32), pred_original_sample.astype(np.float32))

    def _alpha_sigma_lambda(self, index: int) -> tuple[np.float32, np.float32, np.float32]:
        alpha, sigma = sigma_to_alpha_sigma_t(self.sigmas[index])
        return alpha, sigma, np.log(alpha) - np.log(sigma)

    def _first_order_update(self, m0: np.ndarray, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """DPM-Solver-1 (Lu et al. 2022a) / DPM-Solver++(1) (Lu et al. 2022b): the exact solution for a constant
        model output over the step; DDIM in the (alpha_t, sigma_t, lambda) parametrisation."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(i)
        h = lambda_t - lambda_s
        algorithm = self.config["algorithm_type"]
        if algorithm == "dpmsolver++":
            return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - ONE)) * m0
        if algorithm == "dpmsolver":
            return (alpha_t / alpha_s) * sample - (sigma_t * (np.exp(h) - ONE)) * m0
        if algorithm == "sde-dpmsolver++":
            return (
                (sigma_t / sigma_s * np.exp(-h)) * sample
                + (alpha_t * (1 - np.exp(-2.0 * h))) * m0
                + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise
            )
        return (  # "sde-dpmsolver"
            (alpha_t / alpha_s) * sample
            - 2.0 * (sigma_t * (np.exp(h) - ONE)) * m0
            + sigma_t * np.sqrt(np.exp(2 * h) - ONE) * noise
        )

    def _second_order_update(self, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """Multistep second order: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) and its DPM-Solver / SDE
        counterparts. D1 is the backward difference of the last two outputs, scaled by r0 = h_{i-1} / h_i;
        "midpoint" and "heun" weight it differently."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (ONE / r0) * (m0 - m1)
        algorithm, midpoint = self.config["algorithm_type"], self.config["solver_type"] == "midpoint"
        if algorithm == "dpmsolver++":
            if midpoint:
                return (
                    (sigma_t / sigma_s0) * sample
                    - (alpha_t * (np.exp(-h) - ONE)) * D0
                    - 0.5 * (alpha_t * (np.exp(-h) - ONE)) * D1
                )
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (np.exp(-h) - ONE)) * D0
                + (alpha_t * ((np.exp(-h) - ONE) / h + ONE)) * D1
            )
        if algorithm == "dpmsolver":
            if midpoint:
                return (
                    (alpha_t / alpha_s0) * sample
                    - (sigma_t * (np.exp(h) - ONE)) * D0
                    - 0.5 * (sigma_t * (np.exp(h) - ONE)) * D1
                )
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * (np.exp(h) - ONE)) * D0
                - (sigma_t * ((np.exp(h) - ONE) / h - ONE)) * D1
            )
        if algorithm == "sde-dpmsolver++":
            if midpoint:
                return (
                    (sigma_t / sigma_s0 * np.exp(-h)) * sample
                    + (alpha_t * (1 - np.exp(-2.0 * h))) * D0
                    + 0.5 * (alpha_t * (1 - np.exp(-2.0 * h))) * D1
                    + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise
                )
            return (
                (sigma_t / sigma_s0 * np.exp(-h)) * sample
                + (alpha_t * (1 - np.exp(-2.0 * h))) * D0
                + (alpha_t * ((1.0 - np.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
                + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise
            )
        if midpoint:  # "sde-dpmsolver"
            return (
                (alpha_t / alpha_s0) * sample
                - 2.0 * (sigma_t * (np.exp(h) - ONE)) * D0
                - (sigma_t * (np.exp(h) - ONE)) * D1
                + sigma_t * np.sqrt(np.exp(2 * h) - ONE) * noise
            )
        return (
            (alpha_t / alpha_s0) * sample
            - 2.0 * (sigma_t * (np.exp(h) - ONE)) * D0
            - 2.0 * (sigma_t * ((np.exp(h) - ONE) / h - ONE)) * D1
            + sigma_t * np.sqrt(np.exp(2 * h) - ONE) * noise
        )

    def _third_order_update(self, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """Multistep third order (DPM-Solver++(3M), Lu et al. 2022b): D1 and D2 are first and second
        divided differences of the last three outputs. diffusers has no "sde-dpmsolver" third order."""
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
        _, _, lambda_s2 = self._alpha_sigma_lambda(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D0 = m0
        D1_0, D1_1 = (ONE / r0) * (m0 - m1), (ONE / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (ONE / (r0 + r1)) * (D1_0 - D1_1)
        algorithm = self.config["algorithm_type"]
        if algorithm == "dpmsolver++":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (np.exp(-h) - ONE)) * D0
                + (alpha_t * ((np.exp(-h) - ONE) / h + ONE)) * D1
                - (alpha_t * ((np.exp(-h) - ONE + h) / (h * h) - 0.5)) * D2
            )
        if algorithm == "dpmsolver":
            return (
                (alpha_t / alpha_s0) * sample
                - (sigma_t * (np.exp(h) - ONE)) * D0
                - (sigma_t * ((np.exp(h) - ONE) / h - ONE)) * D1
                - (sigma_t * ((np.exp(h) - ONE - h) / (h * h) - 0.5)) * D2
            )
        two_h = 2.0 * h  # "sde-dpmsolver++"
        return (
            (sigma_t / sigma_s0 * np.exp(-h)) * sample
            + (alpha_t * (ONE - np.exp(-2.0 * h))) * D0
            + (alpha_t * ((ONE - np.exp(-2.0 * h)) / (-2.0 * h) + ONE)) * D1
            + (alpha_t * ((ONE - np.exp(-2.0 * h) - 2.0 * h) / (two_h * two_h) - 0.5)) * D2
            + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise
        )

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

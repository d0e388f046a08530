"""Math shared by the NumPy schedulers: training noise schedules, timestep spacing, x0 prediction, thresholding.

Everything is float32 where diffusers computes in torch float32, and reproduces torch's arithmetic where
it is not plain IEEE (``torch.linspace``, ``torch.cumprod``), so that the training schedule (``betas``,
``alphas_cumprod``) is bit-identical to diffusers' and sampling agrees to float32 rounding.
Relies on NumPy 2 promotion rules (NEP 50): a Python float times a ``np.float32`` stays float32, as in torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from latent_ddpm.errors import InputError

ONE = np.float32(1.0)
# Where a stochastic step's noise comes from: one generator for the batch, or one per image.
Generators: TypeAlias = np.random.Generator | Sequence[np.random.Generator]


@dataclass(slots=True)
class StepNoise:
    """Where a stochastic step's noise comes from: the caller's generator(s), or the noise itself (built once
    per step: slots and no freezing keep that to a fraction of a microsecond)."""

    generator: Generators | None = None
    variance_noise: np.ndarray | None = None


@dataclass(frozen=True)
class SchedulerOutput:
    """What one ``step()`` returns (diffusers' ``SchedulerOutput``/``DDIMSchedulerOutput`` fields)."""

    prev_sample: np.ndarray  # x_{t-1}, the next loop input; float32, shape of the sample
    pred_original_sample: np.ndarray  # the step's estimate of x_0, for previews; float32, same shape


# --------------------------------------------------------------------------- training noise schedule


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` bit for bit.

    torch's CPU kernel computes a float32 ``step`` and then ``start + step * i`` for the first half and
    ``end - step * (steps - 1 - i)`` for the second, each with a single rounding (a fused multiply-add);
    ``np.linspace`` rounds differently in about a third of the entries.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = (end32 - start32) / np.float32(steps - 1)
    i = np.arange(steps, dtype=np.float64)
    halfway = steps // 2
    first = np.float64(start32) + np.float64(step) * i[:halfway]
    second = np.float64(end32) - np.float64(step) * (steps - 1 - i[halfway:])
    return np.concatenate([first, second]).astype(np.float32)


def cumprod_f32(values: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of a float32 vector: torch accumulates in float64 on CPU and rounds each result."""
    return np.cumprod(values, dtype=np.float64).astype(np.float32)


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_transform_type: str, max_beta: float = 0.999
) -> np.ndarray:
    """Betas that discretise a continuous alpha_bar(t), t in [0, 1], capped at ``max_beta``.

    "cosine" is Nichol & Dhariwal 2021, eq. 17 (diffusers' ``squaredcos_cap_v2``); "laplace" is the
    Laplace log-SNR schedule diffusers' DDPMScheduler also offers. Computed in float64 like diffusers.
    """
    if alpha_transform_type == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    else:  # "laplace"

        def alpha_bar(t: float) -> float:
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alphas_cumprod) so the last timestep has SNR 0."""
    alphas = ONE - betas
    alphas_cumprod = cumprod_f32(alphas)
    alphas_bar_sqrt = np.sqrt(alphas_cumprod)
    alphas_bar_sqrt_0 = alphas_bar_sqrt[0]
    alphas_bar_sqrt_T = alphas_bar_sqrt[-1]
    # Shift so the last timestep is zero, then scale so the first is back to its old value.
    alphas_bar_sqrt = alphas_bar_sqrt - alphas_bar_sqrt_T
    alphas_bar_sqrt = alphas_bar_sqrt * (alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T))
    alphas_bar = alphas_bar_sqrt * alphas_bar_sqrt
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return ONE - alphas


def train_betas(config: Mapping[str, Any]) -> np.ndarray:
    """The training betas beta_1..beta_T (Ho et al. 2020, Sec. 2) that a scheduler config describes."""
    n = config["num_train_timesteps"]
    beta_start, beta_end = config["beta_start"], config["beta_end"]
    schedule = config["beta_schedule"]
    if config["trained_betas"] is not None:
        betas = np.array(config["trained_betas"], dtype=np.float32)
    elif schedule == "linear":  # Ho et al. 2020, Sec. 4
        betas = torch_linspace_f32(beta_start, beta_end, n)
    elif (
        schedule == "scaled_linear"
    ):  # linear in sqrt(beta): the latent diffusion (Rombach et al. 2022) schedule
        sqrt_betas = torch_linspace_f32(beta_start**0.5, beta_end**0.5, n)
        betas = sqrt_betas * sqrt_betas
    elif schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(n, "cosine")
    elif schedule == "laplace":
        betas = betas_for_alpha_bar(n, "laplace")
    else:  # "sigmoid": GeoDiff (Xu et al. 2022)
        x = torch_linspace_f32(-6, 6, n)
        betas = ONE / (ONE + np.exp(-x)) * (beta_end - beta_start) + beta_start
    if config["rescale_betas_zero_snr"]:
        betas = rescale_zero_terminal_snr(betas)
    return check_betas(betas, zero_terminal_snr=config["rescale_betas_zero_snr"])


def check_betas(betas: np.ndarray, zero_terminal_snr: bool) -> np.ndarray:
    """Every beta_t must be a variance in (0, 1): beta = 0 makes the posterior variance 0 / 0 (NaN in DDIM's
    sigma_t and DPM-Solver's log sigma), beta >= 1 zeroes or negates alpha_bar from there on (black images).
    The one exception is the last beta of a zero-terminal-SNR schedule (Lin et al. 2024), 1 by design."""
    inner = betas[:-1] if zero_terminal_snr else betas
    bad = ~(np.isfinite(inner) & (inner > 0) & (inner < 1))
    if bad.any() or (zero_terminal_snr and not 0 < betas[-1] <= 1):
        i = int(np.flatnonzero(bad)[0]) if bad.any() else len(betas) - 1
        raise InputError(
            f"the scheduler config gives beta[{i}] = {betas[i]:g}; every beta must be in (0, 1) "
            f"(check beta_start, beta_end, beta_schedule or trained_betas)"
        )
    return betas


# --------------------------------------------------------------------------- inference timesteps


def spaced_timesteps(
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int
) -> np.ndarray:
    """DDPM/DDIM inference timesteps, descending; spacings of Lin et al. 2024, Table 2 (as diffusers)."""
    timesteps: np.ndarray
    if spacing == "linspace":
        timesteps = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1]
    elif spacing == "leading":
        step_ratio = num_train_timesteps // num_inference_steps
        timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1] + steps_offset
    else:  # "trailing"
        trailing_ratio = num_train_timesteps / num_inference_steps
        timesteps = np.round(np.arange(num_train_timesteps, 0, -trailing_ratio)) - 1
    return timesteps.astype(np.int64)


def check_num_inference_steps(num_inference_steps: Any, num_train_timesteps: int) -> int:
    """diffusers fails deep inside (or samples nonsense) for these; we name the bad value instead."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int | np.integer):
        raise InputError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise InputError(
            f"num_inference_steps must be in [1, num_train_timesteps={num_train_timesteps}], "
            f"got {num_inference_steps}"
        )
    return int(num_inference_steps)


def check_timestep(timestep: Any, num_train_timesteps: int) -> int:
    t = int(timestep)
    if not 0 <= t < num_train_timesteps:
        raise InputError(f"timestep {t} is outside [0, {num_train_timesteps - 1}]")
    return t


# --------------------------------------------------------------------------- arrays in, arrays out


def as_float32(array: Any, name: str) -> np.ndarray:
    out = np.asarray(array, dtype=np.float32)
    if out.ndim == 0:
        raise InputError(f"{name} must be an array with a batch axis, got a scalar")
    return out


def check_same_shape(model_output: np.ndarray, sample: np.ndarray) -> None:
    if model_output.shape != sample.shape:
        raise InputError(f"model_output has shape {model_output.shape} but sample has shape {sample.shape}")


def normal_per_image(generators: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    """float32 N(0, I) of ``shape``, row k drawn by ``generators[k]``: the same numbers as that generator's
    ``standard_normal(shape[1:])``, so an image's draws never depend on the rest of its batch."""
    out = np.empty(shape, dtype=np.float32)
    for g, row in zip(generators, out, strict=True):
        g.standard_normal(dtype=np.float32, out=row)
    return out


def draw_noise(
    shape: tuple[int, ...], generator: Generators | None, variance_noise: Any, who: str
) -> np.ndarray:
    """The step's Gaussian noise: the caller's ``variance_noise``, or float32 draws from the caller's generator(s).

    ``generator`` is one ``numpy.random.Generator`` for the whole batch (``standard_normal(shape)``), or one
    per image (a sequence as long as the batch), each drawing its own image's noise: then an image's noise
    does not depend on which other images share its batch. There is no global RNG fallback, so every
    stochastic run is reproducible from its inputs.
    """
    if variance_noise is not None:
        if generator is not None:
            raise InputError(f"{who}: pass either generator or variance_noise, not both")
        noise = np.asarray(variance_noise, dtype=np.float32)
        if noise.shape != shape:
            raise InputError(f"{who}: variance_noise has shape {noise.shape}, expected {shape}")
        return noise
    if isinstance(generator, np.random.Generator):
        return generator.standard_normal(shape, dtype=np.float32)
    if isinstance(generator, Sequence) and all(isinstance(g, np.random.Generator) for g in generator):
        if len(generator) != shape[0]:
            raise InputError(f"{who}: {len(generator)} generators for a batch of {shape[0]}")
        return normal_per_image(generator, shape)
    raise InputError(
        f"{who} adds noise at this step: pass generator=np.random.Generator (or one per image) or "
        f"variance_noise=array, got generator={generator!r}"
    )


# --------------------------------------------------------------------------- x0 from the model's output


def predict_original_and_noise(
    model_output: np.ndarray,
    sample: np.ndarray,
    sqrt_alpha_prod_t: np.float32,
    sqrt_beta_prod_t: np.float32,
    prediction_type: str,
    with_epsilon: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(x0, eps) from a model output, by x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (Ho et al. eq. 4).

    "epsilon": Ho et al. 2020, eq. 15; "v_prediction": v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
    (Salimans & Ho 2022, Sec. 4); "sample": the model predicts x0 directly. ``x0`` is always a new array
    (callers clip it in place); eps is ``model_output`` itself for "epsilon", None unless ``with_epsilon``.
    Each formula is evaluated in the order it is written, one rounding per operation, as diffusers does.
    """
    if prediction_type == "epsilon":  # (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
        x0 = np.multiply(model_output, sqrt_beta_prod_t)
        np.subtract(sample, x0, out=x0)
        np.divide(x0, sqrt_alpha_prod_t, out=x0)
        return x0, model_output
    if prediction_type == "sample":
        x0 = model_output.copy()
        if not with_epsilon:
            return x0, None
        eps = np.multiply(x0, sqrt_alpha_prod_t)  # (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)
        np.subtract(sample, eps, out=eps)
        np.divide(eps, sqrt_beta_prod_t, out=eps)
        return x0, eps
    # "v_prediction": x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v
    x0 = np.multiply(sample, sqrt_alpha_prod_t)
    x0 -= np.multiply(model_output, sqrt_beta_prod_t)
    if not with_epsilon:
        return x0, None
    eps = np.multiply(model_output, sqrt_alpha_prod_t)  # sqrt(alpha_bar) v + sqrt(1 - alpha_bar) x_t
    eps += np.multiply(sample, sqrt_beta_prod_t)
    return x0, eps


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Saharia et al. 2022 (Imagen), Sec. 2.3 "dynamic thresholding", per image.

    s = the ``ratio`` quantile of |x0|, clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s,
    which pushes saturated values inwards (s = 1 is plain clipping to [-1, 1]).
    """
    flat = x0.reshape(x0.shape[0], -1)
    s = np.quantile(np.abs(flat), ratio, axis=1).astype(np.float32)
    s = np.minimum(np.maximum(s, ONE), np.float32(max_value))[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


def clip_or_threshold(x0: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
    """DDPM/DDIM stage "clip or threshold predicted x_0" (clipping in place): thresholding wins over
    ``clip_sample``."""
    if config["thresholding"]:
        return dynamic_threshold(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config["clip_sample"]:
        limit = np.float32(config["clip_sample_range"])
        return np.clip(x0, -limit, limit, out=x0)
    return x0


def add_noise_vp(alphas_cumprod: np.ndarray, original_samples: Any, noise: Any, timesteps: Any) -> np.ndarray:
    """Forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), Ho et al. 2020, eq. 4.

    ``timesteps`` holds one training timestep per batch item (or one for all).
    """
    x0 = as_float32(original_samples, "original_samples")
    eps = as_float32(noise, "noise")
    if eps.shape != x0.shape:
        raise InputError(f"noise has shape {eps.shape} but original_samples has shape {x0.shape}")
    t = np.asarray(timesteps).reshape(-1).astype(np.int64)
    if t.size and not (0 <= t.min() and t.max() < len(alphas_cumprod)):
        raise InputError(f"timesteps {t.tolist()} fall outside [0, {len(alphas_cumprod) - 1}]")
    per_item = (-1,) + (1,) * (x0.ndim - 1)
    sqrt_alpha_prod = np.sqrt(alphas_cumprod[t]).reshape(per_item)
    sqrt_one_minus_alpha_prod = np.sqrt(ONE - alphas_cumprod[t]).reshape(per_item)
    return sqrt_alpha_prod * x0 + sqrt_one_minus_alpha_prod * eps

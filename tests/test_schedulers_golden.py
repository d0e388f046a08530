"""Golden numbers, exact-solution checks and error messages of the NumPy schedulers (no torch needed).

The literals were read off diffusers 0.42 (torch float32) once; the parity tests compare live.
"""

from __future__ import annotations

import numpy as np
import pytest

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.schedulers import (
    SAMPLERS,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    make_scheduler,
)
from latent_ddpm.runtime.schedulers.dpmsolver_multistep import sigma_to_alpha_sigma_t

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ("leading", [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_ddim_timesteps(spacing, expected):
    sched = DDIMScheduler(steps_offset=1, timestep_spacing=spacing)
    sched.set_timesteps(10)
    assert sched.timesteps.dtype == np.int64
    assert sched.timesteps.tolist() == expected


def test_ddpm_timesteps_and_previous_timestep():
    sched = DDPMScheduler()
    assert sched.previous_timestep(500) == 499  # the full chain before set_timesteps
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert [sched.previous_timestep(int(t)) for t in sched.timesteps] == [
        800,
        700,
        600,
        500,
        400,
        300,
        200,
        100,
        0,
        -1,
    ]


def test_dpmsolver_timesteps_and_sigmas():
    sched = DPMSolverMultistepScheduler()
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    sigmas = [157.40727, 60.271416, 25.528484, 11.93952, 6.13521, 3.4429674, 2.0410874, 1.2401613, 0.7235912]
    np.testing.assert_allclose(sched.sigmas[:9], sigmas, rtol=1e-6)
    np.testing.assert_allclose(sched.sigmas[9:], [0.34226012, 0.0], rtol=1e-6)


def test_dpmsolver_karras_and_clipped_lambda_timesteps():
    karras = DPMSolverMultistepScheduler(use_karras_sigmas=True, **SD_BETAS)
    karras.set_timesteps(10)
    assert karras.timesteps.tolist() == [999, 916, 815, 687, 523, 327, 146, 41, 7, 0]
    np.testing.assert_allclose(
        karras.sigmas[[0, 5, 9, 10]], [14.614647, 0.9140765, 0.029167535, 0.0], rtol=1e-6
    )
    clipped = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    clipped.set_timesteps(10)
    assert clipped.timesteps.tolist() == [995, 896, 796, 696, 597, 498, 398, 298, 199, 100]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, [0.99989998, 0.99978006, 0.078587234, 4.0358304e-05]),
        (SD_BETAS, [0.99914998, 0.99829602, 0.27766943, 0.004660095]),
        ({"beta_schedule": "squaredcos_cap_v2"}, [0.9999587, 0.99991256, 0.49384347, 2.428735e-09]),
    ],
    ids=["linear", "scaled_linear", "cosine"],
)
def test_alphas_cumprod(config, expected):
    for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        alphas_cumprod = cls(**config).alphas_cumprod
        assert alphas_cumprod.dtype == np.float32
        np.testing.assert_allclose(alphas_cumprod[[0, 1, 499, 999]], expected, rtol=1e-7)


def test_zero_terminal_snr():
    """Lin et al. 2024: the last timestep is pure noise, the first keeps its alpha_bar."""
    plain, rescaled = DDIMScheduler(**SD_BETAS), DDIMScheduler(rescale_betas_zero_snr=True, **SD_BETAS)
    assert rescaled.alphas_cumprod[-1] == 0.0
    np.testing.assert_allclose(rescaled.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-6)
    # DPM-Solver keeps sigma_T finite with alpha_bar_T = 2^-24, as diffusers does.
    assert DPMSolverMultistepScheduler(rescale_betas_zero_snr=True).alphas_cumprod[-1] == np.float32(2**-24)


# --------------------------------------------------------------------------- exact solutions


def _oracle_trajectory(sched, prediction_type: str, steps: int = 12):
    """Sample with a model that knows x0 and eps exactly; x_t must stay on sqrt(a) x0 + sqrt(1 - a) eps."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-0.9, 0.9, (2, 3, 4, 4)).astype(np.float32)
    eps = rng.standard_normal(x0.shape, dtype=np.float32)
    sched.set_timesteps(steps)
    x = sched.add_noise(x0, eps, np.full(2, sched.timesteps[0]))
    for t in sched.timesteps:
        out = {"epsilon": eps, "sample": x0}[prediction_type]
        step = sched.step(out, int(t), x)
        np.testing.assert_allclose(step.pred_original_sample, x0, atol=1e-4)
        x = step.prev_sample
    return x, x0, eps


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddim_is_exact_for_an_oracle_model(prediction_type):
    """DDIM (eta = 0) with the true eps maps x_t exactly to x_{t-1} on the same trajectory: ends at x0."""
    x, x0, _ = _oracle_trajectory(DDIMScheduler(prediction_type=prediction_type), prediction_type)
    np.testing.assert_allclose(x, x0, atol=1e-4)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("final_sigmas_type", ["zero", "sigma_min"])
def test_dpmsolver_is_exact_for_an_oracle_model(order, final_sigmas_type):
    """With a constant data prediction the multistep difference D1 vanishes and each update is exact."""
    sched = DPMSolverMultistepScheduler(
        solver_order=order, prediction_type="sample", final_sigmas_type=final_sigmas_type
    )
    x, x0, eps = _oracle_trajectory(sched, "sample")
    # ends at the final sigma: 0 for "zero", sigma_0 = sqrt((1 - alpha_bar_0) / alpha_bar_0) for "sigma_min"
    alpha_last, sigma_last = sigma_to_alpha_sigma_t(sched.sigmas[-1])
    np.testing.assert_allclose(x, alpha_last * x0 + sigma_last * eps, atol=1e-4)


def test_set_timesteps_resets_dpmsolver_state():
    sched = DPMSolverMultistepScheduler(solver_order=2)
    sched.set_timesteps(5)
    x = np.ones((1, 1, 2, 2), np.float32)
    for t in sched.timesteps[:3]:
        x = sched.step(np.zeros_like(x), int(t), x).prev_sample
    assert sched.step_index == 3 and sched.lower_order_nums == 2
    sched.set_timesteps(5)
    assert sched.step_index is None and sched.lower_order_nums == 0 and sched.model_outputs == [None] * 2


# --------------------------------------------------------------------------- config handling and errors


def test_from_config_ignores_foreign_keys_and_fills_defaults():
    config = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.42.1", "set_alpha_to_one": False}
    config |= {"clip_sample": False, "some_future_key": 3, "prediction_type": "v_prediction"}
    sched = DPMSolverMultistepScheduler.from_config(config)
    assert sched.config["prediction_type"] == "v_prediction"
    assert sched.config["solver_order"] == 2 and sched.config["timestep_spacing"] == "linspace"
    assert "clip_sample" not in sched.config and "_class_name" not in sched.config
    assert DDIMScheduler.from_config(config).config["set_alpha_to_one"] is False
    # keys that diffusers recorded as defaulted take this scheduler's defaults
    ddim_defaults = {"timestep_spacing": "leading", "_use_default_values": ["timestep_spacing"]}
    assert DPMSolverMultistepScheduler.from_config(ddim_defaults).config["timestep_spacing"] == "linspace"


def test_make_scheduler_names():
    assert SAMPLERS == ("ddim", "ddpm", "dpmsolver++")
    sched = make_scheduler("dpmsolver++", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"})
    assert (sched.config["solver_order"], sched.config["algorithm_type"]) == (2, "dpmsolver++")
    with pytest.raises(InputError, match="'pndm'"):
        make_scheduler("pndm", {})


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beta_schedule", "quadratic"),
        ("prediction_type", "flow_prediction"),
        ("timestep_spacing", "uniform"),
        ("num_train_timesteps", 0),
        ("clip_sample_range", -1.0),
        ("thresholding", "yes"),
        ("dynamic_thresholding_ratio", 1.5),
    ],
)
def test_invalid_option_names_key_and_value(cls, key, value):
    if key not in cls.DEFAULTS:  # e.g. clip_sample_range is not a DPM-Solver option: ignored, like diffusers
        assert cls.from_config({key: value}).config == cls().config
        return
    with pytest.raises(InputError, match=key) as info:
        cls.from_config({key: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("cls", "options", "match"),
    [
        (DDPMScheduler, {"variance_type": "fixed_large_log"}, "fixed_large_log"),
        (DDIMScheduler, {"beta_schedule": "sigmoid"}, "sigmoid"),
        (DPMSolverMultistepScheduler, {"use_beta_sigmas": True}, "use_beta_sigmas"),
        (DPMSolverMultistepScheduler, {"use_flow_sigmas": True}, "use_flow_sigmas"),
        (DPMSolverMultistepScheduler, {"use_dynamic_shifting": True}, "use_dynamic_shifting"),
        (DPMSolverMultistepScheduler, {"solver_order": 4}, "solver_order"),
        (DPMSolverMultistepScheduler, {"algorithm_type": "deis"}, "final_sigmas_type"),
        (DPMSolverMultistepScheduler, {"use_karras_sigmas": True, "use_exponential_sigmas": True}, "exclude"),
        (DDIMScheduler, {"trained_betas": [0.1, 0.2]}, "num_train_timesteps"),
    ],
)
def test_unsupported_or_inconsistent_options_are_refused(cls, options, match):
    with pytest.raises(InputError, match=match):
        cls(**options)


def test_bad_arguments():
    with pytest.raises(InputError, match="clip_samples"):
        DDIMScheduler.from_config({}, clip_samples=False)  # an override is explicit: a typo is an error
    with pytest.raises(InputError, match="mapping"):
        DDIMScheduler.from_config("scheduler_config.json")
    sched = DDIMScheduler()
    with pytest.raises(InputError, match="set_timesteps"):
        sched.step(np.zeros((1, 1)), 10, np.zeros((1, 1)))
    sched.set_timesteps(10)
    with pytest.raises(InputError, match="shape"):
        sched.step(np.zeros((1, 2)), 901, np.zeros((1, 1)))
    with pytest.raises(InputError, match="eta"):
        DDIMScheduler(eta=-1.0)
    with pytest.raises(InputError, match="eta=0.5 applies to the ddim sampler only"):
        make_scheduler("ddpm", {}, eta=0.5)
    with pytest.raises(InputError, match="1234"):
        sched.step(np.zeros((1, 1)), 1234, np.zeros((1, 1)))
    ddpm = DDPMScheduler(variance_type="learned_range")
    ddpm.set_timesteps(10)
    with pytest.raises(InputError, match="2x the sample's channels"):
        ddpm.step(np.zeros((1, 4, 2, 2)), 900, np.zeros((1, 4, 2, 2)), generator=np.random.default_rng(0))
    with pytest.raises(InputError, match="not in the schedule"):
        ddpm.step(np.zeros((1, 8, 2, 2)), 901, np.zeros((1, 4, 2, 2)), generator=np.random.default_rng(0))


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
@pytest.mark.parametrize("steps", [0, 1001, -3, 2.5, True])
def test_set_timesteps_out_of_range(cls, steps):
    with pytest.raises(InputError, match="num_inference_steps"):
        cls().set_timesteps(steps)

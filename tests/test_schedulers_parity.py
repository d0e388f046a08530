"""The NumPy schedulers against diffusers' (the reference) on the same inputs and the same noise.

Each case runs a whole sampling loop twice:
- lock-step: both schedulers get the SAME sample, model output and noise at every step (the shared trajectory
  follows ours), so each step's error is measured alone: prev_sample and pred_original_sample within
  STEP_TOL of diffusers;
- free-running: each scheduler feeds its own prev_sample back into the toy model, so errors can compound:
  the final samples within LOOP_TOL.
Errors are measured relative to the array's scale, max|ours - ref| / max(1, max|ref|): an x0 estimate at
t ~ T can be ~1e2-1e4 (epsilon models without clipping, zero-SNR), where float32's spacing alone exceeds 1e-5.
An epsilon model's x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) is ill-conditioned at t ~ T: one
rounding in the numerator (torch's sqrt is not even correctly rounded) is amplified by 1 / sqrt(alpha_bar),
so for epsilon its error is measured relative to max|x_t| / sqrt(alpha_bar_t), the size of the unclipped x0.
The "model" is a fixed smooth NumPy function of (sample, t), so the loop evolves like a real one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

from latent_ddpm.errors import InputError  # noqa: E402
from latent_ddpm.runtime.schedulers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    make_scheduler,
)

STEP_TOL = 1e-5
LOOP_TOL = 1e-4
OURS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
THEIRS = {
    "ddpm": diffusers.DDPMScheduler,
    "ddim": diffusers.DDIMScheduler,
    "dpm": diffusers.DPMSolverMultistepScheduler,
}
SHAPE = (2, 4, 6, 6)  # batch 2 so that thresholding's per-image quantile is exercised
WEIGHTS = np.random.default_rng(1234).standard_normal((8, 4)).astype(np.float32) * 0.6


def toy_model(sample: np.ndarray, t: int, out_channels: int, variance_type: str | None = None) -> np.ndarray:
    """A deterministic stand-in for a U-Net: channel mixing + tanh, ~unit scale, depends on t."""
    c = sample.shape[1]
    mixed = np.einsum("oc,bchw->bohw", WEIGHTS[:out_channels, :c], sample)
    out = np.tanh(0.5 * mixed + np.float32(np.sin(t / 97.0))).astype(np.float32)
    if variance_type == "learned":  # raw variances: positive and small
        out[:, c:] = np.float32(0.01) * (out[:, c:] + np.float32(1.5))
    return out


def rel_err(ours: np.ndarray, ref, scale: float = 1.0) -> float:
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / max(1.0, scale, float(np.max(np.abs(ref)))))


def x0_scale(sched, t: int, sample: np.ndarray) -> float:
    """Size of an epsilon model's unclipped x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    if sched.config["prediction_type"] != "epsilon":
        return 1.0
    if isinstance(sched, DPMSolverMultistepScheduler):
        sqrt_alpha_bar = 1.0 / math.sqrt(float(sched.sigmas[sched.step_index - 1]) ** 2 + 1.0)
    else:
        sqrt_alpha_bar = math.sqrt(float(sched.alphas_cumprod[t]))
    # At zero SNR (alpha_bar_T = 0) an epsilon model's x0 is undefined: nothing to compare.
    return float(np.max(np.abs(sample))) / sqrt_alpha_bar if sqrt_alpha_bar > 0 else math.inf


class NoiseFeed:
    """Serves the same noise to both sides: diffusers' DDPM draws through ``randn_tensor``, which we patch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.current: np.ndarray | None = None
        monkeypatch.setattr(scheduling_ddpm, "randn_tensor", self._randn_tensor)

    def next(self, shape: tuple[int, ...]) -> np.ndarray:
        self.current = self.rng.standard_normal(shape, dtype=np.float32)
        return self.current

    def _randn_tensor(self, shape, generator=None, device=None, dtype=None):
        assert self.current is not None and tuple(shape) == self.current.shape
        return torch.from_numpy(self.current.copy())


def run_pair(kind, config, n, noise, *, step_kwargs=None, shape=SHAPE, lock_step=True, begin=0):
    """Sample with ours and diffusers' scheduler; return the worst per-step errors or the final-sample error."""
    # step_kwargs are diffusers' step arguments; ours are options of the scheduler (DDIM's eta)
    step_kwargs = step_kwargs or {}
    ours, theirs = OURS[kind].from_config(config, **step_kwargs), THEIRS[kind].from_config(config)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert np.array_equal(ours.timesteps, theirs.timesteps.numpy()), (ours.timesteps, theirs.timesteps)
    if kind == "dpm":
        assert rel_err(ours.sigmas, theirs.sigmas) <= 1e-6
    if begin:
        ours.set_begin_index(begin)
        theirs.set_begin_index(begin)
    variance_type = config.get("variance_type")
    out_channels = shape[1] * 2 if variance_type in ("learned", "learned_range") else shape[1]
    x_ours = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    x_theirs = torch.from_numpy(x_ours.copy())
    worst_prev = worst_x0 = 0.0
    for t in ours.timesteps[begin:]:
        t = int(t)
        eps_ours = toy_model(x_ours, t, out_channels, variance_type)
        eps_theirs = eps_ours if lock_step else toy_model(x_theirs.numpy(), t, out_channels, variance_type)
        z = noise.next(shape)
        kw_theirs = dict(step_kwargs)
        if kind != "ddpm":
            kw_theirs["variance_noise"] = torch.from_numpy(z.copy())
        if lock_step:
            x_theirs = torch.from_numpy(x_ours.copy())
        mine = ours.step(eps_ours, t, x_ours, variance_noise=z)
        ref = theirs.step(torch.from_numpy(eps_theirs.copy()), t, x_theirs, **kw_theirs)
        worst_prev = max(worst_prev, rel_err(mine.prev_sample, ref.prev_sample))
        if kind != "dpm":
            scale = x0_scale(ours, t, x_ours)
            worst_x0 = max(worst_x0, rel_err(mine.pred_original_sample, ref.pred_original_sample, scale))
        else:  # diffusers keeps x0 as the converted output
            scale = x0_scale(ours, t, x_ours)
            worst_x0 = max(worst_x0, rel_err(mine.pred_original_sample, theirs.model_outputs[-1], scale))
        x_ours, x_theirs = mine.prev_sample, ref.prev_sample
    final = rel_err(x_ours, x_theirs)
    assert np.all(np.isfinite(x_ours))
    return worst_prev, worst_x0, final


PREDICTIONS = ("epsilon", "sample", "v_prediction")
# the config variants DDPM and DDIM share (the VP schedule, spacing and x_0 clipping); each adds its own
VP_VARIANTS = {
    "default": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "trained_betas": {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist()},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "leading+offset": {"steps_offset": 1},
    "no_clip": {"clip_sample": False},
    "thresholding": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.5},
}
DDPM_VARIANTS = {
    **VP_VARIANTS,
    "sigmoid": {"beta_schedule": "sigmoid"},
    "laplace": {"beta_schedule": "laplace"},
    "clip_range": {"clip_sample_range": 0.5},
    "zero_snr": {"rescale_betas_zero_snr": True},
    "fixed_small_log": {"variance_type": "fixed_small_log"},
    "fixed_large": {"variance_type": "fixed_large"},
    "learned": {"variance_type": "learned"},
    "learned_range": {"variance_type": "learned_range"},
    "variance_none": {"variance_type": None},
}
DDIM_VARIANTS = {
    **VP_VARIANTS,
    "clip_range": {"clip_sample_range": 2.0},
    "alpha_not_one": {"set_alpha_to_one": False},
    "zero_snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
}
DDIM_STEP_KWARGS = {
    "eta0": {},
    "eta0.5": {"eta": 0.5},
    "eta1_clipped_eps": {"eta": 1.0, "use_clipped_model_output": True},
}
DPM_VARIANTS = {
    "default": {},
    "order1": {"solver_order": 1},
    "heun": {"solver_type": "heun"},
    "no_lower_order_final": {"lower_order_final": False, "final_sigmas_type": "sigma_min"},
    "euler_at_final": {"euler_at_final": True, "final_sigmas_type": "sigma_min"},
    "sigma_min": {"final_sigmas_type": "sigma_min"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "lu_lambdas": {"use_lu_lambdas": True},
    "cosine_lambda_clip": {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    "scaled_linear_karras": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "use_karras_sigmas": True,
    },
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "trained_betas": {"trained_betas": np.linspace(1e-4, 0.03, 1000).tolist()},
    "leading+offset": {"timestep_spacing": "leading", "steps_offset": 1},
    "trailing": {"timestep_spacing": "trailing"},
    "thresholding": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.5},
    "zero_snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
}


def _grid(variants: dict, extra: dict | None = None):
    """Every variant crossed with every prediction type (and each extra step-kwargs set, round robin)."""
    extras = list((extra or {"": {}}).items())
    cases = []
    for i, (name, cfg) in enumerate(variants.items()):
        for j, prediction_type in enumerate(PREDICTIONS):
            extra_name, kwargs = extras[(i + j) % len(extras)]
            case_id = f"{name}-{prediction_type}" + (f"-{extra_name}" if extra_name else "")
            cases.append(pytest.param({**cfg, "prediction_type": prediction_type}, kwargs, id=case_id))
    return cases


def _steps_and_loop_match(sampler, config, step_kwargs, monkeypatch):
    """50 steps: each step from the same input within STEP_TOL, then the whole loop within LOOP_TOL."""
    noise = NoiseFeed(monkeypatch)
    prev, x0, _ = run_pair(sampler, config, 50, noise, step_kwargs=step_kwargs)
    assert prev <= STEP_TOL and x0 <= STEP_TOL
    _, _, final = run_pair(sampler, config, 50, noise, step_kwargs=step_kwargs, lock_step=False)
    assert final <= LOOP_TOL


# zero-SNR with an epsilon model divides by sqrt(alpha_bar_T) = 0 at t = T, in diffusers as here
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(("config", "step_kwargs"), _grid(DDPM_VARIANTS))
def test_ddpm_matches_diffusers(config, step_kwargs, monkeypatch):
    # 50 of 1000 training steps: DDPM with diffusers' previous_timestep skipping.
    _steps_and_loop_match("ddpm", config, step_kwargs, monkeypatch)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize(("config", "step_kwargs"), _grid(DDIM_VARIANTS, DDIM_STEP_KWARGS))
def test_ddim_matches_diffusers(config, step_kwargs, monkeypatch):
    _steps_and_loop_match("ddim", config, step_kwargs, monkeypatch)


@pytest.mark.parametrize(("config", "step_kwargs"), _grid(DPM_VARIANTS))
@pytest.mark.parametrize("steps", [10, 50])  # < 15 steps switches on lower_order_final
def test_dpmsolver_matches_diffusers(config, step_kwargs, steps, monkeypatch):
    noise = NoiseFeed(monkeypatch)
    prev, x0, _ = run_pair("dpm", config, steps, noise)
    assert prev <= STEP_TOL and x0 <= STEP_TOL
    _, _, final = run_pair("dpm", config, steps, noise, lock_step=False)
    assert final <= LOOP_TOL


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_dpmsolver_learned_variance_matches_diffusers(variance_type, monkeypatch):
    # diffusers keeps model_output[:, :3], so its learned-variance path only works for 3-channel samples.
    noise = NoiseFeed(monkeypatch)
    config = {"variance_type": variance_type}
    prev, x0, _ = run_pair("dpm", config, 20, noise, shape=(2, 3, 6, 6))
    assert prev <= STEP_TOL and x0 <= STEP_TOL


def test_ddpm_full_chain_matches_diffusers(monkeypatch):
    """Every training timestep (n = num_train_timesteps) on a short 100-step schedule."""
    noise = NoiseFeed(monkeypatch)
    prev, x0, final = run_pair("ddpm", {"num_train_timesteps": 100}, 100, noise, lock_step=False)
    assert final <= LOOP_TOL


def test_dpmsolver_img2img_begin_index_matches_diffusers(monkeypatch):
    """SDEdit-style start in the middle of the schedule via set_begin_index, then add_noise and the loop."""
    noise = NoiseFeed(monkeypatch)
    prev, x0, final = run_pair("dpm", {}, 20, noise, begin=8)
    assert prev <= STEP_TOL and x0 <= STEP_TOL
    ours, theirs = DPMSolverMultistepScheduler(), diffusers.DPMSolverMultistepScheduler()
    for s in (ours, theirs):
        s.set_timesteps(20)
        s.set_begin_index(8)
    x0_img = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32)
    z = np.random.default_rng(4).standard_normal(SHAPE, dtype=np.float32)
    t = np.full(SHAPE[0], ours.timesteps[8], dtype=np.int64)
    ref = theirs.add_noise(torch.from_numpy(x0_img), torch.from_numpy(z), torch.from_numpy(t))
    assert rel_err(ours.add_noise(x0_img, z, t), ref) <= STEP_TOL


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpm"])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_add_noise_and_schedule_match_diffusers(kind, beta_schedule):
    config = {"beta_schedule": beta_schedule, "rescale_betas_zero_snr": beta_schedule == "scaled_linear"}
    ours, theirs = OURS[kind](**config), THEIRS[kind](**config)
    if config["rescale_betas_zero_snr"]:
        # Lin et al.'s rescale takes differences of nearly equal float32 numbers, and torch's sqrt is not
        # correctly rounded: alpha_bar agrees to float32 rounding, betas = 1 - ratio only to ~3e-6.
        np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    else:  # bit-identical: torch.linspace / torch.cumprod arithmetic is reproduced
        assert np.array_equal(ours.betas, theirs.betas.numpy())
        assert np.array_equal(ours.alphas_cumprod, theirs.alphas_cumprod.numpy())
    ours.set_timesteps(25)
    theirs.set_timesteps(25)
    x0 = np.random.default_rng(3).standard_normal(SHAPE, dtype=np.float32)
    z = np.random.default_rng(4).standard_normal(SHAPE, dtype=np.float32)
    t = ours.timesteps[[0, 7]]
    ref = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(z), torch.from_numpy(t))
    assert rel_err(ours.add_noise(x0, z, t), ref) <= 1e-6


# --------------------------------------------------------------------------- configs


def _comparable(config) -> dict:
    out = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    if out.get("trained_betas") is not None:
        out["trained_betas"] = [float(b) for b in out["trained_betas"]]
    return out


CONFIGS = [
    {},
    {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "v_prediction",
    },
    {
        "num_train_timesteps": 500,
        "timestep_spacing": "trailing",
        "rescale_betas_zero_snr": True,
        "steps_offset": 1,
    },
    {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist(), "thresholding": True},
]


@pytest.mark.parametrize("config", CONFIGS, ids=["defaults", "sd_like", "zero_snr", "trained_betas"])
@pytest.mark.parametrize("source", ["ddpm", "ddim", "dpm"])
@pytest.mark.parametrize("saved", [False, True], ids=["in_memory", "saved_json"])
def test_from_config_round_trip_and_cross_loading(source, config, saved):
    """Our X.from_config(cfg) resolves the same options as diffusers' X.from_config(cfg) for a config of any
    of the three schedulers, as held in memory (with diffusers' _use_default_values) or saved to JSON."""
    reference = THEIRS[source](**config)
    cfg = json.loads(reference.to_json_string()) if saved else dict(reference.config)
    assert ("_class_name" in cfg) == saved and ("_use_default_values" in cfg) == (not saved)
    for kind in ("ddpm", "ddim", "dpm"):
        ours, theirs = OURS[kind].from_config(cfg), THEIRS[kind].from_config(cfg)
        expected = {k: v for k, v in _comparable(theirs.config).items() if k in OURS[kind].DEFAULTS}
        assert set(expected) == set(OURS[kind].DEFAULTS)
        assert _comparable(ours.config) == expected, kind
        ours.set_timesteps(10)
        theirs.set_timesteps(10)
        assert np.array_equal(ours.timesteps, theirs.timesteps.numpy()), kind


def test_make_scheduler_dpmsolver_forces_2m_like_diffusers_users():
    cfg = dict(diffusers.DDPMScheduler(beta_schedule="scaled_linear", variance_type="fixed_small_log").config)
    sched = make_scheduler("dpmsolver++", {**cfg, "_class_name": "DDPMScheduler", "solver_order": 3})
    ref = diffusers.DPMSolverMultistepScheduler.from_config(cfg, solver_order=2, algorithm_type="dpmsolver++")
    assert _comparable(sched.config) == {
        k: v for k, v in _comparable(ref.config).items() if k in sched.config
    }
    assert sched.config["solver_order"] == 2 and sched.config["algorithm_type"] == "dpmsolver++"
    assert isinstance(make_scheduler("ddpm", cfg), DDPMScheduler)
    assert isinstance(make_scheduler("ddim", cfg), DDIMScheduler)
    with pytest.raises(InputError, match="'euler'"):
        make_scheduler("euler", cfg)


@pytest.mark.parametrize(
    "options",
    [
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
        {"algorithm_type": "sde-dpmsolver++"},
        {"solver_order": 3},
    ],
)
def test_dpmsolver_variants_the_runtime_does_not_offer_are_refused_with_why(options):
    """diffusers has them; the runtime samples with DPM-Solver++ of order 1 or 2 only (see the module doc),
    and says so instead of sampling differently. make_scheduler's "dpmsolver++" overrides a config's."""
    with pytest.raises(InputError, match="DPM-Solver\\+\\+ of order 1 or 2 only"):
        DPMSolverMultistepScheduler.from_config(options)
    sched = make_scheduler("dpmsolver++", options)
    assert (sched.config["algorithm_type"], sched.config["solver_order"]) == ("dpmsolver++", 2)


def test_deis_and_unipc_names_are_mapped_like_diffusers():
    cfg = {"algorithm_type": "deis", "solver_type": "bh2", "final_sigmas_type": "sigma_min"}
    ours = DPMSolverMultistepScheduler.from_config(cfg)
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(cfg)
    assert (ours.config["algorithm_type"], ours.config["solver_type"]) == (
        theirs.config.algorithm_type,
        theirs.config.solver_type,
    )


def test_generator_draws_the_documented_noise():
    """step(generator=g) uses g.standard_normal(sample.shape, dtype=float32), so it can be replayed."""
    for sched in [DDPMScheduler(), DDIMScheduler(eta=1.0)]:
        sched.set_timesteps(5)
        x = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
        eps = toy_model(x, 500, SHAPE[1])
        t = int(sched.timesteps[0])
        by_gen = sched.step(eps, t, x, generator=np.random.default_rng(5)).prev_sample
        z = np.random.default_rng(5).standard_normal(SHAPE, dtype=np.float32)
        by_noise = sched.step(eps, t, x, variance_noise=z).prev_sample
        assert np.array_equal(by_gen, by_noise)
        # one generator per image: image k's noise is the first draw of generator k
        per_image = [np.random.default_rng(s) for s in (5, 9)]
        by_images = sched.step(eps, t, x, generator=per_image).prev_sample
        z = np.stack([np.random.default_rng(s).standard_normal(SHAPE[1:], dtype=np.float32) for s in (5, 9)])
        assert np.array_equal(by_images, sched.step(eps, t, x, variance_noise=z).prev_sample)
        with pytest.raises(InputError, match="generator"):
            sched.step(eps, t, x)
        with pytest.raises(InputError, match="3 generators for a batch of 2"):
            sched.step(eps, t, x, generator=[np.random.default_rng(0)] * 3)


def test_diffusers_fixed_large_log_is_broken_so_we_refuse_it():
    """Why DDPMScheduler refuses variance_type='fixed_large_log': diffusers' step returns NaN for it."""
    theirs = diffusers.DDPMScheduler(variance_type="fixed_large_log")
    theirs.set_timesteps(10)
    x = torch.zeros(SHAPE)
    out = theirs.step(x, int(theirs.timesteps[0]), x, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(out.prev_sample).all()
    with pytest.raises(InputError, match="fixed_large_log"):
        DDPMScheduler(variance_type="fixed_large_log")


def test_karras_timesteps_and_sigmas_match_for_few_train_steps():
    """Karras sigmas on a short training schedule give repeated timesteps: index lookup must agree."""
    cfg = {"num_train_timesteps": 50, "use_karras_sigmas": True}
    ours, theirs = DPMSolverMultistepScheduler(**cfg), diffusers.DPMSolverMultistepScheduler(**cfg)
    ours.set_timesteps(40)
    theirs.set_timesteps(40)
    assert np.array_equal(ours.timesteps, theirs.timesteps.numpy())
    assert len(set(ours.timesteps.tolist())) < len(ours.timesteps)
    assert rel_err(ours.sigmas, theirs.sigmas) <= 1e-6
    assert math.isclose(ours.sigmas[-1], 0.0)

"""NumPy noise schedulers that sample exactly like diffusers' DDPM, DDIM and DPM-Solver++ schedulers.

Same options (diffusers' ``scheduler_config.json`` keys and defaults), same timesteps, same arithmetic in
float32; randomness only from the caller's ``numpy.random.Generator`` (one, or one per image) or explicit
noise arrays. ``tests/test_schedulers_parity.py`` ties every option to diffusers. Every sampler is driven the
same way, so a sampling loop never asks which one it has (k-diffusion's rule: one signature for all):

    sched = make_scheduler("ddim", bundle_scheduler_config, eta=0.0)
    sched.set_timesteps(50)
    for t in sched.timesteps:
        x = sched.step(unet(x, t), t, x, generator=rng).prev_sample
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.limits import check_eta
from latent_ddpm.runtime.schedulers.common import Generators, SchedulerOutput
from latent_ddpm.runtime.schedulers.config import PREDICTION_TYPES
from latent_ddpm.runtime.schedulers.ddim import DDIMScheduler
from latent_ddpm.runtime.schedulers.ddpm import DDPMScheduler
from latent_ddpm.runtime.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler

# The samplers a bundle, the Pipeline and every command offer, by name: the one list (CLIs take their choices
# from it). Each has a NumPy twin of a diffusers scheduler here and a parity test against it.
SAMPLERS = ("ddim", "ddpm", "dpmsolver++")

Scheduler = DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler


def make_scheduler(name: str, config: Mapping[str, Any], *, eta: float = 0.0) -> Scheduler:
    """The sampler ``name`` (one of SAMPLERS) for a model trained with the diffusers scheduler ``config``.

    ``config`` may come from any of the three schedulers (a bundle stores its training scheduler's);
    "dpmsolver++" is DPM-Solver++(2M), i.e. ``DPMSolverMultistepScheduler.from_config(config,
    solver_order=2, algorithm_type="dpmsolver++")`` as diffusers users switch a pipeline to it. ``eta`` is
    DDIM's (Song et al. 2021, eq. 16); the other samplers have none, so a nonzero one is refused for them.
    """
    if name not in SAMPLERS:
        raise InputError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")
    eta = check_eta(eta)
    if eta != 0 and name != "ddim":
        raise InputError(f"eta={eta} applies to the ddim sampler only, not {name!r}")
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, eta=eta)
    return DPMSolverMultistepScheduler.from_config(config, solver_order=2, algorithm_type="dpmsolver++")


__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "Generators",
    "Scheduler",
    "SchedulerOutput",
    "make_scheduler",
]

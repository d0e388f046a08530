"""NumPy noise schedulers that sample exactly like diffusers' DDPM, DDIM and DPM-Solver(++) schedulers.

Same options (diffusers' ``scheduler_config.json`` keys and defaults), same timesteps, same arithmetic in
float32; randomness only from the caller's ``numpy.random.Generator`` or explicit noise arrays.
``tests/test_schedulers_parity.py`` ties every option to diffusers.

    sched = make_scheduler("ddim", bundle_scheduler_config)
    sched.set_timesteps(50)
    for t in sched.timesteps:
        x = sched.step(unet(x, t), t, x, eta=0.0).prev_sample
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.schedulers.common import SchedulerOutput
from latent_ddpm.runtime.schedulers.ddim import DDIMScheduler
from latent_ddpm.runtime.schedulers.ddpm import DDPMScheduler
from latent_ddpm.runtime.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler

SAMPLERS = ("ddim", "ddpm", "dpmsolver++")

Scheduler = DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler


def make_scheduler(name: str, config: Mapping[str, Any]) -> Scheduler:
    """The sampler ``name`` (one of SAMPLERS) for a model trained with the diffusers scheduler ``config``.

    ``config`` may come from any of the three schedulers (a bundle stores its training scheduler's);
    "dpmsolver++" is DPM-Solver++(2M), i.e. ``DPMSolverMultistepScheduler.from_config(config,
    solver_order=2, algorithm_type="dpmsolver++")`` as diffusers users switch a pipeline to it.
    """
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, solver_order=2, algorithm_type="dpmsolver++")
    raise InputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


__all__ = [
    "SAMPLERS",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "Scheduler",
    "SchedulerOutput",
    "make_scheduler",
]

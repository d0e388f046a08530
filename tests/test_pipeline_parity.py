"""The runtime's whole sampling loop against diffusers' schedulers on the same model, latents and noise.

The factory U-Net computes f(x, t, y) = 0.1 * tanh(x) + t / 1000 + y / 10, which is easy to write in torch
too, so this checks the loop itself (timesteps, guidance, noise order, scheduler state) independently of any
exporter, against the project's one torch reference sampler (``latent_ddpm.export.reference``). Tolerance:
1e-4 max abs on the final latents, the scheduler parity budget for a full loop in fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
from bundle_factory import SCHEDULER, make_bundle

from latent_ddpm.runtime import Pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _f(x, t, y):
    return 0.1 * torch.tanh(x) + int(t) / 1000.0 + (y.float() / 10.0).view(-1, 1, 1, 1)


def _reference(
    sampler: str, latents: np.ndarray, labels: np.ndarray, steps: int, guidance: float, eta: float, seed: int
):
    from latent_ddpm.export.reference import Run, generate, make_scheduler, numpy_generators, numpy_step_noise

    run = Run(
        labels=torch.from_numpy(labels),
        null_class=10,
        guidance_scale=guidance,
        eta=eta,
        # the runtime draws each image's step noise from that image's generator (seed + k)
        step_noise=numpy_step_noise(numpy_generators(seed, len(latents))),
    )
    x = generate(_f, make_scheduler(sampler, SCHEDULER), torch.from_numpy(latents.copy()), steps, run)
    return x.numpy()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline.from_bundle(make_bundle(tmp_path_factory.mktemp("parity") / "b"))


@pytest.mark.parametrize(
    ("sampler", "steps", "guidance", "eta"),
    [
        ("ddim", 50, 1.0, 0.0),
        ("ddim", 20, 3.0, 0.0),
        ("ddim", 20, 2.0, 0.7),
        ("ddpm", 25, 2.0, 0.0),
        ("dpmsolver++", 20, 3.0, 0.0),
        ("dpmsolver++", 10, 1.0, 0.0),
    ],
)
def test_loop_matches_diffusers(
    pipe: Pipeline, sampler: str, steps: int, guidance: float, eta: float
) -> None:
    latents = np.random.default_rng(7).standard_normal((3, 4, 8, 8), dtype=np.float32)
    labels = np.array([0, 4, 9], np.int64)
    seed = 11
    run = {"steps": steps, "sampler": sampler, "guidance_scale": guidance, "eta": eta, "seed": seed}
    ours = pipe.generate(latents=latents, class_labels=labels.tolist(), **run)
    ref = _reference(sampler, latents, labels, steps, guidance, eta, seed)
    np.testing.assert_allclose(ours.latents, ref, atol=1e-4, rtol=0)

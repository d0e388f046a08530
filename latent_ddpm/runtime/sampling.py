"""The per-request state machine: some images of one request, from their initial latents to their final ones.

A ``SamplingRun`` owns everything that makes its images its own: a scheduler instance (DPM-Solver++ keeps
its history in it), one random generator per image (``latent_ddpm.runtime.seeds``), the latents, the class
labels, the guidance scale and the step index. It never calls a model: each step it writes its rows into a
U-Net call that others share (``write_rows``) and takes its rows of the output back (``advance``), so a run
neither knows nor depends on what else is in the batch. ``Pipeline.generate``/``img2img`` and the
``SamplingEngine`` drive runs through the one tick in ``batching.py``; there is no other denoising loop.

A step, in the order of diffusers' pipelines (``LDMPipeline`` plus classifier-free guidance):

    rows   = [x_t; x_t], t, [null; y]                  (guided: unconditional half first)   write_rows
    out    = unet(rows)                                 (shared call, by the tick)
    eps    = out_null + w (out_y - out_null)            (Ho & Salimans 2022, eq. 6)           advance
    x_t-1  = scheduler.step(eps, t, x_t, generator=per-image generators)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latent_ddpm.runtime.bundle import Bundle
from latent_ddpm.runtime.finite import check_finite
from latent_ddpm.runtime.requests import SamplingRequest
from latent_ddpm.runtime.results import Timings
from latent_ddpm.runtime.schedulers import make_scheduler
from latent_ddpm.runtime.seeds import image_generators, normal_per_image


class SamplingRun:
    """Images ``images`` of ``request`` (at most one U-Net call's rows), one denoising step per ``advance``.

    ``init_latents`` are the encoded pictures of an img2img request (None for generate). ``timings`` is the
    request's, shared by all its runs. ``unet_file`` names the U-Net in error messages.
    """

    def __init__(
        self,
        request: SamplingRequest,
        images: slice,
        bundle: Bundle,
        timings: Timings,
        unet_file: str,
        init_latents: np.ndarray | None = None,
    ) -> None:
        self.request, self.images, self.timings, self.unet_file = request, images, timings, unet_file
        n = self.n = images.stop - images.start
        self.guided, self.rows = request.guided, n * request.rows_per_image
        self.guidance_scale = np.float32(request.guidance_scale)
        # One generator per image draws, in order: its initial noise, its class if none was given, then its
        # step noise (latent_ddpm/runtime/seeds.py).
        self.generators = image_generators(request.seeds[images])
        shape = (n, *bundle.latent_shape)
        noise = None if request.latents is not None else normal_per_image(self.generators, shape)
        self.labels = self._labels(bundle)
        self.feed_labels = self._feed_labels(bundle)

        scheduler = self.scheduler = make_scheduler(request.sampler, bundle.scheduler_config, eta=request.eta)
        scheduler.set_timesteps(request.steps)
        if init_latents is not None:  # SDEdit (Meng et al. 2022) with diffusers' img2img timestep rule
            assert noise is not None
            begin = (request.steps - request.steps_to_run) * scheduler.order
            self.timesteps = scheduler.timesteps[begin:]
            if len(self.timesteps) == 0:  # strength 0: the autoencoder's reconstruction
                self.latents = init_latents
            else:
                scheduler.set_begin_index(begin)
                start_t = np.full((n,), self.timesteps[0], dtype=np.int64)
                self.latents = scheduler.add_noise(init_latents, noise, start_t).astype(np.float32)
        else:
            self.timesteps = scheduler.timesteps
            x_T = request.latents[images] if request.latents is not None else noise
            assert x_T is not None
            self.latents = (x_T * np.float32(scheduler.init_noise_sigma)).astype(np.float32)
        self.step_index = 0
        self.timings.steps = len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.timesteps)

    def step_name(self, i: int | None = None) -> str:
        i = self.step_index if i is None else i
        return f"step {i + 1}/{len(self.timesteps)} (t={int(self.timesteps[i])})"

    def write_rows(self, sample: np.ndarray, timestep: np.ndarray, labels: np.ndarray | None) -> None:
        """Fill this run's rows of a shared U-Net call: ``sample``, ``timestep`` (and ``labels``) are views of
        the call's input arrays, ``self.rows`` long."""
        t = self.timesteps[self.step_index]
        x = self.scheduler.scale_model_input(self.latents, t)
        if self.guided:
            sample[: self.n] = x
            sample[self.n :] = x
        else:
            sample[...] = x
        timestep.fill(t)
        if labels is not None and self.feed_labels is not None:
            labels[...] = self.feed_labels

    def advance(self, output: np.ndarray) -> np.ndarray | None:
        """One step from this run's rows of the U-Net output (modified in place); returns the step's predicted
        x_0 when the request asked for its preview. NumericalError if the output or the new latents hold
        NaN or Inf (run under ``np.errstate`` ignoring overflow: the check names the step instead)."""
        i = self.step_index
        t = int(self.timesteps[i])
        eps = classifier_free_guidance(output, self.n, self.guidance_scale) if self.guided else output
        check_finite(eps, lambda: f"the U-Net output ({self.unet_file}) at {self.step_name(i)}")
        out = self.scheduler.step(eps, t, self.latents, generator=self.generators)
        self.latents = check_finite(out.prev_sample, lambda: f"the latents after {self.step_name(i)}")
        self.step_index = i + 1
        return out.pred_original_sample if i in self.request.preview_steps else None

    def _labels(self, bundle: Bundle) -> np.ndarray | None:
        """The request's classes for these images, or for a conditional model given none, a random class per
        image from its own generator."""
        if self.request.labels is not None:
            return self.request.labels[self.images]
        if bundle.conditioning is None:
            return None
        num_classes = bundle.conditioning.num_classes
        return np.array([g.integers(0, num_classes, size=1)[0] for g in self.generators], dtype=np.int64)

    def _feed_labels(self, bundle: Bundle) -> np.ndarray | None:
        """The class of each U-Net row: [null; y] with guidance, y without, nothing for an unconditional U-Net."""
        spec = bundle.unet_inputs.class_labels
        if self.labels is None or spec is None:
            return None
        labels = self.labels
        if self.guided:
            assert bundle.conditioning is not None and bundle.conditioning.null_class is not None
            labels = np.concatenate([np.full_like(labels, bundle.conditioning.null_class), labels])
        return labels.astype(np.dtype(spec.dtype))


def classifier_free_guidance(output: np.ndarray, n: int, scale: np.float32) -> np.ndarray:
    """eps_null + w (eps_y - eps_null) (Ho & Salimans 2022, eq. 6) from the rows [null; y] of one run, computed
    in place in the conditional half (the same float32 operations, no temporaries); any of epsilon, x_0 or v
    works, all are linear in the model's output."""
    uncond, guided = output[:n], output[n:]
    guided -= uncond
    guided *= scale
    guided += uncond
    return guided


def joined(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One array from a request's runs, without a copy for the usual single run."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

"""Sampling from a bundle: noise -> U-Net + NumPy scheduler loop -> VAE decoder -> uint8 images.

This is the NumPy twin of diffusers' ``LDMPipeline`` (plus classifier-free guidance over class labels and
SDEdit img2img). Given the same initial latents it produces the same images as the diffusers loop; the
parity tests in ``tests/`` hold it to that. ``generate`` and ``img2img`` run one request in the caller's
thread through the same per-request state machine (``sampling.py``) and tick (``batching.py``) that a
``SamplingEngine`` uses to batch many requests, so a request gives the same images either way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.runtime.autoencoder import Autoencoder
from latent_ddpm.runtime.backends import Engine, EngineOptions, open_engine
from latent_ddpm.runtime.batching import Batcher
from latent_ddpm.runtime.bundle import Bundle, load_bundle
from latent_ddpm.runtime.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_ROWS,
    check_count,
    check_max_rows,
    check_threads,
)
from latent_ddpm.runtime.load_checks import check_class_table
from latent_ddpm.runtime.requests import RequestChecker, SamplingRequest, StepCallback, arguments_of
from latent_ddpm.runtime.results import GenerationResult, Preview, Timings
from latent_ddpm.runtime.sampling import SamplingRun, joined
from latent_ddpm.runtime.shipped import resolve_bundle

__all__ = ["GenerationResult", "Pipeline", "Preview", "StepCallback", "Timings"]


class Pipeline:
    """Loads a bundle's engines once; ``generate`` and ``img2img`` are safe to call from several threads.

    ``max_images`` bounds the images of one call (the whole batch lives in memory: raise it knowingly).
    ``max_rows`` bounds the rows of one U-Net call (a guided image is two rows): larger requests are split
    into runs of at most that many rows, each image computed on its own, so the split never changes an
    image. ``batch_size`` is how many images go through the decoder or encoder in one call.
    """

    def __init__(
        self,
        bundle: Bundle,
        unet: Engine,
        decoder: Engine,
        encoder: Engine | None = None,
        *,
        max_images: int = DEFAULT_MAX_IMAGES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.bundle, self.unet, self.decoder, self.encoder = bundle, unet, decoder, encoder
        self.max_images = check_count(max_images, "max_images", 2**31 - 1)
        self.batch_size = check_count(batch_size, "batch_size", 2**31 - 1)
        self.max_rows = check_max_rows(max_rows, bundle.can_guide)
        self.requests = RequestChecker(bundle, self.max_images)
        self.autoencoder = Autoencoder(bundle, decoder, encoder, self.batch_size)
        check_class_table(bundle, unet)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | None = None,
        backend: str | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        *,
        verify_hashes: bool = True,
        precision: str = "fp32",
        engine_options: EngineOptions | None = None,
        max_images: int = DEFAULT_MAX_IMAGES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> Pipeline:
        """``backend`` None: ``backends.DEFAULT_BACKEND``. ``precision="bf16"`` (openvino) needs the bundle's
        passed bf16 gate; ``engine_options`` are the backend's opt-in settings (``EngineOptions``)."""
        threads = check_threads(threads)
        bundle = load_bundle(resolve_bundle(path), verify_hashes=verify_hashes)
        engines = {
            role: open_engine(
                bundle, role, backend, providers, threads, precision=precision, options=engine_options
            )
            for role in bundle.models
        }
        return cls(
            bundle,
            engines["unet"],
            engines["vae_decoder"],
            engines.get("vae_encoder"),
            max_images=max_images,
            batch_size=batch_size,
            max_rows=max_rows,
        )

    @property
    def backend(self) -> str:
        return self.unet.backend

    @property
    def providers(self) -> list[str]:
        return self.unet.providers

    # ------------------------------------------------------------------ public API

    @arguments_of(RequestChecker.generate)
    def generate(self, *args: Any, **kwargs: Any) -> GenerationResult:
        """Sample images from noise. Arguments left as None take the bundle's recommended defaults.

        ``seed`` fixes everything an image draws (its initial latents, its random class, DDPM's noise) on any
        machine and backend; it is an int (image k gets ``seed + k``) or a list with one seed per image, so
        that any image of a batch can be regenerated alone (``latent_ddpm/runtime/seeds.py``). ``latents``
        overrides the initial noise (how parity with diffusers is tested). ``preview_steps`` lists step
        indices whose predicted clean image is decoded into ``previews``. ``callback(step_index, timestep, latents)`` runs after every step (progress bars). Every argument is checked before
        any work; a model that overflows raises NumericalError.
        """
        start = time.perf_counter()
        return self._sample(self.requests.generate(*args, **kwargs), start)

    @arguments_of(RequestChecker.img2img)
    def img2img(self, *args: Any, **kwargs: Any) -> GenerationResult:
        """SDEdit (Meng et al. 2022): encode, noise to ``strength`` of the schedule, denoise toward the class.

        Follows diffusers' img2img pipelines: of ``steps`` scheduled steps the last ``int(steps * strength)``
        run, starting from the encoded latents noised to the first of them. ``strength=0`` returns the
        autoencoder's reconstruction; ``strength=1`` starts from (almost) pure noise.
        """
        start = time.perf_counter()
        return self._sample(self.requests.img2img(*args, **kwargs), start)

    def decode(self, latents: np.ndarray, what: str = "the latents") -> np.ndarray:
        """Scaled latents -> NHWC uint8 images (undoing the latent scaling as diffusers' LDMPipeline does).

        Raises NumericalError if the decoder's output holds NaN or Inf (``what`` names the latents in it).
        """
        return self.autoencoder.decode(latents, what)

    def encode(self, images: Any) -> np.ndarray:
        """Images (PIL or uint8, any size) -> scaled latent means, the starting point of img2img."""
        return self.autoencoder.encode(self.requests.pixels(images))

    def batcher(self, max_rows: int | None = None) -> Batcher:
        """A fresh tick driver over this pipeline's engines (``SamplingEngine`` holds one)."""
        rows = self.max_rows if max_rows is None else check_max_rows(max_rows, self.bundle.can_guide)
        return Batcher(self.bundle, self.unet, self.autoencoder, rows)

    # ------------------------------------------------------------------ the loop

    def _sample(self, request: SamplingRequest, start: float) -> GenerationResult:
        """Tick the runs of one request in this thread until they finish: the engine's loop with one client."""
        batcher = self.batcher()
        timings = Timings()
        runs = [batcher.start(request, chunk, timings) for chunk in request.chunks(self.max_rows)]
        previews: list[Preview] = []
        images: dict[int, np.ndarray] = {}
        pending: dict[int, list[np.ndarray]] = {}
        while batcher.active:
            report = batcher.tick()
            if report.failed:
                raise report.failed[0][1]
            for _run, i, t, part in report.previews:  # the runs are in lockstep: same step, same timestep
                pending.setdefault(i, []).append(part)
                if len(pending[i]) == len(runs):
                    previews.append(Preview(i, t, joined(pending.pop(i))))
            if request.callback is not None and report.stepped:
                lead = runs[0]
                i = lead.step_index - 1
                request.callback(i, int(lead.timesteps[i]), joined([run.latents for run in runs]))
            for run, part in report.finished:
                images[id(run)] = part
        timings.total_s = time.perf_counter() - start
        return result_of(request, runs, [images[id(run)] for run in runs], timings, previews)


def result_of(
    request: SamplingRequest,
    runs: list[SamplingRun],
    images: list[np.ndarray],
    timings: Timings,
    previews: list[Preview],
) -> GenerationResult:
    """A request's result from its finished runs, in image order."""
    labels = [run.labels for run in runs]
    return GenerationResult(
        images=joined(images),
        latents=joined([run.latents for run in runs]),
        seed=request.seed,
        seeds=request.seeds,
        class_labels=None if labels[0] is None else joined([lab for lab in labels if lab is not None]),
        sampler=request.sampler,
        steps=len(runs[0].timesteps),
        guidance_scale=request.guidance_scale,
        eta=request.eta,
        timings=timings,
        previews=previews,
    )

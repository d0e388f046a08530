"""Sampling from a bundle: noise -> U-Net + NumPy scheduler loop -> VAE decoder -> uint8 images.

This is the NumPy twin of diffusers' ``LDMPipeline`` (plus classifier-free guidance over class labels and
SDEdit img2img). Given the same initial latents it produces the same images as the diffusers loop; the
parity tests in ``tests/`` hold it to that.
"""

from __future__ import annotations

import numbers
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.backends import Engine, EngineOptions, open_engine
from latent_ddpm.runtime.bundle import Bundle, load_bundle
from latent_ddpm.runtime.finite import check_finite
from latent_ddpm.runtime.images import from_uint8, prepare_images, to_uint8
from latent_ddpm.runtime.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IMAGES,
    check_count,
    check_eta,
    check_guidance_scale,
    check_num_images,
    check_threads,
)
from latent_ddpm.runtime.load_checks import check_class_table
from latent_ddpm.runtime.schedulers import SAMPLERS, make_scheduler
from latent_ddpm.runtime.shipped import resolve_bundle

# callback(step_index, timestep, latents) after every denoising step; for progress bars and previews.
StepCallback = Callable[[int, int, np.ndarray], None]


@dataclass
class Preview:
    """The decoded prediction of the clean image (``pred_original_sample``) at one step."""

    step_index: int
    timestep: int
    images: np.ndarray


@dataclass
class Timings:
    total_s: float = 0.0
    denoise_s: float = 0.0
    unet_s: float = 0.0
    decode_s: float = 0.0
    encode_s: float = 0.0
    steps: int = 0

    @property
    def per_step_ms(self) -> float:
        return 1000.0 * self.denoise_s / max(self.steps, 1)

    @property
    def loop_overhead(self) -> float:
        """Share of the denoising loop spent outside the U-Net (scheduler math, copies, guidance)."""
        return 1.0 - self.unet_s / self.denoise_s if self.denoise_s > 0 else 0.0


@dataclass
class GenerationResult:
    images: np.ndarray  # (N, H, W, C) uint8
    latents: np.ndarray  # (N, C, h, w) float32, the final latents before decoding
    seed: int | None
    class_labels: np.ndarray | None
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    timings: Timings
    previews: list[Preview] = field(default_factory=list)


@dataclass(frozen=True)
class _Request:
    """Arguments after validation and after the bundle's defaults are filled in."""

    sampler: str
    steps: int
    eta: float
    guidance_scale: float
    seed: int | None


class _UNetInputs:
    """The U-Net's feed for one engine batch of a sampling run, allocated once and refilled at every step.

    Reusing the same input arrays (instead of a fresh concatenation and timestep array per step) cut the
    loop's overhead in a batch-1 run of the digits model from about 2.5% to 2.0% (docs/benchmarks/NOTES.md).
    One instance per engine batch per run, so concurrent ``generate`` calls never share buffers.
    """

    def __init__(
        self, latent_shape: tuple[int, ...], feed_labels: np.ndarray | None, timestep_dtype: np.dtype
    ) -> None:
        self.n = latent_shape[0]
        self.guided = feed_labels is not None and feed_labels.shape[0] == 2 * self.n
        rows = 2 * self.n if self.guided else self.n
        self._sample = np.empty((rows, *latent_shape[1:]), dtype=np.float32) if self.guided else None
        self.feed: dict[str, np.ndarray] = {"timestep": np.empty((rows,), dtype=timestep_dtype)}
        if feed_labels is not None:
            self.feed["class_labels"] = feed_labels

    def fill(self, latents: np.ndarray, t: int) -> dict[str, np.ndarray]:
        if self._sample is not None:
            self._sample[: self.n] = latents
            self._sample[self.n :] = latents
            self.feed["sample"] = self._sample
        else:
            self.feed["sample"] = latents
        self.feed["timestep"].fill(t)
        return self.feed


class Pipeline:
    """Loads a bundle's engines once; ``generate`` and ``img2img`` are safe to call from several threads.

    ``max_images`` bounds the images of one call (the whole batch lives in memory: raise it knowingly);
    ``batch_size`` is how many images go through an engine in one call. Engine batches never change the
    images: the random numbers are drawn for the whole request and every image is computed independently.
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
    ) -> None:
        self.bundle, self.unet, self.decoder, self.encoder = bundle, unet, decoder, encoder
        self.max_images = check_count(max_images, "max_images", 2**31 - 1)
        self.batch_size = check_count(batch_size, "batch_size", 2**31 - 1)
        self._timestep_dtype = np.dtype(unet.model.input("timestep").dtype)
        check_class_table(bundle, unet, self._timestep_dtype)

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
        )

    @property
    def backend(self) -> str:
        return self.unet.backend

    @property
    def providers(self) -> list[str]:
        return self.unet.providers

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        num_images: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: int | None = None,
        class_labels: int | str | Sequence[int | str] | None = None,
        guidance_scale: float | None = None,
        latents: np.ndarray | None = None,
        callback: StepCallback | None = None,
        preview_steps: Sequence[int] = (),
    ) -> GenerationResult:
        """Sample images from noise. Arguments left as None take the bundle's recommended defaults.

        ``seed`` alone fixes everything (initial latents, random class labels, DDPM noise) on any machine
        and backend; ``latents`` overrides the initial noise (how parity with diffusers is tested).
        ``preview_steps`` lists step indices whose predicted clean image is decoded into ``previews``.
        Every argument is checked before any work; a model that overflows raises NumericalError.
        """
        start = time.perf_counter()
        req = self._request(steps, sampler, eta, guidance_scale, seed, callback)
        c, h, w = self.bundle.latent_shape
        if latents is not None:
            latents = self._check_latents(latents)
            if num_images is not None and num_images != latents.shape[0]:
                raise InputError(f"num_images={num_images} but latents hold {latents.shape[0]} images")
            num_images = latents.shape[0]
        num_images = check_num_images(1 if num_images is None else num_images, self.max_images)
        labels = self._check_labels(class_labels, num_images)
        rng = np.random.default_rng(req.seed)
        if latents is None:
            latents = rng.standard_normal((num_images, c, h, w), dtype=np.float32)
        labels = self._random_labels(labels, num_images, rng)

        scheduler = make_scheduler(req.sampler, self.bundle.scheduler_config)
        scheduler.set_timesteps(req.steps)
        latents = (latents * np.float32(scheduler.init_noise_sigma)).astype(np.float32)
        timings = Timings()
        latents, previews = self._denoise(
            latents, scheduler, scheduler.timesteps, labels, req, rng, callback, preview_steps, timings
        )
        images = self._decode_timed(latents, timings)
        timings.total_s = time.perf_counter() - start
        return GenerationResult(
            images,
            latents,
            req.seed,
            labels,
            req.sampler,
            req.steps,
            req.guidance_scale,
            req.eta,
            timings,
            previews,
        )

    def img2img(
        self,
        images: Any,
        strength: float = 0.6,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: int | None = None,
        class_labels: int | str | Sequence[int | str] | None = None,
        guidance_scale: float | None = None,
        callback: StepCallback | None = None,
        preview_steps: Sequence[int] = (),
    ) -> GenerationResult:
        """SDEdit (Meng et al. 2022): encode, noise to ``strength`` of the schedule, denoise toward the class.

        Follows diffusers' img2img pipelines: of ``steps`` scheduled steps the last ``int(steps * strength)``
        run, starting from the encoded latents noised to the first of them. ``strength=0`` returns the
        autoencoder's reconstruction; ``strength=1`` starts from (almost) pure noise.
        """
        start = time.perf_counter()
        if self.encoder is None:
            raise InputError(
                f"bundle {self.bundle.root} has no vae_encoder.onnx, so img2img is not available"
            )
        if (
            isinstance(strength, bool)
            or not isinstance(strength, numbers.Real)
            or not 0.0 <= float(strength) <= 1.0
        ):
            raise InputError(f"strength must be in [0, 1], got {strength!r}")
        req = self._request(steps, sampler, eta, guidance_scale, seed, callback)
        pixels = self._pixels(images)
        num_images = pixels.shape[0]
        labels = self._check_labels(class_labels, num_images)
        timings = Timings()
        t0 = time.perf_counter()
        init_latents = self._encode_pixels(pixels)
        timings.encode_s = time.perf_counter() - t0
        rng = np.random.default_rng(req.seed)
        noise = rng.standard_normal(init_latents.shape, dtype=np.float32)
        labels = self._random_labels(labels, num_images, rng)

        scheduler = make_scheduler(req.sampler, self.bundle.scheduler_config)
        scheduler.set_timesteps(req.steps)
        init_steps = min(int(req.steps * float(strength)), req.steps)
        t_start = max(req.steps - init_steps, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if len(timesteps) == 0:
            latents, previews = init_latents, []
        else:
            start_t = np.full((num_images,), timesteps[0], dtype=np.int64)
            latents = scheduler.add_noise(init_latents, noise, start_t).astype(np.float32)
            latents, previews = self._denoise(
                latents, scheduler, timesteps, labels, req, rng, callback, preview_steps, timings
            )
        images_out = self._decode_timed(latents, timings)
        timings.total_s = time.perf_counter() - start
        return GenerationResult(
            images_out,
            latents,
            req.seed,
            labels,
            req.sampler,
            len(timesteps),
            req.guidance_scale,
            req.eta,
            timings,
            previews,
        )

    def decode(self, latents: np.ndarray, what: str = "the latents") -> np.ndarray:
        """Scaled latents -> NHWC uint8 images (undoing the latent scaling as diffusers' LDMPipeline does).

        Raises NumericalError if the decoder's output holds NaN or Inf (``what`` names the latents in it).
        """
        with np.errstate(over="ignore", invalid="ignore"):
            unscaled = latents / np.float32(self.bundle.scaling_factor) + np.float32(self.bundle.shift_factor)
        check_finite(unscaled, f"{what} unscaled for the decoder (/ scaling_factor + shift_factor)")
        out = self._run_in_batches(self.decoder, "latent", unscaled.astype(np.float32), "image")
        check_finite(out, f"the decoded images of {what} ({self.decoder.model.path.name})")
        return to_uint8(out, self.bundle.value_range)

    def encode(self, images: Any) -> np.ndarray:
        """Images (PIL or uint8, any size) -> scaled latent means, the starting point of img2img."""
        return self._encode_pixels(self._pixels(images))

    def _pixels(self, images: Any) -> np.ndarray:
        """Images -> NHWC uint8 at model size, refusing ambiguous shapes and more than ``max_images``."""
        if self.encoder is None:
            raise InputError(f"bundle {self.bundle.root} has no vae_encoder.onnx")
        c, h, w = self.bundle.image_shape
        return prepare_images(images, c, h, w, max_images=self.max_images)

    def _encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        assert self.encoder is not None
        x = from_uint8(pixels, self.bundle.value_range)
        latents = self._run_in_batches(self.encoder, "image", x, "latent").astype(np.float32)
        return check_finite(latents, f"the encoded latents ({self.encoder.model.path.name})")

    def _run_in_batches(self, engine: Engine, name: str, x: np.ndarray, output: str) -> np.ndarray:
        """``engine`` on ``x`` in batches of at most ``batch_size`` images, so memory does not grow with N."""
        if len(x) <= self.batch_size:
            return engine.run({name: x})[output]
        return np.concatenate([engine.run({name: x[s]})[output] for s in _batches(len(x), self.batch_size)])

    # ------------------------------------------------------------------ the loop

    def _denoise(
        self,
        latents: np.ndarray,
        scheduler: Any,
        timesteps: np.ndarray,
        labels: np.ndarray | None,
        req: _Request,
        rng: np.random.Generator,
        callback: StepCallback | None,
        preview_steps: Sequence[int],
        timings: Timings,
    ) -> tuple[np.ndarray, list[Preview]]:
        step_kwargs: dict[str, Any] = {"generator": rng}
        if req.sampler == "ddim":
            step_kwargs["eta"] = req.eta
        batches = self._unet_batches(latents.shape, labels, req.guidance_scale)
        wanted_previews = set(preview_steps)
        previews: list[Preview] = []
        loop_start = time.perf_counter()
        for i, t in enumerate(timesteps):
            step = f"step {i + 1}/{len(timesteps)} (t={int(t)})"
            # An overflow is reported by check_finite, naming the step, instead of NumPy's RuntimeWarnings.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                model_input = scheduler.scale_model_input(latents, t)
                model_output = self._model_output(model_input, int(t), batches, req.guidance_scale, timings)
                check_finite(model_output, f"the U-Net output ({self.unet.model.path.name}) at {step}")
                out = scheduler.step(model_output, int(t), latents, **step_kwargs)
                latents = check_finite(out.prev_sample, f"the latents after {step}")
            if i in wanted_previews:
                previews.append(
                    Preview(i, int(t), self.decode(out.pred_original_sample, f"the preview at {step}"))
                )
            if callback is not None:
                callback(i, int(t), latents)
        timings.denoise_s += time.perf_counter() - loop_start
        timings.steps = len(timesteps)
        return latents, previews

    def _unet_batches(
        self, latent_shape: tuple[int, ...], labels: np.ndarray | None, guidance_scale: float
    ) -> list[tuple[slice, _UNetInputs]]:
        """The engine batches of a run (at most ``batch_size`` images each) and their reusable feeds."""
        out = []
        for s in _batches(latent_shape[0], self.batch_size):
            feed_labels = self._feed_labels(None if labels is None else labels[s], guidance_scale)
            rows = (s.stop - s.start, *latent_shape[1:])
            out.append((s, _UNetInputs(rows, feed_labels, self._timestep_dtype)))
        return out

    def _model_output(
        self,
        latents: np.ndarray,
        t: int,
        batches: list[tuple[slice, _UNetInputs]],
        guidance_scale: float,
        timings: Timings | None = None,
    ) -> np.ndarray:
        """The guided model output for every image, one U-Net call per engine batch."""
        if len(batches) == 1:
            return self._unet_call(latents, t, batches[0][1], guidance_scale, timings)
        out = np.empty_like(latents)
        for s, inputs in batches:
            out[s] = self._unet_call(latents[s], t, inputs, guidance_scale, timings)
        return out

    def _unet_call(
        self,
        latents: np.ndarray,
        t: int,
        inputs: _UNetInputs,
        guidance_scale: float,
        timings: Timings | None = None,
    ) -> np.ndarray:
        """One U-Net call; with guidance the unconditional and conditional halves share one batch.

        ``timings.unet_s`` counts the engine call alone, so that ``loop_overhead`` includes the guidance
        arithmetic and the feed assembly. ``inputs`` carries buffers reused across the steps of a run.
        """
        feed = inputs.fill(latents, t)
        u0 = time.perf_counter()
        out = self.unet.run(feed)["model_output"]
        if timings is not None:
            timings.unet_s += time.perf_counter() - u0
        if not inputs.guided:
            return out
        # Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps_uncond + w * (eps_cond - eps_uncond),
        # computed in place in the conditional half of the engine's output (same operations, no temporaries).
        n = inputs.n
        uncond, guided_out = out[:n], out[n:]
        guided_out -= uncond
        guided_out *= np.float32(guidance_scale)
        guided_out += uncond
        return guided_out

    def _feed_labels(self, labels: np.ndarray | None, guidance_scale: float) -> np.ndarray | None:
        cond = self.bundle.conditioning
        if labels is None or cond is None:
            return None
        if guidance_scale == 1.0:
            return labels
        null = np.full_like(labels, cond.null_class)
        return np.concatenate([null, labels])

    def _decode_timed(self, latents: np.ndarray, timings: Timings) -> np.ndarray:
        t0 = time.perf_counter()
        images = self.decode(latents, "the final latents")
        timings.decode_s = time.perf_counter() - t0
        return images

    # ------------------------------------------------------------------ argument checks

    def _request(
        self,
        steps: int | None,
        sampler: str | None,
        eta: float | None,
        guidance_scale: float | None,
        seed: int | None,
        callback: StepCallback | None = None,
    ) -> _Request:
        d = self.bundle.defaults
        sampler = d.sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise InputError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
        steps = d.steps if steps is None else steps
        max_steps = self.bundle.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= max_steps:
            raise InputError(
                f"steps must be an integer in 1..{max_steps} (the model's training steps), got {steps!r}"
            )
        eta = check_eta((d.eta if sampler == "ddim" else 0.0) if eta is None else eta)
        if eta != 0 and sampler != "ddim":
            raise InputError(f"eta={eta} applies to the ddim sampler only, not {sampler!r}")
        cond = self.bundle.conditioning
        can_guide = cond is not None and cond.null_class is not None
        if guidance_scale is None:
            guidance_scale = d.guidance_scale if can_guide else 1.0
        guidance_scale = check_guidance_scale(guidance_scale)
        if guidance_scale != 1.0 and not can_guide:
            why = "an unconditional model" if cond is None else "a model trained without a null class"
            raise InputError(
                f"guidance_scale={guidance_scale} needs classifier-free guidance, but this is {why}"
            )
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        if callback is not None and not callable(callback):
            raise InputError(f"callback must be callable(step_index, timestep, latents), got {callback!r}")
        return _Request(sampler, int(steps), eta, guidance_scale, int(seed))

    def _check_latents(self, latents: Any) -> np.ndarray:
        expected = self.bundle.latent_shape
        if not isinstance(latents, np.ndarray):
            raise InputError(f"latents must be a numpy array, got {type(latents).__name__}")
        if latents.dtype != np.float32:
            raise InputError(f"latents must be float32, got {latents.dtype}")
        if latents.ndim != 4 or latents.shape[1:] != expected or latents.shape[0] < 1:
            raise InputError(
                f"latents must have shape (N, {', '.join(map(str, expected))}), got {latents.shape}"
            )
        if not np.isfinite(latents).all():
            raise InputError("latents contain NaN or Inf")
        return latents

    def _random_labels(
        self, labels: np.ndarray | None, num_images: int, rng: np.random.Generator
    ) -> np.ndarray | None:
        """``labels``, or for a conditional model given none, a random class per image from the seeded stream."""
        cond = self.bundle.conditioning
        if labels is not None or cond is None:
            return labels
        return rng.integers(0, cond.num_classes, size=num_images).astype(np.int64)

    def _check_labels(
        self, class_labels: int | str | Sequence[int | str] | None, num_images: int
    ) -> np.ndarray | None:
        """The caller's class labels as indices, or None (unconditional, or random classes to draw)."""
        cond = self.bundle.conditioning
        if cond is None:
            if class_labels is not None:
                raise InputError(f"class_labels={class_labels!r} given, but this model is unconditional")
            return None
        if class_labels is None:
            return None
        if isinstance(class_labels, (str, numbers.Integral)) and not isinstance(class_labels, bool):
            items = [class_labels]
        elif isinstance(class_labels, (list, tuple)) or (
            isinstance(class_labels, np.ndarray) and class_labels.ndim == 1
        ):
            items = list(class_labels)
        else:
            raise InputError(
                f"class_labels must be a class index, a class name or a list of them, got {class_labels!r}"
            )
        if len(items) == 1:
            items = items * num_images
        if len(items) != num_images:
            raise InputError(f"got {len(items)} class labels for {num_images} images")
        out = []
        for item in items:
            if isinstance(item, str):
                if item not in cond.class_names:
                    raise InputError(f"class {item!r} is not one of {', '.join(cond.class_names)}")
                out.append(cond.class_names.index(item))
            elif not isinstance(item, numbers.Integral) or isinstance(item, bool):
                raise InputError(f"class label {item!r} must be an integer index or a class name")
            elif 0 <= item < cond.num_classes:
                out.append(int(item))
            else:
                raise InputError(f"class label {item!r} is outside 0..{cond.num_classes - 1}")
        return np.asarray(out, dtype=np.int64)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]

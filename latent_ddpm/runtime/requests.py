"""A sampling request: the caller's arguments, checked against the bundle and the limits before any work.

``Pipeline.generate``/``img2img`` and ``SamplingEngine.submit``/``submit_img2img`` build one through
``RequestChecker``, so every entry point refuses the same bad values with the same one-line messages
(docs/reliability.md) and fills in the same defaults (the bundle's ``defaults``). Nothing here allocates in
proportion to a bad request: sizes are checked before arrays are built.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.bundle import Bundle
from latent_ddpm.runtime.images import prepare_images
from latent_ddpm.runtime.limits import (
    DEFAULT_STRENGTH,
    check_eta,
    check_guidance_scale,
    check_num_images,
    check_strength,
)
from latent_ddpm.runtime.schedulers import SAMPLERS, make_scheduler
from latent_ddpm.runtime.seeds import check_seeds

Labels = int | str | Sequence[int | str] | np.ndarray | None
Seed = int | Sequence[int] | None
# callback(step_index, timestep, latents) after every denoising step of Pipeline.generate/img2img; for
# progress bars and previews (the engine's requests report through their handle's events instead).
StepCallback = Callable[[int, int, np.ndarray], None]
P = ParamSpec("P")
R = TypeVar("R")


def arguments_of(
    checker: Callable[Concatenate[Any, P], object],
) -> Callable[[Callable[..., R]], Callable[Concatenate[Any, P], R]]:
    """Give a method that passes ``*args, **kwargs`` on to ``checker`` the checker's parameters, for type
    checkers (ParamSpec) and ``help()`` (``__signature__``), so a request's arguments are written once."""

    def decorate(method: Callable[..., R]) -> Callable[Concatenate[Any, P], R]:
        signature = inspect.signature(checker)
        returns = inspect.signature(method).return_annotation
        method.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
        return method

    return decorate


@dataclass(frozen=True, eq=False)
class SamplingRequest:
    """Checked arguments of one generate or img2img call, defaults filled in."""

    num_images: int
    seed: int  # as given (the first image's seed for a list), or the one drawn when none was given
    seeds: tuple[int, ...]  # one per image (``latent_ddpm.runtime.seeds``)
    labels: (
        np.ndarray | None
    )  # (N,) class indices given by the caller; None: drawn per image, or unconditional
    sampler: str
    steps: int  # scheduled steps (img2img runs the last int(steps * strength) of them)
    eta: float
    guidance_scale: float
    # Classifier-free guidance runs: each image is two U-Net rows, [null; cond]. Decided here, once.
    guided: bool
    latents: np.ndarray | None = None  # generate: the initial noise, given instead of drawn
    pixels: np.ndarray | None = None  # img2img: NHWC uint8 pictures at the model's size
    strength: float = 1.0  # img2img: how much of the schedule to run
    preview_steps: frozenset[int] = frozenset()  # step indices whose predicted x_0 is decoded
    callback: StepCallback | None = None

    @property
    def is_img2img(self) -> bool:
        return self.pixels is not None

    @property
    def steps_to_run(self) -> int:
        """generate: ``steps``; img2img (diffusers' rule): the last ``int(steps * strength)`` of them."""
        return min(int(self.steps * self.strength), self.steps) if self.is_img2img else self.steps

    @property
    def rows_per_image(self) -> int:
        return 2 if self.guided else 1

    def chunks(self, max_rows: int) -> list[slice]:
        """The request's images split into runs of at most ``max_rows`` U-Net rows, in order. Every image is
        computed on its own (its own random streams, row-wise arithmetic), so the split changes no image."""
        size = max(1, max_rows // self.rows_per_image)
        return [slice(a, min(a + size, self.num_images)) for a in range(0, self.num_images, size)]


class RequestChecker:
    """Checks arguments for one bundle and one ``max_images`` limit."""

    def __init__(self, bundle: Bundle, max_images: int) -> None:
        self.bundle, self.max_images = bundle, max_images

    def generate(
        self,
        num_images: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: Seed = None,
        class_labels: Labels = None,
        guidance_scale: float | None = None,
        latents: np.ndarray | None = None,
        callback: StepCallback | None = None,
        preview_steps: Sequence[int] = (),
    ) -> SamplingRequest:
        sampling = self._sampling(sampler, steps, eta, guidance_scale)
        _check_callback(callback)
        if latents is not None:
            latents = self._check_latents(latents)
            if num_images is not None and num_images != latents.shape[0]:
                raise InputError(f"num_images={num_images} but latents hold {latents.shape[0]} images")
            num_images = latents.shape[0]
        n = self._count(num_images, seed)
        return SamplingRequest(
            **sampling,
            **self._images(n, seed, class_labels),
            latents=latents,
            preview_steps=_check_preview_steps(preview_steps),
            callback=callback,
        )

    def img2img(
        self,
        images: Any,
        strength: float = DEFAULT_STRENGTH,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: Seed = None,
        class_labels: Labels = None,
        guidance_scale: float | None = None,
        callback: StepCallback | None = None,
        preview_steps: Sequence[int] = (),
    ) -> SamplingRequest:
        if not self.bundle.has_encoder:
            raise InputError(
                f"bundle {self.bundle.root} has no vae_encoder.onnx, so img2img is not available"
            )
        strength = check_strength(strength)
        sampling = self._sampling(sampler, steps, eta, guidance_scale)
        _check_callback(callback)
        preview = _check_preview_steps(preview_steps)
        pixels = self.pixels(images)  # bounded by max_images before any picture is converted
        return SamplingRequest(
            **sampling,
            **self._images(pixels.shape[0], seed, class_labels),
            pixels=pixels,
            strength=strength,
            preview_steps=preview,
            callback=callback,
        )

    def pixels(self, images: Any) -> np.ndarray:
        """Images -> NHWC uint8 at model size, refusing ambiguous shapes and more than ``max_images``."""
        if not self.bundle.has_encoder:
            raise InputError(f"bundle {self.bundle.root} has no vae_encoder.onnx")
        c, h, w = self.bundle.image_shape
        return prepare_images(images, c, h, w, max_images=self.max_images)

    # ------------------------------------------------------------------ the checks

    def _sampling(
        self, sampler: str | None, steps: int | None, eta: float | None, guidance_scale: float | None
    ) -> dict[str, Any]:
        """sampler, steps, eta, guidance_scale and guided, defaults filled in."""
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
        make_scheduler(sampler, {}, eta=eta)  # refuses an eta the sampler does not have
        can_guide = self.bundle.can_guide
        if guidance_scale is None:
            guidance_scale = d.guidance_scale if can_guide else 1.0
        guidance_scale = check_guidance_scale(guidance_scale)
        if guidance_scale != 1.0 and not can_guide:
            why = (
                "an unconditional model"
                if self.bundle.conditioning is None
                else "a model trained without a null class"
            )
            raise InputError(
                f"guidance_scale={guidance_scale} needs classifier-free guidance, but this is {why}"
            )
        return {
            "sampler": sampler,
            "steps": int(steps),
            "eta": eta,
            "guidance_scale": guidance_scale,
            "guided": guidance_scale != 1.0,
        }

    def _images(self, n: int, seed: Seed, class_labels: Labels) -> dict[str, Any]:
        """num_images, seed, seeds and labels of ``n`` images."""
        labels = self._check_labels(class_labels, n)
        base, seeds = check_seeds(seed, n)
        return {"num_images": n, "seed": base, "seeds": seeds, "labels": labels}

    def _count(self, num_images: int | None, seed: Seed) -> int:
        """The number of images: ``num_images``, else one per seed of a seed list, else 1; within the limit."""
        if num_images is None and isinstance(seed, (list, tuple, np.ndarray)):
            num_images = len(seed)
        return check_num_images(1 if num_images is None else num_images, self.max_images)

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
        check_num_images(latents.shape[0], self.max_images)
        if not np.isfinite(latents).all():
            raise InputError("latents contain NaN or Inf")
        return latents

    def _check_labels(self, class_labels: Labels, num_images: int) -> np.ndarray | None:
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


def _check_preview_steps(preview_steps: Any) -> frozenset[int]:
    if isinstance(preview_steps, (str, bytes)) or not isinstance(preview_steps, (Sequence, set, frozenset)):
        raise InputError(f"preview_steps must be a list of step indices, got {preview_steps!r}")
    bad = [s for s in preview_steps if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0]
    if bad:
        raise InputError(f"preview_steps must hold step indices >= 0, got {bad[0]!r}")
    return frozenset(int(s) for s in preview_steps)


def _check_callback(callback: Any) -> None:
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be callable(step_index, timestep, latents), got {callback!r}")

"""What each button of the demo does: check the inputs, run the shared Pipeline, shape the outputs.

Every handler is also a public API endpoint, so it checks its arguments itself (a client can send anything,
not just what the sliders allow) and turns the runtime's user-facing errors into ``gr.Error`` with the same
message. The Pipeline is re-entrant (each call builds its own scheduler and RNG; ONNX Runtime sessions
may be run from several threads), so one instance serves every request.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import secrets
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from latent_ddpm.demo.imaging import (
    center_digit,
    for_display,
    open_picture,
    save_gif,
    strip,
    to_model_polarity,
)
from latent_ddpm.demo.slerp import slerp_path
from latent_ddpm.errors import LatentDDPMError
from latent_ddpm.runtime.images import make_grid, save_png
from latent_ddpm.runtime.limits import MAX_ETA, MAX_GUIDANCE_SCALE, MIN_GUIDANCE_SCALE
from latent_ddpm.runtime.pipeline import GenerationResult, Pipeline

SAMPLERS = [("DDIM", "ddim"), ("DDPM", "ddpm"), ("DPM-Solver++", "dpmsolver++")]
RANDOM_CLASS = "random"
MAX_IMAGES = 64  # per request: a public server's share, far below the runtime's DEFAULT_MAX_IMAGES
MAX_STEPS = 1000
MAX_SEED = 2**31 - 1
MAX_FRAMES = 16  # images in an interpolation strip
DENOISE_STRIP_FRAMES = 8  # pictures in the "watch it denoise" strip (the GIF shows up to 60 steps)
DENOISE_GIF_FRAMES = 60


@dataclass(frozen=True)
class Limits:
    """The bounds every control and endpoint enforces, derived from the bundle."""

    max_steps: int
    class_names: tuple[str, ...]  # empty for an unconditional model
    can_guide: bool
    has_encoder: bool
    single_channel: bool

    @classmethod
    def of(cls, pipe: Pipeline) -> Limits:
        b = pipe.bundle
        cond = b.conditioning
        return cls(
            max_steps=min(MAX_STEPS, b.num_train_timesteps),
            class_names=tuple(cond.class_names) if cond else (),
            can_guide=cond is not None and cond.null_class is not None,
            has_encoder=b.has_encoder,
            single_channel=b.image_shape[0] == 1,
        )


class Scratch:
    """Every picture the demo returns, written to a fresh folder per file and handed to Gradio by path.

    Gradio copies a returned path into its cache atomically (staging file, then rename). Returning numpy
    arrays instead makes Gradio 6 write ``<cache>/<hash>/image.png`` in place, so two concurrent requests
    with the same result (same seed and settings, e.g. two users on the default seed) can serve each other
    a truncated file; the load test caught exactly that. Ours are deleted after ``max_age_s``; the folder
    goes when the app is garbage-collected or Python exits.
    """

    def __init__(self, max_age_s: float = 600.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="latent-ddpm-demo-"))
        self.max_age_s = max_age_s
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)

    def path(self, name: str) -> Path:
        self._prune()
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        return folder / name

    def png(self, image: np.ndarray, name: str = "image.png") -> str:
        """An HxW or HxWx3 uint8 array written as a PNG of its own; returns the path as Gradio wants it."""
        path = self.path(name)
        Image.fromarray(image).save(path)
        return str(path)

    def _prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for folder in self.root.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The runtime's InputError/BundleError/... become a gr.Error with the same one-line message."""
    try:
        yield
    except LatentDDPMError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """An integer in ``low..high``; integral floats are accepted (gr.Number sends 3.0 for 3)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or float(value) != int(value) or not low <= int(value) <= high:
        raise gr.Error(f"{name} must be an integer in {low}..{high}, got {value!r}", print_exception=False)
    return int(value)


def check_float(name: str, value: Any, low: float, high: float) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= float(value) <= high:
        raise gr.Error(f"{name} must be a number in {low:g}..{high:g}, got {value!r}", print_exception=False)
    return float(value)


class Handlers:
    """One method per endpoint; ``progress`` is filled in by Gradio from the runtime's step callback."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.limits = Limits.of(pipe)
        self.scratch = Scratch()

    # ------------------------------------------------------------------ endpoints

    def generate(
        self,
        class_name: str | None,
        num_images: float,
        sampler: str,
        steps: float,
        eta: float,
        guidance_scale: float,
        seed: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's documented injection idiom
    ) -> tuple[list[tuple[str, str]], str, dict[str, Any]]:
        """Sample images from noise; returns (gallery, path of the PNG grid, timing)."""
        n = check_int("number of images", num_images, 1, MAX_IMAGES)
        args = self._sampling(sampler, steps, eta, guidance_scale, seed)
        with user_errors():
            result = self.pipe.generate(
                num_images=n,
                class_labels=self._class(class_name, allow_random=True),
                callback=self._progress(progress, args["steps"]),
                **args,
            )
        gallery = self._gallery(result)
        grid_path = self.scratch.path(
            f"latent-ddpm_seed{result.seed}_{result.sampler}_{result.steps}steps.png"
        )
        save_png(make_grid(result.images, nrow=min(n, 8)), grid_path)
        return gallery, str(grid_path), self._timing(result)

    def denoise(
        self,
        class_name: str | None,
        sampler: str,
        steps: float,
        eta: float,
        guidance_scale: float,
        seed: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, str, str, dict[str, Any]]:
        """One image, showing the model's guess of the clean image as the noise is removed.

        Returns (strip of DENOISE_STRIP_FRAMES pictures, path of an animated GIF, strip caption, timing).
        """
        args = self._sampling(sampler, steps, eta, guidance_scale, seed)
        n_steps = args["steps"]
        gif_steps = _evenly_spaced(n_steps, DENOISE_GIF_FRAMES)
        latents = self._initial_latents(args["seed"])
        with user_errors():
            result = self.pipe.generate(
                latents=latents,
                class_labels=self._class(class_name, allow_random=True),
                callback=self._progress(progress, n_steps),
                preview_steps=gif_steps,
                **args,
            )
            noise = self.pipe.decode(latents)
        previews = {p.step_index: p for p in result.previews}
        frames = [noise[0]] + [previews[i].images[0] for i in gif_steps] + [result.images[0]]
        gif_path = save_gif(
            [for_display(f) for f in frames], self.scratch.path(f"denoise_seed{result.seed}.gif")
        )
        strip_steps = [gif_steps[k] for k in _evenly_spaced(len(gif_steps), DENOISE_STRIP_FRAMES)]
        picture = strip(
            np.stack([noise[0]] + [previews[i].images[0] for i in strip_steps] + [result.images[0]])
        )
        caption = " → ".join(
            ["noise"]
            + [f"step {i + 1}/{n_steps} (t={previews[i].timestep})" for i in strip_steps]
            + ["decoded result"]
        )
        return self.scratch.png(for_display(picture)), str(gif_path), caption, self._timing(result)

    def interpolate(
        self,
        class_name: str | None,
        seed_a: float,
        seed_b: float,
        frames: float,
        steps: float,
        guidance_scale: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, dict[str, Any]]:
        """Walk the great circle between two seeds' noise with deterministic DDIM (eta 0); one class for all.

        The ends are exactly what Generate makes from those seeds with one image, DDIM and eta 0.
        """
        a = check_int("seed A", seed_a, 0, MAX_SEED)
        b = check_int("seed B", seed_b, 0, MAX_SEED)
        n = check_int("number of frames", frames, 2, MAX_FRAMES)
        args = self._sampling("ddim", steps, 0.0, guidance_scale, a)
        label = self._class(class_name, allow_random=False)
        latents = slerp_path(self._initial_latents(a)[0], self._initial_latents(b)[0], n)
        with user_errors():
            result = self.pipe.generate(
                latents=latents,
                class_labels=label,
                callback=self._progress(progress, args["steps"]),
                **args,
            )
        return self.scratch.png(for_display(strip(result.images))), self._timing(result)

    def img2img(
        self,
        image: str | dict[str, Any] | None,
        class_name: str | None,
        strength: float,
        variations: float,
        steps: float,
        guidance_scale: float,
        seed: float | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        """SDEdit: noise the picture to ``strength`` of the schedule, then denoise it toward the class.

        ``image`` is the uploaded file (its path, or Gradio's file record): every other value is checked, then
        the picture's size is read from its header, and only then is it decoded (``open_picture``).
        """
        if not self.limits.has_encoder:
            raise gr.Error(
                "this bundle has no vae_encoder.onnx, so it cannot start from an image",
                print_exception=False,
            )
        image = _file_path(image)
        if image is None:
            raise gr.Error("draw a digit or upload an image first", print_exception=False)
        s = check_float("strength", strength, 0.0, 1.0)
        n = check_int("number of variations", variations, 1, MAX_IMAGES)
        args = self._sampling(None, steps, None, guidance_scale, seed)
        label = self._class(class_name, allow_random=True)
        with user_errors():
            picture = self.model_input(open_picture(image))
            result = self.pipe.img2img(
                [picture] * n,
                strength=s,
                class_labels=label,
                callback=self._progress(progress, max(int(args["steps"] * s), 1)),
                **args,
            )
        return self._gallery(result), self._timing(result)

    # ------------------------------------------------------------------ UI helpers (not API endpoints)

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """What img2img encodes: for single-channel (digit) models, light strokes on a dark background."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise gr.Error(
                f"expected an 8-bit image, got {image.dtype} {list(image.shape)}", print_exception=False
            )
        if not self.limits.single_channel:
            return image[..., :3] if image.ndim == 3 else image
        return to_model_polarity(image)

    def sketch_to_input(self, sketch: dict[str, Any] | None) -> str | None:
        """The drawing as the model will see it (shown next to the sketchpad, sent to img2img)."""
        return self._input_preview((sketch or {}).get("composite"))

    def upload_to_input(self, upload: str | dict[str, Any] | None) -> str | None:
        """The uploaded file, bounded in size before it is decoded (``open_picture``), as the model input."""
        path = _file_path(upload)
        if path is None:
            return None
        with user_errors():
            return self._input_preview(open_picture(path))

    def _input_preview(self, picture: np.ndarray | None) -> str | None:
        """For digit models: inverted to light-on-dark if needed, cropped and centred like an MNIST digit."""
        if picture is None:
            return None
        if not self.limits.single_channel:
            return self.scratch.png(np.asarray(picture))
        grey = to_model_polarity(np.asarray(picture))
        if not grey.any():  # an empty canvas
            return None
        digit = center_digit(grey, self.pipe.bundle.image_shape[1])
        return self.scratch.png(for_display(digit[..., None]), "model-input.png")

    def random_seed(self) -> int:
        return secrets.randbelow(MAX_SEED + 1)

    # ------------------------------------------------------------------ internals

    def _sampling(
        self, sampler: str | None, steps: Any, eta: Any, guidance_scale: Any, seed: Any
    ) -> dict[str, Any]:
        if sampler is not None and sampler not in [v for _, v in SAMPLERS]:
            raise gr.Error(
                f"sampler must be one of {', '.join(v for _, v in SAMPLERS)}, got {sampler!r}",
                print_exception=False,
            )
        out: dict[str, Any] = {
            "sampler": sampler,
            "steps": check_int("steps", steps, 1, self.limits.max_steps),
            "guidance_scale": check_float(
                "guidance scale", guidance_scale, MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE
            ),
            "seed": self.random_seed() if seed is None else check_int("seed", seed, 0, MAX_SEED),
        }
        if eta is not None:
            eta = check_float("eta", eta, 0.0, MAX_ETA)
        # eta is DDIM's knob; the other samplers have none, so the slider's value is ignored for them.
        out["eta"] = eta if sampler == "ddim" else None
        return out

    def _class(self, name: str | None, allow_random: bool) -> str | None:
        names = self.limits.class_names
        if not names:  # unconditional: the (hidden) dropdown still sends its value
            if name not in (None, "", RANDOM_CLASS):
                raise gr.Error(
                    f"class {name!r} given, but this model is unconditional", print_exception=False
                )
            return None
        if allow_random and name in (None, "", RANDOM_CLASS):
            return None
        if name not in names:
            choices = ([RANDOM_CLASS] if allow_random else []) + list(names)
            raise gr.Error(f"class {name!r} is not one of {', '.join(choices)}", print_exception=False)
        return name

    def _initial_latents(self, seed: int) -> np.ndarray:
        """The noise Pipeline.generate draws for one image with this seed (same stream, same order)."""
        c, h, w = self.pipe.bundle.latent_shape
        return np.random.default_rng(seed).standard_normal((1, c, h, w), dtype=np.float32)

    def _gallery(self, result: GenerationResult) -> list[tuple[str, str]]:
        """(path of the upscaled PNG, caption naming the class) for each image."""
        names = self.limits.class_names
        labels = result.class_labels
        return [
            (
                self.scratch.png(for_display(img)),
                f"#{i + 1}" if labels is None else f"class {names[int(labels[i])]}",
            )
            for i, img in enumerate(result.images)
        ]

    @staticmethod
    def _progress(progress: gr.Progress, total: int):
        def callback(step_index: int, timestep: int, latents: np.ndarray) -> None:
            progress((step_index + 1, total), desc="denoising", unit="steps")

        progress((0, total), desc="denoising", unit="steps")
        return callback

    def _timing(self, result: GenerationResult) -> dict[str, Any]:
        t = result.timings
        n = len(result.images)
        return {
            "total_s": round(t.total_s, 4),
            "per_step_ms": round(t.per_step_ms, 3),
            "images_per_s": round(n / t.total_s, 2) if t.total_s > 0 else None,
            "images": n,
            "steps": t.steps,
            "unet_s": round(t.unet_s, 4),
            "decode_s": round(t.decode_s, 4),
            "encode_s": round(t.encode_s, 4),
            "sampler": result.sampler,
            "guidance_scale": result.guidance_scale,
            "seed": result.seed,
            "backend": self.pipe.backend,
            "providers": self.pipe.providers,
        }


def _file_path(upload: str | dict[str, Any] | None) -> str | None:
    """A path, or the path in Gradio's file record (what an event with ``preprocess=False`` receives)."""
    if isinstance(upload, dict):
        upload = upload.get("path")
    if upload is not None and not isinstance(upload, str):
        raise gr.Error(f"expected an uploaded image file, got {type(upload).__name__}", print_exception=False)
    return upload


def _evenly_spaced(total: int, count: int) -> list[int]:
    """Up to ``count`` distinct indices in 0..total-1, spread evenly and always ending at total-1."""
    if total <= count:
        return list(range(total))
    return sorted({round(x) for x in np.linspace(0, total - 1, count)})

"""What each button of the demo does: check the inputs, submit to the picked model, shape the outputs.

Every handler is also a public API endpoint, so it checks its arguments itself (a client can send anything,
not just what the sliders allow) and turns the runtime's user-facing errors (a refused argument, the engine's
BusyError, a server's refusal) into ``gr.Error`` with the same message. Every sampling request to a local
model goes to its one ``SamplingEngine``, which batches the requests of all users into one U-Net call per
step; the handlers are async generators that stream the engine's decoded previews while it samples. When Gradio cancels a handler (the Stop button, a
client's ``Job.cancel()``, a closed page) the engine request is cancelled with it, so its rows leave the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import numbers
import secrets
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from latent_ddpm.demo.imaging import (
    center_digit,
    flatten,
    for_display,
    open_picture,
    save_gif,
    strip,
    to_model_colour,
    to_model_polarity,
)
from latent_ddpm.demo.models import LocalModel, Model, RemoteHandle, RemoteModel
from latent_ddpm.demo.slerp import slerp_path
from latent_ddpm.errors import InputError, LatentDDPMError
from latent_ddpm.runtime.handles import Progress, RequestHandle
from latent_ddpm.runtime.images import make_grid, save_png
from latent_ddpm.runtime.limits import MAX_ETA, MAX_GUIDANCE_SCALE, MIN_GUIDANCE_SCALE
from latent_ddpm.runtime.pipeline import GenerationResult, Pipeline
from latent_ddpm.runtime.results import Preview
from latent_ddpm.serve.client import RemoteResult

SAMPLERS = [("DDIM", "ddim"), ("DDPM", "ddpm"), ("DPM-Solver++", "dpmsolver++")]
RANDOM_CLASS = "random"
MAX_IMAGES = 64  # per request: a public server's share, far below the runtime's DEFAULT_MAX_IMAGES
MAX_SEED = 2**31 - 1
MAX_FRAMES = 16  # images in an interpolation strip
DENOISE_STRIP_FRAMES = 8  # pictures in the "watch it denoise" strip (the GIF shows up to 60 steps)
DENOISE_GIF_FRAMES = 60
GENERATE_PREVIEWS = 8  # decoded x0 predictions streamed into Generate's gallery while it samples
# Uploaded pictures decoded at once (each up to MAX_INPUT_PIXELS before it is shrunk): the engine bounds the
# sampling work, this bounds the memory a burst of uploads takes.
DECODE_CONCURRENCY = 2
Handle = RequestHandle | RemoteHandle  # what a model's submit returns
AS_DRAWN = "as drawn"  # img2img without a class: the model's unconditional prediction (guidance 0)


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
    """One method per endpoint, over the demo's models (``models.py``); each takes the model's name last
    (None: the first model).

    The models are this object's: ``close()`` cancels what still runs and stops their engines. ``progress`` is
    filled in by Gradio and follows the engine's per-step events.
    """

    def __init__(self, models: Pipeline | Model | Sequence[Model]) -> None:
        if isinstance(models, Pipeline):
            models = [LocalModel(models)]
        elif isinstance(models, LocalModel | RemoteModel):
            models = [models]
        self.models: dict[str, Model] = {}
        for m in models:
            if m.name in self.models:
                raise InputError(f"two models are named {m.name!r}: give each bundle its own name")
            self.models[m.name] = m
        self.model = models[0]  # the default
        self.scratch = Scratch()
        self._decoding = threading.BoundedSemaphore(DECODE_CONCURRENCY)

    def close(self) -> None:
        for m in self.models.values():
            m.close()

    # ------------------------------------------------------------------ endpoints

    async def generate(
        self,
        class_name: str | None,
        num_images: float,
        sampler: str,
        steps: float,
        eta: float,
        guidance_scale: float,
        seed: float | None,
        previews: bool = False,
        model: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's documented injection idiom
    ) -> AsyncIterator[tuple[list[tuple[str, str]], str | None, str, dict[str, Any] | None]]:
        """Sample images from noise. Yields (gallery, PNG grid path, timing text, run details): with
        ``previews``, first the decoded predictions of the clean images while sampling runs; then the images.

        Previews cost throughput under load (decoding, PNGs and one more answer each: 16 clients got ~35% fewer
        images/s with 8 previews a request), so API calls have them off unless asked; the page turns them on.
        """
        m = self._model(model)
        n = check_int("number of images", num_images, 1, MAX_IMAGES)
        if not isinstance(previews, bool):
            raise gr.Error(f"previews must be true or false, got {previews!r}", print_exception=False)
        args = self._sampling(m, sampler, steps, eta, guidance_scale, seed)
        total = args["steps"]
        handle = self._submit(
            m.submit,
            num_images=n,
            class_labels=self._class(m, class_name, allow_random=True),
            # Not at the last step: the images follow.
            preview_steps=_evenly_spaced(total, GENERATE_PREVIEWS + 1)[:-1] if previews else (),
            **args,
        )
        with _cancelled_on_exit(handle):
            async for preview in _follow(handle, progress):
                caption = f"step {preview.step_index + 1}/{total}"
                gallery = await asyncio.to_thread(self._gallery, preview.images, [caption] * n)
                yield gallery, None, f"Denoising… {caption} (previews of the predicted clean images)", None
            result = _result(handle)
        gallery = await asyncio.to_thread(self._gallery, result.images, self._captions(m, result))
        grid_path = self.scratch.path(
            f"latent-ddpm_seed{result.seed}_{result.sampler}_{result.steps}steps.png"
        )
        await asyncio.to_thread(save_png, make_grid(result.images, nrow=min(n, 8)), grid_path)
        yield gallery, str(grid_path), self._timing_text(m, result), self._timing(m, result)

    async def denoise(
        self,
        class_name: str | None,
        sampler: str,
        steps: float,
        eta: float,
        guidance_scale: float,
        seed: float | None,
        model: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> AsyncIterator[tuple[str, str | None, str, str, dict[str, Any] | None]]:
        """One image, showing the model's guess of the clean image as the noise is removed.

        Yields (strip of up to DENOISE_STRIP_FRAMES pictures, path of an animated GIF, strip caption, timing
        text, run details); the strip grows while sampling runs, the GIF comes with the last answer.
        """
        m = self._local(model, "Watch it denoise")
        args = self._sampling(m, sampler, steps, eta, guidance_scale, seed)
        n_steps = args["steps"]
        gif_steps = _evenly_spaced(n_steps, DENOISE_GIF_FRAMES)
        strip_steps = [gif_steps[k] for k in _evenly_spaced(len(gif_steps), DENOISE_STRIP_FRAMES)]
        latents = _initial_latents(m, args["seed"])
        handle = self._submit(
            m.submit,
            latents=latents,
            class_labels=self._class(m, class_name, allow_random=True),
            preview_steps=gif_steps,
            **args,
        )
        previews: dict[int, Preview] = {}

        def caption(shown: list[int], done: bool) -> str:
            parts = ["noise"] + [f"step {i + 1}/{n_steps} (t={previews[i].timestep})" for i in shown]
            return " → ".join(parts + ["decoded result"] if done else parts)

        with _cancelled_on_exit(handle):
            with user_errors():
                noise = (await asyncio.to_thread(m.pipe.decode, latents))[0]
            async for preview in _follow(handle, progress):
                previews[preview.step_index] = preview
                if preview.step_index in strip_steps:
                    shown = [i for i in strip_steps if i in previews]
                    frames = np.stack([noise] + [previews[i].images[0] for i in shown])
                    picture = await asyncio.to_thread(self._strip_png, frames)
                    yield (
                        picture,
                        None,
                        caption(shown, False),
                        f"Denoising… step {preview.step_index + 1}/{n_steps}",
                        None,
                    )
            result = _result(handle)
        frames = [noise] + [previews[i].images[0] for i in gif_steps] + [result.images[0]]
        gif_path = await asyncio.to_thread(
            save_gif, [for_display(f) for f in frames], self.scratch.path(f"denoise_seed{result.seed}.gif")
        )
        picture = await asyncio.to_thread(
            self._strip_png,
            np.stack([noise] + [previews[i].images[0] for i in strip_steps] + [result.images[0]]),
        )
        yield (
            picture,
            str(gif_path),
            caption(strip_steps, True),
            self._timing_text(m, result),
            self._timing(m, result),
        )

    async def interpolate(
        self,
        class_name: str | None,
        seed_a: float,
        seed_b: float,
        frames: float,
        steps: float,
        guidance_scale: float,
        model: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[str, str, dict[str, Any]]:
        """Walk the great circle between two seeds' noise with deterministic DDIM (eta 0); one class for all.

        The ends are exactly what Generate makes from those seeds with one image, DDIM and eta 0.
        Returns (strip, timing text, run details).
        """
        m = self._local(model, "Interpolate")
        a = check_int("seed A", seed_a, 0, MAX_SEED)
        b = check_int("seed B", seed_b, 0, MAX_SEED)
        n = check_int("number of frames", frames, 2, MAX_FRAMES)
        args = self._sampling(m, "ddim", steps, 0.0, guidance_scale, a)
        label = self._class(m, class_name, allow_random=False)
        latents = slerp_path(_initial_latents(m, a)[0], _initial_latents(m, b)[0], n)
        handle = self._submit(m.submit, latents=latents, class_labels=label, **args)
        result = await _finish(handle, progress)
        picture = await asyncio.to_thread(self._strip_png, result.images)
        return picture, self._timing_text(m, result), self._timing(m, result)

    async def img2img(
        self,
        image: str | dict[str, Any] | None,
        class_name: str | None,
        strength: float,
        variations: float,
        steps: float,
        guidance_scale: float,
        seed: float | None,
        model: str | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[list[tuple[str, str]], str, dict[str, Any]]:
        """SDEdit: noise the picture to ``strength`` of the schedule, then denoise it toward the class.

        ``image`` is the uploaded file (its path, or Gradio's file record): every other value is checked, then
        the picture's size is read from its header, and only then is it decoded (``open_picture``).
        ``class_name`` AS_DRAWN denoises without a class (guidance 0: the model's unconditional prediction),
        so the result keeps whatever the drawing looks like. Returns (gallery, timing text, run details).
        """
        m = self._local(model, "From a sketch")
        if not m.limits.has_encoder:
            raise gr.Error(
                "this bundle has no vae_encoder.onnx, so it cannot start from an image",
                print_exception=False,
            )
        image = _file_path(image)
        if image is None:
            raise gr.Error("draw a digit or upload an image first", print_exception=False)
        s = check_float("strength", strength, 0.0, 1.0)
        n = check_int("number of variations", variations, 1, MAX_IMAGES)
        args = self._sampling(m, None, steps, None, guidance_scale, seed)
        if class_name == AS_DRAWN and m.limits.can_guide:
            label: str | None = m.limits.class_names[0]  # any class: guidance 0 ignores it
            args["guidance_scale"] = 0.0
        else:
            label = self._class(m, class_name, allow_random=True)
        picture = await asyncio.to_thread(self._decoded_input, m, image)
        handle = await asyncio.to_thread(
            self._submit, m.submit_img2img, [picture] * n, strength=s, class_labels=label, **args
        )
        result = await _finish(handle, progress)
        gallery = await asyncio.to_thread(self._gallery, result.images, self._captions(m, result))
        return gallery, self._timing_text(m, result), self._timing(m, result)

    # ------------------------------------------------------------------ UI helpers (not API endpoints)

    def model_input(self, image: np.ndarray, model: str | None = None) -> np.ndarray:
        """What img2img encodes: for single-channel (digit) models, light strokes on a dark background; for
        colour models the picture as drawn, transparency flattened (a sketchpad's empty canvas is white)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise gr.Error(
                f"expected an 8-bit image, got {image.dtype} {list(image.shape)}", print_exception=False
            )
        if not self._model(model).limits.single_channel:
            return flatten(image)
        return to_model_polarity(image)

    def sketch_to_input(self, sketch: dict[str, Any] | None, model: str | None = None) -> str | None:
        """The drawing as the model will see it (shown next to the sketchpad, sent to img2img)."""
        return self._input_preview((sketch or {}).get("composite"), self._model(model))

    def upload_to_input(self, upload: str | dict[str, Any] | None, model: str | None = None) -> str | None:
        """The uploaded file, bounded in size before it is decoded (``open_picture``), as the model input."""
        m = self._model(model)
        path = _file_path(upload)
        if path is None:
            return None
        with user_errors():
            return self._input_preview(open_picture(path), m)

    def _input_preview(self, picture: np.ndarray | None, m: Model) -> str | None:
        """For digit models: inverted to light-on-dark if needed, cropped and centred like an MNIST digit; for
        colour models: in colour as drawn, at the model's size. Shown enlarged, as the model will see it."""
        if picture is None:
            return None
        picture = np.asarray(picture)
        if picture.ndim == 3 and picture.shape[-1] == 4 and not picture[..., 3].any():  # an empty canvas
            return None
        if not m.limits.single_channel:
            return self.scratch.png(for_display(to_model_colour(picture, m.image_shape[1:])))
        grey = to_model_polarity(picture)
        if not grey.any():  # an empty canvas
            return None
        digit = center_digit(grey, m.image_shape[1])
        return self.scratch.png(for_display(digit[..., None]), "model-input.png")

    def random_seed(self) -> int:
        return secrets.randbelow(MAX_SEED + 1)

    # ------------------------------------------------------------------ internals

    def _model(self, name: str | None) -> Model:
        """The model called ``name``; None or "" is the first."""
        if name in (None, ""):
            return self.model
        if name not in self.models:
            raise gr.Error(f"model {name!r} is not one of {', '.join(self.models)}", print_exception=False)
        return self.models[name]

    def _local(self, name: str | None, tab: str) -> LocalModel:
        """The model, which must run in this process (the endpoints that pass latents or pictures)."""
        m = self._model(name)
        if not isinstance(m, LocalModel):
            raise gr.Error(
                f"{tab} needs a model run by the demo itself; {m.name!r} is served by {m.client.url}, "
                "which offers Generate only",
                print_exception=False,
            )
        return m

    def _sampling(
        self, m: Model, sampler: str | None, steps: Any, eta: Any, guidance_scale: Any, seed: Any
    ) -> dict[str, Any]:
        if sampler is not None and sampler not in [v for _, v in SAMPLERS]:
            raise gr.Error(
                f"sampler must be one of {', '.join(v for _, v in SAMPLERS)}, got {sampler!r}",
                print_exception=False,
            )
        out: dict[str, Any] = {
            "sampler": sampler,
            "steps": check_int("steps", steps, 1, m.limits.max_steps),
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

    def _class(self, m: Model, name: str | None, allow_random: bool) -> str | None:
        names = m.limits.class_names
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

    def _submit(self, submit: Callable[..., Handle], *args: Any, **kwargs: Any) -> Handle:
        """Queue a request: the runtime's checks and a full engine (BusyError) become a gr.Error."""
        with user_errors():
            return submit(*args, **kwargs)

    def _decoded_input(self, m: Model, path: str) -> np.ndarray:
        """The uploaded picture as img2img's input, decoded at most DECODE_CONCURRENCY at a time."""
        with self._decoding, user_errors():
            return self.model_input(open_picture(path), m.name)

    def _gallery(self, images: np.ndarray, captions: list[str]) -> list[tuple[str, str]]:
        """(path of the upscaled PNG, caption) for each image."""
        return [(self.scratch.png(for_display(img)), c) for img, c in zip(images, captions, strict=True)]

    def _captions(self, m: Model, result: GenerationResult | RemoteResult) -> list[str]:
        """Each image's class, or its number where it has none (unconditional, or img2img 'as drawn')."""
        labels = result.class_labels
        if labels is None or result.guidance_scale == 0.0:
            return [f"#{i + 1}" for i in range(len(result.images))]
        return [f"class {m.limits.class_names[int(label)]}" for label in labels]

    def _strip_png(self, frames: np.ndarray) -> str:
        return self.scratch.png(for_display(strip(frames)))

    def _timing(self, m: Model, result: GenerationResult | RemoteResult) -> dict[str, Any]:
        """The run's numbers for API clients (the page shows ``_timing_text``)."""
        t = result.timings
        n = len(result.images)
        return {
            "total_s": round(t.total_s, 4),
            "queue_s": round(t.queue_s, 4),
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
            "backend": m.backend,
            "providers": m.providers,
            "model": m.name,
        }

    def _timing_text(self, m: Model, result: GenerationResult | RemoteResult) -> str:
        """The run in two readable lines of Markdown: what it made and how fast, then where the time went."""
        t = result.timings
        n = len(result.images)
        rate = f" ({n / t.total_s:.1f} images/s)" if t.total_s > 0 else ""
        sampler = dict((v, k) for k, v in SAMPLERS).get(result.sampler, result.sampler)
        made = f"**{n} image{'s' if n != 1 else ''} in {t.total_s:.2f} s**{rate}"
        how = f"{sampler}, {t.steps} steps, guidance {result.guidance_scale:g}, seed {result.seed}"
        parts = [f"{t.per_step_ms:.1f} ms per step", f"U-Net {t.unet_s:.2f} s", f"decode {t.decode_s:.2f} s"]
        if t.encode_s > 0:
            parts.append(f"encode {t.encode_s:.2f} s")
        if t.queue_s >= 0.005:
            parts.append(f"waited {t.queue_s:.2f} s for a place in the batch")
        where = f"{m.name} on {m.backend} ({', '.join(m.providers)})"
        return f"{made} · {how}  \n{' · '.join(parts)} · on {where}"


def _initial_latents(m: LocalModel, seed: int) -> np.ndarray:
    """The noise Pipeline.generate draws for one image with this seed (same stream, same order)."""
    c, h, w = m.latent_shape
    return np.random.default_rng(seed).standard_normal((1, c, h, w), dtype=np.float32)


@contextlib.contextmanager
def _cancelled_on_exit(handle: Handle) -> Iterator[None]:
    """Cancel the engine request when the handler stops early (Gradio cancelled it, or it failed): its rows
    leave the batch at the next step. Once the request has finished this does nothing."""
    try:
        yield
    finally:
        handle.cancel()


async def _follow(handle: Handle, progress: gr.Progress) -> AsyncIterator[Preview]:
    """The request's previews as the engine decodes them; its step events drive the progress bar."""
    progress((0, 1), desc="waiting for a place in the batch")
    async for event in handle:
        if isinstance(event, Progress):
            progress((event.done, event.total), desc="denoising", unit="steps")
        elif isinstance(event, Preview):
            yield event


async def _finish(handle: RequestHandle, progress: gr.Progress) -> GenerationResult:
    """Wait for a request without previews; cancelled with its handler."""
    with _cancelled_on_exit(handle):
        async for _ in _follow(handle, progress):
            pass
        return _result(handle)


def _result(handle: Handle) -> Any:
    """A finished request's result; its failure (e.g. NaN in its rows) as a gr.Error with the same message."""
    with user_errors():
        try:
            return handle.result()
        except concurrent.futures.CancelledError:
            raise gr.Error(
                "the request was cancelled (the server is shutting down)", print_exception=False
            ) from None


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

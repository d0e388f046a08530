"""The Gradio app: four tabs over one shared SamplingEngine, each button also a named API endpoint.

``build_app`` only builds; ``launch`` serves (Gradio 6 takes the theme and CSS at launch). Tests and the
CLI both go through these two, so what the tests check is what users get. The app owns the engine: closing
the app (``app.close()``) cancels what still runs and stops the engine's thread.
"""

from __future__ import annotations

import contextlib
import os
import warnings

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from latent_ddpm.demo.handlers import (  # noqa: E402
    AS_DRAWN,
    DECODE_CONCURRENCY,
    MAX_FRAMES,
    MAX_IMAGES,
    MAX_SEED,
    RANDOM_CLASS,
    SAMPLERS,
    Handlers,
)
from latent_ddpm.demo.models import (  # noqa: E402
    REMOTE_CONNECTIONS,
    Limits,
    LocalModel,
    Model,
    remote_models,
)
from latent_ddpm.errors import InputError  # noqa: E402
from latent_ddpm.runtime.images import MAX_INPUT_PIXELS  # noqa: E402
from latent_ddpm.runtime.limits import MAX_ETA, MAX_GUIDANCE_SCALE, MIN_GUIDANCE_SCALE  # noqa: E402
from latent_ddpm.runtime.pipeline import Pipeline  # noqa: E402

# Stable endpoint names for gradio_client (documented in docs/demo.md); the UI-only helpers are private.
API_NAMES = ("generate", "denoise", "interpolate", "img2img")
# Largest file the server accepts in one upload: a 4096x4096 PNG photo is ~25 MB, a phone JPEG 3-8 MB.
MAX_FILE_SIZE = "32mb"
STOPPED = "Stopped: the run was cancelled, and its place in the batch given up."
# What build_app serves: a Pipeline, a bundle directory or shipped model name, or None (the default model).
Source = Pipeline | str | Path | None

CSS = """
.pixelated img, img.pixelated { image-rendering: pixelated; }
#header h1 { margin-bottom: 0.2em; }
#run-info { opacity: 0.8; font-size: 0.9em; }
#timing { min-height: 3em; }
"""
# System fonts only: Gradio's Default theme serves its fonts locally, but set it explicitly so that
# nothing is fetched from a font CDN whatever the theme defaults become.
THEME = gr.themes.Soft(
    primary_hue="indigo",
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)


# What each tab explains at its top.
INTROS = {
    "denoise": "At every step the model predicts the clean image (`pred_original_sample`); decoding those "
    "guesses shows noise turning into a picture, live while it samples.",
    "interpolate": "Deterministic DDIM (eta 0) from noise on the great circle between two seeds' noise "
    "(slerp). The ends are what Generate draws from each seed with one image, DDIM and eta 0.",
    "img2img": "Pick the brush and draw (or upload a picture). A grey digit model gets light strokes on black, "
    "centred like an MNIST digit; a colour model gets the picture in colour as drawn, on white. It is "
    "encoded, noised to *strength* of the schedule and denoised (SDEdit): strength 0 gives back the "
    "autoencoder's reconstruction, 1 ignores the drawing. Class 'as drawn' keeps what the drawing looks "
    "like; a class pulls it toward that class.",
}


@contextlib.contextmanager
def _tab(title: str, tab_id: str, **kwargs: Any) -> Iterator[gr.Tab]:
    with gr.Tab(title, id=tab_id, **kwargs) as tab:
        gr.Markdown(INTROS[tab_id])
        yield tab


@dataclass
class _Sampling:
    """The knobs shared by the sampling tabs."""

    sampler: gr.Dropdown | None
    steps: gr.Slider
    eta: gr.Slider | None
    guidance: gr.Slider
    seed: gr.Number | None


class DemoBlocks(gr.Blocks):
    """The demo's Blocks: closing it also closes the sampling engine it owns (even if it never launched)."""

    handlers: Handlers

    def close(self, verbose: bool = True) -> None:
        super().close(verbose)
        self.handlers.close()


def build_app(
    bundles: Source | Sequence[Source] = None,
    *,
    server: str | None = None,
    backend: str | None = None,
    precision: str = "fp32",
    providers: list[str] | None = None,
    threads: int | None = None,
    concurrency_limit: int | None = None,
    max_queue: int = 64,
) -> DemoBlocks:
    """A ready-to-launch app over one model or several (a model picker shows then), the first the default.

    ``bundles``: a Pipeline, a bundle directory or shipped model name (None: the default shipped model), or a
    list of them; each is loaded with ``backend``/``precision``/``providers``/``threads``. ``server``: the URL
    of a `latent-ddpm serve` deployment instead, whose models are reached over HTTP (Generate only).

    Every sampling request of a local model goes to its one SamplingEngine, which batches all running
    requests into one U-Net call per step within its row budget (``max_rows``) and refuses more than it may
    hold (BusyError, shown as an error). ``concurrency_limit`` requests are let in from Gradio's queue at
    once, across all endpoints (None: the engine's row budget, so that enough requests are in to fill a
    batch; with ``server``, REMOTE_CONNECTIONS); up to ``max_queue`` more wait in Gradio's queue, and beyond
    that clients are told the queue is full. The handlers that decode uploaded pictures run at most
    DECODE_CONCURRENCY at a time, whatever the burst.
    """
    # Pillow's decompression-bomb guard covers the pictures Gradio decodes itself (the sketchpad's layers):
    # Image.open refuses more than twice MAX_IMAGE_PIXELS, so that is MAX_INPUT_PIXELS everywhere. Its warning
    # for half that is noise here: the limit is enforced.
    Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS // 2
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    models: list[Model]
    if server is not None:
        models = list(remote_models(server))
        if not models:
            raise InputError(f"{server} serves no model")
    else:
        sources = list(bundles) if isinstance(bundles, list | tuple) else [bundles]
        models = [
            LocalModel(
                source
                if isinstance(source, Pipeline)
                else Pipeline.from_bundle(
                    source, backend=backend, providers=providers, threads=threads, precision=precision
                )
            )
            for source in sources
        ]
    h = Handlers(models)
    first = h.model
    if concurrency_limit is None:
        concurrency_limit = first.engine.max_rows if isinstance(first, LocalModel) else REMOTE_CONNECTIONS
    run = {"concurrency_limit": concurrency_limit, "concurrency_id": "engine"}
    # UI helpers: instant ones run outside the queue; the ones that decode a picture wait their turn.
    private = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
    picture = {
        "concurrency_limit": DECODE_CONCURRENCY,
        "concurrency_id": "pictures",
        "api_visibility": "private",
        "show_progress": "hidden",
    }

    # Controls whose settings depend on the model: built from the default model, updated by the picker
    # from the same functions.
    per_model: list[tuple[gr.components.Component, Callable[[Model], dict[str, Any]]]] = []

    def for_model(component: Any, props: Callable[[Model], dict[str, Any]]) -> Any:
        per_model.append((component, props))
        return component

    def class_dropdown(allow_random: bool, as_drawn: bool = False) -> gr.Dropdown:
        """``as_drawn`` (img2img, guided models): first choice, and the default, is no class at all."""

        def props(m: Model) -> dict[str, Any]:
            drawn = as_drawn and m.limits.can_guide
            choices = [AS_DRAWN] * drawn + [RANDOM_CLASS] * allow_random + list(m.limits.class_names)
            if drawn:
                info = "'as drawn' keeps what the drawing looks like; a class pulls it toward that class"
            elif allow_random:
                info = "'random' draws a class per image"
            else:
                info = "the same class for every frame"
            return {
                "choices": choices or [RANDOM_CLASS],
                "value": choices[0] if choices else RANDOM_CLASS,
                "info": info,
                "visible": bool(m.limits.class_names),
            }

        # Custom values: Gradio would check an API call's class against the default model's choices, so
        # another model's classes (the emoji groups) could not be asked for by name; the handlers check it.
        return for_model(gr.Dropdown(label="Class", allow_custom_value=True, **props(first)), props)

    def sampling(*, sampler: bool = True, seed: bool = True, wide: bool = False) -> _Sampling:
        """Sampler+steps, eta+guidance, seed+randomize: two to a row, or (``wide``) all in the caller's row.

        eta shows for DDIM only.
        """
        sampler_box = eta_box = seed_box = None
        pair = contextlib.nullcontext if wide else gr.Row
        with pair():
            if sampler:
                sampler_box = for_model(
                    gr.Dropdown(SAMPLERS, label="Sampler", min_width=140, **_sampler(first)), _sampler
                )
            steps = for_model(gr.Slider(1, step=1, label="Steps", min_width=180, **_steps(first)), _steps)
        with pair():
            if sampler:
                eta_box = for_model(
                    gr.Slider(
                        0.0,
                        MAX_ETA,
                        step=0.05,
                        label="eta (DDIM)",
                        info="0 deterministic, 1 DDPM-like",
                        min_width=180,
                        **_eta(first),
                    ),
                    _eta,
                )
                sampler_box.change(lambda s: gr.update(visible=s == "ddim"), sampler_box, eta_box, **private)
            guidance = for_model(
                gr.Slider(
                    MIN_GUIDANCE_SCALE,
                    MAX_GUIDANCE_SCALE,
                    step=0.1,
                    label="Guidance scale",
                    info="1 = off, higher = more class-like",
                    min_width=180,
                    **_guidance(first),
                ),
                _guidance,
            )
        if seed:
            with gr.Row(equal_height=True):
                seed_box = gr.Number(
                    0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, scale=4, min_width=120
                )
                dice = gr.Button("Randomize", variant="secondary", scale=1, min_width=120)
            dice.click(h.random_seed, None, seed_box, **private)
        return _Sampling(sampler_box, steps, eta_box, guidance, seed_box)

    def pixel_gallery(label: str, columns: int, elem_id: str) -> gr.Gallery:
        return gr.Gallery(
            label=label,
            columns=columns,
            height="auto",
            object_fit="contain",
            format="png",
            elem_id=elem_id,
            elem_classes="pixelated",
        )

    def strip_image(label: str, elem_id: str) -> gr.Image:
        return gr.Image(
            label=label,
            show_label=False,
            format="png",
            elem_classes="pixelated",
            interactive=False,
            elem_id=elem_id,
        )

    def stop_button(elem_id: str) -> gr.Button:
        return gr.Button("Stop", variant="stop", elem_id=elem_id, min_width=100, scale=0)

    with DemoBlocks(title="latent-ddpm demo", analytics_enabled=False, delete_cache=(1800, 3600)) as app:
        with gr.Row(equal_height=True):
            for_model(gr.Markdown(_header(first), elem_id="header"), lambda m: {"value": _header(m)})
            picker = gr.Dropdown(
                list(h.models),
                value=first.name,
                label="Model",
                visible=len(h.models) > 1,
                scale=0,
                min_width=200,
                elem_id="model-picker",
            )
        with gr.Tabs():
            with gr.Tab("Generate", id="generate") as generate_tab:
                with gr.Row():
                    with gr.Column(scale=2, min_width=340):
                        with gr.Row():
                            g_class = class_dropdown(allow_random=True)
                            g_num = gr.Slider(
                                1, MAX_IMAGES, value=8, step=1, label="Number of images", min_width=180
                            )
                        g = sampling()
                        # Off for API calls (its default), on for the page (app.load below): see
                        # Handlers.generate for what previews cost.
                        g_previews = gr.Checkbox(
                            False,
                            label="Live previews",
                            info="show the images forming while it samples (a little slower under load)",
                            elem_id="live-previews",
                        )
                        with gr.Row():
                            g_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            g_stop = stop_button("generate-stop")
                    with gr.Column(scale=3):
                        g_gallery = pixel_gallery("Samples", 4, "gallery")
                        g_grid = gr.File(label="PNG grid at model resolution", elem_id="grid-file")

            with _tab("Watch it denoise", "denoise", visible=first.local) as tab:
                for_model(tab, _local)
                with gr.Row(equal_height=True):
                    w_class = class_dropdown(allow_random=True)
                    w = sampling(wide=True)
                with gr.Row():
                    w_btn = gr.Button("Denoise", variant="primary", elem_id="denoise-btn")
                    w_stop = stop_button("denoise-stop")
                w_strip = strip_image("Predicted clean image along the way", "denoise-strip")
                with gr.Row():
                    w_caption = gr.Markdown(label="Frames")
                    w_gif = gr.Image(
                        label="Animation",
                        type="filepath",
                        elem_classes="pixelated",
                        interactive=False,
                        height=256,
                    )

            with _tab("Interpolate", "interpolate", visible=first.local) as tab:
                for_model(tab, _local)
                with gr.Row(equal_height=True):
                    i_class = class_dropdown(allow_random=False)
                    i_seed_a = gr.Number(0, label="Seed A", precision=0, minimum=0, maximum=MAX_SEED)
                    i_seed_b = gr.Number(1, label="Seed B", precision=0, minimum=0, maximum=MAX_SEED)
                    i_frames = gr.Slider(2, MAX_FRAMES, value=8, step=1, label="Frames", min_width=180)
                    i = sampling(sampler=False, seed=False, wide=True)
                i_btn = gr.Button("Interpolate", variant="primary", elem_id="interpolate-btn")
                i_strip = strip_image("Seed A → seed B", "interpolate-strip")

            with _tab("From a sketch", "img2img", **_img2img(first)) as tab:
                for_model(tab, _img2img)
                with gr.Row():
                    with gr.Column(min_width=280):
                        s_sketch = gr.Sketchpad(
                            label="Draw here",
                            canvas_size=(280, 280),
                            brush=gr.Brush(default_size=14, colors=["#000000"], color_mode="fixed"),
                            type="numpy",
                            layers=False,
                            elem_id="sketchpad",
                        )
                    with gr.Column(min_width=280):
                        s_input = gr.Image(  # a file: the handlers check its size before decoding it
                            label="Model input (or upload a picture)",
                            type="filepath",
                            image_mode=None,
                            sources=["upload", "clipboard"],
                            format="png",
                            elem_classes="pixelated",
                            height=300,
                            elem_id="model-input",
                        )
                        s_btn = for_model(
                            gr.Button(variant="primary", elem_id="img2img-btn", **_img2img_button(first)),
                            _img2img_button,
                        )
                    with gr.Column(min_width=280):
                        s_gallery = pixel_gallery("Results", 2, "img2img-gallery")
                with gr.Accordion("Settings", open=True), gr.Row():
                    with gr.Column(min_width=300):
                        s_class = class_dropdown(allow_random=True, as_drawn=True)
                        with gr.Row():
                            s_strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Strength")
                            s_variations = gr.Slider(1, 16, value=4, step=1, label="Variations")
                    with gr.Column(min_width=300):
                        s = sampling(sampler=False)

        with gr.Accordion("Timing of the last run", open=True):
            timing = gr.Markdown("Nothing run yet.", label="Timing", elem_id="timing")
            with gr.Accordion("Details", open=False):
                details = gr.JSON(label="Run details", elem_id="details")
        gr.Markdown(
            "Every button is also an API endpoint (`/generate`, `/denoise`, `/interpolate`, `/img2img`): "
            "see *Use via API* at the bottom of the page and `docs/demo.md`.",
            elem_id="run-info",
        )

        g_inputs = [g_class, g_num, g.sampler, g.steps, g.eta, g.guidance, g.seed]
        with generate_tab:
            gr.Examples(
                _examples(first.limits),
                g_inputs,
                label="Try these settings",
                example_labels=["DDIM 50, guided", "one class, DPM-Solver++ 20", "DDPM 1000, as trained"],
                api_visibility="private",
            )
        generating = g_btn.click(
            h.generate,
            [*g_inputs, g_previews, picker],
            [g_gallery, g_grid, timing, details],
            api_name="generate",
            **run,
        )
        app.load(lambda: True, None, g_previews, **private)
        denoising = w_btn.click(
            h.denoise,
            [w_class, w.sampler, w.steps, w.eta, w.guidance, w.seed, picker],
            [w_strip, w_gif, w_caption, timing, details],
            api_name="denoise",
            **run,
        )
        # Cancelling the handler cancels its engine request: its rows leave the batch at the next step.
        for stop, event in ((g_stop, generating), (w_stop, denoising)):
            stop.click(lambda: STOPPED, None, timing, cancels=[event], **private)
        i_btn.click(
            h.interpolate,
            [i_class, i_seed_a, i_seed_b, i_frames, i.steps, i.guidance, picker],
            [i_strip, timing, details],
            api_name="interpolate",
            **run,
        )
        # preprocess=False: the handler gets the uploaded file's path (Gradio has checked it is an upload) and
        # reads the picture's size from its header before anything decodes it; Gradio's own preprocessing
        # would open it first. The other inputs are plain values that the handler checks itself.
        s_btn.click(
            h.img2img,
            [s_input, s_class, s_strength, s_variations, s.steps, s.guidance, s.seed, picker],
            [s_gallery, timing, details],
            api_name="img2img",
            preprocess=False,
            **run,
        )
        s_sketch.change(h.sketch_to_input, [s_sketch, picker], s_input, **picture)
        s_input.upload(h.upload_to_input, [s_input, picker], s_input, preprocess=False, **picture)
        # Only a user's choice (.input): every control takes the model's defaults.
        picker.input(
            lambda name: [gr.update(**props(h.models[name])) for _, props in per_model],
            picker,
            [component for component, _ in per_model],
            **private,
        )

    app.handlers = h
    app.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, **kwargs: Any) -> Any:
    """Serve ``app`` with the demo's theme and CSS; extra keyword arguments go to ``Blocks.launch``.

    Errors are shown to clients in full (``show_error``): a request Gradio itself refuses (a None where
    a number belongs) should say why, as the demo's own ``gr.Error`` messages do.
    """
    kwargs.setdefault("show_error", True)
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    return app.launch(server_name=host, server_port=port, theme=THEME, css=CSS, **kwargs)


def _header(m: Model) -> str:
    where = "over HTTP" if not m.local else "by the torch-free NumPy runtime"
    return (
        f"# latent-ddpm\nA latent diffusion model served {where}. Model **{m.name}: {m.description}**, "
        f"on **{m.backend}** ({', '.join(m.providers)})."
    )


# The settings of the per-model controls, for the model they are built for and for the picker's updates.
def _sampler(m: Model) -> dict[str, Any]:
    return {"value": m.defaults.sampler}


def _steps(m: Model) -> dict[str, Any]:
    return {"maximum": m.limits.max_steps, "value": min(m.defaults.steps, m.limits.max_steps)}


def _eta(m: Model) -> dict[str, Any]:
    return {"value": m.defaults.eta, "visible": m.defaults.sampler == "ddim"}


def _guidance(m: Model) -> dict[str, Any]:
    can = m.limits.can_guide
    return {"value": m.defaults.guidance_scale if can else 1.0, "visible": can}


def _local(m: Model) -> dict[str, Any]:
    """The tabs that pass latents or previews: models run here only."""
    return {"visible": m.local}


def _img2img(m: Model) -> dict[str, Any]:
    return {"visible": m.local and m.limits.has_encoder}


def _img2img_button(m: Model) -> dict[str, Any]:
    """The sketch tab's button says what the model makes: digits from grey models, pictures from colour."""
    return {"value": "Turn into a digit" if m.limits.single_channel else "Turn into a picture"}


def _examples(lim: Limits) -> list[list[Any]]:
    """Settings worth trying on any bundle: the bundle's classes (or random), guidance where it exists."""
    names = lim.class_names or (RANDOM_CLASS,)

    def pick(i: int) -> str:
        return names[i % len(names)]

    guide = lim.can_guide
    steps = [min(s, lim.max_steps) for s in (50, 20, 1000)]
    return [
        [RANDOM_CLASS, 16, "ddim", steps[0], 0.0, 3.0 if guide else 1.0, 42],
        [pick(7), 8, "dpmsolver++", steps[1], 0.0, 2.0 if guide else 1.0, 7],
        [pick(3), 8, "ddpm", steps[2], 0.0, 1.5 if guide else 1.0, 1],
    ]

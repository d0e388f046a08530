"""The demo with both shipped models, digits and emoji, through gradio_client against the launched app.

``shipped_emoji`` (tests/conftest.py) installs a tiny fp16 RGB stand-in for the emoji model; the app serves
what `latent-ddpm demo` serves with no flags (``bundle_sources``). The picker lists both; picking emoji swaps
every class dropdown to the emoji groups; Generate and the sketch tab give RGB pictures. The sketch tab on a
colour model uses the drawing in colour, as drawn on white, resized to the model's size (no digit centring).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import EMOJI_GROUPS
from demo_server import TEST_STEPS, pick_model, serving
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from latent_ddpm.demo import cli as demo_cli  # noqa: E402
from latent_ddpm.demo.app import DemoBlocks, build_app  # noqa: E402
from latent_ddpm.demo.handlers import AS_DRAWN, RANDOM_CLASS  # noqa: E402
from latent_ddpm.demo.imaging import display_scale  # noqa: E402
from latent_ddpm.runtime.pipeline import Pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("shipped_emoji")


@pytest.fixture(scope="module")
def demo(shipped_emoji: Path, monkeypatch_module: None) -> Iterator[tuple[str, DemoBlocks]]:
    p = argparse.ArgumentParser()
    demo_cli.add_arguments(p)
    sources = demo_cli.bundle_sources(p.parse_args([]))
    assert sources == ["digits", "emoji"]
    app = build_app(sources, threads=1)
    with serving(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[None]:
    """No $LATENT_DDPM_BUNDLE: the demo serves its defaults."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(demo_cli.BUNDLE_ENV, raising=False)
        yield


def _red_stroke() -> np.ndarray:
    """A sketchpad's composite: a broad red vertical stroke on a transparent 280x280 canvas."""
    picture = np.zeros((280, 280, 4), np.uint8)
    picture[60:220, 105:175] = (220, 30, 30, 255)
    return picture


def test_the_picker_offers_both_and_emoji_swaps_the_classes(demo: tuple[str, DemoBlocks]) -> None:
    url, _ = demo
    picker = next(
        c["props"]
        for c in Client(url, verbose=False).config["components"]
        if c["props"].get("elem_id") == "model-picker"
    )
    assert picker["visible"] and [choice[1] for choice in picker["choices"]] == ["digits", "emoji"]
    emoji = pick_model(url, "emoji")
    generate, denoise, interpolate, sketch = emoji["Class"]
    for dropdown in (generate, denoise):
        assert [c[1] for c in dropdown["choices"]] == [RANDOM_CLASS, *EMOJI_GROUPS]
    assert [c[1] for c in interpolate["choices"]] == list(EMOJI_GROUPS)
    assert [c[1] for c in sketch["choices"]] == [AS_DRAWN, RANDOM_CLASS, *EMOJI_GROUPS]
    assert "emoji: 32x32x3 images" in emoji["header"][0]["value"]
    assert emoji["From a sketch"][0]["visible"]  # the bundle has an encoder: the tab works in colour
    assert emoji["img2img-btn"][0]["value"] == "Turn into a picture"
    digits = pick_model(url, "digits")
    assert [c[1] for c in digits["Class"][0]["choices"]][1:] == [str(i) for i in range(10)]
    assert digits["img2img-btn"][0]["value"] == "Turn into a digit"


def test_generate_on_emoji_shows_rgb_images(demo: tuple[str, DemoBlocks]) -> None:
    url, _ = demo
    gallery, grid, _, details = Client(url, verbose=False).predict(
        "Animals & Nature", 2, "ddim", TEST_STEPS, 0.0, 2.0, 3, False, "emoji", api_name="/generate"
    )
    expected = Pipeline.from_bundle("emoji", threads=1).generate(
        num_images=2, steps=TEST_STEPS, sampler="ddim", eta=0.0, seed=3, class_labels=2, guidance_scale=2.0
    )
    s = display_scale(32)
    for item, image in zip(gallery, expected.images, strict=True):
        shown = Image.open(item["image"])
        assert shown.mode == "RGB"
        assert np.array_equal(np.asarray(shown)[::s, ::s], image)
    assert [item["caption"] for item in gallery] == ["class Animals & Nature"] * 2
    assert details["model"] == "emoji" and Image.open(grid).mode == "RGB"


def test_a_sketch_is_a_colour_model_input_as_drawn_on_white(demo: tuple[str, DemoBlocks]) -> None:
    """The sketch tab's preview for emoji: the red stroke stays red on white, at the model's 32x32 (shown
    enlarged); for digits the same drawing becomes light strokes on black. An empty canvas is no input."""
    _, app = demo
    h = app.handlers
    shown = np.asarray(Image.open(h.sketch_to_input({"composite": _red_stroke()}, "emoji")))
    s = display_scale(32)
    model_input = shown[::s, ::s]
    assert model_input.shape == (32, 32, 3)
    assert (model_input[0, 0] == 255).all()  # the transparent canvas is white
    assert np.array_equal(model_input[16, 16], [220, 30, 30])  # the stroke keeps its colour
    digit = np.asarray(Image.open(h.sketch_to_input({"composite": _red_stroke()}, "digits")))
    assert digit.ndim == 2 and digit[0, 0] == 0 and digit.max() > 128
    assert h.sketch_to_input({"composite": np.zeros((280, 280, 4), np.uint8)}, "emoji") is None


def test_img2img_on_emoji_from_a_sketch(demo: tuple[str, DemoBlocks], tmp_path: Path) -> None:
    url, app = demo
    drawn = tmp_path / "sketch.png"
    Image.fromarray(_red_stroke()).save(drawn)
    gallery, _, details = Client(url, verbose=False).predict(
        handle_file(str(drawn)), "Flags", 0.5, 2, TEST_STEPS, 2.0, 0, "emoji", api_name="/img2img"
    )
    pipe = Pipeline.from_bundle("emoji", threads=1)
    picture = app.handlers.model_input(_red_stroke(), "emoji")
    expected = pipe.img2img(
        [picture] * 2, strength=0.5, steps=TEST_STEPS, seed=0, class_labels="Flags", guidance_scale=2.0
    )
    s = display_scale(32)
    for item, image in zip(gallery, expected.images, strict=True):
        assert np.array_equal(np.asarray(Image.open(item["image"]))[::s, ::s], image)
    assert details["model"] == "emoji"

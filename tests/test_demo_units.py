"""The demo's pieces without a server: slerp, sketch clean-up, handler checks, app layout, CLI flags.

Served bundle: the shipped digits model when ``latent_ddpm/data/digits/bundle.json`` exists, otherwise the
tiny factory bundle from ``tests/bundle_factory.py`` (see ``tests/demo_server.py``); the unconditional and
encoder-less cases always use factory bundles.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_factory import make_bundle
from demo_server import TEST_STEPS, demo_bundle, free_port
from PIL import Image

gr = pytest.importorskip("gradio")

from latent_ddpm.demo import cli as demo_cli  # noqa: E402
from latent_ddpm.demo.handlers import DECODE_CONCURRENCY, Handlers  # noqa: E402
from latent_ddpm.demo.imaging import (  # noqa: E402
    center_digit,
    display_scale,
    for_display,
    strip,
    to_model_polarity,
)
from latent_ddpm.demo.models import LocalModel  # noqa: E402
from latent_ddpm.demo.slerp import slerp, slerp_path  # noqa: E402
from latent_ddpm.runtime.engine import SamplingEngine  # noqa: E402
from latent_ddpm.runtime.pipeline import Pipeline  # noqa: E402


@pytest.fixture(scope="module")
def handlers(tmp_path_factory: pytest.TempPathFactory) -> Handlers:
    return Handlers(Pipeline.from_bundle(demo_bundle(tmp_path_factory.mktemp("units")), threads=1))


def test_slerp_keeps_gaussian_norms_where_lerp_shrinks_them() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4096), dtype=np.float32)
    mid = slerp(a, b, 0.5)
    assert abs(np.linalg.norm(mid) / np.linalg.norm(a) - 1) < 0.05
    assert np.linalg.norm((a + b) / 2) / np.linalg.norm(a) < 0.8  # why slerp: lerp leaves the shell
    path = slerp_path(a, b, 5)
    assert path.shape == (5, 4096) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], a, rtol=0, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(slerp(a, a * 2, 0.5), a * 1.5, rtol=1e-6)  # parallel: falls back to lerp


def test_display_upscaling_is_nearest_neighbour() -> None:
    img = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32, 1).astype(np.uint8)
    big = for_display(img)
    s = display_scale(32)
    assert s == 4 and big.shape == (128, 128)
    assert np.array_equal(big[::s, ::s], img[..., 0]) and np.array_equal(big[3::s, 3::s], img[..., 0])
    assert strip(np.zeros((3, 8, 8, 1), np.uint8)).shape == (8, 3 * 8 + 2 * 2, 1)


def test_dark_ink_on_light_paper_is_inverted_and_white_on_black_kept() -> None:
    ink = np.full((40, 40), 255, np.uint8)
    ink[10:30, 18:22] = 0
    assert to_model_polarity(ink)[20, 20] == 255 and to_model_polarity(ink)[0, 0] == 0
    assert np.array_equal(to_model_polarity(255 - ink), 255 - ink)
    rgba = np.zeros((40, 40, 4), np.uint8)  # black strokes on a transparent canvas
    rgba[10:30, 18:22, 3] = 255
    assert to_model_polarity(rgba)[20, 20] == 255 and to_model_polarity(rgba)[0, 0] == 0


def test_center_digit_frames_a_corner_scribble_like_mnist() -> None:
    grey = np.zeros((280, 280), np.uint8)
    grey[10:60, 200:215] = 255  # a short stroke in the top-right corner
    out = center_digit(grey, 32)
    ys, xs = np.nonzero(out > 32)
    assert out.shape == (32, 32)
    assert ys.max() - ys.min() + 1 == round(32 * 0.7)  # the longer side fills 70%, as MNIST's 20/28
    assert abs((ys.min() + ys.max()) / 2 - 15.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 15.5) <= 1
    assert not center_digit(np.zeros((50, 50), np.uint8), 32).any()


def test_sketch_becomes_a_white_on_black_model_input(handlers: Handlers) -> None:
    composite = np.full((280, 280, 3), 255, np.uint8)  # Gradio flattens the sketch on white
    composite[60:220, 130:150] = 0
    shown = np.asarray(Image.open(handlers.sketch_to_input({"layers": [], "composite": composite})))
    _, h, w = handlers.model.pipe.bundle.image_shape
    s = display_scale(h)
    assert shown.shape == (h * s, w * s)
    assert shown[0, 0] == 0 and shown[h * s // 2, w * s // 2] == 255
    assert handlers.sketch_to_input(None) is None
    assert handlers.sketch_to_input({"composite": np.full((50, 50, 3), 255, np.uint8)}) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0}, "number of images must be an integer in 1..64, got 0"),
        ({"num_images": 2.5}, "number of images must be an integer"),
        ({"num_images": True}, "number of images must be an integer"),
        ({"steps": float("nan")}, "steps must be an integer"),
        ({"eta": -0.1}, r"eta must be a number in 0\.\.1, got -0\.1"),
        ({"guidance_scale": float("inf")}, "guidance scale must be a number in 0..20"),
        ({"seed": 2**31}, f"seed must be an integer in 0..{2**31 - 1}"),
        ({"sampler": "euler"}, "sampler must be one of ddim, ddpm, dpmsolver\\+\\+, got 'euler'"),
        ({"class_name": "banana"}, "class 'banana' is not one of random, "),
        ({"previews": "yes"}, "previews must be true or false, got 'yes'"),
    ],
)
def test_handlers_check_every_argument_themselves(handlers: Handlers, kwargs: dict, message: str) -> None:
    call = {
        "class_name": "random",
        "num_images": 1,
        "sampler": "ddim",
        "steps": TEST_STEPS,
        "eta": 0.0,
        "guidance_scale": 1.0,
        "seed": 0,
    } | kwargs
    with pytest.raises(gr.Error, match=message):
        _run(handlers.generate(**call))


def test_runtime_input_errors_become_gr_errors(tmp_path: Path) -> None:
    h = Handlers(Pipeline.from_bundle(make_bundle(tmp_path / "b", conditional=False, with_encoder=False)))
    assert (
        h.model.limits.class_names == () and not h.model.limits.can_guide and not h.model.limits.has_encoder
    )
    gallery, _, _, timing = _run(h.generate("random", 2, "ddim", TEST_STEPS, 0.0, 1.0, 0))
    assert len(gallery) == 2 and gallery[0][1] == "#1" and timing["guidance_scale"] == 1.0
    with pytest.raises(gr.Error, match="guidance_scale=3.0 needs classifier-free guidance"):
        _run(h.generate("random", 2, "ddim", TEST_STEPS, 0.0, 3.0, 0))  # the runtime's InputError, same text
    with pytest.raises(gr.Error, match="class '3' given, but this model is unconditional"):
        _run(h.generate("3", 2, "ddim", TEST_STEPS, 0.0, 1.0, 0))
    with pytest.raises(gr.Error, match="no vae_encoder.onnx"):
        _run(h.img2img(np.zeros((32, 32), np.uint8), "random", 0.5, 1, TEST_STEPS, 1.0, 0))
    h.close()


def test_a_full_engine_is_a_clear_error(tmp_path: Path) -> None:
    """The engine's BusyError (it holds as many images as it may) reaches the client as a gr.Error."""
    pipe = Pipeline.from_bundle(make_bundle(tmp_path / "b"), threads=1)
    unet = _Held(pipe.unet)
    pipe = Pipeline(pipe.bundle, unet, pipe.decoder, pipe.encoder, max_images=4)
    h = Handlers(LocalModel(pipe, SamplingEngine(pipe, max_pending_images=4)))
    unet.go.clear()
    running = h.model.engine.submit(num_images=4, steps=TEST_STEPS, seed=0)  # holds all four places
    with pytest.raises(gr.Error, match="the sampling engine is busy: it holds 4 images"):
        _run(h.generate("random", 1, "ddim", TEST_STEPS, 0.0, 1.0, 0))
    unet.go.set()
    running.result(timeout=60)
    assert len(_run(h.generate("random", 1, "ddim", TEST_STEPS, 0.0, 1.0, 0))[0]) == 1
    h.close()


class _Held:
    """The real U-Net, whose calls wait while ``go`` is clear: holds a request mid-run, without timing."""

    def __init__(self, unet: Any) -> None:
        self.unet, self.go = unet, threading.Event()
        self.go.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unet, name)

    def run(self, feed: Any) -> Any:
        assert self.go.wait(60), "the test never let the U-Net go on"
        return self.unet.run(feed)


def test_unconditional_models_hide_class_and_guidance(tmp_path: Path) -> None:
    from latent_ddpm.demo.app import build_app

    app = build_app(make_bundle(tmp_path / "b", conditional=False, with_encoder=False))
    by_label: dict[str, list[bool]] = {}
    for comp in app.config["components"]:
        props = comp.get("props", {})
        by_label.setdefault(props.get("label"), []).append(props.get("visible", True))
    assert by_label["Class"] and not any(by_label["Class"])
    assert by_label["Guidance scale"] and not any(by_label["Guidance scale"])
    assert any(by_label["Steps"])
    app.close()


def test_cli_models_come_from_flags_then_environment_then_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first is the default; every shipped model is offered too, once."""
    from latent_ddpm.runtime.shipped import shipped_models

    others = [name for name in shipped_models() if name != "digits"]
    p = argparse.ArgumentParser()
    demo_cli.add_arguments(p)
    monkeypatch.delenv(demo_cli.BUNDLE_ENV, raising=False)
    assert demo_cli.bundle_sources(p.parse_args([])) == ["digits", *others]
    monkeypatch.setenv(demo_cli.BUNDLE_ENV, "/srv/bundles/digits")
    assert demo_cli.bundle_sources(p.parse_args([])) == ["/srv/bundles/digits", "digits", *others]
    args = p.parse_args(["--bundle", "/tmp/mine", "--bundle", "digits"])
    assert demo_cli.bundle_sources(args) == ["/tmp/mine", "digits", *others]
    assert demo_cli.bundle_sources(p.parse_args(["--bundle", str(shipped_models()["digits"])])) == [
        str(shipped_models()["digits"]),
        *others,
    ]


def test_cli_refuses_bad_flags_and_bundles_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latent_ddpm.cli import main

    assert main(["demo", "--port", "70000"]) == 2
    assert "--port must be in 1..65535, got 70000" in capsys.readouterr().err
    assert main(["demo", "--bundle", str(tmp_path / "missing"), "--port", str(free_port())]) == 2
    assert "bundle directory not found" in capsys.readouterr().err


def test_the_demo_and_the_runtime_share_one_guidance_bound(handlers: Handlers) -> None:
    """The slider, the handler and the Pipeline all read latent_ddpm.runtime.limits.MAX_GUIDANCE_SCALE."""
    from latent_ddpm.runtime import InputError
    from latent_ddpm.runtime.limits import MAX_GUIDANCE_SCALE

    above = MAX_GUIDANCE_SCALE + 0.5
    with pytest.raises(
        gr.Error, match=f"guidance scale must be a number in 0..{MAX_GUIDANCE_SCALE:g}, got {above}"
    ):
        _run(handlers.generate("random", 1, "ddim", TEST_STEPS, 0.0, above, 0))
    with pytest.raises(InputError, match=f"guidance_scale must be a number in 0..{MAX_GUIDANCE_SCALE:g}"):
        handlers.model.pipe.generate(steps=TEST_STEPS, guidance_scale=above, seed=0)
    if handlers.model.limits.can_guide:
        gallery = _run(handlers.generate("random", 1, "ddim", TEST_STEPS, 0.0, MAX_GUIDANCE_SCALE, 0))[0]
        assert len(gallery) == 1


def test_an_oversized_upload_is_refused_from_its_header(
    handlers: Handlers, bomb: Path, no_decoding: None
) -> None:
    """A 13000 x 13000 PNG of 164 kB decodes to 169 MB; eight of them took the server from 0.7 to 5.1 GB."""
    message = r"the image has 169\.0 megapixels; the demo takes at most 16\.8 \(scale it down first\)"
    with pytest.raises(gr.Error, match=message):
        handlers.upload_to_input(str(bomb))
    if handlers.model.limits.has_encoder:
        with pytest.raises(gr.Error, match=message):
            _run(handlers.img2img(str(bomb), "random", 0.5, 1, TEST_STEPS, 1.0, 0))


def test_uploads_that_are_not_pictures_are_one_clear_error(handlers: Handlers, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(gr.Error, match="the uploaded file is not an image Pillow can read"):
        handlers.upload_to_input(str(tmp_path / "notes.png"))
    Image.new("RGB", (3000, 2000), "white").save(tmp_path / "photo.png")  # a photo-sized canvas: accepted
    assert handlers.upload_to_input(str(tmp_path / "photo.png")) is None  # nothing drawn on it


def test_picture_handlers_are_queued_with_a_concurrency_limit(tmp_path: Path) -> None:
    """The upload and sketch handlers ran outside the queue, so a burst decoded pictures without limit; the
    sampling endpoints share one limit (--concurrency), by default the engine's row budget."""
    from latent_ddpm.demo.app import build_app

    limits = {}
    for concurrency in (3, None):
        app = build_app(make_bundle(tmp_path / f"b{concurrency}"), concurrency_limit=concurrency)
        for fn in app.fns.values():
            name = getattr(fn.fn, "__name__", "")
            if name in (
                "upload_to_input",
                "sketch_to_input",
                "generate",
                "denoise",
                "interpolate",
                "img2img",
            ):
                assert fn.queue is not False, name
                limits[concurrency, name] = fn.concurrency_limit
        rows = app.handlers.model.engine.max_rows
        app.close()
    for name in ("generate", "denoise", "interpolate", "img2img"):
        assert (limits[3, name], limits[None, name]) == (3, rows), name
    for name in ("upload_to_input", "sketch_to_input"):
        assert limits[3, name] == limits[None, name] == DECODE_CONCURRENCY, name


def _run(call: Any) -> Any:
    """Run a handler as Gradio does: a coroutine to its result, an async generator to its last answer."""

    async def last() -> Any:
        out = None
        async for answer in call:
            out = answer
        return out

    return asyncio.run(last() if inspect.isasyncgen(call) else call)

"""The demo over several models (the picker) and over a `latent-ddpm serve` deployment (``--server``), through
gradio_client against the launched app.

Several models: the served bundle of the other demo tests (``tests/demo_server.py``) and an unconditional
factory bundle without an encoder; each endpoint takes the model's name last. ``--server``: a real
`latent-ddpm serve` (Ray Serve, started as the serve tests start it) in front of a factory bundle, and the
demo talking to it over HTTP through ``latent_ddpm.serve.client``; its images must equal the runtime's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle, rewrite_meta
from demo_server import TEST_STEPS, demo_bundle, free_port, pick_model, serving
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from latent_ddpm.demo.app import build_app  # noqa: E402
from latent_ddpm.demo.imaging import display_scale  # noqa: E402
from latent_ddpm.runtime.bundle import load_bundle  # noqa: E402
from latent_ddpm.runtime.pipeline import Pipeline  # noqa: E402


def _model_pixels(path: str, height: int) -> np.ndarray:
    s = display_scale(height)
    return np.asarray(Image.open(path))[::s, ::s]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path_factory.mktemp("models")
    first = demo_bundle(root)
    second = make_bundle(root / "plain", conditional=False, with_encoder=False)
    rewrite_meta(second, name="plain")  # the served bundle may be a factory bundle too: two names
    pipes = [Pipeline.from_bundle(b, threads=1) for b in (first, second)]
    with serving(build_app(pipes)) as url:
        yield url, first, second


def test_each_endpoint_runs_the_picked_model(two_models: tuple[str, Path, Path]) -> None:
    url, first, second = two_models
    client = Client(url, verbose=False)
    names = [load_bundle(b).name for b in (first, second)]
    picker = next(
        c["props"] for c in client.config["components"] if c["props"].get("elem_id") == "model-picker"
    )
    assert picker["visible"] and [choice[1] for choice in picker["choices"]] == names == [names[0], "plain"]
    plain = Pipeline.from_bundle(second, threads=1)
    gallery, _, text, details = client.predict(
        "random", 2, "ddim", TEST_STEPS, 0.0, 1.0, 3, False, names[1], api_name="/generate"
    )
    expected = plain.generate(num_images=2, steps=TEST_STEPS, sampler="ddim", eta=0.0, seed=3)
    h = plain.bundle.image_shape[1]
    for item, image in zip(gallery, expected.images, strict=True):
        assert np.array_equal(_model_pixels(item["image"], h).reshape(image.shape), image)
    assert details["model"] == names[1] and [item["caption"] for item in gallery] == ["#1", "#2"]
    assert names[1] in text
    # Without a model the first one answers: it is the default.
    assert (
        client.predict("random", 1, "ddim", TEST_STEPS, 0.0, 1.0, 3, api_name="/generate")[3]["model"]
        == (names[0])
    )
    with pytest.raises(AppError, match="nosuch is not in the list of choices"):  # Gradio's own check
        client.predict("random", 1, "ddim", TEST_STEPS, 0.0, 1.0, 3, False, "nosuch", api_name="/generate")
    with pytest.raises(AppError, match="no vae_encoder.onnx"):
        client.predict(None, "random", 0.5, 1, TEST_STEPS, 1.0, 0, names[1], api_name="/img2img")


def test_picking_a_model_sets_every_control_to_it(two_models: tuple[str, Path, Path]) -> None:
    """The picker's event, called as the browser calls it: the unconditional, encoder-less model hides the
    class and guidance controls and the sketch tab; the first model brings them back."""
    url, first, _ = two_models
    plain = pick_model(url, "plain")
    assert [u["visible"] for u in plain["Class"]] == [False] * 4
    assert [u["visible"] for u in plain["Guidance scale"]] == [False] * 4
    assert "plain: 32x32x1 images" in plain["header"][0]["value"]
    tabs = ("Watch it denoise", "Interpolate", "From a sketch")
    assert [plain[tab][0]["visible"] for tab in tabs] == [True, True, False]
    back = pick_model(url, load_bundle(first).name)
    cond = load_bundle(first).conditioning
    assert [u["visible"] for u in back["Class"]] == [cond is not None] * 4
    assert back["From a sketch"][0]["visible"] == load_bundle(first).has_encoder


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`latent-ddpm serve` (local Ray, one replica) in front of a conditional factory bundle, taking at most
    two images per request (so that the server, not the demo, refuses three)."""
    pytest.importorskip("ray.serve")
    from serve_harness import ray_tmpdir, serve_process

    bundle = make_bundle(tmp_path_factory.mktemp("deployment") / "served")
    args = ["--bundle", str(bundle), "--max-images", "2"]
    with ray_tmpdir() as tmpdir, serve_process(args, tmpdir, free_port()) as served:
        yield served.url, bundle


@pytest.mark.slow
def test_the_demo_fronts_a_serve_deployment(deployment: tuple[str, Path]) -> None:
    """`latent-ddpm demo --server URL`: the page's Generate is the deployment's; images equal the runtime's."""
    server, bundle = deployment
    pipe = Pipeline.from_bundle(bundle, threads=1)
    name, h = pipe.bundle.name, pipe.bundle.image_shape[1]
    with serving(build_app(server=server)) as url:
        client = Client(url, verbose=False)
        gallery, _, text, details = client.predict(
            "3", 2, "ddpm", TEST_STEPS, 0.0, 2.0, 11, api_name="/generate"
        )
        expected = pipe.generate(
            num_images=2, steps=TEST_STEPS, sampler="ddpm", seed=11, class_labels="3", guidance_scale=2.0
        )
        for item, image in zip(gallery, expected.images, strict=True):
            assert np.array_equal(_model_pixels(item["image"], h).reshape(image.shape), image)
        assert [item["caption"] for item in gallery] == ["class 3", "class 3"]
        assert (details["model"], details["seed"], details["backend"]) == (name, 11, "latent-ddpm serve")
        assert server in text
        # The server's refusals come back as the demo's errors, and the tabs that need a local model say so.
        with pytest.raises(AppError, match="num_images=3 is more than the limit of 2 per call"):
            client.predict("3", 3, "ddim", TEST_STEPS, 0.0, 1.0, 0, api_name="/generate")
        with pytest.raises(AppError, match=f"needs a model run by the demo itself; '{name}' is served by"):
            client.predict("3", "ddim", TEST_STEPS, 0.0, 1.0, 0, api_name="/denoise")

"""The demo's API endpoints through gradio_client against a live in-process server.

Served bundle: the shipped digits model when ``latent_ddpm/data/digits/bundle.json`` exists, otherwise the
tiny factory bundle from ``tests/bundle_factory.py`` (see ``tests/demo_server.py``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from demo_server import TEST_STEPS, LiveDemo, demo_bundle, first_request, live_demo, record_requests
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from latent_ddpm.demo.imaging import display_scale  # noqa: E402
from latent_ddpm.runtime.handles import Cancelled, Finished, RequestHandle  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDemo]:
    with live_demo(demo_bundle(tmp_path_factory.mktemp("demo"))) as live:
        yield live


@pytest.fixture(scope="module")
def client(demo: LiveDemo) -> Client:
    return Client(demo.url, verbose=False)


def _class(demo: LiveDemo, index: int = 3) -> str:
    cond = demo.pipe.bundle.conditioning
    return cond.class_names[index % cond.num_classes] if cond else "random"


def _guidance(demo: LiveDemo) -> float:
    cond = demo.pipe.bundle.conditioning
    return 2.0 if cond and cond.null_class is not None else 1.0


def _load(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def _model_pixels(path: str, demo: LiveDemo) -> np.ndarray:
    """A displayed (nearest-neighbour upscaled) image back at model resolution, HxW or HxWx3."""
    big = _load(path)
    s = display_scale(demo.pipe.bundle.image_shape[1])
    return big[::s, ::s]


def _generate(client: Client, demo: LiveDemo, n: int = 3, seed: int = 7, sampler: str = "ddim"):
    return client.predict(
        _class(demo), n, sampler, TEST_STEPS, 0.0, _guidance(demo), seed, api_name="/generate"
    )


def test_endpoints_have_stable_names(client: Client) -> None:
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert names == {"/generate", "/denoise", "/interpolate", "/img2img"}


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++"])
def test_generate_returns_images_of_the_model_size(client: Client, demo: LiveDemo, sampler: str) -> None:
    gallery, grid_path, text, timing = _generate(client, demo, n=3, sampler=sampler)
    c, h, w = demo.pipe.bundle.image_shape
    s = display_scale(h)
    assert len(gallery) == 3
    for item in gallery:
        assert _load(item["image"]).shape[:2] == (h * s, w * s)
    grid = _load(grid_path)  # model resolution: 3 images in a row, 2-pixel padding
    assert grid.shape[:2] == (h + 4, 3 * w + 8)
    assert timing["images"] == 3 and timing["steps"] == TEST_STEPS and timing["sampler"] == sampler
    assert timing["backend"] == "onnxruntime" and timing["providers"] == ["CPUExecutionProvider"]
    assert timing["total_s"] > 0 and timing["per_step_ms"] > 0 and timing["images_per_s"] > 0
    assert text.startswith("**3 images in ") and f"{TEST_STEPS} steps" in text and "images/s" in text


def test_a_fixed_seed_gives_the_same_images(client: Client, demo: LiveDemo) -> None:
    first = [_load(item["image"]) for item in _generate(client, demo, seed=11)[0]]
    second = [_load(item["image"]) for item in _generate(client, demo, seed=11)[0]]
    other = [_load(item["image"]) for item in _generate(client, demo, seed=12)[0]]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_generate_matches_the_runtime(client: Client, demo: LiveDemo) -> None:
    gallery, _, _, timing = _generate(client, demo, n=2, seed=5)
    direct = demo.pipe.generate(
        num_images=2,
        steps=TEST_STEPS,
        sampler="ddim",
        eta=0.0,
        seed=5,
        class_labels=_class(demo) if demo.pipe.bundle.conditioning else None,
        guidance_scale=_guidance(demo),
    )
    for item, expected in zip(gallery, direct.images, strict=True):
        assert np.array_equal(_model_pixels(item["image"], demo).reshape(expected.shape), expected)
    assert timing["seed"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"num_images": 0}, "0"),
        ({"num_images": 65}, "65"),
        ({"steps": 0}, "0"),
        ({"steps": 5000}, "5000"),
        ({"seed": -1}, "-1"),
        ({"seed": 2**31}, str(2**31)),
        ({"guidance": 21.0}, "21"),
        ({"eta": 1.5}, "1.5"),
        ({"sampler": "euler"}, "euler"),
        ({"class_name": "banana"}, "banana"),
        ({"steps": None}, "None"),
        ({"guidance": None}, "None"),
        ({"num_images": None}, "None"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_server_keeps_serving(
    client: Client, demo: LiveDemo, args: dict, message: str
) -> None:
    call = {
        "class_name": _class(demo),
        "num_images": 2,
        "sampler": "ddim",
        "steps": TEST_STEPS,
        "eta": 0.0,
        "guidance": _guidance(demo),
        "seed": 1,
    } | args
    with pytest.raises(AppError, match=f"(?s).*{message}"):
        client.predict(*call.values(), api_name="/generate")
    assert len(_generate(client, demo, n=1)[0]) == 1


def test_denoise_shows_noise_becoming_an_image(client: Client, demo: LiveDemo) -> None:
    strip_path, gif_path, caption, _, timing = client.predict(
        _class(demo), "ddim", TEST_STEPS, 0.0, _guidance(demo), 3, api_name="/denoise"
    )
    _, h, w = demo.pipe.bundle.image_shape
    s = display_scale(h)
    frames = TEST_STEPS + 2  # noise, every step's prediction (<= 8 steps), the decoded result
    assert _load(strip_path).shape[:2] == (h * s, (frames * w + (frames - 1) * 2) * s)
    gif = Image.open(gif_path)
    # Pillow merges identical consecutive frames (a converged prediction equals the decoded result) and adds
    # up their durations, so the frame count can shrink but the animation's length may not.
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert gif.format == "GIF" and 2 <= gif.n_frames <= frames
    assert sum(durations) == (frames - 1) * 120 + 1200
    assert caption.startswith("noise → step 1/") and caption.endswith("decoded result")
    assert timing["steps"] == TEST_STEPS


def test_interpolation_strip_ends_at_each_seeds_image(client: Client, demo: LiveDemo) -> None:
    frames = 5
    strip_path, _, timing = client.predict(
        _class(demo), 21, 22, frames, TEST_STEPS, _guidance(demo), api_name="/interpolate"
    )
    _, h, w = demo.pipe.bundle.image_shape
    s = display_scale(h)
    strip = _load(strip_path)
    assert strip.shape[:2] == (h * s, (frames * w + (frames - 1) * 2) * s)
    assert timing["images"] == frames and timing["sampler"] == "ddim"
    small = strip[::s, ::s]
    for seed, x in ((21, 0), (22, (frames - 1) * (w + 2))):
        (expected,) = _generate(client, demo, n=1, seed=seed)[0]
        assert np.abs(small[:, x : x + w].astype(int) - _model_pixels(expected["image"], demo)).max() <= 1


def _digit(tmp_path: Path, h: int, w: int) -> tuple[np.ndarray, str]:
    """A white '7'-like stroke on black, the way MNIST digits look."""
    x = np.zeros((h, w), dtype=np.uint8)
    x[h // 4 : h // 4 + 3, w // 4 : 3 * w // 4] = 255
    for r in range(h // 4, 3 * h // 4):
        c = 3 * w // 4 - (r - h // 4) // 2
        x[r, c - 1 : c + 2] = 255
    path = tmp_path / "digit.png"
    Image.fromarray(x).save(path)
    return x, str(path)


def test_img2img_at_strength_0_is_the_autoencoders_reconstruction(
    client: Client, demo: LiveDemo, tmp_path: Path
) -> None:
    if not demo.pipe.bundle.has_encoder:
        pytest.skip("the served bundle has no vae_encoder.onnx")
    _, h, w = demo.pipe.bundle.image_shape
    x, path = _digit(tmp_path, h, w)
    gallery, _, timing = client.predict(
        handle_file(path), _class(demo), 0.0, 2, TEST_STEPS, _guidance(demo), 0, api_name="/img2img"
    )
    expected = demo.pipe.decode(demo.pipe.encode(x))[0]
    assert len(gallery) == 2 and timing["steps"] == 0
    for item in gallery:
        got = _model_pixels(item["image"], demo).reshape(expected.shape)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_img2img_inverts_dark_on_light_drawings(client: Client, demo: LiveDemo, tmp_path: Path) -> None:
    if not demo.pipe.bundle.has_encoder or demo.pipe.bundle.image_shape[0] != 1:
        pytest.skip("needs a single-channel bundle with a vae_encoder.onnx")
    _, h, w = demo.pipe.bundle.image_shape
    x, path = _digit(tmp_path, h, w)
    Image.fromarray(255 - x).save(path)  # black ink on white paper
    gallery, _, _ = client.predict(
        handle_file(path), _class(demo), 0.0, 1, TEST_STEPS, _guidance(demo), 0, api_name="/img2img"
    )
    expected = demo.pipe.decode(demo.pipe.encode(x))[0]
    got = _model_pixels(gallery[0]["image"], demo).reshape(expected.shape)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_img2img_at_strength_1_generates_from_noise(client: Client, demo: LiveDemo, tmp_path: Path) -> None:
    if not demo.pipe.bundle.has_encoder:
        pytest.skip("the served bundle has no vae_encoder.onnx")
    _, h, w = demo.pipe.bundle.image_shape
    x, path = _digit(tmp_path, h, w)
    gallery, _, timing = client.predict(
        handle_file(path), _class(demo), 1.0, 3, TEST_STEPS, _guidance(demo), 4, api_name="/img2img"
    )
    s = display_scale(h)
    assert len(gallery) == 3 and timing["steps"] == TEST_STEPS
    for item in gallery:
        big = _load(item["image"])
        assert big.shape[:2] == (h * s, w * s)
        assert np.abs(big[::s, ::s].astype(float) - x.astype(float)).mean() > 10


def test_img2img_without_an_image_is_a_clear_error(client: Client, demo: LiveDemo) -> None:
    with pytest.raises(AppError, match="draw a digit or upload an image"):
        client.predict(None, _class(demo), 0.5, 1, TEST_STEPS, _guidance(demo), 0, api_name="/img2img")


def test_progress_reports_denoising_steps(client: Client, demo: LiveDemo) -> None:
    """The runtime's per-step callback drives gr.Progress: clients see 'denoising i/steps'."""
    steps = 100
    job = client.submit(_class(demo), 1, "ddim", steps, 0.0, _guidance(demo), 0, api_name="/generate")
    job.result(timeout=120)

    async def progress_updates() -> list:
        return [u.progress_data[0] async for u in job if getattr(u, "progress_data", None)]

    updates = asyncio.run(progress_updates())
    denoising = [u for u in updates if u.desc == "denoising"]
    assert denoising, f"no denoising progress reached the client: {updates}"
    for unit in denoising:
        assert (unit.unit, unit.length) == ("steps", steps)
        assert 0 <= unit.index <= steps


@pytest.fixture()
def engine_handles(demo: LiveDemo, monkeypatch: pytest.MonkeyPatch) -> list[RequestHandle]:
    return record_requests(demo, monkeypatch)


def test_generate_under_concurrent_load_gives_each_seed_its_image_alone(
    client: Client,
    demo: LiveDemo,
    engine_handles: list[RequestHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six clients at once share the engine's U-Net calls; each still gets exactly its images alone.

    The engine's U-Net calls wait until all six requests are in the engine, so that they do share calls
    however loaded the machine is (no timing involved)."""
    engine = demo.app.handlers.model.engine
    calls = [(seed, ("ddim", "ddpm", "dpmsolver++")[seed % 3]) for seed in range(6)]
    all_in = threading.Event()
    unet_run = demo.pipe.unet.run

    def held(feed):
        assert all_in.wait(120), "the requests never all reached the engine"
        return unet_run(feed)

    def args(seed: int, sampler: str) -> tuple:
        return (_class(demo, seed), 2, sampler, 10, 0.5, _guidance(demo), seed)

    monkeypatch.setattr(demo.pipe.unet, "run", held)
    before = engine.stats
    jobs = [client.submit(*args(seed, sampler), api_name="/generate") for seed, sampler in calls]
    while len(engine_handles) < len(calls):
        assert not any(job.done() for job in jobs), [job.result() for job in jobs if job.done()]
        time.sleep(0.05)
    all_in.set()
    together = [job.result(timeout=300) for job in jobs]
    after = engine.stats
    rows = (after.unet_rows - before.unet_rows) / (after.unet_calls - before.unet_calls)
    one_request = 2 * (2 if _guidance(demo) != 1.0 else 1)
    assert rows > one_request, "the requests never shared a U-Net call: nothing was batched"
    for (seed, sampler), shared in zip(calls, together, strict=True):
        alone = client.predict(*args(seed, sampler), api_name="/generate")
        assert shared[3]["seed"] == alone[3]["seed"] == seed
        for a, b in zip(shared[0], alone[0], strict=True):
            assert np.array_equal(_load(a["image"]), _load(b["image"])), (seed, sampler)


def test_img2img_as_drawn_is_unconditional(client: Client, demo: LiveDemo, tmp_path: Path) -> None:
    """The sketch tab's default class: no class, i.e. guidance 0 (the null class's prediction alone)."""
    if not demo.pipe.bundle.has_encoder or _guidance(demo) == 1.0:
        pytest.skip("needs a guided bundle with a vae_encoder.onnx")
    _, h, w = demo.pipe.bundle.image_shape
    x, path = _digit(tmp_path, h, w)
    gallery, _, details = client.predict(
        handle_file(path), "as drawn", 0.6, 2, TEST_STEPS, 3.0, 5, api_name="/img2img"
    )
    expected = demo.pipe.img2img(
        [x, x], strength=0.6, steps=TEST_STEPS, seed=5, class_labels=0, guidance_scale=0.0
    )
    assert details["guidance_scale"] == 0.0 and [g["caption"] for g in gallery] == ["#1", "#2"]
    for item, image in zip(gallery, expected.images, strict=True):
        assert np.array_equal(_model_pixels(item["image"], demo).reshape(image.shape), image)


def test_generate_streams_previews_before_the_images(client: Client, demo: LiveDemo) -> None:
    """With ``previews`` (the page turns it on); an API call without it gets one answer, the images."""
    plain = client.submit(_class(demo), 3, "ddim", 40, 0.0, _guidance(demo), 8, api_name="/generate")
    plain.result(timeout=120)
    assert len(plain.outputs()) == 1
    steps = 40
    job = client.submit(_class(demo), 3, "ddim", steps, 0.0, _guidance(demo), 8, True, api_name="/generate")
    final = job.result(timeout=120)
    outputs = job.outputs()
    assert len(outputs) >= 2 and outputs[-1] == final
    _, h, w = demo.pipe.bundle.image_shape
    s = display_scale(h)
    for gallery, grid, text, details in outputs[:-1]:
        assert grid is None and details is None and text.startswith("Denoising… step ")
        assert len(gallery) == 3 and all(item["caption"].startswith("step ") for item in gallery)
        assert _load(gallery[0]["image"]).shape[:2] == (h * s, w * s)
    first_preview = _model_pixels(outputs[0][0][0]["image"], demo)
    assert not np.array_equal(first_preview, _model_pixels(final[0][0]["image"], demo))


def test_denoise_streams_a_growing_strip(client: Client, demo: LiveDemo) -> None:
    job = client.submit(_class(demo), "ddim", 16, 0.0, _guidance(demo), 3, api_name="/denoise")
    final = job.result(timeout=120)
    outputs = job.outputs()
    widths = [_load(strip)[0].shape[0] for strip, *_ in outputs]
    assert len(outputs) >= 2 and all(gif is None for _, gif, *_ in outputs[:-1]) and final[1] is not None
    assert widths == sorted(widths) and widths[0] < widths[-1], widths


def test_cancelling_a_job_cancels_its_engine_request(
    client: Client, demo: LiveDemo, engine_handles: list[RequestHandle]
) -> None:
    """gradio_client's Job.cancel() goes through Gradio's /cancel, as the Stop button's ``cancels=`` does:
    the handler is cancelled and takes its engine request with it (its rows leave the batch)."""
    job = client.submit(_class(demo), 16, "ddpm", 1000, 0.0, _guidance(demo), 0, api_name="/generate")
    request = first_request(engine_handles, job.done)  # in the batch, denoising
    assert job.cancel()
    events = list(request.events(timeout=120))
    assert isinstance(events[-1], Cancelled), events[-1]
    assert request.future.cancelled()
    assert not any(isinstance(e, Finished) for e in events)
    assert len(_generate(client, demo, n=1)[0]) == 1  # the engine and the app go on serving


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strength": 2.0}, "strength must be a number in 0..1, got 2.0"),
        ({"variations": 1000}, "number of variations must be an integer in 1..64"),
        ({"steps": 0}, "steps must be an integer in 1.."),
        ({"guidance_scale": 1e30}, "guidance scale must be a number in 0..20"),
        ({"seed": -1}, "seed must be an integer"),
        ({"class_name": "banana"}, "class 'banana' is not one of"),
        ({}, r"the image has 169\.0 megapixels; the demo takes at most 16\.8"),
    ],
)
def test_img2img_refuses_bad_values_and_huge_pictures_without_decoding(
    client: Client, demo: LiveDemo, bomb: Path, no_decoding: None, args: dict, message: str
) -> None:
    """Gradio decoded the upload before the handler could look at the other values (or the size)."""
    if not demo.pipe.bundle.has_encoder:
        pytest.skip("the served bundle has no vae_encoder.onnx")
    call = {"class_name": _class(demo), "strength": 0.5, "variations": 1, "steps": TEST_STEPS}
    call |= {"guidance_scale": _guidance(demo), "seed": 0} | args
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(bomb)), *call.values(), api_name="/img2img")

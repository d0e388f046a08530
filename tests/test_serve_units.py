"""The serve package's parts without a Ray cluster: flags, config, cards, request mapping, the runner, errors.

The runner runs a real SamplingEngine on the shipped bundle, whose U-Net is wrapped only to hold its first
call until the test has queued requests behind it; nothing here starts Ray (the CLI refuses bad flags before
it would).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_server import free_port

from latent_ddpm.cli import main
from latent_ddpm.errors import BundleError, BusyError, InputError
from latent_ddpm.runtime.engine import SamplingEngine
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.runtime.shipped import shipped_bundle_path

pytest.importorskip("ray.serve")

import ray  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from latent_ddpm.serve.cards import ModelCard, load_cards  # noqa: E402
from latent_ddpm.serve.client import _error  # noqa: E402
from latent_ddpm.serve.config import ServeConfig  # noqa: E402
from latent_ddpm.serve.errors import ApiError, ServerBusyError, ServerError  # noqa: E402
from latent_ddpm.serve.ingress import OPENAI_NAMES, _from_replica  # noqa: E402
from latent_ddpm.serve.png import decode_png, encode_png  # noqa: E402
from latent_ddpm.serve.runner import ImageRequest, Runner  # noqa: E402
from latent_ddpm.serve.schemas import GenerateRequest, ImagesRequest, check_size  # noqa: E402

STEPS = 3
WAIT = 120  # seconds: a bound on any one wait, so that a bug fails the test instead of hanging


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return load_cards([])[0]


# ---------------------------------------------------------------- flags and config


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--replicas", "2", "--min-replicas", "1", "--max-replicas", "3"], "either replicas or"),
        (["--min-replicas", "1"], "autoscaling needs max_replicas"),
        (["--min-replicas", "3", "--max-replicas", "2"], "min_replicas (3) is more than max_replicas (2)"),
        (["--replicas", "0"], "--replicas: Input should be greater than or equal to 1"),
        (["--max-queued", "0"], "--max-queued"),
        (["--max-rows", "1"], "--max-rows: Input should be greater than or equal to 2"),
        (
            ["--max-images", "8", "--max-pending-images", "4"],
            "max_pending_images (4) is below max_images (8)",
        ),
        (["--precision", "bf16"], "precision='bf16' is available with the openvino backend only"),
        (["--port", "70000"], "--port must be in 1..65535, got 70000"),
        (["--detach"], "--detach needs --address"),
        (["--address", "auto", "--metrics-port", "9000"], "--metrics-port applies"),
        (["--bundle", "/no/such/bundle"], "bundle directory not found: /no/such/bundle"),
        (["--address", "head-node"], "--address must be 'auto' or HOST:PORT"),
        (["--backend", "nope"], "--backend: 'nope' is not one of onnxruntime"),
        (["--address", f"127.0.0.1:{free_port()}"], "no Ray cluster answers there"),
    ],
)
def test_bad_flags_are_one_line_before_ray_starts(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = [] if "--port" in argv else ["--port", str(free_port())]
    assert main(["serve", *port, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-ddpm serve: error: ") and "\n" not in err
    assert words in err
    assert not ray.is_initialized()


def test_a_port_in_use_is_refused_before_ray_starts(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_two_bundles_with_one_name_are_refused(tmp_path: Path) -> None:
    for copy in ("a", "b"):
        shutil.copytree(shipped_bundle_path(), tmp_path / copy)
    with pytest.raises(BundleError, match="two bundles are named 'digits'"):
        load_cards([tmp_path / "a", tmp_path / "b"])


def test_replica_options_fixed_and_autoscaling() -> None:
    fixed = ServeConfig(replicas=3, cpus_per_replica=2).model_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert ServeConfig().model_options()["num_replicas"] == 1
    auto = ServeConfig(
        min_replicas=0, max_replicas=4, max_rows=16, max_images=64, max_pending_images=100
    ).model_options()
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 8,  # the one-image guided requests that fill a 16-row U-Net call
    }
    # a replica is routed as many requests as its engine may hold images (each request has at least one)
    assert (auto["max_ongoing_requests"], auto["max_queued_requests"]) == (100, 128)
    with SamplingEngine(Pipeline.from_bundle()) as engine:
        assert ServeConfig().capacity == engine.max_pending_images  # the engine's own default
    assert ServeConfig(max_images=5000).capacity == 5000  # as the engine's own default follows max_images
    assert ServeConfig(cpus_per_replica=0.5).replica_threads == 1
    assert ServeConfig(cpus_per_replica=4).replica_threads == 4
    assert ServeConfig().max_images == Pipeline.from_bundle().max_images  # the runtime's own default
    with pytest.raises(ValidationError, match="bundle"):
        ServeConfig.model_validate({"bundle": ["x"]})  # a typo in a config file is not ignored


# ---------------------------------------------------------------- cards and requests


def test_shipped_bundles_travel_by_name_others_by_path(card: ModelCard, tmp_path: Path) -> None:
    assert (card.path, card.shipped, card.location()) == (None, "digits", shipped_bundle_path())
    by_name, by_path = load_cards(["digits"]) + load_cards([shipped_bundle_path()])
    assert by_name == by_path == card  # each node finds its own copy inside its install
    shutil.copytree(shipped_bundle_path(), tmp_path / "mine")
    (copy,) = load_cards([tmp_path / "mine"])
    assert (copy.path, copy.shipped, copy.location()) == (str(tmp_path / "mine"), None, tmp_path / "mine")


def test_card_describes_the_model(card: ModelCard) -> None:
    pipe_bundle = Pipeline.from_bundle().bundle
    assert card.id == pipe_bundle.name == "digits"
    c, h, w = pipe_bundle.image_shape
    assert (card.size, card.channels) == (f"{w}x{h}", c)
    assert card.class_names == pipe_bundle.conditioning.class_names
    entry = card.describe(123)
    assert entry["object"] == "model" and entry["created"] == 123 and entry["defaults"]["steps"] >= 1


@pytest.mark.parametrize("size", [None, "auto", "32x32", " 32x32 "])
def test_sizes_that_name_the_models_own(card: ModelCard, size: str | None) -> None:
    check_size(size, card)


@pytest.mark.parametrize(("size", "words"), [("64x64", "makes 32x32 images only"), ("big", "WIDTHxHEIGHT")])
def test_other_sizes_are_refused(card: ModelCard, size: str, words: str) -> None:
    with pytest.raises(ApiError) as info:
        check_size(size, card)
    assert (info.value.status, info.value.param) == (400, "size") and words in info.value.message


def test_openai_fields_become_runtime_arguments(card: ModelCard) -> None:
    body = ImagesRequest(prompt=" 7 ", n=4, seed=1, steps=5, sampler="ddim", guidance_scale=2, eta=0.5)
    assert body.to_request(card) == ImageRequest(4, "7", 1, 5, "ddim", 2.0, 0.5)
    assert ImagesRequest(prompt="").to_request(card).class_labels is None  # a random class
    unconditional = ModelCard("u", "/b", None, 1, 32, 32, None, {})
    assert ImagesRequest(prompt="a cat").to_request(unconditional).class_labels is None
    with pytest.raises(ApiError, match="b64_json") as info:
        ImagesRequest(response_format="url").to_request(card)
    assert info.value.param == "response_format"
    assert GenerateRequest(class_labels=[1, "2"]).to_request(card).class_labels == (1, "2")
    with pytest.raises(ValidationError, match="quality"):
        ImagesRequest.model_validate({"prompt": "7", "quality": "hd"})


def test_runtime_refusals_become_openai_errors(card: ModelCard) -> None:
    n = _from_replica(card, InputError("num_images=100000 is more than the limit"), OPENAI_NAMES)
    assert (n.status, n.param, n.type) == (400, "n", "invalid_request_error")
    cls = _from_replica(card, InputError("class 'cat' is not one of 0, 1"), OPENAI_NAMES)
    assert cls.param == "prompt"
    assert _from_replica(card, InputError("class 'cat' is not one of 0, 1"), {}).param == "class"
    assert _from_replica(card, InputError("got 3 class labels for 4 images"), {}).param is None
    busy = _from_replica(card, BusyError("the sampling engine is busy"), {})
    assert (busy.status, busy.code, busy.headers) == (503, "queue_full", {"Retry-After": "1"})
    assert busy.message == "model 'digits': the sampling engine is busy"
    bug = _from_replica(card, ZeroDivisionError("x"), {})
    assert bug.status == 500 and "ZeroDivisionError" in bug.message


def test_client_turns_server_errors_into_the_runtimes() -> None:
    body = (
        b'{"error": {"message": "steps must be an integer", "type": "invalid_request_error", "code": null}}'
    )
    assert isinstance(_error(400, body), InputError) and str(_error(400, body)) == "steps must be an integer"
    full = b'{"error": {"message": "busy", "type": "server_error", "code": "queue_full"}}'
    assert type(_error(503, full)) is ServerBusyError
    assert type(_error(503, b"Request dropped due to backpressure")) is ServerBusyError  # Ray's own, plain
    lost = b'{"error": {"message": "the replica stopped", "code": "replica_unavailable"}}'
    assert type(_error(503, lost)) is ServerError and "HTTP 503: the replica stopped" in str(
        _error(503, lost)
    )
    assert str(_error(500, b"Internal Server Error")) == "HTTP 500: Internal Server Error"


@pytest.mark.parametrize("shape", [(32, 32, 1), (16, 24, 3)])
def test_png_is_lossless(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


# ---------------------------------------------------------------- the runner (the seam to the runtime)


class HeldUNet:
    """The real U-Net engine, recording the rows of each call; its calls wait until ``go`` is set, so that
    the test can queue requests behind a running one."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.rows: list[int] = []
        self.entered = threading.Event()
        self.go = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.rows.append(len(feed["sample"]))
        self.entered.set()
        assert self.go.wait(WAIT), "the test never let the U-Net go on"
        return self.engine.run(feed)


def held_runner(max_rows: int, max_images: int = 8) -> tuple[Runner, HeldUNet]:
    pipe = Pipeline.from_bundle(threads=1, max_rows=max_rows, max_images=max_images)
    unet = HeldUNet(pipe.unet)
    pipe.unet = unet
    return Runner(pipe, max_pending_images=max_images), unet


async def until(condition: Any) -> None:
    for _ in range(WAIT * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def test_concurrent_requests_share_unet_calls_and_get_the_pipelines_images() -> None:
    """Three 2-image guided requests (4 rows each) under an 8-row budget: the first runs, the others queue
    (the engine's queue depth and images held show it), then they share calls, each with its own images."""
    runner, unet = held_runner(max_rows=8)
    requests = [ImageRequest(num_images=2, class_labels=("3", 4), seed=s, steps=STEPS) for s in (1, 2, 3)]

    async def three() -> list:
        tasks = [asyncio.create_task(runner.generate(r)) for r in requests]
        await until(lambda: unet.entered.is_set() and runner.stats.pending_images == 6)
        held = runner.stats
        unet.go.set()
        return [held, *await asyncio.gather(*tasks)]

    try:
        held, *results = asyncio.run(three())
    finally:
        runner.close()
    assert held.queued >= 1  # at most two fit the first call: the third waits in the engine's queue
    assert max(unet.rows) == 8  # rows of two requests in one call
    alone = Pipeline.from_bundle(threads=1)
    for request, result in zip(requests, results, strict=True):
        expected = alone.generate(**request.arguments())
        np.testing.assert_array_equal(result.images, expected.images)
        assert (result.seed, result.class_labels.tolist(), result.steps) == (request.seed, [3, 4], STEPS)
        assert result.timings.steps == STEPS and result.timings.queue_s >= 0
    assert runner.stats.queued == runner.stats.pending_images == 0


def test_a_cancelled_caller_takes_its_request_out_of_the_engine() -> None:
    """What Ray Serve does when the HTTP client disconnects: the replica's task is cancelled."""
    runner, unet = held_runner(max_rows=8)

    async def cancel_one() -> None:
        task = asyncio.create_task(runner.generate(ImageRequest(num_images=2, seed=1, steps=50)))
        await until(unet.entered.is_set)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        unet.go.set()
        await until(lambda: runner.stats.pending_images == 0)  # its rows left the batch
        assert unet.rows == [4]  # no call after the one it was in when cancelled

    try:
        asyncio.run(cancel_one())
    finally:
        runner.close()


def test_a_full_engine_is_busy_and_bad_arguments_are_the_runtimes() -> None:
    runner, unet = held_runner(max_rows=8, max_images=2)

    async def two() -> None:
        first = asyncio.create_task(runner.generate(ImageRequest(num_images=2, seed=1, steps=STEPS)))
        await until(unet.entered.is_set)
        with pytest.raises(BusyError, match="holds 2 images"):
            await runner.generate(ImageRequest(seed=2, steps=STEPS))
        with pytest.raises(InputError, match="steps must be"):
            await runner.generate(ImageRequest(steps=0))
        unet.go.set()
        assert (await first).images.shape[0] == 2
        assert (await runner.generate(ImageRequest(seed=2, steps=STEPS))).images.shape[0] == 1  # room again

    try:
        asyncio.run(two())
    finally:
        runner.close()


def test_serving_imports_no_torch() -> None:
    """A replica, the ingress and the client run where torch cannot be imported (the serve image has none)."""
    from test_runtime_torch_free import _run

    proc = _run(
        """
        import sys
        import latent_ddpm.serve.app, latent_ddpm.serve.cli, latent_ddpm.serve.client
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "cupy"))
        assert not loaded, loaded
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_help_works_without_the_serve_extra(tmp_path: Path) -> None:
    """`latent-ddpm --help` imports every command's module: serve's must not need pydantic, Ray or FastAPI."""
    from test_extras import _run_without

    for blocked in ("pydantic", "ray", "fastapi"):
        proc = _run_without(blocked, ["serve", "--help"], cwd=tmp_path)
        assert proc.returncode == 0 and "--max-replicas" in proc.stdout, proc.stderr

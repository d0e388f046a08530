"""The serve package's parts without a Ray cluster: flags, config, cards, request mapping, the runner, errors.

The runner runs the real shipped bundle; nothing here starts Ray (the CLI refuses bad flags before it would).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from demo_server import free_port

from latent_ddpm.cli import main
from latent_ddpm.errors import BundleError, InputError
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
    auto = ServeConfig(min_replicas=0, max_replicas=4, max_ongoing=8).model_options()
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 4.0,
    }
    assert (auto["max_ongoing_requests"], auto["max_queued_requests"]) == (8, 128)
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
    busy = _from_replica(card, ServerBusyError("full"), {})
    assert (busy.status, busy.code, busy.headers) == (503, "queue_full", {"Retry-After": "1"})
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


class Recorder:
    """The runner's Observer, recording what the metrics would show."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.rows: list[int] = []

    def queue_depth(self, waiting: int) -> None:
        self.depths.append(waiting)

    def unet_rows(self, rows: int) -> None:
        self.rows.append(rows)


def test_runner_gives_the_pipelines_images_and_reports_rows_and_depth() -> None:
    seen = Recorder()
    runner = Runner(Pipeline.from_bundle(threads=1), capacity=3, observer=seen)
    request = ImageRequest(num_images=2, class_labels=("3", 4), seed=11, steps=STEPS)

    async def three() -> list:
        return await asyncio.gather(*(runner.generate(request) for _ in range(3)))

    try:
        results = asyncio.run(three())
    finally:
        runner.close()
    expected = Pipeline.from_bundle(threads=1).generate(
        num_images=2, class_labels=["3", 4], seed=11, steps=STEPS
    )
    for result in results:
        np.testing.assert_array_equal(result.images, expected.images)
        assert (result.seed, result.class_labels, result.steps) == (11, [3, 4], STEPS)
        assert result.timings.steps == STEPS and result.queue_s >= 0
    # guidance 1.5 stacks [null; cond]: 4 rows per call, STEPS calls per request
    assert seen.rows == [4] * (3 * STEPS)
    assert max(seen.depths) == 2 and seen.depths[-1] == 0


def test_runner_refuses_beyond_capacity_and_passes_runtime_errors_through() -> None:
    runner = Runner(Pipeline.from_bundle(threads=1), capacity=1)

    async def two() -> list:
        return await asyncio.gather(
            runner.generate(ImageRequest(steps=STEPS)),  # admitted: it holds the one place until it is done
            runner.generate(ImageRequest(steps=STEPS)),
            return_exceptions=True,
        )

    try:
        first, second = asyncio.run(two())
        assert first.images.shape[0] == 1
        assert isinstance(second, ServerBusyError) and "already holds 1 requests" in str(second)
        with pytest.raises(InputError, match="steps must be"):
            asyncio.run(runner.generate(ImageRequest(steps=0)))
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

"""`latent-ddpm serve` on one machine, driven over real HTTP by the official OpenAI client and our own client.

One server (its own local Ray) serves the whole module: two models, the shipped digits bundle (by its
name) and an unconditional factory bundle (tests/bundle_factory.py, by its path), each with one replica
whose engine holds at most 16 images (8 a request), so that a burst overflows into 503s. Its images are
compared with ``Pipeline.generate`` in this process: PNG is lossless and both run ONNX Runtime with one
thread, so they must be equal. Stopping it with SIGTERM (`docker stop`) must leave no Ray process behind.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_bundle
from demo_server import free_port
from PIL import Image
from serve_harness import REQUEST_TIMEOUT_S, ServeProcess, ray_tmpdir, serve_process

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.pipeline import Pipeline

pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from latent_ddpm.serve.client import ServeClient  # noqa: E402
from latent_ddpm.serve.errors import ServerBusyError, ServerError  # noqa: E402
from latent_ddpm.serve.metrics import exported_names  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 4
MAX_IMAGES = 8  # per request
CAPACITY = 16  # images a replica's engine holds


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve") / "factory", conditional=False)


@pytest.fixture(scope="module")
def server(factory: Path) -> Iterator[tuple[ServeProcess, int]]:
    metrics_port = free_port()
    with ray_tmpdir() as tmpdir:
        args = ["--bundle", "digits", "--bundle", str(factory), "--max-images", str(MAX_IMAGES)]
        args += ["--max-pending-images", str(CAPACITY), "--metrics-port", str(metrics_port)]
        with serve_process(args, tmpdir, free_port(), stop_with=signal.SIGTERM) as served:
            yield served, metrics_port
        assert served.returncode == 0, "\n".join(served.output[-30:])


@pytest.fixture(scope="module")
def url(server: tuple[ServeProcess, int]) -> str:
    return server[0].url


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_bundle(threads=1)


def _pngs(response) -> np.ndarray:
    out = []
    for item in response.data:
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as img:
            assert img.format == "PNG"
            out.append(np.asarray(img)[..., None] if img.mode == "L" else np.asarray(img))
    return np.stack(out)


def test_models_lists_both_bundles(client: openai.OpenAI, pipe: Pipeline) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [pipe.bundle.name, "factory"]
    c, h, w = pipe.bundle.image_shape
    assert models[0].model_extra["size"] == f"{w}x{h}"
    assert models[0].model_extra["classes"] == list(pipe.bundle.conditioning.class_names)
    assert models[1].model_extra["classes"] is None  # unconditional
    assert client.models.retrieve("factory").id == "factory"


def test_openai_client_gets_four_pngs_equal_to_the_pipeline(client: openai.OpenAI, pipe: Pipeline) -> None:
    c, h, w = pipe.bundle.image_shape
    response = client.images.generate(
        model=pipe.bundle.name,
        prompt="7",
        n=4,
        size=f"{w}x{h}",
        response_format="b64_json",
        extra_body={"seed": 1234, "steps": STEPS},
    )
    images = _pngs(response)
    assert images.shape == (4, h, w, c) and images.dtype == np.uint8
    expected = pipe.generate(num_images=4, class_labels="7", seed=1234, steps=STEPS)
    np.testing.assert_array_equal(images, expected.images)
    assert np.ptp(images) > 0  # real pictures, not a blank


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"n": 100000}, "n", "num_images=100000 is more than the limit of 8"),  # --max-images 8
        ({"prompt": "cat"}, "prompt", "'cat'"),
        ({"size": "64x64"}, "size", "32x32"),
        ({"response_format": "url"}, "response_format", "b64_json"),
        ({"extra_body": {"steps": 0}}, "steps", "steps"),
        ({"extra_body": {"guidance": 2.0}}, "guidance", "unknown field"),
        ({"extra_body": {"seed": "one"}}, "seed", "integer"),
    ],
)
def test_bad_requests_get_400_naming_the_field(
    client: openai.OpenAI, fields: dict, param: str, words: str
) -> None:
    args = {"model": "digits", "prompt": "7", "n": 1, "extra_body": {"steps": STEPS}} | fields
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**args)
    error = info.value
    assert error.status_code == 400
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert words in error.body["message"], error.body


def test_unknown_or_missing_model_is_refused_and_the_server_keeps_serving(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model="no-such-model", prompt="7")
    assert info.value.code == "model_not_found" and "digits, factory" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(prompt="7")  # two models served: which one?
    assert info.value.param == "model" and "digits, factory" in info.value.body["message"]
    response = client.images.generate(model="digits", prompt="", n=1, extra_body={"steps": STEPS})
    assert len(response.data) == 1


def test_the_unconditional_model_ignores_the_prompt(client: openai.OpenAI, factory: Path) -> None:
    response = client.images.generate(model="factory", prompt="a seven", n=2, extra_body={"seed": 5})
    expected = Pipeline.from_bundle(factory, threads=1).generate(num_images=2, seed=5)
    np.testing.assert_array_equal(_pngs(response), expected.images)


def test_native_client_matches_the_pipeline(url: str, pipe: Pipeline) -> None:
    result = ServeClient(url, timeout=REQUEST_TIMEOUT_S).generate(
        num_images=2, class_labels=[3, "5"], seed=99, steps=STEPS, sampler="ddim", eta=0.5, model="digits"
    )
    expected = pipe.generate(
        num_images=2, class_labels=[3, "5"], seed=99, steps=STEPS, sampler="ddim", eta=0.5
    )
    np.testing.assert_array_equal(result.images, expected.images)
    assert result.seed == 99 and result.class_labels.tolist() == [3, 5] and result.class_names == ["3", "5"]
    assert (result.sampler, result.steps, result.eta) == ("ddim", STEPS, 0.5)
    assert result.timings.steps == STEPS and result.timings.unet_s > 0 and result.timings.queue_s >= 0
    assert result.model == "digits" and result.served_by["pid"] > 0


def test_native_client_draws_and_returns_a_seed(url: str, pipe: Pipeline) -> None:
    result = ServeClient(url, timeout=REQUEST_TIMEOUT_S).generate(steps=STEPS, model="digits")
    again = pipe.generate(seed=result.seed, steps=STEPS)
    np.testing.assert_array_equal(result.images, again.images)
    np.testing.assert_array_equal(result.class_labels, again.class_labels)


def test_native_client_raises_the_servers_message(url: str) -> None:
    client = ServeClient(url, timeout=REQUEST_TIMEOUT_S)
    with pytest.raises(InputError, match="steps must be"):
        client.generate(steps=0, model="digits")
    with pytest.raises(InputError, match="unconditional"):
        client.generate(class_labels=3, model="factory")
    with pytest.raises(InputError, match="model 'nope' does not exist"):
        client.generate(model="nope")
    with pytest.raises(ServerError, match="cannot reach"):
        ServeClient(f"http://127.0.0.1:{free_port()}", timeout=5).generate()


def test_concurrent_requests_share_unet_calls_on_one_replica(url: str, pipe: Pipeline) -> None:
    """Eight one-image requests at once on the one digits replica: its engine runs them in shared U-Net calls
    (fewer calls than the requests' steps added up, read from the engine's counters that come back with
    every native reply), and each gets the image Pipeline.generate gives it alone."""
    native = ServeClient(url, timeout=REQUEST_TIMEOUT_S)
    steps, seeds = 60, range(100, 108)
    before = native.generate(steps=STEPS, model="digits").served_by["engine"]
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        results = list(
            pool.map(
                lambda s: native.generate(seed=s, steps=steps, class_labels=s % 10, model="digits"), seeds
            )
        )
    after = max((r.served_by["engine"] for r in results), key=lambda c: c["unet_calls"])
    rows = 2 * steps * len(seeds)  # guided: [null; cond], two rows an image and step
    assert after["unet_rows"] - before["unet_rows"] == rows  # nothing else ran meanwhile
    calls = after["unet_calls"] - before["unet_calls"]
    assert calls < steps * len(seeds), "every request ran alone"
    print(f"{len(seeds)} requests x {steps} steps: {calls} U-Net calls, {rows / calls:.1f} rows per call")
    for seed, result in zip(seeds, results, strict=True):
        expected = pipe.generate(seed=seed, steps=steps, class_labels=seed % 10)
        np.testing.assert_array_equal(result.images, expected.images, err_msg=f"seed {seed}")


def test_a_burst_beyond_the_engines_capacity_gets_503_then_serving_resumes(
    url: str, client: openai.OpenAI
) -> None:
    """The engine holds 16 images: of eight 8-image requests at once, two run and the rest are refused."""
    native = ServeClient(url, timeout=REQUEST_TIMEOUT_S)

    def one(i: int) -> str:
        try:
            native.generate(num_images=MAX_IMAGES, steps=50, seed=i, model="digits")
            return "ok"
        except ServerBusyError as exc:
            assert "the sampling engine is busy" in str(exc)
            return "busy"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    assert outcomes.count("ok") >= 2 and outcomes.count("busy") >= 1, outcomes
    # The OpenAI client sees the same 503 as an InternalServerError with OpenAI's error body.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(
                client.images.generate, model="digits", prompt="1", n=MAX_IMAGES, extra_body={"steps": 50}
            )
            for _ in range(8)
        ]
        errors = [f.exception() for f in futures if f.exception() is not None]
    assert errors and all(isinstance(e, openai.InternalServerError) for e in errors), errors
    assert {(e.status_code, e.code, e.response.headers.get("retry-after")) for e in errors} == {
        (503, "queue_full", "1")
    }
    assert len(client.images.generate(model="digits", prompt="2", extra_body={"steps": STEPS}).data) == 1


def test_a_client_that_disconnects_cancels_its_request_in_the_engine(url: str) -> None:
    """A client gives up on a long request (8 images x 500 steps) after a few seconds: Ray Serve cancels
    the request, the replica cancels it in the engine, and the engine is empty again long before those
    steps could have run (counted in U-Net rows, not timed)."""
    native = ServeClient(url, timeout=REQUEST_TIMEOUT_S)
    long = {"num_images": MAX_IMAGES, "steps": 500, "sampler": "ddim", "model": "digits"}
    before = native.generate(steps=STEPS, model="digits").served_by["engine"]
    with pytest.raises(ServerError, match="did not answer within"):
        ServeClient(url, timeout=3).generate(**long)
    polls = 0
    while True:  # until the engine holds nothing (its counters come back with every reply)
        polls += 1
        after = native.generate(steps=STEPS, model="digits").served_by["engine"]
        if after["pending_images"] == 0:
            break
        assert polls < 1000, "the engine never let go of the abandoned request"
    long_rows = after["unet_rows"] - before["unet_rows"] - polls * 2 * STEPS  # less the polls' own rows
    print(f"the abandoned request ran {long_rows} of its {2 * MAX_IMAGES * long['steps']} U-Net rows")
    assert long_rows < 2 * MAX_IMAGES * long["steps"], "the abandoned request ran to the end"


def test_healthz_and_openai_error_shape_for_unknown_paths(url: str) -> None:
    with urllib.request.urlopen(url + "/healthz", timeout=REQUEST_TIMEOUT_S) as response:
        assert b'"models":["digits","factory"]' in response.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/v2/nothing", timeout=REQUEST_TIMEOUT_S)
    assert info.value.code == 404 and b'"error"' in info.value.read()


def test_metrics_are_exported_next_to_rays_own(server: tuple[ServeProcess, int]) -> None:
    """Ray's metrics agent exports ours (after the requests above) beside ray_serve_*; it reports every few s."""
    url = f"http://127.0.0.1:{server[1]}/metrics"
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    missing = exported_names()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        missing = [name for name in exported_names() if f"\n{name}{{" not in text]
        if not missing and "\nray_serve_num_http_requests_total{" in text:
            break
        time.sleep(2.0)
    assert not missing, f"not exported: {missing}"
    assert 'endpoint="images"' in text and 'status="400"' in text and 'status="503"' in text

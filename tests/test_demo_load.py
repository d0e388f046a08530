"""A short load test of `latent-ddpm demo` run as users run it: its own process, 20 concurrent /generate.

Every request must succeed through the queue (concurrency 2, the rest waiting), identical requests must
give identical images while running concurrently (the shared Pipeline is re-entrant), and the server's
resident memory must not grow by more than RSS_GROWTH_LIMIT_MB over the burst.

Why 300 MB: after the warm-up requests the server holds the ONNX Runtime sessions, their arenas for the
two concurrent batch sizes, Gradio's queue and its worker threads. The burst adds only small things:
20 finished events in the queue's history and 20 x 4 PNGs of a few kB in the file cache (on disk). So
RSS should stay nearly flat (tens of MB from allocator fragmentation and arena growth); a leak of the
images, latents or per-request sessions would show as hundreds of MB on the shipped model, which 300 MB
catches while leaving room for allocator noise on a shared machine.

Served bundle: the shipped digits model when ``latent_ddpm/data/digits/bundle.json`` exists, otherwise the
tiny factory bundle from ``tests/bundle_factory.py`` (see ``tests/demo_server.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from demo_server import TEST_STEPS, demo_bundle, free_port
from PIL import Image

psutil = pytest.importorskip("psutil")
pytest.importorskip("gradio")
import httpx  # noqa: E402
from gradio_client import Client  # noqa: E402

from latent_ddpm.runtime.bundle import load_bundle  # noqa: E402

RSS_GROWTH_LIMIT_MB = 300
REQUESTS = 20
IMAGES_PER_REQUEST = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str]]:
    bundle = demo_bundle(tmp_path_factory.mktemp("load"))
    port = free_port()
    # The bundle comes through LATENT_DDPM_BUNDLE, as in the Docker images, not --bundle.
    cmd = [sys.executable, "-m", "latent_ddpm", "demo", "--port", str(port), "--threads", "1"]
    cmd += ["--concurrency", "2", "--max-queue", "64"]
    env = {**os.environ, "LATENT_DDPM_BUNDLE": str(bundle)}
    log = tmp_path_factory.mktemp("load-log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            Client(url, verbose=False)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"`latent-ddpm demo` did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield proc, url, bundle
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def _images(result: tuple) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"])) for item in result[0]]


def test_twenty_concurrent_generate_calls_succeed_without_growing_memory(server) -> None:
    proc, url, _ = server
    client = Client(url, verbose=False)
    cond_class = "random"

    def submit(seed: int):
        args = (cond_class, IMAGES_PER_REQUEST, "ddim", TEST_STEPS, 0.0, 1.0, seed)
        return client.submit(*args, api_name="/generate")

    for seed in range(3):  # warm-up: sessions, arenas for both concurrent batch shapes, Gradio's lazy imports
        submit(seed).result(timeout=120)
    before = _rss_mb(proc)

    start = time.perf_counter()
    seeds = [i % 5 for i in range(REQUESTS)]  # four concurrent requests per seed
    jobs = [submit(seed) for seed in seeds]
    results = [job.result(timeout=300) for job in jobs]
    elapsed = time.perf_counter() - start
    after = _rss_mb(proc)

    assert proc.poll() is None, "the server died under load"
    first_of_seed: dict[int, list[np.ndarray]] = {}
    for seed, result in zip(seeds, results, strict=True):
        images = _images(result)
        assert len(images) == IMAGES_PER_REQUEST and result[2]["seed"] == seed
        expected = first_of_seed.setdefault(seed, images)
        assert all(np.array_equal(a, b) for a, b in zip(images, expected, strict=True)), seed
    growth = after - before
    print(
        f"\n{REQUESTS} concurrent /generate x {IMAGES_PER_REQUEST} images x {TEST_STEPS} steps in "
        f"{elapsed:.1f}s; server RSS {before:.0f} MB -> {after:.0f} MB ({growth:+.0f} MB)"
    )
    assert growth < RSS_GROWTH_LIMIT_MB, f"server RSS grew {growth:.0f} MB ({before:.0f} -> {after:.0f})"
    assert len(_images(submit(99).result(timeout=60))) == IMAGES_PER_REQUEST  # still serving


def test_the_cli_serves_the_bundle_named_by_the_environment(server) -> None:
    _, url, bundle = server
    name = load_bundle(bundle).name
    config = httpx.get(f"{url}config", timeout=10).json()
    headers = [c["props"].get("value", "") for c in config["components"] if c.get("type") == "markdown"]
    assert any(f"Model **{name}:" in str(h) for h in headers), headers[:2]

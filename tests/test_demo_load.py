"""A short load test of `latent-ddpm demo` run as users run it: its own process, 20 concurrent /generate.

Every request must succeed through the queue and the shared sampling engine, identical requests must
give identical images while batched together (each image has its own noise), and the server's
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

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from demo_server import TEST_STEPS, bomb_png, demo_bundle, free_port
from PIL import Image

psutil = pytest.importorskip("psutil")
pytest.importorskip("gradio")
import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

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
    cmd += ["--max-queue", "64"]  # --concurrency: its default, the engine's row budget
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
        assert len(images) == IMAGES_PER_REQUEST and result[3]["seed"] == seed
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


class _PeakRSS:
    """The server's resident memory sampled every 20 ms in a thread, for the peak of a burst."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.process, self.peak_mb, self._stop = psutil.Process(proc.pid), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)
            time.sleep(0.02)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _call_ui_handler(url: str, name: str, data: list) -> dict:
    """Call a UI-only handler (no API name) the way the browser does: by its index, over the queue if it
    is queued, else with a direct POST. Returns {"error": message} or {"data": outputs}."""
    config = httpx.get(f"{url}config", timeout=30).json()
    dep = next(d for d in config["dependencies"] if d.get("api_name") == name)
    body = {"data": data, "fn_index": dep["id"], "trigger_id": dep["targets"][0][0], "event_data": None}
    body["session_hash"] = session = uuid.uuid4().hex
    if not dep.get("queue", True):
        reply = httpx.post(f"{url}gradio_api/run/predict", json=body, timeout=300)
        out = reply.json()
        return {"error": str(out.get("error"))} if reply.status_code != 200 or out.get("error") else out
    httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30).raise_for_status()
    with httpx.stream(
        "GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=300
    ) as s:
        for line in s.iter_lines():
            if line.startswith("data:") and (msg := json.loads(line[5:])).get("msg") == "process_completed":
                output = msg.get("output", {})
                return {"error": str(output.get("error"))} if not msg.get("success") else output
    raise AssertionError(f"no result from {name}")


def _error_of(job) -> str:
    try:
        job.result(timeout=300)
    except Exception as exc:
        return str(exc)
    return "no error: the picture was accepted"


def _uploaded(url: str, path: Path) -> dict:
    reply = httpx.post(
        f"{url}gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/png")}
    )
    reply.raise_for_status()
    return {"path": reply.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_a_burst_of_huge_uploads_keeps_the_server_memory_bounded(server, tmp_path: Path) -> None:
    """8 uploads of a 13000 x 13000 PNG (164 kB, 169 MB decoded) through the UI's upload handler, 8 more
    through /img2img, and 8 pictures at the size limit, all at once. Before, the upload handler ran outside
    the queue and decoded every one: 8 calls took the server from 0.7 to 5.1 GB. Now sizes are read from the
    header and refused before decoding, and pictures are decoded at most DECODE_CONCURRENCY at a time."""
    proc, url, bundle = server
    model = load_bundle(bundle).name  # the picker's value, sent with every UI event
    client = Client(url, verbose=False)
    bomb = bomb_png(tmp_path / "bomb.png")
    at_limit = bomb_png(tmp_path / "at_limit.png", side=4096)  # exactly MAX_INPUT_PIXELS: accepted
    settings = ("random", 0.5, 1, TEST_STEPS, 1.0, 0)
    digit = tmp_path / "digit.png"
    Image.fromarray(np.pad(np.full((12, 4), 255, np.uint8), 10)).save(digit)
    client.predict(handle_file(str(digit)), *settings, api_name="/img2img")  # warm up the encoder
    assert "error" not in _call_ui_handler(url, "upload_to_input", [_uploaded(url, digit), model])
    bomb_file, limit_file = _uploaded(url, bomb), _uploaded(url, at_limit)
    before = _rss_mb(proc)

    with _PeakRSS(proc) as rss, ThreadPoolExecutor(16) as pool:
        jobs = [client.submit(handle_file(str(bomb)), *settings, api_name="/img2img") for _ in range(8)]
        direct = [pool.submit(_call_ui_handler, url, "upload_to_input", [bomb_file, model]) for _ in range(8)]
        direct += [
            pool.submit(_call_ui_handler, url, "upload_to_input", [limit_file, model]) for _ in range(8)
        ]
        errors = [_error_of(job) for job in jobs]
        results = [d.result(timeout=300) for d in direct]
    growth = rss.peak_mb - before
    print(
        f"\nburst of 24 huge uploads: server RSS {before:.0f} MB -> peak {rss.peak_mb:.0f} MB ({growth:+.0f} MB)"
    )
    assert proc.poll() is None, "the server died"
    too_large = "the image has 169.0 megapixels; the demo takes at most 16.8"
    refusals = errors + [r.get("error", "") for r in results[:8]]
    assert [e for e in refusals if too_large not in e] == []
    assert all("error" not in r for r in results[8:]), results[8:]
    assert growth < RSS_GROWTH_LIMIT_MB, f"server RSS peaked {growth:.0f} MB above {before:.0f} MB"
    assert len(client.predict(handle_file(str(digit)), *settings, api_name="/img2img")[0]) == 1

"""Shared set-up of the demo tests: which bundle to serve, free ports, a live in-process server.

The demo tests run on the shipped digits bundle when ``latent_ddpm/data/digits/bundle.json`` exists (what
users get), and otherwise on the tiny factory bundle from ``tests/bundle_factory.py`` (real ONNX graphs,
4x8x8 latents, 1x32x32 images, classes "0".."9"), so they run before the model has been trained.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from bundle_factory import make_bundle

from latent_ddpm.runtime.handles import Progress, RequestHandle
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.runtime.shipped import DATA_DIR

if TYPE_CHECKING:
    from latent_ddpm.demo.app import DemoBlocks

SHIPPED_BUNDLE = DATA_DIR / "digits"

# Few steps keep every request fast on either bundle; the tests pass them explicitly.
TEST_STEPS = 4


def demo_bundle(scratch: Path) -> Path:
    """The shipped bundle if this checkout has one, else a factory bundle written into ``scratch``."""
    if (SHIPPED_BUNDLE / "bundle.json").is_file():
        return SHIPPED_BUNDLE
    return make_bundle(scratch / "factory-bundle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveDemo:
    url: str
    pipe: Pipeline
    app: DemoBlocks  # app.handlers.model.engine: the SamplingEngine every request goes through


@contextlib.contextmanager
def live_demo(bundle: Path, threads: int = 1) -> Iterator[LiveDemo]:
    """The demo app served on 127.0.0.1 from this process, closed on exit."""
    from latent_ddpm.demo.app import build_app

    pipe = Pipeline.from_bundle(bundle, threads=threads)
    app = build_app(pipe)
    with serving(app) as url:
        yield LiveDemo(url, pipe, app)


@contextlib.contextmanager
def serving(app: DemoBlocks) -> Iterator[str]:
    """``app`` served on 127.0.0.1 from this process (its URL), closed on exit with its engines."""
    from latent_ddpm.demo.app import launch

    port = free_port()
    try:
        launch(app, port=port, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def pick_model(url: str, name: str) -> dict[str, list[dict]]:
    """Choose ``name`` in the model picker as the browser does (its event, called over HTTP): the updates it
    sends back, by each control's label (else elem_id, else type), in page order."""
    import uuid

    import httpx

    config = httpx.get(f"{url}config", timeout=30).json()
    by_id = {c["id"]: c for c in config["components"]}
    picker = next(c for c in config["components"] if c["props"].get("elem_id") == "model-picker")
    dep = next(d for d in config["dependencies"] if d["targets"] == [[picker["id"], "input"]])
    body = {"data": [name], "fn_index": dep["id"], "trigger_id": picker["id"], "event_data": None}
    reply = httpx.post(f"{url}gradio_api/run/predict", json=body | {"session_hash": uuid.uuid4().hex})
    reply.raise_for_status()
    updates: dict[str, list[dict]] = {}
    for out, update in zip(dep["outputs"], reply.json()["data"], strict=True):
        props = by_id[out]["props"]
        updates.setdefault(props.get("label") or props.get("elem_id") or by_id[out]["type"], []).append(
            update
        )
    return updates


def record_requests(demo: LiveDemo, monkeypatch: pytest.MonkeyPatch) -> list[RequestHandle]:
    """Every request the demo submits to its (real) SamplingEngine from now on, in order."""
    engine = demo.app.handlers.model.engine
    handles: list[RequestHandle] = []
    submit = engine.submit

    def recording(*args: Any, **kwargs: Any) -> RequestHandle:
        handles.append(submit(*args, **kwargs))
        return handles[-1]

    monkeypatch.setattr(engine, "submit", recording)
    return handles


def first_request(handles: list[RequestHandle], done: Callable[[], bool]) -> RequestHandle:
    """The first recorded request once it is in the batch and denoising (its first Progress event);
    ``done`` says whether the client's call already ended (then nothing will be submitted)."""
    while not handles:
        assert not done(), "the call ended without submitting a request"
        time.sleep(0.05)
    next(e for e in handles[0].events(timeout=120) if isinstance(e, Progress))
    return handles[0]


def bomb_png(path: Path, side: int = 13000) -> Path:
    """A valid grey PNG of side x side black pixels that is a few hundred kB on disk (a decompression bomb:
    169 MB once decoded at 13000 px). Written row by row, so the test itself never holds the pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte 0, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path

"""The seam between serving and the runtime: a request in, images out, and nothing else calls the runtime.

Today a replica runs ``Pipeline.generate`` one request at a time on a worker thread, behind a bounded queue
of its own (``capacity`` requests inside the replica, running or waiting). The runtime's serving engine
(issue 11: step-level batching across requests, a bounded queue, futures) replaces the body of this module:
``Runner.__init__`` builds the engine instead of the thread, ``generate`` awaits the engine's future, the
engine's "busy" error becomes ``ServerBusyError`` and the engine reports its own rows per U-Net call and
queue depth to the same ``Observer``. HTTP, Ray Serve and the metrics above this module stay as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from latent_ddpm.runtime.pipeline import Pipeline, Timings
from latent_ddpm.serve.errors import ServerBusyError


@dataclass(frozen=True)
class ImageRequest:
    """What a client may ask of a model, in the runtime's terms; None takes the bundle's default.

    Nothing here is range-checked: the runtime checks every argument itself (one source for the bounds) and
    its ``InputError`` becomes the client's 400.
    """

    num_images: int | None = None
    class_labels: int | str | tuple[int | str, ...] | None = None
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance_scale: float | None = None
    eta: float | None = None


@dataclass
class Images:
    """A finished request: the images and everything needed to make them again."""

    images: np.ndarray  # (N, H, W, C) uint8
    seed: int
    class_labels: list[int] | None
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    timings: Timings
    queue_s: float  # admitted by the replica -> started running


class Observer(Protocol):
    """Where the runner reports what the metrics show (``serve/metrics.py`` implements it)."""

    def queue_depth(self, waiting: int) -> None: ...

    def unet_rows(self, rows: int) -> None: ...


class _CountingEngine:
    """The pipeline's U-Net engine, reporting the rows (batch size) of every call before making it."""

    def __init__(self, engine: Any, report: Callable[[int], None]) -> None:
        self._engine, self._report = engine, report

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._report(len(feed["sample"]))
        return self._engine.run(feed)


class Runner:
    """Runs requests on one pipeline, one at a time, refusing more than ``capacity`` inside at once.

    ``generate`` must be awaited from one event loop (a replica's): admission is counted on that loop.
    """

    def __init__(self, pipe: Pipeline, capacity: int, observer: Observer | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.pipe, self.capacity, self._observer = pipe, capacity, observer
        if observer is not None:
            pipe.unet = _CountingEngine(pipe.unet, observer.unet_rows)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latent-ddpm-runner")
        self._inside = 0

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet running (one runs at a time)."""
        return max(0, self._inside - 1)

    async def generate(self, request: ImageRequest) -> Images:
        if self._inside >= self.capacity:
            raise ServerBusyError(
                f"model {self.pipe.bundle.name!r}: this replica already holds {self._inside} requests, its "
                "limit; retry later"
            )
        self._inside += 1
        self._report_depth()
        admitted = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, request, admitted)
        finally:
            self._inside -= 1
            self._report_depth()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.waiting)

    def _run(self, request: ImageRequest, admitted: float) -> Images:
        queue_s = time.perf_counter() - admitted
        labels = request.class_labels
        result = self.pipe.generate(
            num_images=request.num_images,
            steps=request.steps,
            sampler=request.sampler,
            eta=request.eta,
            seed=request.seed,
            class_labels=list(labels) if isinstance(labels, tuple) else labels,
            guidance_scale=request.guidance_scale,
        )
        return Images(
            images=result.images,
            seed=int(result.seed),  # generate() draws one when the request has none
            class_labels=None if result.class_labels is None else [int(k) for k in result.class_labels],
            sampler=result.sampler,
            steps=result.steps,
            guidance_scale=result.guidance_scale,
            eta=result.eta,
            timings=result.timings,
            queue_s=queue_s,
        )

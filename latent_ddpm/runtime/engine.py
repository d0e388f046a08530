"""The serving engine: many users' requests batched together at the level of denoising steps.

One worker thread ticks a ``Batcher`` (``batching.py``): every tick is ONE U-Net call holding the rows of
every running request (guided requests contribute [null; cond] rows; rows at different timesteps share the
call), after which each request takes its rows back and advances its own scheduler. Between ticks:

- admission: queued requests join, first come first served, while their rows fit the row budget
  (``max_rows``); the head of the queue is never overtaken, so nobody starves. A request bigger than the
  budget is split into runs of at most ``max_rows`` rows that join one after the other (every image is
  computed on its own, so this changes no image);
- cancellation: a cancelled request's rows leave the batch before the next call;
- completion: requests that finished in a tick are decoded together and their futures resolved.

Failures stay with their request: bad arguments are refused by ``submit`` (the Pipeline's checks, in the
caller's thread), NaN or a model error fails that request alone, and a submission that would make the engine
hold more than ``max_pending_images`` images (queued or running) is refused with ``BusyError``, so memory
stays bounded under any burst. docs/serving-engine.md describes the behaviour in full.

    with SamplingEngine(Pipeline.from_bundle()) as engine:
        handle = engine.submit(num_images=4, seed=[1, 2, 3, 4], class_labels=7)
        for event in handle.events():  # Progress, Preview, then Finished / Failed / Cancelled
            ...
        images = handle.result().images
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from latent_ddpm.errors import BusyError, InputError
from latent_ddpm.runtime.batching import Batcher, TickReport
from latent_ddpm.runtime.handles import Cancelled, Event, Failed, Finished, Progress, RequestHandle
from latent_ddpm.runtime.limits import DEFAULT_MAX_PENDING_IMAGES, check_count
from latent_ddpm.runtime.pipeline import Pipeline, result_of
from latent_ddpm.runtime.requests import RequestChecker, SamplingRequest, arguments_of
from latent_ddpm.runtime.results import Preview, Timings
from latent_ddpm.runtime.sampling import SamplingRun, joined

__all__ = ["EngineStats", "SamplingEngine"]


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started (``SamplingEngine.stats``), for benchmarks and monitoring, and the
    queue at the moment of the snapshot (what a server's queue-depth gauge shows)."""

    ticks: int = 0
    unet_calls: int = 0
    unet_rows: int = 0
    unet_s: float = 0.0  # inside U-Net calls
    step_s: float = 0.0  # the ticks' step phases (U-Net calls + per-request bookkeeping + previews)
    queued: int = 0  # requests with parts still waiting for room in the batch
    pending_images: int = 0  # images held, queued or running: submissions beyond max_pending_images are busy

    @property
    def rows_per_call(self) -> float:
        return self.unet_rows / self.unet_calls if self.unet_calls else 0.0

    @property
    def loop_overhead(self) -> float:
        """Share of the step phase spent outside the U-Net: the engine's cost per step."""
        return 1.0 - self.unet_s / self.step_s if self.step_s > 0 else 0.0


class SamplingEngine:
    """Continuous batching of ``Pipeline`` requests in one worker thread; submit from any thread or asyncio.

    ``max_rows``: the row budget of a tick's U-Net call (default: the pipeline's). ``max_pending_images``:
    images held at once, queued or running (default: ``DEFAULT_MAX_PENDING_IMAGES``, at least the
    pipeline's ``max_images``). Close it (``close()``, or use it as a context manager); an engine dropped or
    left open at interpreter exit is closed with its requests cancelled.
    """

    def __init__(
        self, pipeline: Pipeline, *, max_rows: int | None = None, max_pending_images: int | None = None
    ) -> None:
        self.pipeline = pipeline
        pending = (
            max(DEFAULT_MAX_PENDING_IMAGES, pipeline.max_images)
            if max_pending_images is None
            else check_count(max_pending_images, "max_pending_images", 2**31 - 1)
        )
        if pending < pipeline.max_images:
            raise InputError(
                f"max_pending_images={pending} is below the pipeline's max_images={pipeline.max_images}: "
                "a request the pipeline accepts could never be admitted"
            )
        self.max_pending_images = pending
        self._worker = _Worker(pipeline.batcher(max_rows), pending)
        self._finalizer = weakref.finalize(self, self._worker.stop, True, None)

    @property
    def max_rows(self) -> int:
        return self._worker.batcher.max_rows

    @property
    def stats(self) -> EngineStats:
        return self._worker.stats_snapshot()

    @arguments_of(RequestChecker.generate)
    def submit(self, *args: Any, **kwargs: Any) -> RequestHandle:
        """Queue a ``Pipeline.generate`` request (same arguments, same checks, same images)."""
        return self._worker.enqueue(self.pipeline.requests.generate(*args, **kwargs))

    @arguments_of(RequestChecker.img2img)
    def submit_img2img(self, *args: Any, **kwargs: Any) -> RequestHandle:
        """Queue a ``Pipeline.img2img`` request; its pictures are encoded when it is admitted."""
        return self._worker.enqueue(self.pipeline.requests.img2img(*args, **kwargs))

    def close(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Refuse new requests and stop the worker thread: after finishing every submitted request, or with
        ``cancel=True`` cancelling them (their rows leave at the next step). Idempotent."""
        self._worker.stop(cancel, timeout)
        if not self._worker.thread.is_alive():
            self._finalizer.detach()

    def __enter__(self) -> SamplingEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)


@dataclass(eq=False)
class _Job:
    """The engine's bookkeeping for one request: its runs, its partial results and its handle."""

    handle: RequestHandle
    request: SamplingRequest
    chunks: list[slice]
    submitted: float
    timings: Timings = field(default_factory=Timings)
    next_chunk: int = 0  # the next chunk to admit
    runs: dict[int, SamplingRun] = field(default_factory=dict)  # chunk index -> run
    images: dict[int, np.ndarray] = field(default_factory=dict)  # chunk index -> decoded images
    preview_parts: dict[int, dict[int, tuple[int, np.ndarray]]] = field(default_factory=dict)
    previews: list[Preview] = field(default_factory=list)
    steps_done: int = 0
    over: bool = False  # finished, failed or cancelled

    @property
    def steps_total(self) -> int:
        return len(self.chunks) * self.request.steps_to_run


class _Worker:
    """The engine's state and its thread. Locking: ``_cond`` guards the queue, the pending count and the
    flags that other threads touch; the batcher, the runs and the jobs' partial results belong to the
    worker thread alone."""

    _ids = itertools.count(1)

    def __init__(self, batcher: Batcher, max_pending_images: int) -> None:
        self.batcher, self.max_pending_images = batcher, max_pending_images
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._cancel_requests: list[_Job] = []
        self._pending_images = 0
        self._stopping = False
        self._cancel_all = False
        self._broken: BaseException | None = None
        self._running: dict[int, tuple[_Job, int]] = {}  # id(run) -> (job, chunk index)
        self._stats = EngineStats()
        self.thread = threading.Thread(target=self._loop, name="latent-ddpm-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ any thread

    def enqueue(self, request: SamplingRequest) -> RequestHandle:
        if request.callback is not None:
            raise InputError(
                "callback is for Pipeline.generate/img2img; an engine request reports its steps as events "
                "(iterate the handle: Progress, Preview)"
            )
        handle = RequestHandle(next(self._ids))
        job = _Job(handle, request, request.chunks(self.batcher.max_rows), time.perf_counter())
        with self._cond:
            if self._stopping or self._broken is not None:
                why = "closed" if self._broken is None else f"stopped by an internal error ({self._broken!r})"
                raise RuntimeError(f"the sampling engine is {why}; it takes no new requests")
            if self._pending_images + request.num_images > self.max_pending_images:
                raise BusyError(
                    f"the sampling engine is busy: it holds {self._pending_images} images (queued or running) "
                    f"and takes at most {self.max_pending_images}; {request.num_images} more do not fit, try "
                    "again shortly"
                )
            self._pending_images += request.num_images
            self._queue.append(job)
            self._cond.notify_all()
        handle.future.add_done_callback(lambda future: self._on_done(job, future))
        return handle

    def stop(self, cancel: bool, timeout: float | None) -> None:
        with self._cond:
            self._stopping = True
            self._cancel_all = self._cancel_all or cancel
            self._cond.notify_all()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    def stats_snapshot(self) -> EngineStats:
        with self._cond:
            return replace(self._stats, queued=len(self._queue), pending_images=self._pending_images)

    def _on_done(self, job: _Job, future: Future) -> None:
        if future.cancelled():
            with self._cond:
                self._cancel_requests.append(job)
                self._cond.notify_all()

    # ------------------------------------------------------------------ the worker thread

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: bool(
                            self._queue or self.batcher.active or self._cancel_requests or self._stopping
                        )
                    )
                    if self._stopping and (self._cancel_all or not (self._queue or self.batcher.active)):
                        break
                    cancelled, self._cancel_requests = self._cancel_requests, []
                    admitted = self._admit()
                for job in cancelled:
                    self._end(job, Cancelled())
                for job, k in admitted:
                    self._start(job, k)
                if self.batcher.active:
                    self._deliver(self.batcher.tick())
        except BaseException as exc:  # a bug in the engine: fail every request rather than leave them hanging
            with self._cond:
                self._broken = exc
            for job in self._all_jobs():
                self._end(job, Failed(exc))
            raise
        for job in self._all_jobs():
            self._end(job, Cancelled())

    def _admit(self) -> list[tuple[_Job, int]]:
        """FCFS: the head of the queue joins while its next run fits the rows left; nobody overtakes it."""
        free = self.batcher.max_rows - self.batcher.active_rows
        admitted = []
        while self._queue:
            job = self._queue[0]
            chunk = job.chunks[job.next_chunk]
            rows = (chunk.stop - chunk.start) * job.request.rows_per_image
            if rows > free:
                break
            free -= rows
            admitted.append((job, job.next_chunk))
            job.next_chunk += 1
            if job.next_chunk == len(job.chunks):
                self._queue.popleft()
        return admitted

    def _start(self, job: _Job, k: int) -> None:
        if job.over:
            return
        if k == 0:
            job.timings.queue_s = time.perf_counter() - job.submitted
        try:
            run = self.batcher.start(job.request, job.chunks[k], job.timings)
        except Exception as exc:  # e.g. img2img pictures the encoder turns into NaN
            self._end(job, Failed(exc))
            return
        job.runs[k] = run
        self._running[id(run)] = (job, k)

    def _deliver(self, report: TickReport) -> None:
        with self._cond:
            s = self._stats
            self._stats = replace(
                s,
                ticks=s.ticks + 1,
                unet_calls=s.unet_calls + len(report.call_rows),
                unet_rows=s.unet_rows + sum(report.call_rows),
                unet_s=s.unet_s + report.unet_s,
                step_s=s.step_s + report.step_s,
            )
        for run, exc in report.failed:
            if id(run) in self._running:
                self._end(self._running[id(run)][0], Failed(exc))
        progressed: dict[int, _Job] = {}
        for run in report.stepped:
            if id(run) in self._running:  # not if its request failed in this tick
                job = self._running[id(run)][0]
                job.steps_done += 1
                progressed[id(job)] = job
        for job in progressed.values():
            job.handle._post(Progress(job.steps_done, job.steps_total))
        for run, i, t, images in report.previews:
            if id(run) not in self._running:
                continue
            job, k = self._running[id(run)]
            parts = job.preview_parts.setdefault(i, {})
            parts[k] = (t, images)
            if len(parts) == len(job.chunks):
                del job.preview_parts[i]
                preview = Preview(i, t, joined([parts[c][1] for c in range(len(job.chunks))]))
                job.previews.append(preview)
                job.handle._post(preview)
        for run, images in report.finished:
            if id(run) not in self._running:
                continue
            job, k = self._running.pop(id(run))
            job.images[k] = images
            if len(job.images) == len(job.chunks):
                self._finish(job)

    def _finish(self, job: _Job) -> None:
        runs = [job.runs[k] for k in range(len(job.chunks))]
        job.timings.total_s = time.perf_counter() - job.submitted
        result = result_of(
            job.request, runs, [job.images[k] for k in range(len(job.chunks))], job.timings, job.previews
        )
        self._release(job)
        try:
            job.handle.future.set_result(result)
        except InvalidStateError:  # cancelled by its caller at the last moment: the cancel wins
            job.handle._post(Cancelled())
            return
        job.handle._post(Finished(result))

    def _end(self, job: _Job, event: Event) -> None:
        """Take a failed or cancelled request out: its runs leave the batch, its queued parts the queue."""
        if job.over:
            return
        for run in job.runs.values():
            if run in self.batcher.active:
                self.batcher.remove(run)
            self._running.pop(id(run), None)
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
        self._release(job)
        future = job.handle.future
        if isinstance(event, Failed):
            try:
                future.set_exception(event.error)
            except InvalidStateError:  # already cancelled by its caller
                event = Cancelled()
        else:
            future.cancel()
        job.handle._post(event)

    def _release(self, job: _Job) -> None:
        job.over = True
        with self._cond:
            self._pending_images -= job.request.num_images

    def _all_jobs(self) -> list[_Job]:
        with self._cond:
            queued = list(self._queue)
        running = {id(job): job for job, _ in self._running.values()}
        return [*running.values(), *(job for job in queued if id(job) not in running)]

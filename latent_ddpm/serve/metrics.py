"""Prometheus metrics of the service, recorded through Ray Serve and exported next to Ray's own.

Ray's metrics agent on each node serves them at ``http://NODE:METRICS_EXPORT_PORT/metrics`` (the port of
``ray start --metrics-export-port``, or ``latent-ddpm serve --metrics-port``), with a ``ray_`` prefix, a
``_total`` suffix on counters, and the tags ``application``, ``deployment`` and ``replica`` added by Ray
Serve. Ray Serve's own metrics (``ray_serve_*``: HTTP requests, router queue, replica health) sit beside them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ray.serve.metrics import Counter, Gauge, Histogram

from latent_ddpm.runtime.engine import EngineStats

PREFIX = "latent_ddpm_"
REQUESTS = PREFIX + "requests"
IMAGES = PREFIX + "images"
LATENCY = PREFIX + "request_seconds"
QUEUE_DEPTH = PREFIX + "queue_depth"
PENDING_IMAGES = PREFIX + "pending_images"
UNET_CALLS = PREFIX + "unet_calls"
UNET_ROWS = PREFIX + "unet_rows"

LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
# How often a replica copies its engine's counters into the metrics (Ray's agent exports every few seconds).
ENGINE_REPORT_S = 1.0


def exported_names() -> list[str]:
    """The names as Prometheus shows them (what a dashboard queries)."""
    return [
        f"ray_{REQUESTS}_total",
        f"ray_{IMAGES}_total",
        f"ray_{LATENCY}_bucket",
        f"ray_{QUEUE_DEPTH}",
        f"ray_{PENDING_IMAGES}",
        f"ray_{UNET_CALLS}_total",
        f"ray_{UNET_ROWS}_total",
    ]


class IngressMetrics:
    """What the HTTP front sees: every request with its outcome, and the images it returned."""

    def __init__(self) -> None:
        self._requests = Counter(
            REQUESTS,
            description="HTTP requests by model, endpoint and status code.",
            tag_keys=("model", "endpoint", "status"),
        )
        self._images = Counter(IMAGES, description="Images returned, by model.", tag_keys=("model",))
        self._latency = Histogram(
            LATENCY,
            description="Seconds from receiving a request to answering it, by model and endpoint.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model", "endpoint"),
        )

    def record(self, model: str, endpoint: str, status: int, seconds: float, images: int) -> None:
        self._requests.inc(tags={"model": model, "endpoint": endpoint, "status": str(status)})
        self._latency.observe(seconds, tags={"model": model, "endpoint": endpoint})
        if images:
            self._images.inc(images, tags={"model": model})


class ReplicaMetrics:
    """What a replica's SamplingEngine reports (``EngineStats``), copied every ``ENGINE_REPORT_S`` by a
    thread of its own: the queue, the images held, and its U-Net calls and rows, whose rates' ratio is the
    rows per U-Net call (how well concurrent requests share calls)."""

    def __init__(self, model: str, read: Callable[[], EngineStats]) -> None:
        self._queue = Gauge(
            QUEUE_DEPTH,
            description="Requests in a replica's engine waiting for room in the batch, by model.",
            tag_keys=("model",),
        )
        self._pending = Gauge(
            PENDING_IMAGES,
            description="Images a replica's engine holds, queued or running, by model (beyond its capacity: "
            "503).",
            tag_keys=("model",),
        )
        self._calls = Counter(UNET_CALLS, description="U-Net calls, by model.", tag_keys=("model",))
        self._rows = Counter(
            UNET_ROWS,
            description="Rows (latents, both guidance halves) in U-Net calls, by model; divided by the calls: "
            "rows per call.",
            tag_keys=("model",),
        )
        for metric in (self._queue, self._pending, self._calls, self._rows):
            metric.set_default_tags({"model": model})  # a dict each: Ray Serve adds its own tags to it
        self._read, self._last = read, EngineStats()
        self._stop = threading.Event()
        self.update()
        threading.Thread(target=self._loop, name="latent-ddpm-metrics", daemon=True).start()

    def update(self) -> None:
        stats = self._read()
        self._queue.set(stats.queued)
        self._pending.set(stats.pending_images)
        for counter, new, old in (
            (self._calls, stats.unet_calls, self._last.unet_calls),
            (self._rows, stats.unet_rows, self._last.unet_rows),
        ):
            if new > old:  # Ray's counters take positive increments only
                counter.inc(new - old)
        self._last = stats

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(ENGINE_REPORT_S):
            self.update()

"""Prometheus metrics of the service, recorded through Ray Serve and exported next to Ray's own.

Ray's metrics agent on each node serves them at ``http://NODE:METRICS_EXPORT_PORT/metrics`` (the port of
``ray start --metrics-export-port``, or ``latent-ddpm serve --metrics-port``), with a ``ray_`` prefix, a
``_total`` suffix on counters, and the tags ``application``, ``deployment`` and ``replica`` added by Ray
Serve. Ray Serve's own metrics (``ray_serve_*``: HTTP requests, router queue, replica health) sit beside them.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

PREFIX = "latent_ddpm_"
REQUESTS = PREFIX + "requests"
IMAGES = PREFIX + "images"
LATENCY = PREFIX + "request_seconds"
QUEUE_DEPTH = PREFIX + "queue_depth"
UNET_ROWS = PREFIX + "unet_rows_per_call"

LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
ROWS_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def exported_names() -> list[str]:
    """The names as Prometheus shows them (what a dashboard queries)."""
    return [
        f"ray_{REQUESTS}_total",
        f"ray_{IMAGES}_total",
        f"ray_{LATENCY}_bucket",
        f"ray_{QUEUE_DEPTH}",
        f"ray_{UNET_ROWS}_bucket",
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
    """What a model replica sees (the runner's ``Observer``): its queue and the batch of each U-Net call."""

    def __init__(self, model: str) -> None:
        self._queue = Gauge(
            QUEUE_DEPTH,
            description="Requests waiting inside a replica for the runtime, by model.",
            tag_keys=("model",),
        )
        self._rows = Histogram(
            UNET_ROWS,
            description="Rows (latents, both guidance halves) per U-Net call, by model.",
            boundaries=ROWS_BOUNDARIES,
            tag_keys=("model",),
        )
        self._queue.set_default_tags({"model": model})
        self._rows.set_default_tags({"model": model})
        self._queue.set(0)

    def queue_depth(self, waiting: int) -> None:
        self._queue.set(waiting)

    def unet_rows(self, rows: int) -> None:
        self._rows.observe(rows)

"""The settings of `latent-ddpm serve`: one default and one explanation each, for its flags and for
``ServeConfig``'s fields. Plain Python, so that `latent-ddpm --help` works without the serve extra."""

from __future__ import annotations

from typing import Any

from latent_ddpm.runtime.backends import BACKENDS, DEFAULT_BACKEND, EXECUTION_PRECISIONS
from latent_ddpm.runtime.limits import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PENDING_IMAGES, DEFAULT_MAX_ROWS

# Ray Serve's own default port, so that its tooling and docs apply unchanged.
DEFAULT_PORT = 8000

DEFAULTS: dict[str, Any] = {
    "cpus_per_replica": 1.0,
    "gpus_per_replica": 0.0,
    "backend": DEFAULT_BACKEND,
    "precision": "fp32",
    "max_images": DEFAULT_MAX_IMAGES,
    "max_rows": DEFAULT_MAX_ROWS,
    "max_pending_images": None,  # the engine's own: DEFAULT_MAX_PENDING_IMAGES, at least max_images
    "max_queued": 128,
}

HELP: dict[str, str] = {
    "bundles": "bundle directories or shipped model names, one model each (the model id is the bundle's "
    "name); none = the shipped digits model. On a cluster every node must see the same directories.",
    "replicas": "replicas per model (fixed); 1 unless autoscaling",
    "min_replicas": "autoscale: fewest replicas per model (1 unless given; 0 lets a model scale to zero)",
    "max_replicas": "autoscale: most replicas per model",
    "cpus_per_replica": "CPUs Ray reserves for each replica (places replicas on nodes)",
    "gpus_per_replica": "GPUs Ray reserves for each replica",
    "threads": "intra-op threads per model in a replica; unset: the replica's CPUs",
    "backend": f"inference backend: {', '.join(BACKENDS)}",
    "providers": "ONNX Runtime execution providers, e.g. CUDAExecutionProvider",
    "precision": f"execution precision, one of {', '.join(EXECUTION_PRECISIONS)}; bf16: openvino only, for a "
    "bundle whose bf16 gate passed (latent-ddpm validate-precision)",
    "max_images": "images one request may ask for (the runtime refuses more with a 400); all of a request's "
    "images, latents and step noise are held in memory at once",
    "max_rows": "rows one U-Net call holds in a replica's engine (a guided image is two rows): concurrent "
    "requests share each call up to it; the rest wait in the engine's queue",
    "max_pending_images": "images one replica holds at once, queued or running (its capacity; at least "
    f"--max-images; default {DEFAULT_MAX_PENDING_IMAGES} or --max-images if larger); a request that does "
    "not fit is refused with 503, and Ray Serve routes at most this many requests to a replica",
    "max_queued": "requests that may wait for a replica with room, per model and ingress replica; more are "
    "refused with 503",
}

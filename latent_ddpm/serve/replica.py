"""A model's Ray Serve deployment: each replica loads its bundle once and runs one ``SamplingEngine`` on it.

Every request routed to a replica goes into its engine at once (``runner.py``), so concurrent requests share
each U-Net call step by step. Ray Serve routes a replica as many requests as its engine may hold images
(``ServeConfig.capacity``), keeps the rest in a bounded queue in front of the replicas, places replicas on
nodes by their CPUs and GPUs, and replaces one that dies. Images leave the replica as PNG bytes, encoded
here where the CPUs are reserved.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from latent_ddpm.errors import LatentDDPMError
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.serve.cards import ModelCard
from latent_ddpm.serve.config import ServeConfig
from latent_ddpm.serve.metrics import ReplicaMetrics
from latent_ddpm.serve.png import encode_png
from latent_ddpm.serve.runner import ImageRequest, Runner
from latent_ddpm.serve.schemas import describe


@dataclass
class Reply:
    """What a replica returns to the ingress: the PNGs, the native response's fields, and who served it."""

    pngs: list[bytes]
    info: dict[str, Any]
    served_by: dict[str, Any]


@serve.deployment
class ModelReplica:
    def __init__(self, card: ModelCard, config: ServeConfig) -> None:
        pipe = Pipeline.from_bundle(
            card.location(),
            backend=config.backend,
            providers=config.providers,
            threads=config.replica_threads,
            precision=config.precision,
            max_images=config.max_images,
            max_rows=config.max_rows,
        )
        self._card = card
        self._runner = Runner(pipe, max_pending_images=config.capacity)
        self._metrics = ReplicaMetrics(card.id, lambda: self._runner.stats)
        self._where = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
        }

    async def generate(self, request: ImageRequest) -> Reply | LatentDDPMError:
        """The images, or the runtime's refusal (bad argument, full engine, NaN) returned as a value: raised,
        Ray Serve would log a traceback as for a crashed replica each time a client sends a bad request."""
        try:
            result = await self._runner.generate(request)
        except LatentDDPMError as exc:
            return exc
        pngs = await asyncio.to_thread(lambda: [encode_png(img) for img in result.images])
        return Reply(pngs, describe(result, self._card), {**self._where, "engine": self._engine_counters()})

    def _engine_counters(self) -> dict[str, int]:
        """The engine's counters when the reply leaves: rows per U-Net call = unet_rows / unet_calls."""
        stats = self._runner.stats
        return {
            "ticks": stats.ticks,
            "unet_calls": stats.unet_calls,
            "unet_rows": stats.unet_rows,
            "queued": stats.queued,
            "pending_images": stats.pending_images,
        }

    def where(self) -> dict[str, Any]:
        """The node, replica id and process of this replica (for operators and the placement tests)."""
        return {"model": self._card.id, **self._where}

    def __del__(self) -> None:
        for part in ("_metrics", "_runner"):
            if hasattr(self, part):
                getattr(self, part).close()

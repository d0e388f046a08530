"""A model's Ray Serve deployment: each replica loads its bundle once and runs requests through the runner.

Ray Serve routes at most ``max_ongoing`` requests to a replica (the runner's own bound is the same), keeps
the rest in a bounded queue in front of the replicas, places replicas on nodes by their CPUs and GPUs, and
replaces one that dies. Images leave the replica as PNG bytes, encoded here where the CPUs are reserved.
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
            max_images=config.max_images,
        )
        self._card = card
        self._runner = Runner(pipe, capacity=config.max_ongoing, observer=ReplicaMetrics(card.id))
        self._where = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
        }

    async def generate(self, request: ImageRequest) -> Reply | LatentDDPMError:
        """The images, or the runtime's refusal (bad argument, full queue, NaN) returned as a value: raised,
        Ray Serve would log a traceback as for a crashed replica each time a client sends a bad request."""
        try:
            images = await self._runner.generate(request)
        except LatentDDPMError as exc:
            return exc
        pngs = await asyncio.to_thread(lambda: [encode_png(img) for img in images.images])
        return Reply(pngs, describe(images, self._card), self._where)

    def where(self) -> dict[str, Any]:
        """The node, replica id and process of this replica (for operators and the placement tests)."""
        return {"model": self._card.id, **self._where}

    def __del__(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.close()

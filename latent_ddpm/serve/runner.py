"""The seam between serving and the runtime: a replica's requests go into one ``SamplingEngine``.

Every request a replica holds is submitted to the engine at once and awaited on the replica's event loop, so
concurrent requests share U-Net calls step by step (docs/serving-engine.md) instead of waiting for each other.
``submit`` checks the arguments (``InputError``) and the engine's bound on images held (``BusyError``) before
any work, in the caller's thread; both come back to the ingress as values and become a 400 or a 503. A caller
that goes away (Ray Serve cancels the request when its HTTP client disconnects) cancels the engine request,
whose rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from latent_ddpm.runtime.engine import EngineStats, SamplingEngine
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.runtime.results import GenerationResult


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

    def arguments(self) -> dict[str, Any]:
        """``SamplingEngine.submit``'s (and ``Pipeline.generate``'s) keyword arguments."""
        labels = self.class_labels
        return {
            "num_images": self.num_images,
            "class_labels": list(labels) if isinstance(labels, tuple) else labels,
            "seed": self.seed,
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance_scale": self.guidance_scale,
            "eta": self.eta,
        }


class Runner:
    """One replica's engine. ``max_pending_images`` is its capacity: images held at once, queued or running;
    a request that does not fit is refused with ``BusyError``."""

    def __init__(self, pipe: Pipeline, max_pending_images: int) -> None:
        self.engine = SamplingEngine(pipe, max_pending_images=max_pending_images)

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    async def generate(self, request: ImageRequest) -> GenerationResult:
        handle = self.engine.submit(**request.arguments())
        try:
            return await handle
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def close(self) -> None:
        """Stop the engine, cancelling what it holds (the replica is going away)."""
        self.engine.close(cancel=True)

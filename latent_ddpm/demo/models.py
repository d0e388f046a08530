"""The models a demo serves: bundles run in this process, or the models of a `latent-ddpm serve` deployment.

Both kinds take ``submit(...)`` with ``Pipeline.generate``'s arguments and return a handle that the handlers
follow the same way: ``async for event in handle`` (progress and previews), ``result()``, ``cancel()``.

- ``LocalModel``: a Pipeline and the one ``SamplingEngine`` that batches every request to it; its handles
  stream progress and decoded previews, and cancelling one takes its rows out of the batch.
- ``RemoteModel``: one model of a `latent-ddpm serve` deployment, reached over HTTP through the torch-free
  ``ServeClient`` (no Ray in this process). Its native endpoint answers once: no previews, and a request
  already sent runs to its end on the server; it takes no ``latents`` and no pictures, so only Generate uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.bundle import SamplingDefaults
from latent_ddpm.runtime.engine import SamplingEngine
from latent_ddpm.runtime.handles import RequestHandle
from latent_ddpm.runtime.pipeline import Pipeline
from latent_ddpm.serve.client import RemoteResult, ServeClient

MAX_STEPS = 1000
# HTTP requests in flight to a deployment at once (threads waiting on its answers; it queues the rest).
REMOTE_CONNECTIONS = 64


@dataclass(frozen=True)
class Limits:
    """The bounds every control and endpoint enforces, derived from the model."""

    max_steps: int
    class_names: tuple[str, ...]  # empty for an unconditional model
    can_guide: bool
    has_encoder: bool
    single_channel: bool

    @classmethod
    def of(cls, pipe: Pipeline) -> Limits:
        b = pipe.bundle
        cond = b.conditioning
        return cls(
            max_steps=min(MAX_STEPS, b.num_train_timesteps),
            class_names=tuple(cond.class_names) if cond else (),
            can_guide=cond is not None and cond.null_class is not None,
            has_encoder=b.has_encoder,
            single_channel=b.image_shape[0] == 1,
        )


class LocalModel:
    """A bundle run in this process; every request goes through its one SamplingEngine."""

    local = True

    def __init__(self, pipe: Pipeline, engine: SamplingEngine | None = None) -> None:
        self.pipe = pipe
        self.engine = SamplingEngine(pipe) if engine is None else engine
        b = pipe.bundle
        self.name = b.name
        self.limits = Limits.of(pipe)
        self.defaults = b.defaults
        self.image_shape = b.image_shape
        self.latent_shape = b.latent_shape
        self.backend, self.providers = pipe.backend, list(pipe.providers)
        c, h, w = b.latent_shape
        ic, ih, iw = b.image_shape
        kind = f"{len(b.conditioning.class_names)} classes" if b.conditioning else "unconditional"
        self.description = (
            f"{ih}x{iw}x{ic} images from {c}x{h}x{w} latents, {kind}, {b.prediction_type} prediction"
        )

    def submit(self, **kwargs: Any) -> RequestHandle:
        return self.engine.submit(**kwargs)

    def submit_img2img(self, images: Any, **kwargs: Any) -> RequestHandle:
        return self.engine.submit_img2img(images, **kwargs)

    def close(self) -> None:
        self.engine.close(cancel=True)


class RemoteModel:
    """One model of a `latent-ddpm serve` deployment, described by its entry in ``GET /v1/models``."""

    local = False

    def __init__(self, client: ServeClient, card: dict[str, Any], pool: ThreadPoolExecutor) -> None:
        self.client, self._pool = client, pool
        self.name = str(card["id"])
        size = re.fullmatch(r"(\d+)x(\d+)", str(card["size"]))
        if size is None:
            raise InputError(f"{client.url}: model {self.name!r} has size {card['size']!r}, not 'WxH'")
        width, height, channels = int(size[1]), int(size[2]), int(card["channels"])
        classes = tuple(card["classes"] or ())
        self.limits = Limits(
            max_steps=MAX_STEPS,  # the server refuses more than its model's training steps, with a message
            class_names=classes,
            can_guide=bool(classes),  # a model without a null class is refused guidance by the server
            has_encoder=False,
            single_channel=channels == 1,
        )
        self.defaults = SamplingDefaults(**card["defaults"])
        self.image_shape = (channels, height, width)
        self.backend, self.providers = "latent-ddpm serve", [client.url]
        kind = f"{len(classes)} classes" if classes else "unconditional"
        self.description = f"{height}x{width}x{channels} images, {kind}, served by {client.url}"

    def submit(self, **kwargs: Any) -> RemoteHandle:
        """``Pipeline.generate``'s arguments but ``latents`` (the endpoint takes none); previews are not
        streamed by the server, so ``preview_steps`` is dropped."""
        kwargs.pop("preview_steps", None)
        return RemoteHandle(self._pool.submit(self.client.generate, model=self.name, **kwargs))

    def close(self) -> None:
        """Nothing to stop here: the deployment belongs to `latent-ddpm serve`."""


class RemoteHandle:
    """A request sent to a deployment, followed like an engine's handle: its events end when it answers."""

    def __init__(self, future: Future[RemoteResult]) -> None:
        self.future = future

    def result(self) -> RemoteResult:
        return self.future.result()

    def cancel(self) -> bool:
        """Cancel a request not sent yet; one already sent runs to its end on the server."""
        return self.future.cancel()

    def __aiter__(self) -> RemoteHandle:
        return self

    async def __anext__(self) -> NoReturn:
        with contextlib.suppress(Exception):  # the request's failure is raised by result()
            await asyncio.wrap_future(self.future)
        raise StopAsyncIteration


def remote_models(url: str) -> list[RemoteModel]:
    """Every model the deployment at ``url`` serves; ServerError if it cannot be reached."""
    client = ServeClient(url)
    pool = ThreadPoolExecutor(REMOTE_CONNECTIONS, thread_name_prefix="latent-ddpm-demo-remote")
    return [RemoteModel(client, card, pool) for card in client.models()]


Model = LocalModel | RemoteModel

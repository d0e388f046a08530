"""A torch-free client for `latent-ddpm serve`: the native endpoint, with ``Pipeline.generate``'s arguments.

This is the side of ``latent-ddpm demo --server URL`` that talks to the servers: the same call as the local
pipeline, the same images back (PNG is lossless), the server's refusals as the runtime's own exceptions.

    from latent_ddpm.serve.client import ServeClient
    client = ServeClient("http://127.0.0.1:8000")
    result = client.generate(num_images=4, class_labels="7", seed=0)
    result.images  # (4, 32, 32, 1) uint8, as Pipeline.generate returns them

A refused argument or unknown model raises ``InputError`` with the server's message, a full queue
``ServerBusyError``, any other failure (or a server that cannot be reached) ``ServerError``. Only the
standard library, NumPy and Pillow are used.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.pipeline import Timings
from latent_ddpm.serve import routes
from latent_ddpm.serve.errors import QUEUE_FULL, ServerBusyError, ServerError
from latent_ddpm.serve.png import decode_png, from_b64


@dataclass
class RemoteResult:
    """``GenerationResult``'s fields that travel, plus the model and where it ran (``served_by``)."""

    images: np.ndarray  # (N, H, W, C) uint8
    seed: int
    class_labels: np.ndarray | None
    class_names: list[str] | None
    sampler: str
    steps: int
    guidance_scale: float
    eta: float
    timings: Timings  # the runtime's, queue_s included: waiting in the replica's engine for room
    model: str
    served_by: dict[str, Any]


class ServeClient:
    def __init__(self, url: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        return self._call("GET", routes.HEALTH)

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", routes.MODELS)["data"]

    def generate(
        self,
        num_images: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: int | None = None,
        class_labels: int | str | Sequence[int | str] | None = None,
        guidance_scale: float | None = None,
        model: str | None = None,
    ) -> RemoteResult:
        """Sample on the server; arguments as ``Pipeline.generate`` (None = the bundle's defaults)."""
        body = {
            "model": model,
            "num_images": _plain(num_images),
            "steps": _plain(steps),
            "sampler": sampler,
            "eta": _plain(eta),
            "seed": _plain(seed),
            "class_labels": _labels(class_labels),
            "guidance_scale": _plain(guidance_scale),
        }
        out = self._call("POST", routes.GENERATE, {k: v for k, v in body.items() if v is not None})
        timings = out["timings"]
        names = {f.name for f in dataclasses.fields(Timings)}
        return RemoteResult(
            images=np.stack([decode_png(from_b64(text)) for text in out["images"]]),
            seed=out["seed"],
            class_labels=None if out["class_labels"] is None else np.asarray(out["class_labels"], np.int64),
            class_names=out["class_names"],
            sampler=out["sampler"],
            steps=out["steps"],
            guidance_scale=out["guidance_scale"],
            eta=out["eta"],
            timings=Timings(**{k: v for k, v in timings.items() if k in names}),
            model=out["model"],
            served_by=out.get("served_by", {}),
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _error(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise ServerError(f"cannot reach {self.url}: {exc.reason}") from None
        except TimeoutError:
            raise ServerError(f"{self.url}{path} did not answer within {self.timeout:g} s") from None


def _error(status: int, raw: bytes) -> Exception:
    """The server's error (OpenAI's JSON shape, or Ray's plain text) as the runtime's exception."""
    try:
        error = json.loads(raw)["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = raw.decode("utf-8", "replace").strip() or f"HTTP {status}", None
    if status in (400, 404, 422):
        return InputError(message)
    if status == 503 and code in (QUEUE_FULL, None):
        return ServerBusyError(message)
    return ServerError(f"HTTP {status}: {message}")


def _plain(value: Any) -> Any:
    """NumPy scalars (what a caller's arrays hold) as the JSON numbers they are; anything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _labels(labels: Any) -> Any:
    if labels is None or isinstance(labels, (str, numbers.Integral)):
        return _plain(labels)
    return [_plain(label) for label in labels]

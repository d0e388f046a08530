"""The HTTP API's request bodies and how each becomes an ``ImageRequest`` for a model.

Types are checked here (a string where a number belongs is a 400 naming the field); ranges are not: the
runtime checks those itself, with the same bounds as ``Pipeline.generate``, and its message becomes the 400.
Unknown fields are refused, so a misspelt ``guidance`` does not silently fall back to the default.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from latent_ddpm.runtime.results import GenerationResult
from latent_ddpm.serve.cards import ModelCard
from latent_ddpm.serve.errors import bad_request
from latent_ddpm.serve.runner import ImageRequest

_SIZE = re.compile(r"(\d+)x(\d+)")


class _Sampling(BaseModel):
    """Sampling fields both endpoints share (OpenAI's API has none of them: they are extra fields there)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(
        default=None, description="model id (GET /v1/models); may be omitted when one model is served"
    )
    seed: StrictInt | None = Field(default=None, description="fixes the images; none = a random seed")
    steps: StrictInt | None = Field(default=None, description="denoising steps; none = the model's default")
    sampler: StrictStr | None = Field(default=None, description="ddim, ddpm or dpmsolver++")
    guidance_scale: StrictFloat | None = Field(default=None, description="classifier-free guidance; 1 = none")
    eta: StrictFloat | None = Field(default=None, description="DDIM stochasticity, 0..1")


class ImagesRequest(_Sampling):
    """``POST /v1/images/generations``: OpenAI's images API, for a model that draws classes, not text."""

    prompt: StrictStr | None = Field(
        default=None,
        description="a class name of the model; empty = a random class per image; ignored by unconditional "
        "models",
    )
    n: StrictInt | None = Field(default=None, description="number of images (default 1)")
    size: StrictStr | None = Field(default=None, description="'WxH', the model's own size (or 'auto')")
    response_format: StrictStr | None = Field(default=None, description="b64_json (the only format)")
    user: StrictStr | None = Field(default=None, description="OpenAI's end-user id: accepted and ignored")

    def to_request(self, card: ModelCard) -> ImageRequest:
        check_size(self.size, card)
        if self.response_format not in (None, "b64_json"):
            raise bad_request(
                f"response_format {self.response_format!r} is not supported: this server keeps no images "
                "to link to; use 'b64_json'",
                "response_format",
            )
        prompt = (self.prompt or "").strip()
        return ImageRequest(
            num_images=self.n,
            class_labels=prompt if prompt and card.class_names is not None else None,
            **_sampling(self),
        )


class GenerateRequest(_Sampling):
    """``POST /v1/generate``: the runtime's own arguments, as ``Pipeline.generate`` takes them."""

    num_images: StrictInt | None = Field(default=None, description="number of images (default 1)")
    class_labels: StrictStr | StrictInt | list[StrictStr | StrictInt] | None = Field(
        default=None,
        description="a class name or index for every image, or one per image; none = random classes",
    )

    def to_request(self, card: ModelCard) -> ImageRequest:
        labels = self.class_labels
        return ImageRequest(
            num_images=self.num_images,
            class_labels=tuple(labels) if isinstance(labels, list) else labels,
            **_sampling(self),
        )


def _sampling(body: _Sampling) -> dict[str, Any]:
    return {
        "seed": body.seed,
        "steps": body.steps,
        "sampler": body.sampler,
        "guidance_scale": body.guidance_scale,
        "eta": body.eta,
    }


def check_size(size: str | None, card: ModelCard) -> None:
    """OpenAI's ``size`` must name the model's own image size: a bundle samples at one size only."""
    if size is None or size == "auto":
        return
    match = _SIZE.fullmatch(size.strip())
    if match is None:
        raise bad_request(f"size {size!r} is not 'WIDTHxHEIGHT'; model {card.id!r} makes {card.size}", "size")
    if (int(match[1]), int(match[2])) != (card.width, card.height):
        raise bad_request(
            f"size {size!r} is not available: model {card.id!r} makes {card.size} images only", "size"
        )


def describe(result: GenerationResult, card: ModelCard) -> dict[str, Any]:
    """The native response's fields besides the images: all that is needed to make them again."""
    labels = None if result.class_labels is None else [int(k) for k in result.class_labels]
    names = card.class_names
    return {
        "seed": result.seed,  # the engine draws one when the request has none
        "class_labels": labels,
        "class_names": [names[k] for k in labels] if labels is not None and names is not None else None,
        "sampler": result.sampler,
        "steps": result.steps,
        "guidance_scale": result.guidance_scale,
        "eta": result.eta,
        "timings": dataclasses.asdict(result.timings),  # queue_s: waiting in the engine for room
    }

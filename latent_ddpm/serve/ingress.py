"""The HTTP front (Ray Serve's FastAPI ingress): OpenAI's images API, the native endpoint, health, models.

It holds no model: it checks the request's shape, picks the model's deployment by ``model``, awaits one of
that model's replicas through a Ray Serve handle, and turns every failure into OpenAI's error JSON:

- 400 a field the API or the runtime refuses (``param`` names it), 404 an unknown model or path;
- 503 ``queue_full`` when the model is full: its replica's engine holds as many images as it may
  (``BusyError``), or Ray Serve's queue in front of the replicas is (``max_queued_requests``); with
  ``Retry-After``. 503 ``replica_unavailable`` when the replica running the request died (Ray Serve
  replaces it);
- 500 a model failure the runtime reports (NaN images), or a bug.
"""

# No `from __future__ import annotations` here: Ray Serve's class-based views hand FastAPI the methods'
# annotations as they are, and FastAPI would read the string "ImagesRequest" as a query parameter.

import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from latent_ddpm import __version__
from latent_ddpm.errors import BusyError, InputError, LatentDDPMError
from latent_ddpm.serve import routes
from latent_ddpm.serve.cards import ModelCard
from latent_ddpm.serve.errors import (
    MODEL_NOT_FOUND,
    REPLICA_LOST,
    ApiError,
    bad_request,
    busy,
    server_error,
)
from latent_ddpm.serve.metrics import IngressMetrics
from latent_ddpm.serve.png import to_b64
from latent_ddpm.serve.replica import Reply
from latent_ddpm.serve.runner import ImageRequest
from latent_ddpm.serve.schemas import GenerateRequest, ImagesRequest

# Endpoint label of the request metrics, by path.
ENDPOINTS = {
    routes.IMAGES: "images",
    routes.GENERATE: "generate",
    routes.MODELS: "models",
    routes.HEALTH: "healthz",
}
# The runtime's InputError names the argument first; these are its arguments, with OpenAI's names for two.
RUNTIME_ARGS = ("num_images", "class_labels", "class", "seed", "steps", "sampler", "guidance_scale", "eta")
OPENAI_NAMES = {"num_images": "n", "class_labels": "prompt", "class": "prompt"}

api = FastAPI(
    title="latent-ddpm",
    version=__version__,
    description="Latent DDPM bundles served by Ray Serve: OpenAI's images API (POST /v1/images/generations) "
    "and a native endpoint (POST /v1/generate) that also returns seeds, class labels and timings.",
)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first bad field."""
    error = exc.errors()[0]
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    if error.get("type") == "extra_forbidden":
        message = f"unknown field {param!r}"
    elif error.get("type") == "json_invalid":
        message, param = "the request body is not valid JSON", None
    elif param is None:
        message = f"request body: {error.get('msg', 'invalid')}"
    else:
        message = f"{'.'.join(loc)}: {error.get('msg', 'invalid')}, got {error.get('input')!r}"
    return await _api_error(_, bad_request(message, param))


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and methods, in the same error shape as everything else."""
    return await _api_error(_, ApiError(exc.status_code, str(exc.detail)))


@api.middleware("http")
async def _record(request: Request, call_next: Any) -> Any:
    start = time.perf_counter()
    response = await call_next(request)
    endpoint = ENDPOINTS.get(request.url.path)
    metrics = getattr(request.app.state, "metrics", None)
    if endpoint is not None and metrics is not None:
        metrics.record(
            getattr(request.state, "model", ""),
            endpoint,
            response.status_code,
            time.perf_counter() - start,
            getattr(request.state, "images", 0),
        )
    return response


# Module-level names that Gateway uses are defined above it: @serve.deployment pickles the class by value
# as it is defined, with the module globals that exist at that moment.
def _from_replica(card: ModelCard, cause: BaseException, names: dict[str, str]) -> ApiError:
    """An exception raised in a replica -> the HTTP error the client sees."""
    if isinstance(cause, BusyError):
        return busy(f"model {card.id!r}: {cause}")
    if isinstance(cause, InputError):
        word = re.match(r"[a-z_]+", str(cause))
        arg = word[0] if word and word[0] in RUNTIME_ARGS else None
        return bad_request(str(cause), names.get(arg, arg) if arg else None)
    if isinstance(cause, LatentDDPMError):
        return server_error(f"model {card.id!r}: {cause}")
    return server_error(f"model {card.id!r} failed: {type(cause).__name__}: {cause}")


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, cards: list[ModelCard], models: dict[str, DeploymentHandle]) -> None:
        self._cards = {card.id: card for card in cards}
        self._models = models
        self._created = int(time.time())
        api.state.metrics = IngressMetrics()

    @api.get(routes.HEALTH)
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": list(self._cards)}

    @api.get(routes.MODELS)
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [card.describe(self._created) for card in self._cards.values()]}

    @api.get(routes.MODELS + "/{model_id:path}")
    async def get_model(self, model_id: str) -> dict[str, Any]:
        return self._card(model_id, "model_id").describe(self._created)

    @api.post(routes.IMAGES)
    async def images(self, body: ImagesRequest, request: Request) -> dict[str, Any]:
        card = self._card(body.model)
        request.state.model = card.id
        reply = await self._generate(card, body.to_request(card), OPENAI_NAMES)
        request.state.images = len(reply.pngs)
        return {
            "created": int(time.time()),
            "data": [{"b64_json": to_b64(png)} for png in reply.pngs],
            "output_format": "png",
            "size": card.size,
        }

    @api.post(routes.GENERATE)
    async def generate(self, body: GenerateRequest, request: Request) -> dict[str, Any]:
        card = self._card(body.model)
        request.state.model = card.id
        reply = await self._generate(card, body.to_request(card), {})
        request.state.images = len(reply.pngs)
        return {
            "model": card.id,
            "size": card.size,
            "images": [to_b64(png) for png in reply.pngs],
            **reply.info,
            "served_by": reply.served_by,
        }

    def _card(self, model: str | None, param: str = "model") -> ModelCard:
        if model is None:
            if len(self._cards) == 1:
                return next(iter(self._cards.values()))
            raise bad_request(f"model is required: this server serves {', '.join(self._cards)}", "model")
        card = self._cards.get(model)
        if card is None:
            raise ApiError(
                404,
                f"model {model!r} does not exist here; served: {', '.join(self._cards)}",
                param=param,
                code=MODEL_NOT_FOUND,
            )
        return card

    async def _generate(self, card: ModelCard, request: ImageRequest, names: dict[str, str]) -> Reply:
        try:
            reply = await self._models[card.id].generate.remote(request)
        except BackPressureError as exc:
            reason = str(exc).rstrip(".")
            raise busy(f"model {card.id!r} is busy: its queue is full ({reason}); retry later") from None
        except RayTaskError as exc:
            raise _from_replica(card, exc.cause, names) from None
        except (RayActorError, ActorUnavailableError, DeploymentUnavailableError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise server_error(
                f"model {card.id!r}: the replica running this request stopped ({first}); retry",
                503,
                REPLICA_LOST,
            ) from None
        if isinstance(reply, LatentDDPMError):
            raise _from_replica(card, reply, names)
        return reply

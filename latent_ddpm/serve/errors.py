"""Errors of the HTTP API, in OpenAI's JSON shape, and the client-side exceptions for a server's 5xx.

OpenAI answers every error with ``{"error": {"message", "type", "param", "code"}}``; its clients read
``message`` and ``param`` from there, so ours does the same for every status, 400 to 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latent_ddpm.errors import LatentDDPMError


class ServerError(LatentDDPMError):
    """The server failed a request (5xx) or could not be reached; the message says why, from the server."""


class ServerBusyError(ServerError):
    """The model's queue is full (HTTP 503): nothing was computed; retry later or add replicas."""


@dataclass
class ApiError(Exception):
    """An HTTP error response. ``param`` names the request field at fault (OpenAI's ``param``)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @property
    def headers(self) -> dict[str, str]:
        """A busy server tells clients when to come back (OpenAI's clients honour Retry-After)."""
        return {"Retry-After": "1"} if self.code == QUEUE_FULL else {}


# OpenAI's `code` values for our errors.
QUEUE_FULL = "queue_full"
MODEL_NOT_FOUND = "model_not_found"
REPLICA_LOST = "replica_unavailable"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def busy(message: str) -> ApiError:
    return ApiError(503, message, "server_error", None, QUEUE_FULL)


def server_error(message: str, status: int = 500, code: str | None = None) -> ApiError:
    return ApiError(status, message, "server_error", None, code)

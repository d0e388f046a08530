"""The serve application: one ingress in front of one deployment per model.

``build_app`` is what ``latent-ddpm serve`` deploys; ``build`` is the same as a Ray Serve application
builder, for config files and KubeRay (``import_path: latent_ddpm.serve.app:build``, ``args``: the fields
of ``ServeConfig``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.serve import Application

from latent_ddpm.serve.cards import ModelCard, load_cards
from latent_ddpm.serve.config import ServeConfig
from latent_ddpm.serve.ingress import Gateway
from latent_ddpm.serve.replica import ModelReplica

APP_NAME = "latent-ddpm"
INGRESS = "ingress"
# The ingress only parses and forwards; the models' own queues bound the work. It takes many requests at
# once so that they reach those queues (and their 503s) instead of waiting in front of the ingress.
INGRESS_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0},
    "max_ongoing_requests": 1024,
    "max_queued_requests": 1024,
}


def model_deployment(model_id: str) -> str:
    """The Ray Serve deployment that runs a model (the name to use in ``deployments:`` overrides)."""
    return f"model-{model_id}"


def build_app(config: ServeConfig, cards: Sequence[ModelCard] | None = None) -> Application:
    """The application for ``config``; ``cards`` when the caller has loaded (and checked) the bundles."""
    if cards is None:
        # each replica verifies its bundle's hashes
        cards = load_cards(
            config.bundles, verify_hashes=False, backend=config.backend, precision=config.precision
        )
    models = {
        card.id: ModelReplica.options(name=model_deployment(card.id), **config.model_options()).bind(
            card, config
        )
        for card in cards
    }
    return Gateway.options(name=INGRESS, **INGRESS_OPTIONS).bind(list(cards), models)


def build(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder: ``args`` are ``ServeConfig``'s fields."""
    return build_app(ServeConfig.model_validate(args))

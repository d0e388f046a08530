"""Model cards: what the HTTP front needs to know about each served bundle, without loading its engines.

A model's id is its bundle's name (``bundle.json["name"]``, the directory's name when absent): the value of
``model`` in requests and of ``id`` in ``GET /v1/models``. A shipped bundle travels by its name rather than
its path, because each node of a cluster finds it inside its own install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_ddpm.errors import BundleError
from latent_ddpm.runtime.backends import DEFAULT_BACKEND, check_precision
from latent_ddpm.runtime.bundle import Bundle, load_bundle
from latent_ddpm.runtime.shipped import resolve_bundle, shipped_bundle_path, shipped_models


@dataclass(frozen=True)
class ModelCard:
    id: str
    path: str | None  # the bundle's directory; None for a shipped bundle
    shipped: str | None  # the shipped model's name, or None
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...] | None  # None: an unconditional model
    defaults: dict[str, Any]

    @property
    def size(self) -> str:
        """OpenAI's ``size``: width x height."""
        return f"{self.width}x{self.height}"

    def location(self) -> Path:
        """The bundle's directory on this node."""
        return shipped_bundle_path(self.shipped) if self.shipped is not None else Path(str(self.path))

    @classmethod
    def from_bundle(cls, bundle: Bundle, path: str | None, shipped: str | None) -> ModelCard:
        c, h, w = bundle.image_shape
        cond = bundle.conditioning
        d = bundle.defaults
        return cls(
            id=bundle.name,
            path=path,
            shipped=shipped,
            channels=c,
            height=h,
            width=w,
            class_names=None if cond is None else tuple(cond.class_names),
            defaults={
                "sampler": d.sampler,
                "steps": d.steps,
                "guidance_scale": d.guidance_scale,
                "eta": d.eta,
            },
        )

    def describe(self, created: int) -> dict[str, Any]:
        """The entry of ``GET /v1/models``: OpenAI's fields, then what a client needs to make requests."""
        return {
            "id": self.id,
            "object": "model",
            "created": created,
            "owned_by": "latent-ddpm",
            "size": self.size,
            "channels": self.channels,
            "classes": list(self.class_names) if self.class_names is not None else None,
            "defaults": self.defaults,
        }


def load_cards(
    bundles: Sequence[str | Path],
    *,
    verify_hashes: bool = True,
    backend: str = DEFAULT_BACKEND,
    precision: str = "fp32",
) -> list[ModelCard]:
    """One card per ``--bundle`` value, a directory or a shipped model's name (none: the shipped default
    model); BundleError names a bad bundle or two with one name, and the runtime's own check refuses a
    ``precision`` that ``backend`` or a bundle's precision gate does not allow."""
    shipped = {path.resolve(): name for name, path in shipped_models().items()}
    cards: dict[str, ModelCard] = {}
    for value in bundles or [None]:
        root = resolve_bundle(value).resolve()
        name = shipped.get(root)
        bundle = load_bundle(root, verify_hashes=verify_hashes)
        check_precision(bundle, backend, precision)
        card = ModelCard.from_bundle(bundle, None if name else str(root), name)
        if "#" in card.id or not card.id.strip():
            raise BundleError(f"{root}: bundle name {card.id!r} cannot be a model id (empty or has '#')")
        if card.id in cards:
            raise BundleError(
                f"two bundles are named {card.id!r} ({cards[card.id].location()} and {root}); the model id "
                "is the bundle's name (bundle.json 'name'): rename one"
            )
        cards[card.id] = card
    return list(cards.values())

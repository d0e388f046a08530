"""Optimization profiles from the bundle's tensor specs: the single source of the shapes an engine accepts.

The tensor specs are the ones ``export/specs.py`` wrote into bundle.json (names, fixed and named axes), read
back through the runtime's bundle loader, so a hand-made bundle gets the same rule. Only the build derives
profiles: the runtime reads the profile TensorRT stored in the plan and checks feeds against it.

Axis 0 of every input is the batch. A named axis elsewhere takes the one size the runtime ever feeds
(``latent`` or ``image`` in bundle.json), so an engine is never tuned for shapes that cannot occur.
Under classifier-free guidance the pipeline runs the unconditional and conditional halves in one U-Net call,
so the U-Net's batch range is twice the image batch range.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latent_ddpm.errors import BundleError, InputError
from latent_ddpm.runtime.backends.tensorrt_manifest import BuildSettings
from latent_ddpm.runtime.bundle import Bundle, ModelFile

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


Profile = dict[str, ShapeRange]


def profile_to_json(profile: Mapping[str, ShapeRange]) -> dict[str, Any]:
    return {name: r.to_json() for name, r in sorted(profile.items())}


def batch_range(bundle: Bundle, role: str, settings: BuildSettings) -> tuple[int, int, int]:
    """(min, opt, max) batch the ``role`` graph sees when the pipeline makes min..max images."""
    lo, opt, hi = settings.min_batch, settings.opt_batch, settings.max_batch
    if role == "unet" and bundle.can_guide:
        hi *= 2  # a guided call stacks unconditional + conditional
        if bundle.defaults.guidance_scale != 1.0:
            opt *= 2  # the bundle recommends guidance, so that is the shape to tune for
    return lo, opt, hi


def model_profile(bundle: Bundle, model: ModelFile, settings: BuildSettings) -> Profile:
    """min/opt/max shape of every input of ``model``. Raises InputError if the graph cannot take the range."""
    lo, opt, hi = batch_range(bundle, model.role, settings)
    reference = bundle.image_shape if model.role == "vae_encoder" else bundle.latent_shape
    profile: Profile = {}
    for spec in model.inputs:
        if not spec.shape:
            raise BundleError(
                f"{model.path.name}: input {spec.name!r} is a scalar; every input needs a batch axis"
            )
        ranges: list[tuple[int, int, int]] = []
        for axis, dim in enumerate(spec.shape):
            if axis == 0:
                ranges.append(_batch_axis(model, spec.name, dim, (lo, opt, hi)))
            elif isinstance(dim, int):
                ranges.append((dim, dim, dim))
            elif len(spec.shape) == 4:
                size = reference[axis - 1]
                ranges.append((size, size, size))
            else:
                raise BundleError(
                    f"{model.path.name}: cannot choose a size for axis {axis} ({dim!r}) of input {spec.name!r} "
                    f"{list(spec.shape)}; only the batch axis and the channel/height/width of 4-D inputs may be named"
                )
        profile[spec.name] = ShapeRange(*(tuple(r[i] for r in ranges) for i in range(3)))
    return profile


def _batch_axis(
    model: ModelFile, name: str, dim: int | str, want: tuple[int, int, int]
) -> tuple[int, int, int]:
    if isinstance(dim, str):
        return want
    if want != (dim, dim, dim):
        raise InputError(
            f"{model.path.name}: input {name!r} has a fixed batch of {dim} in bundle.json, so its engine cannot take "
            f"batches {want[0]}..{want[2]}; build with matching batch sizes or re-export with a dynamic batch axis"
        )
    return want

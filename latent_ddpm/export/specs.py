"""One spec per exported graph: tensor names, dtypes, dynamic axes and sample inputs.

The single source of truth for the ONNX export (input/output names, dynamic axes, example inputs), for the
graph contract written into bundle.json, and for the validation gate's random inputs (after NVIDIA's
TensorRT ``demo/Diffusion/models.py``). Every graph is dynamic in the batch and in height/width: U-Nets and
autoencoders are convolutional, so they accept any size their downsampling divides; the runtime feeds the
trained size, and the gate also checks a doubled size so the dynamic axes are proven, not assumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latent_ddpm.runtime.bundle import TensorSpec

VQ_LOOKUP_REASON = "VQ codebook lookup: an argmin over distances, where a float16 rounding can pick another code (a wrong patch)"


@dataclass(frozen=True)
class Draw:
    """How the gate draws random values for one input: a normal, a uniform, or integers in [low, high)."""

    kind: str  # "normal" (low = mean, high = std) | "uniform" | "integers"
    low: float
    high: float
    include: tuple[int, ...] = ()  # integers every validation run must cover (range ends, the null class)


@dataclass(frozen=True)
class ModelSpec:
    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sizes: Mapping[str, int]  # named spatial axis -> the size the model was trained at
    draws: Mapping[str, Draw] = field(default_factory=dict)
    # ONNX node-name prefix -> why those operators stay float32 in an fp16 export
    fp32_scopes: Mapping[str, str] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"{self.role}.onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's ``dynamic_axes``: every named dimension of every input and output."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in self.inputs + self.outputs
        }

    def shape(self, tensor: TensorSpec, batch: int, scale: int = 1) -> tuple[int, ...]:
        """A concrete shape: ``batch`` images at ``scale`` times the trained height and width."""
        return tuple(
            d if isinstance(d, int) else batch if d == "batch" else self.sizes[d] * scale
            for d in tensor.shape
        )

    def sample_feed(self, batch: int, rng: np.random.Generator, scale: int = 1) -> dict[str, np.ndarray]:
        return {
            t.name: _draw(self.draws[t.name], self.shape(t, batch, scale), t.dtype, rng) for t in self.inputs
        }

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}


def validation_feeds(
    spec: ModelSpec, batch_sizes: tuple[int, ...], rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    """One feed per batch size at the trained size, plus one image at twice the height and width.

    Integer inputs cover their ``include`` values (timesteps 0 and T-1, the null class) in the first feeds.
    """
    feeds = [spec.sample_feed(b, rng) for b in batch_sizes] + [spec.sample_feed(1, rng, scale=2)]
    for name, draw in spec.draws.items():
        slots = [(f, i) for f in feeds for i in range(f[name].shape[0])]
        for value, (feed, i) in zip(draw.include, slots, strict=False):
            feed[name][i] = value
    return feeds


def _draw(draw: Draw, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if draw.kind == "normal":
        values = draw.low + draw.high * rng.standard_normal(shape)
    elif draw.kind == "uniform":
        values = rng.uniform(draw.low, draw.high, shape)
    else:
        values = rng.integers(int(draw.low), int(draw.high), shape)
    return values.astype(dtype)


def build_specs(
    latent_shape: tuple[int, int, int],
    image_shape: tuple[int, int, int],
    *,
    num_train_timesteps: int,
    num_class_embeds: int | None,
    null_class: int | None,
    scaling_factor: float,
    shift_factor: float | None,
    with_encoder: bool,
    vq_codebook: bool = False,
) -> dict[str, ModelSpec]:
    """The specs of a latent DDPM's graphs, as docs/bundle-format.md states the contract."""
    c, h, w = latent_shape
    ci, hi, wi = image_shape
    latent = ("batch", c, "height", "width")
    image = ("batch", ci, "image_height", "image_width")
    sizes = {"height": h, "width": w, "image_height": hi, "image_width": wi}
    unet_inputs = [TensorSpec("sample", "float32", latent), TensorSpec("timestep", "int64", ("batch",))]
    unet_draws = {
        "sample": Draw("normal", 0.0, 1.0),
        "timestep": Draw("integers", 0, num_train_timesteps, include=(num_train_timesteps - 1, 0)),
    }
    if num_class_embeds is not None:
        unet_inputs.append(TensorSpec("class_labels", "int64", ("batch",)))
        ends = (null_class,) if null_class is not None else ()
        unet_draws["class_labels"] = Draw(
            "integers", 0, num_class_embeds, include=(*ends, 0, num_class_embeds - 1)
        )
    specs = {
        "unet": ModelSpec(
            "unet",
            tuple(unet_inputs),
            (TensorSpec("model_output", "float32", latent),),
            sizes,
            unet_draws,
        ),
        # The decoder takes unscaled latents: scaled latents are ~N(0, 1), so these are N(shift, 1/scale).
        "vae_decoder": ModelSpec(
            "vae_decoder",
            (TensorSpec("latent", "float32", latent),),
            (TensorSpec("image", "float32", image),),
            sizes,
            {"latent": Draw("normal", shift_factor or 0.0, 1.0 / scaling_factor)},
            {"/quantize/": VQ_LOOKUP_REASON} if vq_codebook else {},
        ),
    }
    if with_encoder:
        specs["vae_encoder"] = ModelSpec(
            "vae_encoder",
            (TensorSpec("image", "float32", image),),
            (TensorSpec("latent", "float32", latent),),
            sizes,
            {"image": Draw("uniform", -1.0, 1.0)},
        )
    return specs

"""How TensorRT's builder is set up for a requested precision: network typing and builder flags.

Plain rules, no TensorRT import: they are where builds go wrong (an fp16 request that TensorRT 11 can no
longer honour, bf16 on a pre-Ampere GPU), so they are tested without a GPU. What the user asked for
(``BuildSettings``) is recorded in the manifest, so it lives with the manifest's reader in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latent_ddpm.errors import InputError
from latent_ddpm.runtime.backends.tensorrt_manifest import ENGINE_PRECISIONS

# Bundle graphs already stored in reduced precision carry their own types: they build strongly typed.
TYPED_GRAPH_PRECISIONS = ("fp16", "mixed")


@dataclass(frozen=True)
class BuilderOptions:
    """How the network and builder config are set up; part of the cache key because it changes the plan."""

    typing: str  # "strong": the graph's types rule; "weak": TensorRT may pick lower precision kernels
    flags: tuple[str, ...] = ()  # BuilderFlag names set on top of the defaults
    cleared_flags: tuple[str, ...] = ()  # BuilderFlag names cleared from the defaults

    def to_json(self) -> dict[str, Any]:
        return {
            "typing": self.typing,
            "flags": sorted(self.flags),
            "cleared_flags": sorted(self.cleared_flags),
        }


def builder_options(
    graph_file: str,
    graph_precision: str,
    precision: str,
    *,
    tensorrt_version: str,
    weak_typing_available: bool,
    compute_capability: tuple[int, int],
) -> BuilderOptions:
    """Decide typing and flags for building ``graph_file`` (stored in ``graph_precision``) at ``precision``.

    TensorRT 10 lowers an fp32 graph with BuilderFlag.FP16/BF16 ("weak typing"); TensorRT 11 removed those
    flags and builds every network strongly typed, so there an fp32 graph can only become an fp32 engine and
    fp16 engines need an fp16 bundle. fp32 engines clear TF32 so that they match the fp32 reference.
    """
    if precision not in ENGINE_PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(ENGINE_PRECISIONS)}")
    if precision == "bf16" and compute_capability < (8, 0):
        cc = ".".join(map(str, compute_capability))
        raise InputError(
            f"bf16 engines need a GPU of compute capability 8.0 or newer (Ampere); this one is {cc}"
        )
    if graph_precision in TYPED_GRAPH_PRECISIONS:
        if precision != "fp16":
            raise InputError(
                f"{graph_file} is stored in {graph_precision} (bundle.json), so its engine is built strongly typed "
                f"in the graph's own precision: build with precision 'fp16', not {precision!r}"
            )
        return BuilderOptions(typing="strong")
    if graph_precision != "fp32":
        raise InputError(
            f"{graph_file} is stored in {graph_precision} (bundle.json); TensorRT engines are built from fp32, "
            f"fp16 or mixed bundles only"
        )
    if precision == "fp32":
        return BuilderOptions(typing="strong", cleared_flags=("TF32",))
    if not weak_typing_available:
        raise InputError(
            f"TensorRT {tensorrt_version} builds strongly typed networks only (BuilderFlag.{precision.upper()} was "
            f"removed in TensorRT 11), so the fp32 graph {graph_file} cannot become a {precision} engine: export "
            f"the bundle in fp16 (latent-ddpm export --precision fp16) or build with precision 'fp32'"
        )
    return BuilderOptions(typing="weak", flags=(precision.upper(),))

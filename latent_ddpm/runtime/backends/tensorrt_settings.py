"""What a TensorRT engine build is asked for (precision, batch range) and how the builder is set up for it.

Plain data and rules, no TensorRT import: the rules are where builds go wrong (an fp16 request that
TensorRT 11 can no longer honour, a batch range in the wrong order), so they are tested without a GPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from latent_ddpm.errors import InputError

ENGINE_PRECISIONS = ("fp32", "fp16", "bf16")
# Bundle graphs already stored in reduced precision carry their own types: they build strongly typed.
TYPED_GRAPH_PRECISIONS = ("fp16", "mixed")


@dataclass(frozen=True)
class BuildSettings:
    """The user's choices for ``latent-ddpm build-engines``; the manifest keeps them for rebuilds."""

    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    workspace_gb: float | None = None  # None: TensorRT's default (the GPU's memory)

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise InputError(f"precision {self.precision!r} is not one of {', '.join(ENGINE_PRECISIONS)}")
        for name in ("min_batch", "opt_batch", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(
                f"batch sizes must satisfy min <= opt <= max, got min_batch={self.min_batch}, "
                f"opt_batch={self.opt_batch}, max_batch={self.max_batch}"
            )
        if self.workspace_gb is not None and not (
            isinstance(self.workspace_gb, (int, float))
            and math.isfinite(self.workspace_gb)
            and self.workspace_gb > 0
        ):
            raise InputError(f"workspace_gb must be a positive number of GiB, got {self.workspace_gb!r}")

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_gb is None else int(self.workspace_gb * (1 << 30))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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

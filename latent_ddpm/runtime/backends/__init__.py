"""Backends run one exported graph: a named feed in, named outputs back.

The interface is deliberately tiny (``Engine.run``) so that ONNX Runtime, OpenVINO and TensorRT slot in the
same way; the sampling loops in ``latent_ddpm.runtime.pipeline`` never know which one they talk to. What
every backend must check the same way lives here: the feed against bundle.json (``check_feed``), the graph
against bundle.json (``check_graph_matches_spec``), the execution precision against the bundle's record of
its gate (``check_precision``), and the engine options each backend honours (``EngineOptions``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError
from latent_ddpm.runtime.bundle import GATED_PRECISIONS, Bundle, ModelFile, TensorSpec
from latent_ddpm.runtime.limits import check_threads

# The backend used when the caller names none. Chosen by measurement on CPU (docs/benchmarks/NOTES.md):
# changing it is this one line.
DEFAULT_BACKEND = "onnxruntime"

# name -> "module:function" returning an Engine for one model file.
BACKENDS: dict[str, str] = {
    "onnxruntime": "latent_ddpm.runtime.backends.onnxruntime_backend:open_engine",
    "openvino": "latent_ddpm.runtime.backends.openvino_backend:open_engine",
    "tensorrt": "latent_ddpm.runtime.backends.tensorrt_backend:open_engine",
}

# Execution precisions a caller may ask for. fp32 runs the graphs as the bundle holds them; a reduced one
# needs a backend that offers it and a passed gate recorded in the bundle (``latent-ddpm validate-precision``).
EXECUTION_PRECISIONS = ("fp32", *GATED_PRECISIONS)
# backend -> the reduced execution precisions it offers
REDUCED_PRECISIONS: dict[str, tuple[str, ...]] = {"openvino": ("bf16",)}


@dataclass(frozen=True)
class EngineOptions:
    """Opt-in engine settings. A backend refuses any option it does not honour, so none is silently ignored.

    - ``static_shapes`` (onnxruntime): one session per input shape, its free dimensions fixed by name, which
      lets ONNX Runtime fold the graph's shape arithmetic (OpenVINO always specialises per shape).
    - ``allow_spinning`` (onnxruntime): False stops idle worker threads spin-waiting, which wins on a CPU
      shared with other busy processes and loses on an idle one (docs/benchmarks/NOTES.md).
    - ``max_shapes`` (onnxruntime with static_shapes, openvino): the bound of the per-shape cache (LRU);
      each entry costs about twice the graph's size in memory (lower it for big models).
    - ``cache_dir`` (openvino): a folder for compiled models, reused across processes; never inside a bundle.
    """

    static_shapes: bool = False
    allow_spinning: bool = True
    max_shapes: int = 4
    cache_dir: Path | None = None

    def check(self, backend: str, honoured: Collection[str]) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and f.name not in honoured:
                raise InputError(
                    f"engine option {f.name}={value!r} does not apply to the {backend} backend "
                    f"(it honours: {', '.join(sorted(honoured)) or 'none'})"
                )
        if isinstance(self.max_shapes, bool) or not isinstance(self.max_shapes, int) or self.max_shapes < 1:
            raise InputError(f"engine option max_shapes must be an integer >= 1, got {self.max_shapes!r}")


@dataclass(frozen=True)
class EngineRequest:
    """What a backend's ``open_engine`` receives: one argument, so that every backend has the same one-line
    signature and a new setting is added in one place. The precision is checked before (``check_precision``)."""

    bundle: Bundle
    model: ModelFile
    providers: Sequence[str] | None = None
    threads: int | None = None
    precision: str = "fp32"
    options: EngineOptions = EngineOptions()


class Engine(Protocol):
    """One loaded graph. ``run`` checks its feed against the model spec before touching the backend."""

    model: ModelFile
    backend: str

    @property
    def providers(self) -> list[str]: ...

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def open_engine(
    bundle: Bundle,
    role: str,
    backend: str | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    *,
    precision: str = "fp32",
    options: EngineOptions | None = None,
) -> Engine:
    backend = DEFAULT_BACKEND if backend is None else backend
    threads = check_threads(threads)
    opener = backend_opener(backend)
    check_precision(bundle, backend, precision)
    return opener(
        EngineRequest(bundle, bundle.models[role], providers, threads, precision, options or EngineOptions())
    )


def backend_opener(backend: str) -> Callable[[EngineRequest], Engine]:
    """The backend's own ``open_engine(EngineRequest)``, which checks
    no gate record: only a gate itself (``latent-ddpm validate-precision``) opens a bundle that way."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module_name, func = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), func)


def check_precision(bundle: Bundle, backend: str, precision: str) -> None:
    """A reduced precision runs only where the backend offers it and the bundle records a passed gate for it,
    made on these very graphs (a copied or re-exported bundle.json with other models does not count)."""
    if precision == "fp32":
        return
    if precision not in EXECUTION_PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(EXECUTION_PRECISIONS)}")
    offered = [b for b, precisions in REDUCED_PRECISIONS.items() if precision in precisions]
    if backend not in offered:
        hint = " (TensorRT plans carry their own precision: latent-ddpm build-engines --precision)"
        raise InputError(
            f"precision={precision!r} is available with the {' or '.join(offered)} backend only, not {backend}"
            + (hint if backend == "tensorrt" else "")
        )
    command = f"latent-ddpm validate-precision {bundle.root} --precision {precision} --backend {backend}"
    record = bundle.precision_gates.get(precision)
    if record is None or record.backend != backend:
        raise BundleError(
            f"bundle {bundle.root} records no {precision} gate for the {backend} backend; "
            f"validate it first with: {command}"
        )
    graphs = {role: m.sha256 for role, m in bundle.models.items()}
    if dict(record.models) != graphs:
        raise BundleError(
            f"bundle {bundle.root}: its {precision} gate was run on other graphs than the ones it holds now; "
            f"validate it again with: {command}"
        )
    if not record.passed:
        raise BundleError(
            f"bundle {bundle.root} failed its {precision} gate on {record.date} ({record.why}); "
            f"use precision='fp32'"
        )


def check_graph_matches_spec(
    model: ModelFile, inputs: Mapping[str, tuple[str, int]], outputs: Collection[str]
) -> None:
    """The graph a backend loaded against bundle.json: ``inputs`` maps each graph input's name to its numpy
    dtype name and rank, ``outputs`` holds the graph's output names."""
    for spec in model.inputs:
        if spec.name not in inputs:
            raise BundleError(
                f"{model.path.name}: bundle.json declares input {spec.name!r}, the ONNX graph has {sorted(inputs)}"
            )
        dtype, rank = inputs[spec.name]
        if dtype != spec.dtype or rank != len(spec.shape):
            raise BundleError(
                f"{model.path.name}: input {spec.name!r} is {dtype} rank {rank} in the graph, "
                f"{spec.dtype} rank {len(spec.shape)} in bundle.json"
            )
    undeclared = sorted(set(inputs) - {s.name for s in model.inputs})
    if undeclared:
        raise BundleError(f"{model.path.name}: graph inputs {undeclared} are not declared in bundle.json")
    for spec in model.outputs:
        if spec.name not in outputs:
            raise BundleError(
                f"{model.path.name}: bundle.json declares output {spec.name!r}, the ONNX graph has {sorted(outputs)}"
            )


def check_feed(model: ModelFile, feed: dict[str, np.ndarray]) -> tuple[tuple[str, int], ...]:
    """Check names, dtypes, ranks and fixed dimensions of a feed against the bundle's spec for ``model``, and
    that the inputs agree on each named axis; returns the axes' sizes (``dynamic_dims``)."""
    expected = {spec.name for spec in model.inputs}
    missing, extra = expected - feed.keys(), feed.keys() - expected
    if missing or extra:
        raise InputError(
            f"{model.path.name}: feed has inputs {sorted(feed)}, the model takes {sorted(expected)}"
            + (f" (missing {sorted(missing)})" if missing else "")
            + (f" (unknown {sorted(extra)})" if extra else "")
        )
    for spec in model.inputs:
        check_tensor(model, spec, feed[spec.name])
    return dynamic_dims(model, feed)


def check_tensor(model: ModelFile, spec: TensorSpec, value: np.ndarray) -> None:
    if not isinstance(value, np.ndarray):
        raise InputError(
            f"{model.path.name}: input {spec.name!r} must be a numpy array, got {type(value).__name__}"
        )
    if value.dtype != np.dtype(spec.dtype):
        raise InputError(f"{model.path.name}: input {spec.name!r} must be {spec.dtype}, got {value.dtype}")
    if value.ndim != len(spec.shape):
        raise InputError(
            f"{model.path.name}: input {spec.name!r} must have rank {len(spec.shape)} {list(spec.shape)}, "
            f"got shape {list(value.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, value.shape, strict=True)):
        if isinstance(want, int) and want != got:
            raise InputError(
                f"{model.path.name}: input {spec.name!r} dimension {axis} must be {want}, got shape {list(value.shape)}"
            )


def dynamic_dims(model: ModelFile, feed: Mapping[str, np.ndarray]) -> tuple[tuple[str, int], ...]:
    """The size each named dynamic axis takes in a checked feed, e.g. (("batch", 2), ("height", 8), ...).

    This is the key of a shape-specialised model: with fixed dimensions checked, these sizes determine every
    input's shape. Inputs that disagree on an axis (a batch of 2 samples with 3 timesteps) are refused here,
    with both names, instead of deep inside the backend (or silently broadcast by it).
    """
    sizes: dict[str, tuple[int, str]] = {}
    for spec in model.inputs:
        for want, got in zip(spec.shape, feed[spec.name].shape, strict=True):
            if isinstance(want, int):
                continue
            seen = sizes.setdefault(want, (int(got), spec.name))
            if seen[0] != got:
                raise InputError(
                    f"{model.path.name}: inputs disagree on {want!r}: {seen[1]!r} has {seen[0]}, "
                    f"{spec.name!r} has {got}"
                )
    return tuple(sorted((name, size) for name, (size, _) in sizes.items()))

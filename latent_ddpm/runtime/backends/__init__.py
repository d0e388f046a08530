"""Backends run one exported graph: a named feed in, named outputs back.

The interface is deliberately tiny (``Engine.run``) so that ONNX Runtime and TensorRT slot in the same way;
the sampling loops in ``latent_ddpm.runtime.pipeline`` never know which one they talk to.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from latent_ddpm.errors import BackendUnavailableError, InputError
from latent_ddpm.runtime.bundle import Bundle, ModelFile, TensorSpec

# name -> "module:function" returning an Engine for one model file.
BACKENDS: dict[str, str] = {
    "onnxruntime": "latent_ddpm.runtime.backends.onnxruntime_backend:open_engine",
    "tensorrt": "latent_ddpm.runtime.backends.tensorrt_backend:open_engine",
}


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
    backend: str = "onnxruntime",
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> Engine:
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module_name, func = BACKENDS[backend].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func)(bundle, bundle.models[role], providers=providers, threads=threads)


def check_feed(model: ModelFile, feed: dict[str, np.ndarray]) -> None:
    """Check names, dtypes, ranks and fixed dimensions of a feed against the bundle's spec for ``model``."""
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

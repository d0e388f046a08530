"""The runtime's contenders in a benchmark: each a way of opening the same bundle (no torch: `bench --help`
lists them without importing it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latent_ddpm.runtime.backends import EngineOptions
from latent_ddpm.runtime.pipeline import Pipeline

# Runtime contenders: name -> Pipeline.from_bundle arguments. One interleaved run times them side by side.
RUNTIMES: dict[str, dict[str, Any]] = {
    "onnxruntime": {"backend": "onnxruntime"},
    "onnxruntime-static": {"backend": "onnxruntime", "engine_options": EngineOptions(static_shapes=True)},
    "openvino": {"backend": "openvino"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16"},
}


def open_runtime(name: str, bundle: Path, threads: int) -> Pipeline:
    """The runtime contender ``name`` on ``bundle``; raises LatentDDPMError when it cannot run there
    (OpenVINO not installed, no passed bf16 gate in the bundle, a CPU without native bf16, ...)."""
    return Pipeline.from_bundle(bundle, threads=threads, **RUNTIMES[name])

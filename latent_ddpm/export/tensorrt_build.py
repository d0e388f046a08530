"""Stage 2b: a bundle's ONNX graphs -> TensorRT plans in ``BUNDLE/engines/``, with a manifest and timing cache.

The one place plans are built (the runtime's ``tensorrt`` backend only loads them); the engine cache that
decides what to rebuild is ``tensorrt_builder.EngineCache``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from latent_ddpm.export.tensorrt_builder import EngineCache
from latent_ddpm.runtime.backends.tensorrt_manifest import BuildSettings, Manifest
from latent_ddpm.runtime.bundle import load_bundle


def build_engines(
    bundle_dir: str | Path,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 16,
    workspace_gb: float | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Manifest:
    """Build (or keep, when still valid) one plan per model of the bundle and return the manifest.

    Batch sizes count images: the U-Net of a guided model gets twice ``opt_batch``/``max_batch``, as
    classifier-free guidance stacks the unconditional and conditional halves. ``force`` rebuilds valid plans.
    Raises InputError for bad settings, BundleError for a bad bundle, BackendUnavailableError without
    TensorRT (``pip install 'latent-ddpm[tensorrt]'``) or without a GPU.
    """
    settings = BuildSettings(
        precision=precision,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_gb=workspace_gb,
    )
    bundle = load_bundle(bundle_dir)
    cache = EngineCache(bundle, settings, progress=progress)
    for role in bundle.models:
        record, _ = cache.ensure(role, force=force)
        if progress is not None:
            progress(f"{role}: engines/{record.file} ready (key {record.key[:12]})")
    cache.finish()
    return cache.manifest

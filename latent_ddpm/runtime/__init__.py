"""Stage 3 of the pipeline: the deployable, torch-free runtime.

NumPy schedulers (DDPM, DDIM, DPM-Solver++) around exported graphs run by ONNX Runtime or TensorRT.
Importing this package never imports torch, diffusers or CuPy; ``tests/test_runtime_torch_free.py`` checks it.

    from latent_ddpm.runtime import Pipeline
    pipe = Pipeline.from_bundle("my-bundle")          # or no argument: the shipped digits model
    result = pipe.generate(num_images=4, steps=50, sampler="ddim", seed=0, class_labels=7)
    result.images  # (4, H, W, C) uint8
"""

from latent_ddpm.errors import BackendUnavailableError, BundleError, InputError, LatentDDPMError
from latent_ddpm.runtime.bundle import Bundle, load_bundle
from latent_ddpm.runtime.pipeline import GenerationResult, Pipeline
from latent_ddpm.runtime.shipped import resolve_bundle, shipped_bundle_path, shipped_models

__all__ = [
    "BackendUnavailableError",
    "Bundle",
    "BundleError",
    "GenerationResult",
    "InputError",
    "LatentDDPMError",
    "Pipeline",
    "load_bundle",
    "resolve_bundle",
    "shipped_bundle_path",
    "shipped_models",
]

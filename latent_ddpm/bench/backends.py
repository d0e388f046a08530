"""The contenders, behind one interface: a U-Net call and a whole sampling run from given latents.

The runtime (NumPy loop + an engine backend, any bundle precision) runs as each of ``RUNTIMES``:
ONNX Runtime as it ships, ONNX Runtime with shape-specialised sessions, OpenVINO in f32 and in bf16;
``torch-eager`` and ``torch-compile`` are the PyTorch reference. Every backend gets the same latents,
labels, steps and guidance, and returns uint8 images so their outputs can be compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from latent_ddpm.bench.reference import TorchReference
from latent_ddpm.runtime.pipeline import Pipeline


@dataclass(frozen=True)
class RunResult:
    images: np.ndarray  # NHWC uint8
    total_s: float
    loop_overhead: float  # share of the denoising loop spent outside the U-Net


@dataclass
class Backend:
    name: str
    unet_call: Callable[[np.ndarray, int, np.ndarray | None], object]
    generate: Callable[[np.ndarray, np.ndarray | None, int, float], RunResult]
    precision: str = "fp32"  # of the graphs that run while sampling


class _TimedEngine:
    """Wraps the U-Net engine and sums the time spent inside ``run``, so that the loop's overhead counts
    everything outside the graph (guidance arithmetic and feed assembly included), not only the scheduler.
    """

    def __init__(self, engine) -> None:
        self.engine, self.model, self.backend = engine, engine.model, engine.backend
        self.seconds = 0.0

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        try:
            return self.engine.run(feed)
        finally:
            self.seconds += time.perf_counter() - t0


def runtime_backend(
    pipe: Pipeline, sampler: str, name: str = "onnxruntime", execution: str = "fp32"
) -> Backend:
    unet = _TimedEngine(pipe.unet)
    timed = Pipeline(pipe.bundle, unet, pipe.decoder, pipe.encoder)
    timestep_dtype = np.dtype(unet.model.input("timestep").dtype)

    def unet_call(sample: np.ndarray, t: int, labels: np.ndarray | None) -> object:
        feed = {"sample": sample, "timestep": np.full((sample.shape[0],), t, dtype=timestep_dtype)}
        if labels is not None:
            feed["class_labels"] = labels
        return unet.engine.run(feed)

    def generate(latents: np.ndarray, labels: np.ndarray | None, steps: int, guidance: float) -> RunResult:
        unet.seconds = 0.0
        r = timed.generate(
            latents=latents,
            class_labels=None if labels is None else labels.tolist(),
            steps=steps,
            sampler=sampler,
            guidance_scale=guidance,
            eta=0.0,
            seed=0,
        )
        denoise = r.timings.denoise_s
        return RunResult(r.images, r.timings.total_s, 1.0 - unet.seconds / denoise if denoise > 0 else 0.0)

    precision = ", ".join(
        f"{role} {m.precision}" for role, m in pipe.bundle.models.items() if role != "vae_encoder"
    )
    if execution != "fp32":
        precision += f", run in {execution}"
    return Backend(name, unet_call, generate, precision=precision)


def torch_backend(ref: TorchReference, sampler: str, name: str) -> Backend:
    def generate(latents: np.ndarray, labels: np.ndarray | None, steps: int, guidance: float) -> RunResult:
        images, timings = ref.generate(latents, labels, steps, guidance, sampler)
        return RunResult(images, timings.total_s, timings.loop_overhead)

    return Backend(name, ref.unet_call, generate)

"""The validation gate: a bundle is written only if it computes and samples like its diffusers source.

1. Per graph: ONNX Runtime (through the runtime's own engines) against the torch module on random inputs:
   batch sizes 1, 2, 3 and one image at twice the trained height and width, timesteps incl. 0 and T-1,
   class labels incl. the null class. Figures: max abs / max rel error, cosine similarity, PSNR, NaN/Inf.
2. Whole run: ``Pipeline.generate`` against the torch reference sampler (``reference.py``: diffusers'
   schedulers on the source's torch models) from the same initial latents and step noise, compared as the
   uint8 images users get; twice: DDIM (eta 0, ``GateSettings.steps``), and the bundle's default sampler,
   steps and eta, the run users get when they say nothing. Both at the bundle's default guidance.

Thresholds (module constants): fp32 images within 2/255 of diffusers; fp16 images at >= 35 dB PSNR; every
graph finite with cosine >= 0.9999 (fp32) or 0.999 (fp16/mixed) per case. fp16 figures measured on CPU are
optimistic for a GPU: ONNX Runtime's CPU provider runs some float16 operators in float32 (see fp16.py, which
checks overflow per float16 tensor for that reason).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from latent_ddpm.export.metrics import image_metrics, psnr_db
from latent_ddpm.export.modules import graph_module
from latent_ddpm.export.reference import (
    Run,
    decode,
    generate,
    make_scheduler,
    numpy_generators,
    numpy_step_noise,
    unet_model,
)
from latent_ddpm.export.source import Source
from latent_ddpm.export.specs import ModelSpec, validation_feeds
from latent_ddpm.runtime.images import to_uint8
from latent_ddpm.runtime.pipeline import Pipeline

FP32_MAX_IMAGE_DIFF = 2  # uint8 levels
FP16_MIN_IMAGE_PSNR_DB = 35.0
MIN_COSINE = {"fp32": 0.9999, "reduced": 0.999}
ROLE_SEEDS = {"unet": 1, "vae_decoder": 2, "vae_encoder": 3}  # each graph gets its own random inputs


@dataclass(frozen=True)
class GateSettings:
    """Sizes of the gate's runs (tests shrink them; the thresholds above are not settings)."""

    batch_sizes: tuple[int, ...] = (1, 2, 3)
    images: int = 4
    steps: int = 20
    seed: int = 0


def thresholds() -> dict[str, Any]:
    return {
        "fp32_max_image_diff": FP32_MAX_IMAGE_DIFF,
        "fp16_min_image_psnr_db": FP16_MIN_IMAGE_PSNR_DB,
        "min_cosine_fp32": MIN_COSINE["fp32"],
        "min_cosine_fp16": MIN_COSINE["reduced"],
        "nonfinite": 0,
    }


def tensor_metrics(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Agreement of an output with its reference; max_rel is the max abs error over the reference's peak."""
    nonfinite = int(out.size - np.isfinite(out).sum())
    if nonfinite:
        return {"nonfinite": nonfinite, "max_abs": None, "max_rel": None, "cosine": None, "psnr_db": None}
    a, b = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    err = np.abs(a - b)
    peak = float(np.abs(b).max(initial=0.0))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    mse = float(np.mean(err**2))
    return {
        "nonfinite": 0,
        "max_abs": float(err.max(initial=0.0)),
        "max_rel": float(err.max(initial=0.0) / peak) if peak > 0 else None,
        "cosine": float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b)),
        "psnr_db": psnr_db(peak**2, mse),
    }


def validate_components(
    pipe: Pipeline,
    source: Source,
    specs: dict[str, ModelSpec],
    precisions: dict[str, str],
    settings: GateSettings,
) -> dict[str, Any]:
    import torch

    engines = {"unet": pipe.unet, "vae_decoder": pipe.decoder, "vae_encoder": pipe.encoder}
    report: dict[str, Any] = {}
    for role, spec in specs.items():
        rng = np.random.default_rng([settings.seed, ROLE_SEEDS[role]])
        module = graph_module(role, source)
        min_cosine = MIN_COSINE["fp32" if precisions[role] == "fp32" else "reduced"]
        cases = []
        for feed in validation_feeds(spec, settings.batch_sizes, rng):
            with torch.no_grad():
                ref = module(*(torch.from_numpy(feed[n]) for n in spec.input_names)).numpy()
            out = engines[role].run(feed)[spec.output_names[0]]
            m = tensor_metrics(out, ref)
            m["passed"] = m["nonfinite"] == 0 and m["cosine"] >= min_cosine
            case = {"shape": list(out.shape)}
            case.update({k: v.tolist() for k, v in feed.items() if v.dtype.kind == "i"})
            cases.append({**case, **m})
        report[role] = {
            "precision": precisions[role],
            "passed": all(c["passed"] for c in cases),
            "min_cosine": min_cosine,
            "worst": _worst(cases),
            "cases": cases,
        }
    return report


def _worst(cases: list[dict[str, Any]]) -> dict[str, Any]:
    def pick(key: str, fn) -> float | None:
        values = [c[key] for c in cases if c[key] is not None]
        return fn(values) if values else None

    return {
        "max_abs": pick("max_abs", max),
        "max_rel": pick("max_rel", max),
        "cosine": pick("cosine", min),
        "psnr_db": pick("psnr_db", min),
        "nonfinite": sum(c["nonfinite"] for c in cases),
    }


def validate_sampling(
    pipe: Pipeline,
    source: Source,
    precision: str,
    settings: GateSettings,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One whole run against the torch reference: (figures, the bundle's images, the reference's images).

    ``steps`` None: ``settings.steps`` (at most the training steps). The runtime's step noise (DDPM, DDIM with
    eta > 0) comes from the per-image generators of ``settings.seed``, and so does the reference's.
    """
    bundle = pipe.bundle
    rng = np.random.default_rng([settings.seed, 0])
    latents = rng.standard_normal((settings.images, *bundle.latent_shape), dtype=np.float32)
    cond = bundle.conditioning
    labels = None if cond is None else (np.arange(settings.images) % cond.num_classes).astype(np.int64)
    guidance = bundle.defaults.guidance_scale
    steps = min(settings.steps, bundle.num_train_timesteps) if steps is None else steps
    result = pipe.generate(
        latents=latents,
        sampler=sampler,
        steps=steps,
        eta=eta,
        class_labels=None if labels is None else labels.tolist(),
        guidance_scale=guidance,
        seed=settings.seed,
    )
    reference = _reference_images(source, latents, labels, sampler, steps, eta, guidance, settings.seed)
    reference = to_uint8(reference, bundle.value_range)
    decoded = pipe.decoder.run(
        {"latent": (result.latents / np.float32(bundle.scaling_factor) + np.float32(bundle.shift_factor))}
    )["image"]
    nonfinite = int(result.latents.size - np.isfinite(result.latents).sum()) + int(
        decoded.size - np.isfinite(decoded).sum()
    )
    figures = image_metrics(result.images, reference)
    if precision == "fp32":
        passed = figures["max_abs_diff"] <= FP32_MAX_IMAGE_DIFF
    else:
        passed = figures["psnr_db"] is None or figures["psnr_db"] >= FP16_MIN_IMAGE_PSNR_DB
    report = {
        "sampler": sampler,
        "steps": steps,
        "eta": eta,
        "guidance_scale": guidance,
        "images": settings.images,
        "class_labels": None if labels is None else labels.tolist(),
        "seed": settings.seed,
        "nonfinite": nonfinite,
        **figures,
        "passed": bool(passed and nonfinite == 0),
    }
    return report, result.images, reference


def validate_default_sampling(
    pipe: Pipeline, source: Source, precision: str, settings: GateSettings
) -> dict[str, Any]:
    """The whole run at the bundle's default sampler, steps and eta: what users get when they say nothing."""
    d = pipe.bundle.defaults
    eta = d.eta if d.sampler == "ddim" else 0.0
    report, _, _ = validate_sampling(
        pipe, source, precision, settings, sampler=d.sampler, steps=d.steps, eta=eta
    )
    return report


def _reference_images(
    source: Source,
    latents: np.ndarray,
    labels: np.ndarray | None,
    sampler: str,
    steps: int,
    eta: float,
    guidance_scale: float,
    seed: int,
) -> np.ndarray:
    """The source's torch models sampled by the reference sampler and decoded as the runtime decodes (NCHW)."""
    import torch

    scheduler = make_scheduler(
        sampler, {**source.scheduler_config, "prediction_type": source.prediction_type}
    )
    noise = numpy_step_noise(numpy_generators(seed, len(latents)))
    run = Run.classes(labels, source.conditioning, guidance_scale, eta=eta, step_noise=noise)
    latents_out = generate(unet_model(source.unet), scheduler, torch.from_numpy(latents), steps, run)
    return decode(source.vae, latents_out, source.scaling_factor, source.shift_factor).numpy()


def versions() -> dict[str, str | None]:
    """The libraries the gate's figures depend on (``latent_ddpm.provenance``), plus the platform."""
    from latent_ddpm.provenance import library_versions

    found = library_versions(("latent-ddpm", "torch", "diffusers", "onnx", "onnxruntime", "numpy"))
    return {
        "latent_ddpm": found["latent-ddpm"],
        **{name: found[name] for name in ("torch", "diffusers", "onnx", "onnxruntime", "numpy", "python")},
        "platform": platform.platform(),
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def settings_json(settings: GateSettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}

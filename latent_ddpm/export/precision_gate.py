"""The reduced-precision gate: may an fp32 bundle run in bf16 on a backend? The answer is recorded in the bundle.

Guarded like an fp16 export (``validate.py``), but on the runtime's own sampling, since bf16 is a way of
running the bundle's fp32 graphs rather than other graphs:

1. The bundle's default run (its sampler, steps, guidance and eta) for ``images`` images, classes
   interleaved, image k seeded ``seed + k``: once in fp32 on ONNX Runtime (the path the export gate held to
   diffusers), once in the reduced precision on the backend. The uint8 images must reach the fp16
   export's bar (``validate.FP16_MIN_IMAGE_PSNR_DB``, 35 dB) with no NaN/Inf.
2. With an encoder, img2img of the first batch of fp32 images (default strength), held to the same bar.
3. Where a judge exists (evaluate/judged.py: class-conditional grey digits '0'..'9' or RGB emoji groups,
   the judges that ship with the package): conditional accuracy within ``MAX_ACCURACY_CHANGE`` (1 point)
   of fp32's.

It refuses, before any work, a CPU without native bf16, a bundle that is not fp32, and a bundle it cannot
write. The result, passed or failed, goes into validation.json (every figure, under "precision_gates") and
bundle.json (a summary, and the sha256 of the graphs it vouches for), each replaced atomically, bundle.json
last; the runtime reads only bundle.json and never writes into a bundle.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.errors import InputError
from latent_ddpm.export.errors import ExportError
from latent_ddpm.files import atomic_write
from latent_ddpm.provenance import cpu_model, library_versions
from latent_ddpm.runtime.backends import REDUCED_PRECISIONS, EngineRequest, backend_opener
from latent_ddpm.runtime.bundle import BUNDLE_FILE, GATED_PRECISIONS, VALIDATION_FILE, Bundle, load_bundle
from latent_ddpm.runtime.pipeline import Pipeline

MAX_ACCURACY_CHANGE = 0.01  # judged accuracy within 1 point of fp32's
REFERENCE_BACKEND = "onnxruntime"  # fp32 as the export gate validated it against diffusers
Log = Callable[[str], None]


@dataclass(frozen=True)
class GateSettings:
    images: int = 500  # 50 per digit: one point of accuracy is 5 images
    batch: int = 50
    seed: int = 0
    threads: int | None = None


def validate_precision(
    path: str | Path,
    precision: str = "bf16",
    backend: str = "openvino",
    settings: GateSettings | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Run the gate on the bundle at ``path`` and record it there; returns the full report."""
    from latent_ddpm.export import validate  # torch comes with it: not at import time (`latent-ddpm --help`)

    settings = settings or GateSettings()
    bundle = load_bundle(path)
    _check_request(bundle, precision, backend, settings)
    judge, judge_note = _judge(bundle, settings.threads)
    started = time.perf_counter()
    reference = Pipeline.from_bundle(bundle.root, REFERENCE_BACKEND, threads=settings.threads)
    opener = backend_opener(backend)
    engines = {
        role: opener(EngineRequest(bundle, model, threads=settings.threads, precision=precision))
        for role, model in bundle.models.items()
    }
    candidate = Pipeline(bundle, engines["unet"], engines["vae_decoder"], engines.get("vae_encoder"))

    log(f"sampling {settings.images} images in fp32 ({REFERENCE_BACKEND}) and {precision} ({backend})")
    labels = _labels(bundle, settings.images)
    ref_images, _, ref_s = _sample(reference, labels, settings)
    cand_images, cand_latents, cand_s = _sample(candidate, labels, settings)
    nonfinite = int(cand_latents.size - np.isfinite(cand_latents).sum())
    sampling = {**validate.image_metrics(cand_images, ref_images), "nonfinite": nonfinite}
    d = reference.bundle.defaults
    report: dict[str, Any] = {
        "precision": precision,
        "backend": backend,
        "reference": f"fp32 on {REFERENCE_BACKEND}",
        "date": validate.now(),
        "machine": {"cpu": cpu_model(), "native_bf16": _native_flags(backend)},
        "versions": library_versions(("latent-ddpm", "openvino", "onnxruntime", "numpy")),
        "thresholds": {
            "min_image_psnr_db": validate.FP16_MIN_IMAGE_PSNR_DB,
            "max_accuracy_change": MAX_ACCURACY_CHANGE,
        },
        "settings": {
            **asdict(settings),
            "sampler": d.sampler,
            "steps": d.steps,
            "eta": d.eta if d.sampler == "ddim" else 0.0,
            "guidance_scale": bundle.defaults.guidance_scale,
        },
        "models": {role: m.sha256 for role, m in bundle.models.items()},
        "sampling": sampling,
        "seconds": {"fp32": ref_s, precision: cand_s},
    }
    if bundle.has_encoder:
        first = ref_images[: settings.batch]
        kwargs = {
            "seed": settings.seed,
            "class_labels": None if labels is None else labels[: len(first)].tolist(),
        }
        cand = candidate.img2img(first, **kwargs)
        report["img2img"] = {
            **validate.image_metrics(cand.images, reference.img2img(first, **kwargs).images),
            "nonfinite": int(cand.latents.size - np.isfinite(cand.latents).sum()),
        }
    if judge is None:
        report["judge"] = {"skipped": judge_note}
    else:
        report["judge"] = judge(ref_images, cand_images, labels, precision)
        report["judge"]["name"] = judge_note
    report["seconds"]["total"] = time.perf_counter() - started
    failures = _failures(report)
    report["passed"] = not failures
    report["why"] = "; ".join(failures) or None
    _record(bundle, report)
    return report


def _check_request(bundle: Bundle, precision: str, backend: str, settings: GateSettings) -> None:
    """Everything that can be refused before minutes of sampling."""
    from latent_ddpm.runtime.backends.openvino_backend import check_native_bf16

    if precision not in GATED_PRECISIONS:
        raise InputError(f"precision {precision!r} is not one with a gate ({', '.join(GATED_PRECISIONS)})")
    offered = [b for b, p in REDUCED_PRECISIONS.items() if precision in p]
    if backend not in offered:
        raise InputError(
            f"precision {precision!r} runs on the {' or '.join(offered)} backend, not {backend!r}"
        )
    if precision == "bf16":
        check_native_bf16()
    not_fp32 = {role: m.precision for role, m in bundle.models.items() if m.precision != "fp32"}
    if not_fp32:
        raise ExportError(
            f"{bundle.root}: {precision} is a way to run fp32 graphs; this bundle has {not_fp32}"
        )
    for name, value, low in (
        ("images", settings.images, 1),
        ("batch", settings.batch, 1),
        ("seed", settings.seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    for p in (bundle.root, bundle.root / BUNDLE_FILE, bundle.root / VALIDATION_FILE):
        if p.exists() and not os.access(p, os.W_OK):
            raise ExportError(f"{p} is not writable: the gate records its result in the bundle")


def _labels(bundle: Bundle, n: int) -> np.ndarray | None:
    """Classes interleaved, so that every batch holds all of them."""
    cond = bundle.conditioning
    return None if cond is None else (np.arange(n) % cond.num_classes).astype(np.int64)


def _sample(
    pipe: Pipeline, labels: np.ndarray | None, s: GateSettings
) -> tuple[np.ndarray, np.ndarray, float]:
    """The bundle's default run over all images, image k seeded ``seed + k``: images, latents, seconds."""
    images, latents, seconds = [], [], 0.0
    for start in range(0, s.images, s.batch):
        stop = min(start + s.batch, s.images)
        r = pipe.generate(
            num_images=stop - start,
            seed=s.seed + start,  # the runtime seeds image j of the call seed + j: every image its own
            class_labels=None if labels is None else labels[start:stop].tolist(),
        )
        images.append(r.images)
        latents.append(r.latents)
        seconds += r.timings.total_s
    return np.concatenate(images), np.concatenate(latents), seconds


def _judge(bundle: Bundle, threads: int | None) -> tuple[Callable[..., dict[str, Any]] | None, str]:
    """The judge of the data set the bundle draws, if it is class-conditional and one fits; else None and why."""
    from latent_ddpm.evaluate.classifier import Judge

    cond = bundle.conditioning
    if cond is None:
        return None, "no judge: only class-conditional models are judged (conditional accuracy)"
    try:
        classifier = Judge.for_model(bundle.image_shape, cond.class_names, f"bundle {bundle.name}", threads)
    except InputError as exc:
        return None, f"no judge: {exc}"
    judged = classifier.class_index(cond.class_names)

    def accuracy(images: np.ndarray, labels: np.ndarray) -> float:
        return float((classifier.run(images)[0].argmax(1) == judged[labels]).mean())

    def judge(ref: np.ndarray, cand: np.ndarray, labels: np.ndarray, precision: str) -> dict[str, Any]:
        acc_ref, acc_cand = accuracy(ref, labels), accuracy(cand, labels)
        return {"accuracy_fp32": acc_ref, f"accuracy_{precision}": acc_cand, "change": acc_cand - acc_ref}

    return (
        judge,
        f"{classifier.data.name} judge (latent_ddpm/data/{classifier.path.name}): conditional accuracy",
    )


def _native_flags(backend: str) -> list[str]:
    from latent_ddpm.runtime.backends.openvino_backend import native_bf16

    return native_bf16() if backend == "openvino" else []


def _failures(report: dict[str, Any]) -> list[str]:
    out = []
    bar = report["thresholds"]["min_image_psnr_db"]
    for run in ("sampling", "img2img"):
        m = report.get(run)
        if m is None:
            continue
        if m.get("nonfinite"):
            out.append(f"{run} returned {m['nonfinite']} NaN/Inf values")
        elif m["psnr_db"] is not None and m["psnr_db"] < bar:
            out.append(f"{run} images reach {m['psnr_db']:.1f} dB PSNR vs fp32 (needs {bar:g})")
    change = report["judge"].get("change")
    if change is not None and abs(change) > MAX_ACCURACY_CHANGE + 1e-12:
        out.append(
            f"judged accuracy moves {100 * change:+.1f} points vs fp32 (allowed ±{100 * MAX_ACCURACY_CHANGE:g})"
        )
    return out


def _record(bundle: Bundle, report: dict[str, Any]) -> None:
    """validation.json first (every figure), then bundle.json (what the runtime reads), each atomically."""
    precision, root = report["precision"], bundle.root
    validation_path = root / VALIDATION_FILE
    validation = json.loads(validation_path.read_text(encoding="utf-8")) if validation_path.is_file() else {}
    validation.setdefault("precision_gates", {})[precision] = report
    atomic_write(validation_path, json.dumps(validation, indent=2) + "\n")

    meta = json.loads((root / BUNDLE_FILE).read_text(encoding="utf-8"))
    judge = report["judge"]
    meta.setdefault("precision_gates", {})[precision] = {
        "backend": report["backend"],
        "passed": report["passed"],
        "date": report["date"],
        "why": report["why"],
        "models": report["models"],
        "report": VALIDATION_FILE,
        "summary": {
            "reference": report["reference"],
            "cpu": report["machine"]["cpu"],
            "images": report["settings"]["images"],
            "sampler": report["settings"]["sampler"],
            "steps": report["settings"]["steps"],
            "guidance_scale": report["settings"]["guidance_scale"],
            "psnr_db": report["sampling"]["psnr_db"],
            "max_abs_diff": report["sampling"]["max_abs_diff"],
            "img2img_psnr_db": report.get("img2img", {}).get("psnr_db"),
            "accuracy_fp32": judge.get("accuracy_fp32"),
            f"accuracy_{precision}": judge.get(f"accuracy_{precision}"),
        },
    }
    atomic_write(root / BUNDLE_FILE, json.dumps(meta, indent=2) + "\n")
    load_bundle(root, verify_hashes=False)  # what was written parses as the runtime will read it

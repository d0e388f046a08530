"""fp32 bundle -> int8 bundle for edge CPUs: ONNX Runtime static QDQ quantization, gated like every export.

Calibration data are the tensors the graphs really see: the U-Net's inputs at every step, and the decoder's
latents, recorded from a few sampling runs of the fp32 bundle with the bundle's own defaults (sampler,
steps, guidance). Convolutions and matrix products get int8 weights (per output channel) and int8
activations (MinMax ranges from calibration); everything else (GroupNorm, SiLU, softmax, the scheduler) stays
float32, as ONNX Runtime executes QDQ graphs. ONNX Runtime fuses each DequantizeLinear -> Conv ->
QuantizeLinear into one integer kernel (VNNI where the CPU has it).

The gate: the int8 bundle samples images from held-out latents and labels, which are compared with the fp32
bundle's images of the same latents (PSNR and max abs over uint8 pixels). Components are tried one at a time,
the U-Net first: one that costs more than ``min_psnr_db`` on its own stays float32, and bundle.json says so
(``kept_fp32``). Static quantization that ONNX Runtime cannot perform on a graph falls back to dynamic
quantization (int8 weights, activations quantized per call), also recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latent_ddpm.export.errors import ExportError
from latent_ddpm.export.metrics import image_metrics
from latent_ddpm.export.output import check_bundle_output, publish_bundle
from latent_ddpm.runtime.bundle import (
    BUNDLE_FILE,
    VALIDATION_FILE,
    Bundle,
    ModelFile,
    load_bundle,
    sha256_file,
)
from latent_ddpm.runtime.shipped import resolve_bundle

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
QUANTIZABLE_ROLES = ("unet", "vae_decoder")
FLOAT_OPS_NOTE = (
    "non-GEMM operators (normalisation, activations, softmax, residual adds) run in float32 between "
    "QuantizeLinear/DequantizeLinear pairs"
)
Log = Callable[[str], None]


@dataclass(frozen=True)
class QuantizeOptions:
    calibration_runs: int = 4  # sampling runs of the fp32 bundle whose tensors calibrate the ranges
    calibration_batch: int = 4  # images per calibration run
    max_unet_feeds: int = 48  # U-Net calls kept for calibration, spread evenly over runs and steps
    validation_images: int = 8  # held-out images compared with the fp32 bundle's
    min_psnr_db: float = 25.0  # a component that costs more than this on its own stays float32
    roles: tuple[str, ...] = QUANTIZABLE_ROLES
    op_types: tuple[str, ...] = QUANTIZED_OP_TYPES
    threads: int | None = None
    seed: int = 0


class _NonFinite(Exception):
    """A graph returned NaN or Inf: its images cannot be compared (they would cast to identical black)."""


class _Watched:
    """An Engine that runs another, refuses NaN/Inf in its outputs and, while ``feeds`` is a list, keeps a
    copy of every feed (the calibration data)."""

    def __init__(self, engine: Any, role: str) -> None:
        self.engine, self.model, self.backend, self.role = engine, engine.model, engine.backend, role
        self.feeds: list[dict[str, np.ndarray]] | None = None
        self.calls = 0

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.feeds is not None:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        out = self.engine.run(feed)
        self.calls += 1
        for name, value in out.items():
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise _NonFinite(
                    f"{self.role} output {name!r} held {bad} NaN/Inf values at call {self.calls}"
                )
        return out


class _Feeds:
    """onnxruntime.quantization.CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def image_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """``metrics.image_metrics`` with identical images at an infinite PSNR, which the gate compares."""
    m = image_metrics(candidate, reference)
    return {
        "psnr_db": math.inf if m["psnr_db"] is None else m["psnr_db"],
        "max_abs": float(m["max_abs_diff"]),
        "mean_abs": m["mean_abs_diff"],
    }


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    options: QuantizeOptions | None = None,
    log: Log = print,
) -> Path:
    """Write an int8 copy of the fp32 bundle ``src`` (a folder or a shipped model's name) to ``out``
    (atomically); returns ``out``."""
    options = options or QuantizeOptions()
    src = resolve_bundle(src)
    out = check_bundle_output(out, force=force, sources=[src])
    bundle = load_bundle(src)
    not_fp32 = {role: m.precision for role, m in bundle.models.items() if m.precision != "fp32"}
    if not_fp32:
        raise ExportError(f"{bundle.root}: quantize starts from an fp32 bundle; this one has {not_fp32}")
    unknown = sorted(set(options.roles) - set(QUANTIZABLE_ROLES))
    if unknown:
        raise ExportError(
            f"cannot quantize {unknown}; quantizable components: {', '.join(QUANTIZABLE_ROLES)}"
        )
    with publish_bundle(out, force=force, sources=[bundle.root]) as tmp:
        _build(bundle, tmp, options, log)
        load_bundle(tmp)  # the runtime's own checks, before anything replaces `out`
    return out


def _build(bundle: Bundle, tmp: Path, options: QuantizeOptions, log: Log) -> None:
    from latent_ddpm.runtime.pipeline import Pipeline

    started = time.perf_counter()
    fp32 = Pipeline.from_bundle(bundle.root, threads=options.threads, verify_hashes=False)
    engines = {"unet": _Watched(fp32.unet, "unet"), "vae_decoder": _Watched(fp32.decoder, "vae_decoder")}
    log(f"calibrating on {options.calibration_runs} sampling runs of {bundle.name} (fp32)")
    val_latents, val_labels = _validation_inputs(bundle, options)
    try:
        calibration = _calibrate(bundle, engines, options)
        reference = _sample(bundle, engines, val_latents, val_labels)
    except _NonFinite as exc:
        raise ExportError(
            f"{bundle.root}: the fp32 bundle itself samples NaN/Inf ({exc}); there is nothing to calibrate or "
            "compare the int8 graphs with, and nothing was written"
        ) from None

    candidates: dict[str, ModelFile] = {}
    methods: dict[str, str] = {}
    for role in options.roles:
        if role not in bundle.models:
            continue
        log(f"quantizing {role} ({len(calibration[role])} calibration feeds)")
        model = bundle.models[role]
        path = tmp / f".{role}.int8.onnx"
        methods[role] = _quantize_graph(model, calibration[role], path, tmp, options.op_types)
        candidates[role] = dataclasses.replace(
            model, path=path, precision="int8", external_data=None, external_data_sha256=None
        )

    trials, decisions, failures = [], {}, {}
    for role, candidate in candidates.items():
        trial = {**engines, role: _Watched(_open(candidate, options.threads), role)}
        agreement, failure = _trial(bundle, trial, reference, val_latents, val_labels, options.min_psnr_db)
        decisions[role] = failure is None
        if failure is not None:
            failures[role] = failure
        int8_now = sorted(r for r in candidates if decisions.get(r) or r == role)
        trials.append(
            {"int8_components": int8_now, "images_vs_fp32": agreement, "passed": failure is None}
            | ({"failure": failure} if failure else {})
        )
        log(f"  {role} int8: {failure or _figures(agreement)} -> {'kept fp32' if failure else 'int8'}")
        if failure is None:
            engines[role] = trial[role]

    final = _sample(bundle, engines, val_latents, val_labels)  # the last passing trial's graphs: finite
    summary = image_agreement(reference, final)
    meta, models_report = _write_models(bundle, tmp, candidates, decisions, failures, methods, options)
    report = {
        "kind": "int8 quantization",
        "reference": f"fp32 bundle {bundle.name} ({bundle.root})",
        "method": {
            "tool": "onnxruntime.quantization.quantize_static (QDQ)",
            "op_types": list(options.op_types),
            "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, MinMax ranges from calibration",
            "calibration": {
                "runs": options.calibration_runs,
                "batch": options.calibration_batch,
                "sampler": bundle.defaults.sampler,
                "steps": bundle.defaults.steps,
                "guidance_scale": bundle.defaults.guidance_scale,
                "unet_feeds": len(calibration.get("unet", [])),
                "decoder_feeds": len(calibration.get("vae_decoder", [])),
            },
        },
        "validation": {
            "images": int(val_latents.shape[0]),
            "held_out": "latents and labels drawn from a seed the calibration never saw",
            "min_psnr_db": options.min_psnr_db,
            "trials": trials,
            "final_images_vs_fp32": summary,
        },
        "models": models_report,
        "seconds": time.perf_counter() - started,
    }
    (tmp / VALIDATION_FILE).write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    meta["validation"] = {
        "validated": True,
        "passed": True,
        "report": VALIDATION_FILE,
        "summary": {
            "kind": "int8 quantization vs the fp32 bundle",
            "images": int(val_latents.shape[0]),
            "psnr_db": _finite(summary["psnr_db"]),
            "max_abs": summary["max_abs"],
            "min_psnr_db": options.min_psnr_db,
        },
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    _write_samples(tmp, reference, final)


def _trial(
    bundle: Bundle,
    engines: dict[str, _Watched],
    reference: np.ndarray,
    latents: np.ndarray,
    labels: np.ndarray | None,
    min_psnr_db: float,
) -> tuple[dict[str, float] | None, str | None]:
    """The gate for one combination of graphs: (figures, why it failed or None)."""
    try:
        agreement = image_agreement(reference, _sample(bundle, engines, latents, labels))
    except _NonFinite as exc:
        return None, f"sampling returned NaN/Inf ({exc})"
    if not agreement["psnr_db"] >= min_psnr_db:  # written so that a NaN figure fails too
        return agreement, f"{_figures(agreement)}, below the gate's {min_psnr_db} dB"
    return agreement, None


def _figures(agreement: dict[str, float]) -> str:
    return f"images {agreement['psnr_db']:.1f} dB PSNR vs fp32, max abs {agreement['max_abs']:.0f}"


def _labels(bundle: Bundle, n: int, rng: np.random.Generator) -> np.ndarray | None:
    cond = bundle.conditioning
    return None if cond is None else rng.integers(0, cond.num_classes, size=n).astype(np.int64)


def _sample(
    bundle: Bundle, engines: dict[str, _Watched], latents: np.ndarray, labels: np.ndarray | None
) -> np.ndarray:
    from latent_ddpm.runtime.pipeline import Pipeline

    pipe = Pipeline(bundle, engines["unet"], engines["vae_decoder"])
    return pipe.generate(
        latents=latents,
        class_labels=None if labels is None else labels.tolist(),
        guidance_scale=bundle.defaults.guidance_scale,
        seed=0,
    ).images


def _calibrate(
    bundle: Bundle, engines: dict[str, _Watched], options: QuantizeOptions
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Record the U-Net's and decoder's feeds over sampling runs with the bundle's defaults."""
    unet, decoder = engines["unet"], engines["vae_decoder"]
    unet.feeds, decoder.feeds = [], []
    rng = np.random.default_rng(options.seed)
    try:
        for _ in range(options.calibration_runs):
            n = options.calibration_batch
            latents = rng.standard_normal((n, *bundle.latent_shape), dtype=np.float32)
            _sample(bundle, engines, latents, _labels(bundle, n, rng))
        unet_feeds, decoder_feeds = unet.feeds, decoder.feeds
    finally:
        unet.feeds = decoder.feeds = None
    keep = np.unique(
        np.linspace(0, len(unet_feeds) - 1, min(options.max_unet_feeds, len(unet_feeds))).round()
    )
    return {"unet": [unet_feeds[int(i)] for i in keep], "vae_decoder": decoder_feeds}


def _validation_inputs(bundle: Bundle, options: QuantizeOptions) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(options.seed + 10_000)  # a stream the calibration never drew from
    n = options.validation_images
    return rng.standard_normal((n, *bundle.latent_shape), dtype=np.float32), _labels(bundle, n, rng)


def _quantize_graph(
    model: ModelFile, feeds: list[dict[str, np.ndarray]], path: Path, tmp: Path, op_types: Sequence[str]
) -> str:
    """Static QDQ quantization of ``model`` into ``path``; dynamic if ONNX Runtime cannot do static."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from latent_ddpm.export.onnx_export import EXTERNAL_DATA_THRESHOLD, save_model

    work = tmp / f".{model.role}.work"
    work.mkdir()
    try:
        prepared = work / "prepared.onnx"
        # ONNX Runtime's recommended pre-pass (graph optimisation + shape inference); the symbolic pass
        # cannot follow the U-Net's dynamic height/width, ONNX's own shape inference is enough here.
        quant_pre_process(str(model.path), str(prepared), skip_symbolic_shape=True)
        quantized = work / "quantized.onnx"
        try:
            quantize_static(
                str(prepared),
                str(quantized),
                _Feeds(feeds),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                use_external_data_format=model.external_data is not None,
            )
            method = "static QDQ"
        except Exception as exc:  # ORT's quantizer raises bare Exceptions on graphs it cannot handle
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            quantize_dynamic(
                str(prepared),
                str(quantized),
                op_types_to_quantize=list(op_types),
                per_channel=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=model.external_data is not None,
            )
            method = f"dynamic (static quantization failed: {reason})"
        save_model(onnx.load(str(quantized)), path, EXTERNAL_DATA_THRESHOLD)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return method


def _open(model: ModelFile, threads: int | None) -> Any:
    from latent_ddpm.runtime.backends.onnxruntime_backend import OnnxRuntimeEngine

    return OnnxRuntimeEngine(model, threads=threads)


def _write_models(
    bundle: Bundle,
    tmp: Path,
    candidates: dict[str, ModelFile],
    decisions: dict[str, bool],
    failures: dict[str, str],
    methods: dict[str, str],
    options: QuantizeOptions,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move the chosen graphs into place; returns the new bundle.json and the per-model report."""
    meta = json.loads(json.dumps(bundle.raw))
    report: dict[str, Any] = {}
    for role, model in bundle.models.items():
        entry = meta["models"][role]
        if decisions.get(role):
            final = tmp / model.path.name
            os.replace(candidates[role].path, final)
            entry.update(
                file=final.name,
                precision="int8",
                external_data=None,
                external_data_sha256=None,
                kept_fp32=[FLOAT_OPS_NOTE],
            )
            entry["sha256"] = sha256_file(final)
            report[role] = {"precision": "int8", "method": methods[role], "bytes": final.stat().st_size}
            continue
        for p in (model.path, model.external_data):
            if p is not None:
                shutil.copy2(p, tmp / p.name)
        if role not in options.roles:
            why = f"{role}: not quantized (quantize was asked for {', '.join(options.roles)} only)"
            if role == "vae_encoder":
                why = f"{role}: not quantized; it runs once per img2img call, outside the denoising loop"
        else:
            why = f"{role}: int8 failed the gate ({failures[role]}; see validation.json), so it stays float32"
        entry.update(precision="fp32", kept_fp32=[why])
        report[role] = {"precision": "fp32", "reason": why, "method": methods.get(role)}
    for leftover in tmp.glob(".*.int8.onnx*"):
        leftover.unlink()
    meta["name"] = f"{bundle.name}-int8"
    meta.pop("precision_gates", None)  # they vouch for the fp32 graphs only
    meta["source"] = {**meta.get("source", {}), "quantized_from": str(bundle.root)}
    from latent_ddpm import __version__

    meta["created_by"] = f"latent-ddpm {__version__} (quantize)"
    return meta, report


def _write_samples(tmp: Path, reference: np.ndarray, final: np.ndarray) -> None:
    """samples.png: the fp32 bundle's validation images (top row) above the int8 bundle's (bottom row)."""
    from latent_ddpm.runtime.images import make_grid, save_png

    save_png(make_grid(np.concatenate([reference, final]), nrow=len(reference)), tmp / "samples.png")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

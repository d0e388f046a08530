"""Quantize an fp32 bundle to int8 for edge CPUs (ONNX Runtime static QDQ), gated against the fp32 bundle.

Calibrates on the tensors the graphs see in a few sampling runs of BUNDLE, quantizes the U-Net and the
decoder, and compares images sampled from held-out latents with the fp32 bundle's: a component whose int8
version costs more than --min-psnr stays float32 (bundle.json says so, validation.json has every figure).
OUT is written atomically; an existing OUT is refused unless --force.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from latent_ddpm.json_output import add_json_flag, json_command

HELP = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from latent_ddpm.export.quantize import QUANTIZABLE_ROLES, QuantizeOptions

    d = QuantizeOptions()
    p.add_argument(
        "bundle", help="an fp32 bundle (from `latent-ddpm export`), or a shipped model's name (digits)"
    )
    p.add_argument("out", type=Path, help="folder for the int8 bundle")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it is a bundle; any other non-empty folder, the current or home folder, or one "
        "holding BUNDLE is refused",
    )
    p.add_argument(
        "--components",
        nargs="+",
        choices=QUANTIZABLE_ROLES,
        default=list(d.roles),
        help="which graphs to quantize (the encoder, used once per img2img call, always stays fp32)",
    )
    p.add_argument(
        "--min-psnr",
        type=float,
        default=d.min_psnr_db,
        help="gate: images sampled by the int8 bundle vs the fp32 bundle's, in dB over uint8 pixels",
    )
    p.add_argument(
        "--calibration-runs", type=int, default=d.calibration_runs, help="sampling runs to calibrate on"
    )
    p.add_argument(
        "--calibration-batch", type=int, default=d.calibration_batch, help="images per calibration run"
    )
    p.add_argument(
        "--validation-images", type=int, default=d.validation_images, help="held-out images compared"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)"
    )
    add_json_flag(p)


def _quantize(args: argparse.Namespace) -> dict[str, Any]:
    """Quantize, print where for a person, and return what was written and the gate's figures for ``--json``."""
    from latent_ddpm.runtime.limits import check_threads

    check_threads(args.threads, "--threads")  # before any work: more threads than cores only contend
    from latent_ddpm.errors import CLIError
    from latent_ddpm.export.quantize import QuantizeOptions, quantize_bundle
    from latent_ddpm.extras import require_extra

    require_extra("quantize", "export", modules=("onnx", "onnxruntime"))

    for flag in ("calibration_runs", "calibration_batch", "validation_images"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    options = QuantizeOptions(
        calibration_runs=args.calibration_runs,
        calibration_batch=args.calibration_batch,
        validation_images=args.validation_images,
        min_psnr_db=args.min_psnr,
        roles=tuple(args.components),
        threads=args.threads,
    )
    from latent_ddpm.runtime.bundle import bundle_hash, load_bundle

    started = time.perf_counter()
    out = quantize_bundle(args.bundle, args.out, force=args.force, options=options)
    seconds = time.perf_counter() - started
    print(f"wrote {out}")
    bundle = load_bundle(out)
    return {
        "written": {"bundle": out, "files": sorted(p.name for p in out.iterdir())},
        "hash": bundle_hash(bundle),  # the one sample PNGs record
        "seconds": seconds,
        "models": {
            role: {"file": m.path.name, "precision": m.precision, "kept_fp32": m.kept_fp32}
            for role, m in bundle.models.items()
        },
        "validation": {**bundle.validation["summary"], "seed": options.seed},
    }


run = json_command("quantize", _quantize)

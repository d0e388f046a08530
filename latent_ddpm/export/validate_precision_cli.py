"""Validate running an fp32 bundle in a reduced precision (bf16 with OpenVINO) and record the result in it.

Samples the bundle's default run (its sampler, steps and guidance, fixed seeds) in fp32 with ONNX Runtime
and in bf16 with OpenVINO, and passes when the images agree to >= 35 dB PSNR (the fp16 export's bar), img2img
too where the bundle has an encoder, and, for digit models the shipped classifier can read, conditional
accuracy stays within 1 point. Refuses CPUs without native bf16 (avx512_bf16 / amx_bf16). The result,
passed or failed, goes into BUNDLE/validation.json (every figure) and BUNDLE/bundle.json ("precision_gates":
what `sample --precision bf16` and `Pipeline.from_bundle(..., precision="bf16")` check; they refuse a bundle
without a passed record for these graphs). Exit status 0 passed, 1 failed, 2 refused before any work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from latent_ddpm.export.precision_gate import GateSettings
    from latent_ddpm.runtime.backends import REDUCED_PRECISIONS
    from latent_ddpm.runtime.bundle import GATED_PRECISIONS

    d = GateSettings()
    p.add_argument(
        "bundle",
        type=Path,
        metavar="BUNDLE",
        help="an fp32 bundle (written by latent-ddpm export), or a shipped model's name (digits)",
    )
    p.add_argument("--precision", choices=GATED_PRECISIONS, default="bf16", help="precision to validate")
    p.add_argument(
        "--backend", choices=sorted(REDUCED_PRECISIONS), default="openvino", help="backend to run it"
    )
    p.add_argument("--images", type=int, default=d.images, help="images sampled in each precision")
    p.add_argument(
        "--batch", type=int, default=d.batch, help="images per generate call (batch i uses seed + i)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the first batch")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")


def summary(report: dict) -> str:
    s, settings = report["sampling"], report["settings"]
    lines = [
        f"{report['precision']} on {report['backend']} vs {report['reference']}: "
        f"{'PASSED' if report['passed'] else 'FAILED'}",
        f"  {settings['images']} images, {settings['sampler']} {settings['steps']} steps, guidance "
        f"{settings['guidance_scale']:g}: PSNR {_psnr(s)}, max diff {s['max_abs_diff']}/255, "
        f"mean diff {s['mean_abs_diff']:.3f}/255",
    ]
    if "img2img" in report:
        i = report["img2img"]
        lines.append(
            f"  img2img of {settings['batch']} of them: PSNR {_psnr(i)}, max diff {i['max_abs_diff']}/255"
        )
    j = report["judge"]
    if "skipped" in j:
        lines.append(f"  judge: {j['skipped']}")
    else:
        p = report["precision"]
        lines.append(
            f"  judged accuracy: fp32 {j['accuracy_fp32']:.2%}, {p} {j[f'accuracy_{p}']:.2%} "
            f"({100 * j['change']:+.1f} points)"
        )
    t = report["seconds"]
    lines.append(
        f"  sampling seconds (compiling included): fp32 {t['fp32']:.1f}, {report['precision']} {t[report['precision']]:.1f}"
    )
    if report["why"]:
        lines.append(f"  why: {report['why']}")
    return "\n".join(lines)


def _psnr(metrics: dict) -> str:
    return "identical" if metrics["psnr_db"] is None else f"{metrics['psnr_db']:.1f} dB"


def run(args: argparse.Namespace) -> int:
    from latent_ddpm.export.precision_gate import GateSettings, validate_precision
    from latent_ddpm.runtime.shipped import resolve_bundle

    args.bundle = resolve_bundle(args.bundle)  # a shipped model's name: its gate is recorded in the package

    settings = GateSettings(images=args.images, batch=args.batch, seed=args.seed, threads=args.threads)
    report = validate_precision(args.bundle, args.precision, args.backend, settings)
    print(summary(report))
    print(f"recorded in {args.bundle / 'bundle.json'} and validation.json")
    return 0 if report["passed"] else 1

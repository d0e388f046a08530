"""Export a diffusers-format latent DDPM to a validated ONNX bundle for the runtime.

SRC holds unet/ (UNet2DModel, unconditional or class-conditional), vae/ or vqvae/ (AutoencoderKL or
VQModel) and scheduler/, as LDMPipeline.save_pretrained and `latent-ddpm train` write them; an optional
latent_ddpm.json adds class names, the null class and sampling defaults. OUT gets unet.onnx,
vae_decoder.onnx, vae_encoder.onnx and bundle.json (docs/bundle-format.md).

The export is gated: every graph is compared with torch on random inputs, and a DDIM run of the bundle
with diffusers' from the same noise (fp32: images within 2/255; fp16: PSNR >= 35 dB). A bundle that fails
is not written, and an existing OUT is only replaced (--force) by a bundle that passed. fp16 keeps float32
inputs/outputs and keeps in float32 the operators that would overflow, as bundle.json records.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latent_ddpm.json_output import add_json_flag, json_command

HELP = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", type=Path, metavar="SRC", help="diffusers model directory (unet/, vae/ or vqvae/, scheduler/)"
    )
    p.add_argument("out", type=Path, metavar="OUT", help="bundle directory to write")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="weights and arithmetic of the graphs; fp16 keeps overflowing operators in fp32 automatically",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    p.add_argument(
        "--name", default=None, help="bundle name shown by the runtime and demo (default: OUT's name)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it is a bundle (only once the new bundle passed); any other non-empty folder, "
        "the current or home folder, or one holding SRC is refused",
    )
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip the validation gate (the bundle then says validated: false)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all cores)"
    )
    add_json_flag(p)


def _export(args: argparse.Namespace) -> dict[str, Any]:
    """Export, print what was done for a person, and return it for ``--json``."""
    from latent_ddpm.extras import require_extra

    require_extra("export", "export")
    from latent_ddpm.runtime.limits import check_threads

    check_threads(args.threads, "--threads")  # before any work: more threads than cores only contend
    from latent_ddpm.export.exporter import export_bundle
    from latent_ddpm.runtime.bundle import bundle_hash, load_bundle

    options = {k: getattr(args, k) for k in ("precision", "opset", "validate", "force", "name", "threads")}
    result = export_bundle(
        args.src, args.out, **options, progress=not args.quiet
    )  # flags named as parameters
    models = result.bundle["models"]
    files = ", ".join(
        f"{m['file']} ({m['precision']}, {len(m['kept_fp32'])} kept fp32)" for m in models.values()
    )
    print(f"wrote {result.path} in {result.seconds:.1f}s: {files}")
    doc = {
        "written": {"bundle": result.path, "files": sorted(p.name for p in result.path.iterdir())},
        "hash": bundle_hash(load_bundle(result.path, verify_hashes=False)),  # the one sample PNGs record
        "seconds": result.seconds,
        "models": {
            role: {k: m[k] for k in ("file", "precision", "kept_fp32", "sha256")}
            for role, m in models.items()
        },
        "validation": None,
    }
    if result.report is None:
        print("not validated (--no-validate)")
        return doc
    doc["validation"] = {
        "passed": True,  # a bundle that failed the gate is not written
        "sampling": result.report["sampling"],
        "components": {role: c["worst"] for role, c in result.report["components"].items()},
    }
    s = result.report["sampling"]
    psnr = "identical" if s["psnr_db"] is None else f"PSNR {s['psnr_db']:.1f} dB"
    worst = ", ".join(
        f"{role} cosine {c['worst']['cosine']:.6f}" for role, c in result.report["components"].items()
    )
    print(
        f"validation passed: {s['images']} images x {s['steps']} DDIM steps vs diffusers: max diff "
        f"{s['max_abs_diff']}/255, {psnr}; {worst}"
    )
    return doc


run = json_command("export", _export)
